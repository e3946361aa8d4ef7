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
    assert {"train_pipeline", "lstm_pipeline"} <= set(dagbag.dag_ids)


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
    assert "integer" in schema["gpu"]["type"] and schema["gpu"]["minimum"] == 0
    assert schema["hyperparams"]["type"] == "object"
    assert schema["hyperparams"]["additionalProperties"]["type"] == "array"
    assert schema["metric"]["pattern"] and schema["no_cache"]["type"] == "boolean"


@pytest.mark.parametrize("dag_id", ["train_pipeline", "caption_pipeline", "predict"])
def test_every_conf_input_is_a_described_typed_param_for_the_trigger_form(dagbag, dag_id):
    dag = dagbag.dags[dag_id]
    params = dag.params
    assert params, f"{dag_id} has no Params"
    for name in params:
        param = params.get_param(name)
        schema = param.schema
        assert schema.get("type"), f"{dag_id}: param {name!r} has no type"
        assert param.description, f"{dag_id}: param {name!r} has no description"
        if schema["type"] == "string" or "string" in schema["type"]:
            assert schema.get("pattern") or schema.get("enum"), f"{dag_id}: string param {name!r} is unchecked"
    refs = {name: params[name] for name in params if name.endswith("_ref") or name == "model"}
    assert refs and set(refs.values()) == {"latest"}, refs
    # Conf reaches tasks only through Params (validated by the form and the REST API), never read raw.
    for task in dag.tasks:
        for field in task.template_fields:
            assert "dag_run.conf" not in repr(getattr(task, field, "")), f"{dag_id}.{task.task_id}.{field}"


def test_kubernetes_runner_with_file_store_is_an_import_error(monkeypatch):
    monkeypatch.setenv("TRAINYARD_RUNNER", "kubernetes")
    monkeypatch.setenv("TRAINYARD_STORE", "file:///tmp/store")
    bag = DagBag(dag_folder=str(REPO / "dags" / "train_pipeline.py"))
    (error,) = bag.import_errors.values()
    assert "cannot use the local store" in error and "s3://" in error


def test_kubernetes_runner_builds_with_buildah_and_trains_in_the_built_image(monkeypatch):
    monkeypatch.setenv("TRAINYARD_RUNNER", "kubernetes")
    monkeypatch.setenv("TRAINYARD_STORE", "s3://models/trainyard")
    bag = DagBag(dag_folder=str(REPO / "dags" / "train_pipeline.py"))
    assert bag.import_errors == {}
    dag = bag.dags["train_pipeline"]
    build, train = dag.get_task("build"), dag.get_task("train")
    assert type(build).__name__ == "ImageBuildOperator"
    plan = "ti.xcom_pull(task_ids='resolve', key='plan')"
    assert build.destination == f"{{{{ {plan}['image'] }}}}"
    # train is mapped over the planned combinations, one task each, at most `parallelism` at a time
    assert train.partial_kwargs["image"] == f"{{{{ {plan}['image'] }}}}"
    assert train.partial_kwargs["cmds"] == ["python3", "-m", "training_images.train"]
    assert train.partial_kwargs["max_active_tis_per_dagrun"] == 4
    assert train.map_index_template == "{{ task.combination['label'] }}"


@pytest.mark.parametrize(("conf", "field"), [({"memory": "2GB"}, "memory"), ({"source_ref": "x y"}, "source_ref"),
                                             ({"gpu": -1}, "gpu"), ({"hyperparams": [1, 2]}, "hyperparams"),
                                             ({"hyperparams": {"C": 10}}, "hyperparams"),
                                             ({"hyperparams": {"C": []}}, "hyperparams"),
                                             ({"hyperparams": {"C": [{"a": 1}]}}, "hyperparams"),
                                             ({"metric": "acc:best"}, "metric")])
def test_bad_conf_is_rejected_by_the_param_schema(dagbag, conf, field):
    from airflow.sdk.exceptions import ParamValidationError

    params = copy.deepcopy(dagbag.dags["train_pipeline"].params)
    with pytest.raises(ParamValidationError, match=field):
        params.update(conf)  # what a trigger with conf does before any task runs
        params.validate()
