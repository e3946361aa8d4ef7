"""The step contract: env var names, model ids and the small JSON result every step writes (the XCom)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trainyard.errors import BundleError
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
# UiPath AI Center's pipeline environment: "true" when the run keeps its training data (--save-training-data).
SAVE_TRAINING_DATA_ENV = "save_training_data"

# AI Center passes a run's parameters to train.py as environment variables; trainyard's params (params.json merged
# with the combination's hyperparameters) are exported the same way, except names that would change how the code or
# its interpreter runs, or that the contract itself sets.
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_RESERVED_ENV = {"PATH", "HOME", "PWD", "SHELL", "USER", "TMPDIR", "VIRTUAL_ENV", "CUDA_VISIBLE_DEVICES",
                 ARTIFACTS_ENV, SAVE_TRAINING_DATA_ENV}
_RESERVED_ENV_PREFIXES = ("TRAINYARD_", "PYTHON", "LD_", "AWS_", "AIRFLOW", "KUBERNETES_")

RESULT_MAX_BYTES = 64 * 1024


def params_hash(params: dict[str, Any]) -> str:
    return sha256_bytes(canonical_json(params))


def model_id(source_id: str, data_id: str, params: dict[str, Any]) -> str:
    """Deterministic model id '<src>_<data>:<params>': same code, data and params give the same id."""
    return f"{source_id[:12]}_{data_id[:12]}:{params_hash(params)[:12]}"


def env_parameters(params: Mapping[str, Any]) -> tuple[dict[str, str], list[str]]:
    """Params as AI Center environment variables: text as is, anything else as JSON (10 -> "10", True -> "true").

    Returns (variables, names left out): a name that is not a valid variable name, or is reserved (PATH, PYTHON*,
    LD_*, AWS_*, TRAINYARD_*, artifacts_directory ...), is not exported; the code still finds it in $TRAINYARD_PARAMS.
    """
    variables: dict[str, str] = {}
    skipped: list[str] = []
    for name, value in params.items():
        if not _ENV_NAME.match(name) or name in _RESERVED_ENV or name.startswith(_RESERVED_ENV_PREFIXES):
            skipped.append(name)
            continue
        variables[name] = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return variables, skipped


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
# kaos keeps requirements.txt in model/, next to train; AI Center packages and our templates keep it at the root.
KAOS_REQUIREMENTS_FILE = "model/requirements.txt"
REQUIREMENTS_FILES = (REQUIREMENTS_FILE, KAOS_REQUIREMENTS_FILE)


def requirements_conflict(bundle: str) -> str:
    """The one-line error for a bundle whose two requirements files differ (deploy and build say the same)."""
    return (f"source bundle {bundle} has both {REQUIREMENTS_FILE} and {KAOS_REQUIREMENTS_FILE} and they differ, so "
            f"it is unclear which to install; remove one (kaos keeps it in {KAOS_REQUIREMENTS_FILE}) or make them "
            "identical")


def requirements_path(manifest: Mapping[str, Mapping[str, Any]], bundle: str = "") -> str | None:
    """The requirements file a source commit's environment is built from: requirements.txt at the root or kaos's
    model/requirements.txt (identical copies in both places are one file); None when it has neither.

    Two different files raise BundleError: installing both could silently give a mix no one wrote down.
    """
    present = [name for name in REQUIREMENTS_FILES if name in manifest]
    if len({manifest[name]["sha256"] for name in present}) > 1:
        raise BundleError(requirements_conflict(bundle or "commit"))
    return present[0] if present else None


def requirements_sha(manifest: Mapping[str, Mapping[str, Any]]) -> str:
    """Key of the environment a source commit trains in: the sha256 of the requirements file it uses (of b"" if
    none), so the same requirements give the same environment wherever the bundle keeps them.

    The manifest already records that hash, so no download is needed to know which environment to use.
    """
    path = requirements_path(manifest)
    return manifest[path]["sha256"] if path else sha256_bytes(b"")
