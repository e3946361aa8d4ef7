"""bench/peers' kfp.local contender: a ParallelFor over the grid's combinations on the SubprocessRunner, each task one
mnist training; prints `PEERS_RESULTS {label: metrics}` and `PEERS_CACHE_HITS n`.

    <kfp venv>/bin/python kfp_sweep.py --root DIR --combos JSON --parallelism N [--cache] --train-python PY
                                       --model-dir DIR --data-dir DIR
"""

# No `from __future__ import annotations`: kfp reads the component's annotations as real types.
import argparse
import json
import logging
import os
import sys

from kfp import dsl, local

SUPPORT_DIR = os.path.dirname(os.path.abspath(__file__))


# install_kfp_package=False: with use_venv=False the task runs in this very interpreter, which has kfp; otherwise
# every task would start with a `pip install kfp` that finds it already there (seconds per task, none of them the
# training's).
@dsl.component(install_kfp_package=False)
def train_one(combo_json: str, support_dir: str, train_python: str, model_dir: str, data_dir: str,
              model: dsl.Output[dsl.Model]) -> str:
    """One mnist training; the model directory is the task's output artifact, the metrics its return value."""
    import json
    import sys
    sys.path.insert(0, support_dir)
    from mnist_train import label, train

    combo = json.loads(combo_json)
    metrics = train(combo, model.path, train_python, model_dir, data_dir)
    model.metadata.update(metrics)
    return json.dumps({"label": label(combo), "metrics": metrics})


def build(parallelism: int, cache: bool):
    @dsl.pipeline(name="peers-mnist-sweep")
    def sweep(combos: list[str], support_dir: str, train_python: str, model_dir: str,
              data_dir: str) -> list[str]:
        with dsl.ParallelFor(items=combos, parallelism=parallelism) as combo:
            task = train_one(combo_json=combo, support_dir=support_dir, train_python=train_python, model_dir=model_dir,
                             data_dir=data_dir)
            task.set_caching_options(enable_caching=cache)
        return dsl.Collected(task.outputs["Output"])

    return sweep


class _CacheHits(logging.Handler):
    """Counts kfp.local's cache-hit records (`Task ... cache hit (key=...)`, logged at INFO on the root logger)."""

    def __init__(self) -> None:
        super().__init__()
        self.hits = 0

    def emit(self, record: logging.LogRecord) -> None:
        if " cache hit " in record.getMessage():
            self.hits += 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="pipeline root (its .kfp_cache is the task cache)")
    parser.add_argument("--combos", required=True)
    parser.add_argument("--parallelism", type=int, default=2)
    parser.add_argument("--cache", action="store_true", help="enable kfp.local's task cache")
    parser.add_argument("--train-python", required=True)
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--data-dir", required=True)
    args = parser.parse_args()
    hits = _CacheHits()
    root = logging.getLogger()
    root.addHandler(hits)
    root.setLevel(logging.INFO)  # the hits are INFO records; this handler is the root's only one, so nothing prints
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=args.root,
               workspace_root=os.path.join(args.root, "workspace"), enable_caching=args.cache)
    run = build(args.parallelism, args.cache)(
        # Each combination travels as JSON text: a dict parameter would come back with its ints as floats (protobuf
        # Struct), and the training must get exactly the params the other tools give it.
        combos=[json.dumps(c, sort_keys=True) for c in json.loads(args.combos)],
        support_dir=SUPPORT_DIR, train_python=args.train_python,
        model_dir=args.model_dir, data_dir=args.data_dir)
    results = {}
    for item in run.output:
        entry = json.loads(item)
        results[entry["label"]] = entry["metrics"]
    print("PEERS_RESULTS " + json.dumps(results, sort_keys=True), flush=True)
    print(f"PEERS_CACHE_HITS {hits.hits}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
