"""One mnist training exactly as the floor and trainyard run it: params.json merged with a combination, the template's
own model/train as a subprocess of the project's interpreter, the repo's data bundle; stdlib only, so any venv can
import it."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path


def label(combo: dict) -> str:
    """One name per combination for every tool, e.g. 'degree=3,gamma=10,kernel=linear' (keys sorted)."""
    return ",".join(f"{k}={combo[k]}" for k in sorted(combo))


def train(combo: dict, out_dir: str, train_python: str, model_dir: str, data_dir: str) -> dict:
    """Train one combination into out_dir (model/model.pkl, metrics/metrics.json); return its metrics."""
    # Absolute paths: the training runs in the model directory.
    out, model_dir, data_dir = Path(out_dir).resolve(), str(Path(model_dir).resolve()), str(Path(data_dir).resolve())
    out.mkdir(parents=True, exist_ok=True)
    params = {**json.loads((Path(model_dir) / "params.json").read_text()), **combo}
    params_file = out / "params.json"
    params_file.write_text(json.dumps(params))
    # The tool's own settings must not leak into the training; trainyard's runner gives it a clean env too.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "TRAINYARD_", "METAFLOW_", "KFP_"))}
    env.update({"TRAINYARD_PARAMS": str(params_file), "TRAINYARD_DATA_DIR": data_dir})
    with open(out / "train.log", "w") as log:
        proc = subprocess.run([train_python, str(Path(model_dir) / "train"), str(out)], cwd=model_dir, env=env,
                              stdout=log, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"model/train {combo} exited {proc.returncode}; log: {out / 'train.log'}")
    return json.loads((out / "metrics" / "metrics.json").read_text())
