"""ResolveInputsOperator: pin a run to exact commits and plan its sweep: combinations, model ids, cache hits."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from functools import cached_property

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException

from operators.hooks import StoreHook
from trainyard import config, runs
from trainyard.errors import TrainyardError
from trainyard.options import RunOptions
from trainyard.plan import plan_run

# The run options the step reads from its run's Params (trainyard.options.RunOptions defines them).
OPTIONS = RunOptions.names()


class PlanError(AirflowException):
    """The run's inputs or options are invalid; nothing was trained or stored."""


def conf_json(names: Sequence[str] = OPTIONS, declared: Sequence[str] = ()) -> str:
    """A template that renders the named run params as one JSON object (so None and booleans survive).

    `declared` hyperparameters (typed run params of their own) are gathered under the key "declared".
    """
    items = [f"'{n}': params.{n}" for n in names]
    items.append("'declared': {" + ", ".join(f"'{n}': params.{n}" for n in declared) + "}")
    return "{{ {" + ", ".join(items) + "} | tojson }}"


class ResolveInputsOperator(BaseOperator):
    """
    Pin the run's source and data refs to commit ids, expand the hyperparameter grid and plan what to train.

    Each combination's params are merged over the bundle's params.json and give a deterministic model id; a model
    already registered is a cache hit and is not trained again (unless `no_cache`). Resources and the metric given
    this time are remembered for the pipeline; those not given come from what it remembered, then from config.
    The plan goes to the store (the register step reads it), its summary to the XCom `plan`, and the combinations
    to train are the return value, which the train step maps over.

    :param options: JSON object of the run's options (templated), see `OPTIONS`, plus "declared": the values of
        hyperparameters the DAG declares as run params; each becomes a one-value grid entry unless the grid sweeps it
    :param default_resources: the pipeline's own cpu/memory defaults, used when neither the run nor the pipeline's
        memory gives one (before `[trainyard]` defaults)
    :param cache: whether the train step may reuse models already trained (templated); false retrains every run
    """

    template_fields: Sequence[str] = ("source", "source_ref", "data", "data_ref", "options", "cache")

    def __init__(self, *, source: str, data: str, source_ref: str = "latest", data_ref: str = "latest",
                 options: str = "{}", default_resources: dict[str, str] | None = None, cache: bool | str = True,
                 store_uri: str | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.default_resources = dict(default_resources or {})
        self.cache = cache
        self.source = source
        self.source_ref = source_ref
        self.data = data
        self.data_ref = data_ref
        self.options = options
        self.store_uri = store_uri

    @cached_property
    def hook(self) -> StoreHook:
        return StoreHook(store_uri=self.store_uri)

    def _options(self, settings: config.Settings) -> tuple[RunOptions, dict]:
        """The run's options, checked as RunOptions, and the values of the hyperparameters the DAG declares."""
        try:
            options = json.loads(self.options) if isinstance(self.options, str) else dict(self.options)
        except ValueError as exc:
            raise PlanError(f"run options are not valid JSON: {exc}") from None
        declared = options.pop("declared", None) or {}
        try:
            return RunOptions.parse(options, settings), declared
        except TrainyardError as exc:
            raise PlanError(str(exc)) from None

    def execute(self, context) -> dict:
        started = time.time()
        settings = self.hook.settings  # the settings the store was opened with, read once
        options, declared = self._options(settings)
        store = self.hook.get_conn()
        pipeline, run_id = context["dag"].dag_id, context["run_id"]
        try:
            # The same planner `trainyard deploy` runs before it decides whether Airflow needs to start at all.
            planned = plan_run(store, settings, pipeline=pipeline, run_id=run_id, source=self.source,
                               source_ref=self.source_ref, data=self.data, data_ref=self.data_ref, options=options,
                               declared=declared, default_resources=self.default_resources, cache=self.cache,
                               started=started, warn=lambda line: self.log.warning("%s", line))
        except TrainyardError as exc:
            raise PlanError(str(exc)) from None
        plan, source, data = planned.plan, planned.source, planned.data
        self.log.info("source %s (%s) data %s (%s)", source.ref, source.message, data.ref, data.message)
        planned.remember(store)
        self.log.info("resources cpu=%s memory=%s gpu=%s timeout=%s (given now: %s; remembered: %s)",
                      plan.resources.cpu, plan.resources.memory, plan.resources.gpu, plan.timeout,
                      {k: v for k, v in planned.given.items() if v is not None}, planned.kept)
        for combo in plan.combinations:
            if combo.cached:
                self.log.info("cache hit: model %s (%s) is already trained; not training it again", combo.model_id,
                              combo.label)
        self.log.info("%s combination(s): %s to train, %s cached", len(plan.combinations), len(planned.to_train),
                      planned.cached)
        runs.save_plan(store, plan)
        summary = plan.model_dump(mode="json", include={"source", "data", "name", "image", "resources", "timeout",
                                                        "metric"})
        context["ti"].xcom_push(key="plan", value=summary | {
            "source_short": source.ref, "data_short": data.ref, "to_train": len(planned.to_train),
            "cached": planned.cached})
        # The return value is what the train step maps over (Airflow maps only over return values).
        return planned.to_train
