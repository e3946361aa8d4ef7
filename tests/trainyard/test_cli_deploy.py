"""`trainyard deploy --local` when every model is already in the store: the run is recorded (`_results.json`, every
model reused) without starting the pipeline, so Airflow gets no dag run and no task instance, and nothing trains;
`--no-cache` still trains."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from trainyard import runs
from trainyard.store import keys, open_store

pytestmark = pytest.mark.e2e
GRID = '{"run": [1, 2]}'


def _cli(*args: str) -> dict | list:
    proc = subprocess.run([sys.executable, "-m", "trainyard.cli", *args, "--json"],
                          env={**os.environ, "SLEEPY_SECONDS": "0"}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def _airflow_runs() -> tuple[set[str], int]:
    """The train_pipeline dag runs in Airflow's metadata DB, and how many task instances they have."""
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        run_ids = {r.run_id for r in session.query(DagRun).filter(DagRun.dag_id == "train_pipeline").all()}
        tis = session.query(TaskInstance).filter(TaskInstance.dag_id == "train_pipeline").count()
    return run_ids, tis


def _train_logs(store, run_id: str) -> list[str]:
    """The train step logs a run left in the store (one per training)."""
    return [key for *_, key in runs.newest_logs(store, "train_pipeline", run_id, "train")]


def test_a_fully_cached_deploy_records_the_run_without_starting_the_pipeline(airflow_db, tmp_path, sleepy):
    src, data = sleepy
    uri = f"file://{tmp_path / 'store'}"
    deploy = ("--store", uri, "deploy", "-s", str(src), "-d", str(data), "--local", "-h", GRID)
    first = _cli(*deploy)
    assert first["state"] == "success" and not first["cached"] and len(first["models"]) == 2
    store = open_store(uri)
    runs_before, tis_before = _airflow_runs()
    assert first["run_id"] in runs_before and len(_train_logs(store, first["run_id"])) == 2

    again = _cli(*deploy)
    assert again["state"] == "success" and again["cached"] is True
    assert again["run_id"] not in runs_before
    # Nothing started in Airflow, nothing trained.
    assert _airflow_runs() == (runs_before, tis_before)
    assert _train_logs(store, again["run_id"]) == []
    assert not store.list_keys(keys.run_prefix("train_pipeline", again["run_id"]) + "trained/")
    # The run is recorded: its _results.json lists both models, reused, and `trainyard list` shows it first.
    record = store.get_json(keys.run_results("train_pipeline", again["run_id"]))
    assert record["run_summary"]["cached"] is True and record["run_summary"]["state"] == "success"
    assert sorted(m["model_id"] for m in record["models"]) == sorted(m["model_id"] for m in first["models"])
    assert all(m["cached"] for m in record["models"])
    listed = _cli("--store", uri, "list")
    assert [r["parameters"]["run_id"] for r in listed] == [again["run_id"], first["run_id"]]
    # The registry is unchanged: the same best model, no new version.
    assert [v["version"] for v in _cli("--store", uri, "models", "src")["versions"]] == ["1.0"]

    retrained = _cli(*deploy, "--no-cache")
    assert retrained["state"] == "success" and not retrained["cached"]
    assert retrained["run_id"] in _airflow_runs()[0]
    assert len(_train_logs(store, retrained["run_id"])) == 2
