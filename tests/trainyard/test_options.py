"""One run-options model: deploy's flags, train_pipeline's Params, the remembered settings and the resolve step's
keys all come from trainyard.options, so an option added there appears everywhere at once."""

from __future__ import annotations

import json
from typing import Annotated

import pytest
import typer
import typer.main
from pydantic import Field, ValidationError

from trainyard import options as options_module
from trainyard import runs
from trainyard.errors import TrainyardError
from trainyard.options import REMEMBER, Flag, RunConf, RunInputs, RunOptions, param_specs


def _deploy_flags() -> dict[str, tuple[str, ...]]:
    """deploy's options as click builds them for --help: parameter name -> flags."""
    from trainyard.cli.app import app

    command = typer.main.get_command(app).commands["deploy"]
    return {p.name: tuple(p.opts) for p in command.params}


def test_deploy_has_one_flag_per_run_option_from_the_model():
    flags = _deploy_flags()
    for name in RunOptions.names():
        assert flags[name] == RunOptions.flag(name).names, name
    assert set(flags) - set(RunOptions.names()) == {  # deploy's own options, and the global ones
        "source", "data", "manifest", "data_repo", "parallelism", "allow_cpu_fallback", "local", "wait",
        "upload_only", "message", "global_store", "global_json"}


def test_train_pipeline_params_are_the_run_conf_fields_with_their_schema():
    from airflow.dag_processing.dagbag import DagBag

    from tests.conftest import REPO

    dag = DagBag(dag_folder=str(REPO / "dags" / "train_pipeline.py")).dags["train_pipeline"]
    specs = param_specs(RunConf)
    assert list(dag.params) == list(specs) == [*RunInputs.model_fields, *RunOptions.names()]
    for name, spec in specs.items():
        param = dag.params.get_param(name)
        assert param.description == spec["description"] and param.schema == spec["schema"], name
    assert dag.params.get_param("gpu").schema == {"type": ["null", "integer"], "minimum": 0, "maximum": 64}
    assert dag.params.get_param("source").schema["pattern"] == RunInputs.model_json_schema()["properties"][
        "source"]["pattern"]


def test_the_resolve_step_and_the_remembered_settings_use_the_model():
    from operators.pipeline import training_dag, training_tasks
    from operators.resolve import OPTIONS

    assert OPTIONS == RunOptions.names()
    assert runs.REMEMBERED == ("metric", "cpu", "memory", "gpu", "timeout") == RunOptions.remembered()
    with training_dag("options", doc_md="x", description="x", tags=["t"], source="mnist", data="features") as dag:
        training_tasks()
    rendered = dag.get_template_env().from_string(dag.get_task("resolve").options).render(
        params={name: dag.params[name] for name in dag.params})
    assert set(json.loads(rendered)) == {*RunOptions.names(), "declared"}


class _WithPriority(RunOptions):
    priority: Annotated[Annotated[int, Field(ge=0)] | None, Flag(("--priority",), "N"), REMEMBER] = Field(
        None, description="scheduling priority of each training task")


class _ConfWithPriority(_WithPriority, RunInputs):
    """train_pipeline's conf with the added option."""


def test_an_option_added_to_the_model_is_a_flag_a_param_a_resolve_key_and_remembered(monkeypatch):
    from operators import pipeline
    from operators.resolve import conf_json
    from trainyard.cli import deploy

    monkeypatch.setattr(deploy, "RunOptions", _WithPriority)
    monkeypatch.setattr(pipeline, "RunConf", _ConfWithPriority)

    def command(*, run_options: dict, local: bool = False) -> dict:
        return run_options

    app = typer.Typer()
    app.command()(deploy.with_run_options(command))
    cli = typer.main.get_command(app)
    flag = next(p for p in cli.params if p.name == "priority")
    assert flag.opts == ["--priority"] and flag.help == "scheduling priority of each training task"
    given = cli.main(["--priority", "3", "--cpu", "2", "--no-cache"], standalone_mode=False)
    assert given == {**{name: None for name in _WithPriority.names()}, "priority": 3, "cpu": "2",
                     "hyperparams": None, "no_cache": True, "major": False, "save_training_data": False}

    params = pipeline._run_params("mnist", "features", {})
    assert params["priority"].schema == {"type": ["null", "integer"], "minimum": 0}
    assert "'priority': params.priority" in conf_json(_WithPriority.names())
    assert "priority" in _WithPriority.remembered()
    assert _WithPriority.parse({"priority": 3}, _settings()).given()["priority"] == 3


def _settings():
    from trainyard import config

    return config.load()


@pytest.mark.parametrize(("values", "message"), [
    ({"timeout": 0}, "^--timeout must be at least 1, got 0$"),
    ({"gpu": -1}, "^invalid gpu -1: it cannot be negative"),
    ({"memory": "2GB"}, "^invalid memory '2GB'"),
    ({"metric": "accuracy:best"}, "^invalid metric 'accuracy:best'"),
    ({"hyperparams": {"C": 10}}, "^hyperparameter 'C' must be a list of values"),
    ({"hyperparams": {f"p{i}": list(range(10)) for i in range(4)}}, "10000 combinations .* above the cap of 256"),
    ({"priority": 1}, "^unknown run option\\(s\\) priority; known: hyperparams, metric, cpu"),
])
def test_options_are_checked_with_one_line_errors(values, message):
    with pytest.raises(TrainyardError, match=message) as raised:
        RunOptions.parse(values, _settings(), spell=lambda name: RunOptions.flag(name).long)
    assert raised.value.exit_code == 2 and "\n" not in str(raised.value)


def test_a_record_from_a_newer_trainyard_is_refused():
    assert RunOptions().schema_version == options_module.SCHEMA_VERSION == 1
    assert "schema_version" not in RunOptions().conf()  # a record field, not a run option
    with pytest.raises(ValidationError, match="schema_version"):
        RunOptions(schema_version=2)
