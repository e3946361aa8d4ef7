"""lstm_pipeline, the Kubeflow example: typed hyperparameter params, per-step requests/limits, labels, cache off."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
from airflow.dag_processing.dagbag import DagBag

from tests.conftest import REPO

STEP = {"cpu": "0.5", "memory": "4000Mi"}


@pytest.fixture
def k8s_dag(monkeypatch):
    monkeypatch.setenv("TRAINYARD_RUNNER", "kubernetes")
    monkeypatch.setenv("TRAINYARD_STORE", "s3://models/trainyard")
    bag = DagBag(dag_folder=str(REPO / "dags" / "lstm_pipeline.py"))
    assert bag.import_errors == {}
    return bag.dags["lstm_pipeline"]


def _render(task, map_index=-1):
    ti = SimpleNamespace(dag_id=task.dag_id, task_id=task.task_id, map_index=map_index, try_number=1,
                         xcom_pull=lambda **kw: {"source": "lstm:abc", "data": "timeseries:def", "image": "r/lstm:abc",
                                                 "resources": {**STEP, "gpu": 0}, "timeout": None, "to_train": 1})
    context = {"ti": ti, "run_id": "manual__2026-11-22T10:00:00+00:00", "dag": task.dag, "task": task,
               "params": task.dag.params}
    task.render_template_fields(context)
    return task.build_pod_request_obj(context, dry_run=True)


def test_learning_rate_is_a_typed_param_for_the_trigger_form(k8s_dag):
    from airflow.sdk.exceptions import ParamValidationError

    schema = k8s_dag.params.get_param("learning_rate").schema
    assert schema["type"] == "number" and schema["exclusiveMinimum"] == 0
    for bad in ({"learning_rate": -0.1}, {"learning_rate": "fast"}, {"epochs": 0}):
        params = copy.deepcopy(k8s_dag.params)
        with pytest.raises(ParamValidationError):
            params.update(bad)
            params.validate()


def test_every_pod_step_carries_the_declared_requests_limits_label_and_cache_off(k8s_dag):
    from operators.train import TrainStepOperator

    train = k8s_dag.get_task("train")
    kwargs = {k: v for k, v in train.partial_kwargs.items() if k not in ("map_index_template",)}
    unmapped = TrainStepOperator(**kwargs, task_id="train_unmapped",
                                 combination={"label": "learning_rate=0.005", "hyper": {"learning_rate": 0.005},
                                              "model_id": "a_b:c"})
    unmapped.dag = k8s_dag
    for task in (k8s_dag.get_task("build"), unmapped, k8s_dag.get_task("register")):
        pod = _render(task)
        # A train pod's resources are its user container's (`train`); trainyard's own containers take little.
        container = next((c for c in pod.spec.containers if c.name == "train"), pod.spec.containers[0])
        assert container.resources.requests == STEP, task.task_id
        assert container.resources.limits == STEP, task.task_id
        assert pod.metadata.labels["trainyard.io/task-id"] == task.task_id
        assert task.use_cache() is False
    builder = _render(k8s_dag.get_task("build")).spec.containers[0]
    assert builder.args[builder.args.index("--cache") + 1] == "false"  # rebuilt even when the tag exists
    env = {e.name: e.value for e in _render(k8s_dag.get_task("register")).spec.containers[0].env}
    assert env["TRAINYARD_CACHE"] == "false"
    assert k8s_dag.get_task("resolve").cache is False  # the planner retrains instead of reusing models


def test_a_limit_below_the_request_is_a_clear_error(monkeypatch):
    import pendulum
    from airflow.sdk import DAG

    from operators import TrainyardStepOperator
    from operators.step import StepOptionError

    with DAG("limits", start_date=pendulum.datetime(2026, 1, 1), schedule=None):
        task = TrainyardStepOperator(task_id="train", step="train", memory="8Gi", memory_limit="4000Mi")
    with pytest.raises(StepOptionError, match=r"^step 'train': the request \(cpu 1, memory 8Gi\) is above its limit "
                                              r"\(cpu 1, memory 4000Mi\)"):
        task.check_options()


def test_unknown_step_options_fail_when_the_dag_is_parsed():
    from operators.pipeline import PipelineDeclarationError, training_pipeline

    with pytest.raises(PipelineDeclarationError, match="unknown step option.*gpus.*known: cpu"):
        training_pipeline("bad", doc_md="x", description="x", tags=["t"], step_options={"gpus": 1})


LSTM = REPO / "templates" / "lstm"


@pytest.mark.e2e
def test_the_kubeflow_lstm_example_end_to_end(airflow_db, tmp_path, capsys, monkeypatch):
    """A learning-rate sweep ranked by val_loss; a run with learning_rate from conf; cache off retrains."""
    import json

    from operators.inprocess import run_pipeline
    from tests.dags.test_train_pipeline import _deploy
    from trainyard.cli import main
    from trainyard.store import open_store

    uri = f"file://{tmp_path / 'store'}"
    code, sweep = _deploy(capsys, uri, LSTM / "model-train", LSTM / "data", "-h", '{"learning_rate": [0.01, 0.001]}')
    assert code == 0 and len(sweep["models"]) == 2
    assert main(["--store", uri, "info", "-i", "0", "--sort", "val_loss", "--json"]) == 0
    ranked = json.loads(capsys.readouterr().out)
    losses = [m["metrics"]["val_loss"] for m in ranked["models"]]
    assert ranked["direction"] == "min" and losses == sorted(losses)
    assert all(m["metrics"]["val_r2"] > 0.8 for m in ranked["models"])  # clearly learned (predicting the mean: 0)

    conf = {"learning_rate": 0.005, "epochs": 3}
    first = run_pipeline("lstm_pipeline", conf, store_uri=uri)
    assert first["state"] == "success"
    (model,) = first["results"].models
    assert model.params["learning_rate"] == 0.005 and model.metrics["learning_rate"] == 0.005
    assert first["results"].parameters.inputs.params["learning_rate"] == [0.005]
    again = run_pipeline("lstm_pipeline", conf, store_uri=uri)
    assert again["results"].models[0].model_id == model.model_id
    assert again["results"].models[0].cached is False  # the pipeline declares cache off: it trained again
    store = open_store(uri)
    assert list(store.backend.list(f"runs/lstm_pipeline/{again['run_id']}/trained/"))
