"""Run a trainyard DAG in this process with `dag.test()` (the embedded default: SQLite, no server)."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from operators import drivers
from operators.hooks import StoreHook
from trainyard import runs
from trainyard.errors import StepError
from trainyard.store import check_store

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


def run_pipeline(dag_id: str, conf: dict, *, quiet: bool = False, store_uri: str | None = None,
                 parse_settings: dict[str, str] | None = None) -> dict:
    """Run the DAG once with conf; return its run id, Airflow state and run record (`results`, a RunRecord; None
    when the run wrote no `_results.json`).

    parse_settings are trainyard settings the DAG file reads when it is parsed (e.g. parallelism, which becomes
    max_active_tis_per_dagrun); they are set as TRAINYARD_<NAME> for this run only.
    """
    # Quiet: Airflow's own logging at WARNING, for this run only (the CLI's process may start others after it).
    quiet_env = {"AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING"} \
        if quiet and "AIRFLOW__LOGGING__LOGGING_LEVEL" not in os.environ else {}
    os.environ.update(quiet_env)
    try:
        return _run_pipeline(dag_id, conf, store_uri=store_uri, parse_settings=parse_settings)
    finally:
        for name in quiet_env:
            os.environ.pop(name, None)


def _run_pipeline(dag_id: str, conf: dict, *, store_uri: str | None, parse_settings: dict[str, str] | None) -> dict:
    ensure_metadata_db()
    # The same credentials the steps use: the Airflow connection, else the environment. A store that is down,
    # missing, refusing or read-only fails here in one line with its exit code, before Airflow runs a task.
    store = StoreHook(store_uri=store_uri).get_conn()
    check_store(store)
    # Operators read settings when the DAG is parsed; the caller's store argument must win over airflow.cfg.
    overrides = {"TRAINYARD_STORE": store_uri} if store_uri else {}
    overrides.update({f"TRAINYARD_{k.upper()}": str(v) for k, v in (parse_settings or {}).items() if v is not None})
    previous = {name: os.environ.get(name) for name in overrides}
    os.environ.update(overrides)
    try:
        dag = load_dag(dag_id)
        for run_id in drivers.reap():
            print(f"note: run {run_id} was left running by a trainyard that was killed; marked failed", file=sys.stderr)
        with drivers.lease(dag_id):
            dag_run = dag.test(run_conf=conf)
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    state = str(getattr(dag_run.state, "value", dag_run.state))
    if state != "success":
        check_store(store)  # a store that went away during the run is the cause to report, with its exit code
    return {"run_id": dag_run.run_id, "state": state, "results": runs.read_results(store, dag_id, dag_run.run_id)}
