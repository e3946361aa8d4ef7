"""The step contract: env var names, model ids and the small JSON result every step writes (the XCom)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from trainyard.store.versioned import canonical_json, sha256_bytes

# Where a step writes its result; KubernetesPodOperator's xcom sidecar reads this path in pods.
RESULT_PATH_ENV = "TRAINYARD_RESULT_PATH"
DEFAULT_RESULT_PATH = "/airflow/xcom/return.json"
STORE_ENV = "TRAINYARD_STORE"

# What user training code sees (documented in the README's "Training contract").
DATA_DIR_ENV = "TRAINYARD_DATA_DIR"
PARAMS_ENV = "TRAINYARD_PARAMS"
HYPERPARAMS_ENV = "TRAINYARD_HYPERPARAMS"
SOURCE_DIR_ENV = "TRAINYARD_SOURCE_DIR"
ARTIFACTS_ENV = "artifacts_directory"
MODEL_ID_ENV = "TRAINYARD_MODEL_ID"

RESULT_MAX_BYTES = 64 * 1024


def params_hash(params: dict[str, Any]) -> str:
    return sha256_bytes(canonical_json(params))


def model_id(source_id: str, data_id: str, params: dict[str, Any]) -> str:
    """Deterministic model id '<src>_<data>:<params>': same code, data and params give the same id."""
    return f"{source_id[:12]}_{data_id[:12]}:{params_hash(params)[:12]}"


def model_key(mid: str) -> str:
    src_data, _, params = mid.partition(":")
    return f"models/{src_data}/{params}.json"


def write_result(result: dict[str, Any]) -> Path:
    """Write the step's JSON result; it must stay small because it becomes the task's XCom."""
    data = json.dumps(result, sort_keys=True)
    if len(data) > RESULT_MAX_BYTES:
        raise ValueError(f"step result is {len(data)} bytes; results carry ids and metrics, not data")
    path = Path(os.environ.get(RESULT_PATH_ENV, DEFAULT_RESULT_PATH))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data)
    return path


def read_metrics(metrics_dir: Path) -> dict[str, float | str]:
    """Read metrics: `metrics.json`, then any other `*.json` in the metrics dir, each a flat JSON object.

    Numbers are kept as floats and can be ranked. Anything else (kaos writes sklearn report strings as metrics) is
    kept as text and never ranked.
    """
    main = metrics_dir / "metrics.json"
    if not main.is_file():
        raise ValueError(f"training wrote no metrics: expected {main} (a flat JSON object of name -> number)")
    metrics: dict[str, float | str] = {}
    for path in [main, *sorted(p for p in metrics_dir.glob("*.json") if p != main)]:
        try:
            doc = json.loads(path.read_text())
        except ValueError as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise ValueError(f"{path} must be a JSON object of name -> number")
        for name, value in doc.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                metrics[name] = float(value)
            else:
                metrics[name] = value if isinstance(value, str) else json.dumps(value)
    return metrics


def store_from_env():
    """Open the store a step was pointed at; credentials come from the environment the runner set up."""
    from trainyard.store import open_store

    uri = os.environ.get(STORE_ENV)
    if not uri:
        raise ValueError(f"{STORE_ENV} is not set; the runner must pass the store URI to every step")
    return open_store(uri)


REQUIREMENTS_FILE = "requirements.txt"


def requirements_sha(manifest: dict) -> str:
    """Key of the environment a source commit trains in: the sha256 of its requirements.txt (of b"" if none).

    The manifest already records that hash, so no download is needed to know which environment to use.
    """
    entry = manifest.get(REQUIREMENTS_FILE)
    return entry["sha256"] if entry else sha256_bytes(b"")
