"""Scheduled retraining: train_pipeline on a cron from [trainyard] retrain_schedule, a cache hit when unchanged."""

from __future__ import annotations

import contextlib
import datetime
import json
import shutil
from unittest import mock

import pytest
from airflow.dag_processing.dagbag import DagBag
from croniter import croniter

from tests.conftest import REPO
from trainyard.cli import main
from trainyard.store import open_store

SRC = str(REPO / "templates/mnist/model-train")
DATA = str(REPO / "templates/mnist/data")
SETTINGS = ("TRAINYARD_RETRAIN_SCHEDULE", "TRAINYARD_RETRAIN_SOURCE", "TRAINYARD_RETRAIN_DATA")


@pytest.fixture(autouse=True)
def _no_retrain_settings(monkeypatch):
    for name in SETTINGS:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.replace("TRAINYARD_", "AIRFLOW__TRAINYARD__"), raising=False)


def _parse(monkeypatch, dag_file: str = "train_pipeline.py", **settings: str) -> DagBag:
    """Parse one DAG file the way the dag-processor does, with TRAINYARD_<NAME> settings in its environment."""
    for name, value in settings.items():
        monkeypatch.setenv(f"TRAINYARD_{name.upper()}", value)
    return DagBag(dag_folder=str(REPO / "dags" / dag_file))


@pytest.mark.parametrize(("setting", "cron"), [("0 3 * * *", "0 3 * * *"), ("@daily", "0 0 * * *"),
                                               (" */15 6-18 * * 1-5 ", "*/15 6-18 * * 1-5")])
def test_a_retrain_schedule_puts_train_pipeline_on_that_cron(monkeypatch, setting, cron):
    from airflow.sdk import CronDataIntervalTimetable, CronTriggerTimetable
    from airflow.serialization.serialized_objects import DagSerialization
    from airflow.timetables.base import TimeRestriction

    bag = _parse(monkeypatch, retrain_schedule=setting)
    assert bag.import_errors == {}
    dag = bag.dags["train_pipeline"]
    assert isinstance(dag.timetable, (CronTriggerTimetable, CronDataIntervalTimetable))
    assert dag.timetable.expression == cron
    assert dag.catchup is False and dag.max_active_runs == 1
    assert f"`{setting.strip()}` (UTC)" in dag.doc_md
    # What the scheduler sees (the serialized DAG) fires on that cron: with catchup off its first run is the latest
    # tick, never a backlog from the start date.
    scheduler_dag = DagSerialization.deserialize_dag(DagSerialization.serialize_dag(dag))
    assert scheduler_dag.timetable.summary == cron
    before = datetime.datetime.now(datetime.UTC)
    info = scheduler_dag.timetable.next_dagrun_info(
        last_automated_data_interval=None,
        restriction=TimeRestriction(earliest=scheduler_dag.start_date, latest=None, catchup=False))
    after = datetime.datetime.now(datetime.UTC)
    latest_ticks = {croniter(cron, moment).get_prev(datetime.datetime) for moment in (before, after)}
    assert info.run_after in latest_ticks
    # Scheduled runs have no conf: the Param defaults are what they train, at `latest`.
    defaults = {name: dag.params[name] for name in ("source", "source_ref", "data", "data_ref", "hyperparams",
                                                    "no_cache")}
    assert defaults == {"source": "mnist", "source_ref": "latest", "data": "features", "data_ref": "latest",
                        "hyperparams": {}, "no_cache": False}


@pytest.mark.parametrize("setting", [None, "", "none", "None"])
def test_without_a_retrain_schedule_train_pipeline_is_unscheduled(monkeypatch, setting):
    bag = _parse(monkeypatch, **({} if setting is None else {"retrain_schedule": setting}))
    assert bag.import_errors == {}
    dag = bag.dags["train_pipeline"]
    assert dag.schedule is None and type(dag.timetable).__name__ == "NullTimetable"
    assert dag.max_active_runs != 1 and dag.catchup is False
    assert "Scheduled retraining** (`[trainyard] retrain_schedule`" in dag.doc_md and "off;" in dag.doc_md


@pytest.mark.parametrize("setting", ["every day", "61 * * * *", "@dailyy", "@once", "0 3 * *"])
def test_an_invalid_retrain_schedule_is_an_import_error_naming_the_setting(monkeypatch, setting):
    from operators.inprocess import load_dag
    from trainyard.errors import StepError

    bag = _parse(monkeypatch, retrain_schedule=setting)
    assert "train_pipeline" not in bag.dag_ids  # never silently unscheduled
    (error,) = bag.import_errors.values()
    last = error.strip().splitlines()[-1]
    assert last.startswith("trainyard.errors.ConfigError: [trainyard] retrain_schedule = ")
    assert repr(setting) in last and "TRAINYARD_RETRAIN_SCHEDULE" in last and "'@daily'" in last
    with pytest.raises(StepError, match="retrain_schedule"):  # what `trainyard deploy` reports
        load_dag("train_pipeline")


def test_retrain_source_and_data_choose_what_runs_without_conf_train(monkeypatch):
    bag = _parse(monkeypatch, retrain_schedule="@hourly", retrain_source="churn", retrain_data="churn-events")
    dag = bag.dags["train_pipeline"]
    assert (dag.params["source"], dag.params["data"]) == ("churn", "churn-events")
    assert "source `churn` and data `churn-events` at `latest`" in dag.doc_md

    monkeypatch.setenv("TRAINYARD_RETRAIN_SOURCE", "Churn Model")
    (error,) = DagBag(dag_folder=str(REPO / "dags" / "train_pipeline.py")).import_errors.values()
    assert "[trainyard] retrain_source = 'Churn Model' is not a repo name" in error
    assert "TRAINYARD_RETRAIN_SOURCE" in error


def test_other_pipelines_stay_unscheduled(monkeypatch):
    bag = _parse(monkeypatch, "lstm_pipeline.py", retrain_schedule="@daily", retrain_source="churn")
    dag = bag.dags["lstm_pipeline"]
    assert dag.schedule is None and dag.params["source"] == "lstm"


@contextlib.contextmanager
def scheduled_runs():
    """Make dag.test() create its run the way the scheduler does for a cron tick: run type `scheduled`, triggered
    by the timetable, no conf (dag.test() itself always makes a manual run)."""
    from airflow.models.dagrun import DagRun
    from airflow.serialization.definitions.dag import SerializedDAG
    from airflow.utils.types import DagRunTriggeredByType, DagRunType

    create = SerializedDAG.create_dagrun

    def create_scheduled(self, **kwargs):
        kwargs.update(run_type=DagRunType.SCHEDULED, triggered_by=DagRunTriggeredByType.TIMETABLE, conf=None,
                      triggering_user_name=None,
                      run_id=DagRun.generate_run_id(run_type=DagRunType.SCHEDULED,
                                                    logical_date=kwargs["logical_date"], run_after=kwargs["run_after"]))
        return create(self, **kwargs)

    with mock.patch.object(SerializedDAG, "create_dagrun", create_scheduled):
        yield


def _run_type(run_id: str) -> str:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        return str(session.query(DagRun).filter_by(dag_id="train_pipeline", run_id=run_id).one().run_type)


def _deploy_upload_only(capsys, data: str) -> dict:
    capsys.readouterr()
    assert main(["deploy", "-s", SRC, "-d", data, "--upload-only", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.e2e
def test_scheduled_runs_retrain_latest_and_skip_training_when_nothing_changed(airflow_db, tmp_path, monkeypatch,
                                                                              capsys):
    from operators.inprocess import run_pipeline

    uri = f"file://{tmp_path / 'store'}"
    monkeypatch.setenv("TRAINYARD_STORE", uri)
    monkeypatch.setenv("TRAINYARD_RETRAIN_SCHEDULE", "@daily")
    store = open_store(uri)
    # Two data commits, uploaded only (nothing runs): an older one with fewer rows, then the template's as `latest`.
    older = tmp_path / "data"
    shutil.copytree(DATA, older)
    training = older / "features/training/training.csv"
    training.write_text("".join(training.read_text().splitlines(keepends=True)[:400]))
    first_commit = _deploy_upload_only(capsys, str(older))
    deployed = _deploy_upload_only(capsys, DATA)
    assert deployed["data"] != first_commit["data"]

    def scheduled_run() -> dict:
        with scheduled_runs():
            run = run_pipeline("train_pipeline", {}, quiet=True)
        assert run["state"] == "success", run
        assert run["run_id"].startswith("scheduled__") and _run_type(run["run_id"]) == "scheduled"
        assert run["results"].parameters.inputs.params == {}  # no conf: no grid, params.json as it is
        # Still one registry version: the first run added it, the cache hit adds none.
        assert [v["version"] for v in store.get_json("registry/mnist.json")["versions"]] == ["1.0"]
        return run

    first = scheduled_run()
    (model,) = first["results"].models
    assert model.cached is False and model.metrics["accuracy_test"] >= 0.9
    assert list(store.backend.list(f"runs/train_pipeline/{first['run_id']}/trained/"))
    src, data = model.model_id.split(":")[0].split("_")
    assert deployed["source"].startswith(src) and deployed["data"].startswith(data)  # the latest commits

    # Nothing changed: a cache hit. Nothing is built or trained, and the model is the same.
    again = scheduled_run()
    assert again["results"].run_summary.cached is True
    assert [m.model_id for m in again["results"].models] == [model.model_id]
    assert all(m.cached for m in again["results"].models)
    assert not list(store.backend.list(f"runs/train_pipeline/{again['run_id']}/trained/"))
