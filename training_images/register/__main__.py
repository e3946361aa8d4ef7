"""Register step: publish every trained model of the run, pick the best, add a registry version, write _results.json.

The work is trainyard.register.register_run; this is its argv, store and result wrapper.
"""

from __future__ import annotations

import argparse
import os
import sys

from trainyard import contract, runs
from trainyard.errors import NotFound
from trainyard.register import register_run


def _say(line: str) -> None:
    print(line, flush=True)


def _warn(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="training_images.register")
    parser.add_argument("--pipeline", default=os.environ.get("TRAINYARD_DAG_ID", "train_pipeline"))
    parser.add_argument("--run-id", default=os.environ.get("TRAINYARD_RUN_ID", "manual"))
    args = parser.parse_args(argv)

    store = contract.store_from_env()
    try:
        plan = runs.load_plan(store, args.pipeline, args.run_id)
    except NotFound:
        print(f"run {args.run_id} has no plan: the resolve step did not finish, so nothing was trained",
              file=sys.stderr)
        return 2
    registered = register_run(store, plan, say=_say, warn=_warn)
    outputs = registered.results.run_summary.outputs
    state = registered.results.run_summary.state
    contract.write_result({"state": state, "best": outputs.best and outputs.best.model_dump(mode="json"),
                           "version": registered.version, "models": len(registered.models),
                           "failures": len(registered.failures)})
    if registered.failures:
        for f in registered.failures:
            print(f"combination {f.label} failed: {f.error}", file=sys.stderr, flush=True)
        print(f"registered {len(registered.models)} of {len(registered.models) + len(registered.failures)} "
              f"combination(s); {len(registered.failures)} failed", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
