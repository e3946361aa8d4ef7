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


def read_metrics(path: Path) -> dict[str, float]:
    """Read metrics.json: a flat object of numbers. Anything else is a clear error."""
    try:
        metrics = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"training wrote no metrics: expected {path} (a flat JSON object of numbers)") from None
    except ValueError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(metrics, dict):
        raise ValueError(f"{path} must be a JSON object of name -> number")
    bad = [k for k, v in metrics.items() if isinstance(v, bool) or not isinstance(v, (int, float))]
    if bad:
        raise ValueError(f"metrics {', '.join(sorted(bad))} in {path} are not numbers; metrics must be flat numbers")
    return {k: float(v) for k, v in metrics.items()}


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
