"""Run a trainyard DAG in this process with `dag.test()` (the embedded default: SQLite, no server)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from trainyard import config
from trainyard.errors import StepError
from trainyard.store import open_store

DAGS_DIR = Path(__file__).resolve().parents[1] / "dags"
log = logging.getLogger(__name__)


def ensure_metadata_db() -> None:
    """Create Airflow's SQLite metadata database on first use (what `airflow db migrate` does)."""
    from airflow import settings
    from airflow.utils import db

    url = settings.SQL_ALCHEMY_CONN or ""
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        if path.exists() and path.stat().st_size > 0:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
    log.info("initialising the Airflow metadata database at %s", url)
    db.initdb()


def load_dag(dag_id: str):
    """Parse one DAG file from dags/ and return the DAG, raising the parse error if there is one."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS_DIR / f"{dag_id}.py"))
    if bag.import_errors:
        raise StepError(f"{dag_id} failed to parse: {next(iter(bag.import_errors.values())).strip().splitlines()[-1]}")
    return bag.dags[dag_id]


def run_pipeline(dag_id: str, conf: dict, *, quiet: bool = False, store_uri: str | None = None) -> dict:
    """Run the DAG once with conf; return the run's state plus what the register step published."""
    if quiet:
        os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")
    ensure_metadata_db()
    previous = os.environ.get("TRAINYARD_STORE")
    if store_uri:
        # Operators read settings when the DAG is parsed; the caller's store argument must win over airflow.cfg.
        os.environ["TRAINYARD_STORE"] = store_uri
    try:
        dag = load_dag(dag_id)
        dag_run = dag.test(run_conf=conf)
    finally:
        if previous is None:
            os.environ.pop("TRAINYARD_STORE", None)
        else:
            os.environ["TRAINYARD_STORE"] = previous
    state = str(getattr(dag_run.state, "value", dag_run.state))
    result = {"run_id": dag_run.run_id, "state": state}
    if state == "success":
        store = open_store(config.load(store=store_uri).store)
        result.update(store.get_json(f"runs/{dag_id}/{dag_run.run_id}.json"))
    return result
