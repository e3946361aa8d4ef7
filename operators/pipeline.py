"""The training pipeline's wiring, shared by the DAG files: resolve -> build -> train (mapped) -> register."""

from __future__ import annotations

from typing import Any

import pendulum
from airflow.sdk import DAG, CronTriggerTimetable, Param
from airflow.sdk.exceptions import AirflowTimetableInvalid

from operators.build import build_step
from operators.resolve import OPTIONS, ResolveInputsOperator, conf_json
from operators.step import TrainyardStepOperator
from operators.train import train_step
from trainyard import config
from trainyard.errors import ConfigError
from trainyard.options import RunConf, param_specs
from trainyard.store.versioned import REPO_NAME

PLAN = "ti.xcom_pull(task_ids='resolve', key='plan')"
# Options a DAG may declare for its pod steps (build, train, register); anything else is a mistake.
STEP_OPTIONS = ("cpu", "memory", "cpu_limit", "memory_limit", "cache", "labels", "retries")

PIPELINE_DOC = """
`hyperparams` is a grid: every value is a list, and training is mapped over its cartesian product (one task per
combination, labelled like `kernel=poly`). Models already trained from the same source, data and params are cache
hits and are not trained again unless `no_cache` is set. `cpu`, `memory`, `gpu`, `timeout` and `metric` left empty
use what this pipeline remembered from its last run for the same source, then the DAG's or `[trainyard]` defaults.
Every input is a Param, so the web UI's trigger form works. Conf never chooses the image, namespace or volumes,
and reaches steps as separate argv items, never through a shell or a template.
"""

RETRAIN_DOC = """
**Scheduled retraining** (`[trainyard] retrain_schedule`, env `TRAINYARD_RETRAIN_SCHEDULE`): {state}. A scheduled
run has no conf, so it trains the Param defaults: source `{source}` and data `{data}` at `latest` (set
`retrain_source` / `retrain_data` to retrain other repos), with params.json's hyperparameters and the resources and
metric this pipeline remembered. When neither repo has a new commit every model is a cache hit: nothing is built or
trained and no registry version is added. At most one run is active at a time, and missed intervals are not caught up.
"""


def dag_defaults(retries: int | None = None) -> dict[str, Any]:
    """What every trainyard DAG shares: a fixed start, no catchup, retries (default `[trainyard] default_retries`)
    with a short delay."""
    if retries is None:
        retries = config.load().default_retries
    return {"start_date": pendulum.datetime(2026, 1, 1, tz="UTC"), "catchup": False,
            "default_args": {"retries": retries, "retry_delay": pendulum.duration(seconds=5)}}


class PipelineDeclarationError(ValueError):
    """A DAG file declared pipeline options that cannot work; raised when the DAG is parsed."""


def _run_params(source: str, data: str, hyperparameters: dict[str, Param], metric: str | None = None
                ) -> dict[str, Param]:
    """One Param per field of the run's conf (trainyard.options.RunConf: its JSON schema and description), with
    this DAG's source, data and metric as defaults, then the hyperparameters the DAG declares itself."""
    defaults = {"source": source, "data": data, "metric": metric}
    params = {name: Param(defaults[name] if name in defaults else spec["default"], description=spec["description"],
                          **spec["schema"])
              for name, spec in param_specs(RunConf).items()}
    clash = set(hyperparameters) & set(params)
    if clash:
        raise PipelineDeclarationError(f"hyperparameter(s) {', '.join(sorted(clash))} clash with run options; "
                                       "rename them")
    return {**params, **hyperparameters}


def training_pipeline(dag_id: str, *, doc_md: str, description: str, tags: list[str], source: str = "mnist",
                      data: str = "features", hyperparameters: dict[str, Param] | None = None,
                      step_options: dict[str, Any] | None = None, schedule=None,
                      scheduled_retraining: bool = False) -> DAG:
    """
    Build a training pipeline DAG.

    :param hyperparameters: hyperparameters declared as run params (typed, validated by the trigger form); a value
        given for one becomes a one-value grid entry unless `hyperparams` already sweeps it
    :param step_options: defaults for every pod step: cpu/memory requests and limits, cache, labels, retries
    :param scheduled_retraining: take the schedule, and the repos that runs without conf train, from the
        `[trainyard] retrain_schedule`, `retrain_source` and `retrain_data` settings (instead of `schedule`)
    """
    with training_dag(dag_id, doc_md=doc_md, description=description, tags=tags, source=source, data=data,
                      hyperparameters=hyperparameters, step_options=step_options, schedule=schedule,
                      scheduled_retraining=scheduled_retraining) as dag:
        training_tasks(hyperparameters=hyperparameters, step_options=step_options)
    return dag


def training_dag(dag_id: str, *, doc_md: str, description: str, tags: list[str], source: str, data: str,
                 hyperparameters: dict[str, Param] | None = None, step_options: dict[str, Any] | None = None,
                 schedule=None, extra_params: dict[str, Param] | None = None, metric: str | None = None,
                 scheduled_retraining: bool = False) -> DAG:
    """The DAG object of a training pipeline, with its run params (metric: the default metric that picks the
    best model); add tasks inside `with`."""
    options = _checked_options(dag_id, step_options)
    config.load().checked()  # a runner and store that cannot work together fail the DAG's parse
    if scheduled_retraining:
        if schedule is not None:
            raise PipelineDeclarationError(f"{dag_id}: give either schedule or scheduled_retraining, not both")
        schedule, source, data = retraining(source, data)
        doc_md += RETRAIN_DOC.format(source=source, data=data, state=f"`{schedule}` (UTC)" if schedule else
                                     "off; set it to a cron expression or a preset such as `@daily` to turn it on")
    params = _run_params(source, data, dict(hyperparameters or {}), metric)
    clash = set(extra_params or {}) & set(params)
    if clash:
        raise PipelineDeclarationError(f"{dag_id}: param(s) {', '.join(sorted(clash))} clash with run options")
    # Scheduled retraining runs one run at a time: a slow run is not overtaken by the next tick of the schedule.
    scheduled = {"max_active_runs": 1} if scheduled_retraining and schedule is not None else {}
    return DAG(
        dag_id=dag_id, description=description, doc_md=doc_md + PIPELINE_DOC, schedule=schedule, tags=tags,
        params={**params, **(extra_params or {})}, **dag_defaults(options.get("retries")), **scheduled,
    )


def retraining(source: str, data: str) -> tuple[str | None, str, str]:
    """The retraining schedule (None: off) and the source and data repos that runs without conf train, from the
    `[trainyard] retrain_*` settings; a bad value is a ConfigError naming the setting, raised when the DAG is parsed
    (Airflow's own error for a bad cron names neither the setting nor the fix)."""
    settings = config.load()
    schedule = settings.retrain_schedule.strip()
    if schedule.lower() in ("", "none"):
        schedule = None
    else:
        try:
            CronTriggerTimetable(schedule, timezone="UTC").validate()
        except AirflowTimetableInvalid as exc:
            raise ConfigError(
                f"[trainyard] retrain_schedule = {settings.retrain_schedule!r} is not a cron expression or preset "
                f"({exc}); set TRAINYARD_RETRAIN_SCHEDULE (or retrain_schedule in airflow.cfg's [trainyard]) to e.g. "
                "'0 3 * * *' or '@daily', or leave it empty for no schedule"
            ) from None
    for name in ("retrain_source", "retrain_data"):
        value = getattr(settings, name)
        if value and not REPO_NAME.fullmatch(value):
            raise ConfigError(f"[trainyard] {name} = {value!r} is not a repo name (lowercase letters, digits, '.', "
                              f"'_', '-'); set TRAINYARD_{name.upper()} to the name of a deployed bundle, or leave "
                              "it empty for the DAG's default")
    return schedule, settings.retrain_source or source, settings.retrain_data or data


def _checked_options(dag_id: str, step_options: dict[str, Any] | None) -> dict[str, Any]:
    options = dict(step_options or {})
    unknown = set(options) - set(STEP_OPTIONS)
    if unknown:
        raise PipelineDeclarationError(f"{dag_id}: unknown step option(s) {', '.join(sorted(unknown))}; "
                                       f"known: {', '.join(STEP_OPTIONS)}")
    return options


def training_tasks(*, hyperparameters: dict[str, Param] | None = None,
                   step_options: dict[str, Any] | None = None) -> tuple[ResolveInputsOperator, TrainyardStepOperator]:
    """resolve -> build -> train (mapped) -> register, in the current DAG; returns (first, last) for chaining."""
    options = dict(step_options or {})
    limits = {k: options[k] for k in ("cpu_limit", "memory_limit") if k in options}
    shared = {k: options[k] for k in ("cache", "labels", "retries") if k in options}
    defaults = {k: options[k] for k in ("cpu", "memory") if k in options}
    resolve = ResolveInputsOperator(
        task_id="resolve",
        source="{{ params.source }}", source_ref="{{ params.source_ref }}",
        data="{{ params.data }}", data_ref="{{ params.data_ref }}",
        options=conf_json(OPTIONS, declared=list(hyperparameters or {})), default_resources=defaults,
        cache=options.get("cache", True),
    )
    build = build_step(task_id="build", source=f"{{{{ {PLAN}['source'] }}}}", image=f"{{{{ {PLAN}['image'] }}}}",
                       skip_reason=f"{{{{ '' if {PLAN}['to_train'] else 'every model is cached: nothing to build' }}}}",
                       **defaults, **limits, **shared)
    train = train_step(
        task_id="train",
        source=f"{{{{ {PLAN}['source'] }}}}", data=f"{{{{ {PLAN}['data'] }}}}", image=f"{{{{ {PLAN}['image'] }}}}",
        cpu=f"{{{{ {PLAN}['resources']['cpu'] }}}}", memory=f"{{{{ {PLAN}['resources']['memory'] }}}}",
        gpu=f"{{{{ {PLAN}['resources']['gpu'] }}}}", timeout=f"{{{{ {PLAN}['timeout'] or '' }}}}",
        combinations=resolve.output, **limits, **shared,
    )
    # all_done: one failed combination must not stop the others from being registered and reported.
    register = TrainyardStepOperator(task_id="register", step="register", trigger_rule="all_done",
                                     arguments=["--pipeline", "{{ dag.dag_id }}"],
                                     **{"cpu": "0.25", "memory": "256Mi", **defaults, **limits, **shared})
    resolve >> build >> train >> register
    return resolve, register
