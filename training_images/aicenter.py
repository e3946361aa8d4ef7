"""UiPath AI Center contract: run a train.py package's Main.train(), evaluate() and save() inside the model dir."""

# Standard library only: this runs under the bundle's own Python (its virtualenv or training image), which need
# not carry trainyard's dependencies.
from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import math
import os
import shutil
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger("training_images.aicenter")

TRAIN_FILE = "train.py"
ARTIFACTS_ENV = "artifacts_directory"
# Folders AI Center and kaos datasets use for held-out data, in order of preference.
EVALUATION_DIRS = ("test", "evaluation")
_COPY_IGNORE = shutil.ignore_patterns(".git", "__pycache__", "*.pyc", ".venv", ".DS_Store", ".ipynb_checkpoints")
_CONTRACT = "AI Center packages need train.py with `class Main` and methods train(self, data_directory) and save(self)"


class ContractError(Exception):
    """The package does not follow AI Center's train.py contract."""


def dataset_dir(data_dir: Path) -> Path:
    """The dataset train() gets: a data commit keeps its bundle's top folder (`<data>/<repo>/...`), and AI Center
    passes the dataset folder itself, so a single top folder is the dataset; anything else is passed whole."""
    entries = list(data_dir.iterdir()) if data_dir.is_dir() else []
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else data_dir


def evaluation_dir(data_dir: Path) -> Path:
    """The held-out folder: <data>/test, or <data>/<repo>/test for a single-repo data commit; else the data dir."""
    tops = [d for d in sorted(data_dir.iterdir()) if d.is_dir()] if data_dir.is_dir() else []
    bases = [data_dir, tops[0]] if len(tops) == 1 else [data_dir]
    for base in bases:
        for name in EVALUATION_DIRS:
            if (base / name).is_dir():
                return base / name
    return data_dir


def install_package(source_dir: Path, model_dir: Path) -> None:
    """Copy the package's code into the model dir: a trained AI Center package is its code plus saved files."""
    if not (source_dir / TRAIN_FILE).is_file():
        raise ContractError(f"no {TRAIN_FILE} in {source_dir}: {_CONTRACT}; or use kaos's executable model/train")
    model_dir.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source_dir, model_dir, ignore=_COPY_IGNORE, dirs_exist_ok=True)


def load_main(model_dir: Path) -> Any:
    """Import train.py from the model dir and return a Main() instance, checked before any training starts."""
    # Registered as `train` so objects pickled by save() refer to train.<Class>, importable next to the saved files.
    spec = importlib.util.spec_from_file_location("train", model_dir / TRAIN_FILE)
    module = importlib.util.module_from_spec(spec)
    sys.modules["train"] = module
    spec.loader.exec_module(module)
    main_cls = getattr(module, "Main", None)
    if not isinstance(main_cls, type):
        raise ContractError(f"{TRAIN_FILE} defines no class Main: {_CONTRACT}")
    missing = [m for m in ("train", "save") if not callable(getattr(main_cls, m, None))]
    if missing:
        wanted = {"train": "train(self, data_directory)", "save": "save(self)"}
        raise ContractError(f"class Main in {TRAIN_FILE} lacks {' and '.join(wanted[m] for m in missing)}: "
                            f"add {'them' if len(missing) > 1 else 'it'}; save() writes the model into the current "
                            "directory")
    try:
        return main_cls()
    except TypeError as exc:
        raise ContractError(f"Main() failed: {exc}; AI Center creates Main with no arguments") from None


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def score_metrics(result: Any) -> dict[str, float]:
    """evaluate()'s result as metrics: a number is the `score`; a dict of numbers is taken as is."""
    if result is None:
        return {}
    if _number(result):
        return {"score": float(result)}
    if isinstance(result, dict) and all(isinstance(k, str) and _number(v) for k, v in result.items()):
        return {k: float(v) for k, v in result.items()}
    raise ContractError(f"evaluate() returned {result!r}; return a number (the score) or a dict of name -> number")


def write_metrics(metrics_file: Path, scores: dict[str, float]) -> dict[str, Any]:
    """Merge the scores over whatever metrics the user's code already wrote; evaluate() has the last word."""
    metrics: dict[str, Any] = {}
    if metrics_file.is_file():
        try:
            metrics = json.loads(metrics_file.read_text())
        except ValueError as exc:
            raise ContractError(f"{metrics_file} written by train.py is not valid JSON: {exc}") from None
        if not isinstance(metrics, dict):
            raise ContractError(f"{metrics_file} written by train.py must be a JSON object of name -> number")
    metrics.update(scores)
    metrics_file.parent.mkdir(parents=True, exist_ok=True)
    metrics_file.write_text(json.dumps(metrics, indent=2, sort_keys=True))
    return metrics


def run(source_dir: Path, data_dir: Path, out_dir: Path, model_dir: Path | None = None) -> dict[str, Any]:
    """Run the package like AI Center does; returns the metrics written to <out>/metrics/metrics.json."""
    source_dir, data_dir, out_dir = source_dir.resolve(), data_dir.resolve(), out_dir.resolve()
    model_dir = (model_dir or out_dir / "model").resolve()
    artifacts = Path(os.environ.setdefault(ARTIFACTS_ENV, str(out_dir / "artifacts")))
    artifacts.mkdir(parents=True, exist_ok=True)
    install_package(source_dir, model_dir)
    os.chdir(model_dir)  # AI Center runs the package from its own folder; save() writes relative to it
    sys.path.insert(0, str(model_dir))
    sys.dont_write_bytecode = True  # the model dir is uploaded as the trained package; keep __pycache__ out of it
    main = load_main(model_dir)

    # AI Center's order: train(), then evaluate() on the freshly trained model, then save() persists it.
    dataset = dataset_dir(data_dir)
    log.info("Main.train(%s)", dataset)
    main.train(str(dataset))
    scores: dict[str, float] = {}
    evaluate = getattr(main, "evaluate", None)
    if callable(evaluate):
        eval_dir = evaluation_dir(dataset)
        log.info("Main.evaluate(%s)", eval_dir)
        scores = score_metrics(evaluate(str(eval_dir)))
    else:
        log.warning("class Main has no evaluate(self, evaluation_directory): no score is recorded")
    log.info("Main.save() into %s", model_dir)
    main.save()
    metrics = write_metrics(out_dir / "metrics" / "metrics.json", scores)
    log.info("metrics: %s", json.dumps(metrics, sort_keys=True))
    return metrics


def main(argv: list[str] | None = None) -> int:
    # Run by path, Python puts training_images/ first on sys.path; drop it so the package's own modules win
    # (training_images/train/ would shadow a user module named `train`).
    if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
        sys.path.pop(0)
    parser = argparse.ArgumentParser(prog="training_images.aicenter", description=__doc__)
    parser.add_argument("--source", required=True, type=Path, help="the package folder holding train.py")
    parser.add_argument("--data", required=True, type=Path, help="the dataset folder passed to Main.train()")
    parser.add_argument("--out", required=True, type=Path, help="output dir holding model/, metrics/, artifacts/")
    parser.add_argument("--model-dir", type=Path, help="where the package is copied and saved (default <out>/model)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="aicenter: %(message)s", stream=sys.stdout)
    try:
        run(args.source, args.data, args.out, args.model_dir)
    except ContractError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
