"""ResolveInputsOperator: pin a run to exact commits and plan its sweep: combinations, model ids, cache hits."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from functools import cached_property

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException

from operators.hooks import StoreHook
from trainyard import config, contract, registry, runs
from trainyard.bundles import static_params
from trainyard.errors import TrainyardError
from trainyard.grids import combination_label, expand_grid
from trainyard.k8s import built_image
from trainyard.options import RunOptions
from trainyard.resources import Resources
from trainyard.store.versioned import Commit, Store

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


def base_params(store: Store, source: Commit) -> dict:
    """The source bundle's static params.json files, merged the way the train step merges them."""
    return static_params(lambda name: store.get_blob_bytes(source.manifest[name]["sha256"])
                         if name in source.manifest else None)


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

    def _sane(self, kept: dict, settings: config.Settings, pipeline: str, repo: str) -> dict:
        """The remembered options that pass today's checks. One stored before the bounds existed (a 20-digit
        timeout, say) is ignored with a warning instead of failing, or crashing, every later run."""
        sane = {}
        for name, value in kept.items():
            try:
                RunOptions.parse({name: value}, settings, spell=lambda n: f"remembered {n}")
            except TrainyardError as exc:
                flag = RunOptions.flag(name).long if name in RunOptions.remembered() else name
                self.log.warning("warning: ignoring a remembered option of %s for %s: %s; deploy once with %s to "
                                 "replace it", pipeline, repo, exc, flag)
                continue
            sane[name] = value
        return sane

    def execute(self, context) -> dict:
        started = time.time()
        settings = self.hook.settings  # the settings the store was opened with, read once
        options, declared = self._options(settings)
        store = self.hook.get_conn()
        pipeline, run_id = context["dag"].dag_id, context["run_id"]
        grid = dict(options.hyperparams)
        for name, value in declared.items():
            if value is not None and name not in grid:
                grid[name] = [value]
        no_cache = options.no_cache or str(self.cache).strip().lower() in ("false", "0", "no")
        try:
            combos = expand_grid(grid, cap=settings.combination_cap)
            source = store.resolve(self.source, self.source_ref)
            data = store.resolve(self.data, self.data_ref)
            given = options.given()
            # Only what this run does not give anew is read from memory (and checked: it may predate the bounds).
            kept = self._sane({k: v for k, v in runs.remembered_settings(store, pipeline, source.repo).items()
                               if given.get(k) is None}, settings, pipeline, source.repo)
            chosen = {k: given[k] if given[k] is not None else kept.get(k) for k in given}
            resources = Resources.parse(chosen["cpu"] or self.default_resources.get("cpu") or settings.default_cpu,
                                        chosen["memory"] or self.default_resources.get("memory")
                                        or settings.default_memory, chosen["gpu"] or 0,
                                        max_cpu=settings.max_cpu, max_memory=settings.max_memory,
                                        max_gpu=settings.max_gpu)
            timeout = int(chosen["timeout"]) if chosen["timeout"] else None
        except TrainyardError as exc:
            raise PlanError(str(exc)) from None
        self.log.info("source %s (%s) data %s (%s)", source.ref, source.message, data.ref, data.message)
        if any(v is not None for v in given.values()):
            runs.remember_settings(store, pipeline, source.repo, given)
        self.log.info("resources cpu=%s memory=%s gpu=%s timeout=%s (given now: %s; remembered: %s)",
                      resources.cpu, resources.memory, resources.gpu, timeout,
                      {k: v for k, v in given.items() if v is not None}, kept)

        params = base_params(store, source)
        planned, to_train, seen = [], [], set()
        for index, hyper in enumerate(combos):
            merged = {**params, **hyper}
            mid = contract.model_id(source.id, data.id, merged)
            label = combination_label(hyper)
            cached = not no_cache and registry.has_model(store, mid)
            planned.append({"index": index, "label": label, "hyper": hyper, "params": merged, "model_id": mid,
                            "cached": cached})
            if cached:
                self.log.info("cache hit: model %s (%s) is already trained; not training it again", mid, label)
            elif mid not in seen:
                to_train.append({"label": label, "hyper": hyper, "model_id": mid})
            seen.add(mid)
        self.log.info("%s combination(s): %s to train, %s cached", len(planned), len(to_train),
                      len(planned) - len(to_train))
        plan = {
            "pipeline": pipeline, "run_id": run_id, "start_time": started,
            "source": f"{source.repo}:{source.id}", "data": f"{data.repo}:{data.id}", "name": source.repo,
            "image": built_image(settings.registry, source.repo, source.id, settings.step_image),
            "resources": {"cpu": resources.cpu, "memory": resources.memory, "gpu": resources.gpu},
            "timeout": timeout, "metric": chosen["metric"], "grid": grid,
            "no_cache": no_cache, "major": options.major, "save_training_data": options.save_training_data,
            "runner": settings.runner, "combinations": planned,
        }
        runs.save_plan(store, plan)
        summary = {k: plan[k] for k in ("source", "data", "name", "image", "resources", "timeout", "metric")}
        context["ti"].xcom_push(key="plan", value=summary | {
            "source_short": source.ref, "data_short": data.ref, "to_train": len(to_train),
            "cached": len(planned) - len(to_train)})
        # The return value is what the train step maps over (Airflow maps only over return values).
        return to_train
