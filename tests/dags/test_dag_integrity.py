"""Every DAG parses, is documented, has tags, retries and catchup=False; bad runner settings fail the parse."""

from __future__ import annotations

import copy

import pytest
from airflow.dag_processing.dagbag import DagBag

from tests.conftest import REPO


@pytest.fixture(scope="module")
def dagbag():
    return DagBag(dag_folder=str(REPO / "dags"))


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert "train_pipeline" in dagbag.dag_ids


def test_every_dag_follows_project_rules(dagbag):
    for dag_id, dag in dagbag.dags.items():
        assert dag.tags, f"{dag_id} has no tags"
        assert dag.catchup is False, f"{dag_id} must set catchup=False"
        assert dag.doc_md, f"{dag_id} has no doc_md"
        for task in dag.tasks:
            assert task.retries >= 1, f"{dag_id}.{task.task_id} has no retries"


def test_train_pipeline_inputs_are_typed_params(dagbag):
    params = dagbag.dags["train_pipeline"].params
    schema = {name: params.get_param(name).schema for name in params}
    assert schema["source_ref"]["pattern"] and schema["memory"]["pattern"]
    assert schema["gpu"]["type"] == "integer" and schema["gpu"]["minimum"] == 0
    assert schema["hyperparams"]["type"] == "object"


def test_kubernetes_runner_with_file_store_is_an_import_error(monkeypatch):
    monkeypatch.setenv("TRAINYARD_RUNNER", "kubernetes")
    monkeypatch.setenv("TRAINYARD_STORE", "file:///tmp/store")
    bag = DagBag(dag_folder=str(REPO / "dags" / "train_pipeline.py"))
    (error,) = bag.import_errors.values()
    assert "cannot use the local store" in error and "s3://" in error


def test_kubernetes_runner_builds_with_kaniko_and_trains_in_the_built_image(monkeypatch):
    monkeypatch.setenv("TRAINYARD_RUNNER", "kubernetes")
    monkeypatch.setenv("TRAINYARD_STORE", "s3://models/trainyard")
    bag = DagBag(dag_folder=str(REPO / "dags" / "train_pipeline.py"))
    assert bag.import_errors == {}
    dag = bag.dags["train_pipeline"]
    build, train = dag.get_task("build"), dag.get_task("train")
    assert type(build).__name__ == "KanikoBuildOperator"
    assert build.destination == "{{ ti.xcom_pull(task_ids='resolve')['image'] }}"
    assert train.image == "{{ ti.xcom_pull(task_ids='resolve')['image'] }}"
    assert train.cmds == ["python3", "-m", "training_images.train"]
    assert train.arguments[train.arguments.index("--params") + 1] == "{{ params.hyperparams | tojson }}"


@pytest.mark.parametrize(("conf", "field"), [({"memory": "2GB"}, "memory"), ({"source_ref": "x y"}, "source_ref"),
                                             ({"gpu": -1}, "gpu"), ({"hyperparams": [1, 2]}, "hyperparams")])
def test_bad_conf_is_rejected_by_the_param_schema(dagbag, conf, field):
    from airflow.sdk.exceptions import ParamValidationError

    params = copy.deepcopy(dagbag.dags["train_pipeline"].params)
    with pytest.raises(ParamValidationError, match=field):
        params.update(conf)  # what a trigger with conf does before any task runs
        params.validate()
