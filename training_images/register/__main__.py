"""Register step: publish the trained model's record (files, metrics, logs, lineage) and the run record."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from trainyard import contract


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="training_images.register")
    parser.add_argument("--train-result", required=True, help="the train step's JSON result")
    parser.add_argument("--pipeline", default="train_pipeline")
    args = parser.parse_args(argv)

    trained = json.loads(args.train_result)
    store = contract.store_from_env()
    source = store.get_commit(trained["source"].split(":")[0], trained["source_id"])
    data = store.get_commit(trained["data"].split(":")[0], trained["data_id"])
    run_id = os.environ.get("TRAINYARD_RUN_ID", "manual")
    record = {
        "model_id": trained["model_id"],
        "name": source.repo,
        "metrics": trained["metrics"],
        "params": trained["params"],
        "outputs": trained["outputs"],
        "log": trained["log"],
        "env": trained["env"],
        "train_seconds": trained["train_seconds"],
        "lineage": {
            "source": {"repo": source.repo, "commit": source.id, "author": source.author, "time": source.time,
                       "message": source.message},
            "data": {"repo": data.repo, "commit": data.id, "author": data.author, "time": data.time,
                     "message": data.message},
            "params_hash": trained["params_hash"],
            "airflow": {"dag_id": os.environ.get("TRAINYARD_DAG_ID"), "run_id": run_id,
                        "task_id": os.environ.get("TRAINYARD_TRAIN_TASK", "train")},
        },
        "registered_at": time.time(),
    }
    # Outputs were uploaded by the train step; the record is published last and never overwritten.
    created = store.put_json(contract.model_key(trained["model_id"]), record, create_only=True)
    print(f"model {trained['model_id']} {'registered' if created else 'already registered (same inputs)'}",
          flush=True)
    store.put_json(f"runs/{args.pipeline}/{run_id}.json", {
        "run_id": run_id, "pipeline": args.pipeline, "model_id": trained["model_id"],
        "metrics": trained["metrics"], "source": trained["source"], "data": trained["data"],
        "finished_at": time.time(),
    })
    contract.write_result({"model_id": trained["model_id"], "metrics": trained["metrics"], "created": created,
                           "source": trained["source"], "data": trained["data"]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
