"""Plan a training run without Airflow: pin the inputs, expand the grid, give each combination its model id and
decide which are cache hits. The DAG's resolve step and `trainyard deploy` both call plan_run, so the decision
"train this combination or reuse its model" lives here only."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Any

from trainyard import config, contract, registry, runs
from trainyard.bundles import static_params
from trainyard.errors import TrainyardError
from trainyard.grids import combination_label, expand_grid
from trainyard.k8s import built_image
from trainyard.options import RunOptions
from trainyard.records import RunPlan
from trainyard.resources import Resources
from trainyard.store.versioned import Commit, Store


@dataclasses.dataclass(frozen=True)
class PlannedRun:
    """A planned run: the plan to save, the combinations to train (unique, uncached; what the train step maps
    over), and the remembered options it was given now and those it took from the pipeline's memory."""

    plan: RunPlan
    to_train: list[dict[str, Any]]
    given: dict[str, Any]
    kept: dict[str, Any]
    source: Commit
    data: Commit

    @property
    def all_cached(self) -> bool:
        """Every combination's model already exists: nothing to build or train."""
        return bool(self.plan.combinations) and not self.to_train

    @property
    def cached(self) -> int:
        return len(self.plan.combinations) - len(self.to_train)

    def remember(self, store: Store) -> None:
        """Keep the options this run was given for the pipeline's next runs (kaos reset them on every deploy)."""
        if any(v is not None for v in self.given.values()):
            runs.remember_settings(store, self.plan.pipeline, self.source.repo, self.given)


def base_params(store: Store, source: Commit) -> dict:
    """The source bundle's static params.json files, merged the way the train step merges them."""
    return static_params(lambda name: store.read_entry(source.manifest[name])
                         if name in source.manifest else None)


def _sane(kept: dict, settings: config.Settings, pipeline: str, repo: str, warn: Callable[[str], None]) -> dict:
    """The remembered options that pass today's checks. One stored before the bounds existed (a 20-digit timeout,
    say) is ignored with a warning instead of failing, or crashing, every later run."""
    sane = {}
    for name, value in kept.items():
        try:
            RunOptions.parse({name: value}, settings, spell=lambda n: f"remembered {n}")
        except TrainyardError as exc:
            flag = RunOptions.flag(name).long if name in RunOptions.remembered() else name
            warn(f"warning: ignoring a remembered option of {pipeline} for {repo}: {exc}; deploy once with {flag} "
                 "to replace it")
            continue
        sane[name] = value
    return sane


def no_cache_from(options: RunOptions, cache: bool | str = True) -> bool:
    """Whether the run retrains every combination: the run asked (--no-cache) or the DAG turned caching off."""
    return options.no_cache or str(cache).strip().lower() in ("false", "0", "no")


def plan_run(store: Store, settings: config.Settings, *, pipeline: str, run_id: str, source: str, data: str,
             options: RunOptions, source_ref: str = "latest", data_ref: str = "latest",
             declared: Mapping[str, Any] | None = None, default_resources: Mapping[str, str] | None = None,
             cache: bool | str = True, started: float | None = None,
             warn: Callable[[str], None] = lambda _line: None) -> PlannedRun:
    """Plan one run of `pipeline`; nothing is written (save the plan with runs.save_plan, the options with
    PlannedRun.remember). Raises TrainyardError (one line) for inputs or options that cannot work.

    :param declared: values of hyperparameters the DAG declares as run params; each becomes a one-value grid entry
        unless the grid sweeps it
    :param default_resources: the pipeline's own cpu/memory defaults, used when neither the run nor the pipeline's
        memory gives one (before `[trainyard]` defaults)
    :param cache: the DAG's caching option; false retrains every run
    """
    started = time.time() if started is None else started
    grid = dict(options.hyperparams)
    for name, value in (declared or {}).items():
        if value is not None and name not in grid:
            grid[name] = [value]
    no_cache = no_cache_from(options, cache)
    defaults = dict(default_resources or {})
    combos = expand_grid(grid, cap=settings.combination_cap)
    source_commit = store.resolve(source, source_ref)
    data_commit = store.resolve(data, data_ref)
    given = options.given()
    # Only what this run does not give anew is read from memory (and checked: it may predate the bounds).
    kept = _sane({k: v for k, v in runs.remembered_settings(store, pipeline, source_commit.repo).items()
                  if given.get(k) is None}, settings, pipeline, source_commit.repo, warn)
    chosen = {k: given[k] if given[k] is not None else kept.get(k) for k in given}
    resources = Resources.parse(chosen["cpu"] or defaults.get("cpu") or settings.default_cpu,
                                chosen["memory"] or defaults.get("memory") or settings.default_memory,
                                chosen["gpu"] or 0, max_cpu=settings.max_cpu, max_memory=settings.max_memory,
                                max_gpu=settings.max_gpu)
    timeout = int(chosen["timeout"]) if chosen["timeout"] else None

    params = base_params(store, source_commit)
    planned, to_train, seen = [], [], set()
    for index, hyper in enumerate(combos):
        merged = {**params, **hyper}
        mid = contract.model_id(source_commit.id, data_commit.id, merged)
        label = combination_label(hyper)
        cached = not no_cache and registry.has_model(store, mid)
        planned.append({"index": index, "label": label, "hyper": hyper, "params": merged, "model_id": mid,
                        "cached": cached})
        if not cached and mid not in seen:
            to_train.append({"label": label, "hyper": hyper, "model_id": mid})
        seen.add(mid)
    plan = RunPlan.model_validate({
        "pipeline": pipeline, "run_id": run_id, "start_time": started,
        "source": f"{source_commit.repo}:{source_commit.id}", "data": f"{data_commit.repo}:{data_commit.id}",
        "name": source_commit.repo,
        "image": built_image(settings.registry, source_commit.repo, source_commit.id, settings.step_image),
        "resources": {"cpu": resources.cpu, "memory": resources.memory, "gpu": resources.gpu},
        "timeout": timeout, "metric": chosen["metric"], "grid": grid,
        "no_cache": no_cache, "major": options.major, "save_training_data": options.save_training_data,
        "runner": settings.runner, "combinations": planned,
    })
    return PlannedRun(plan=plan, to_train=to_train, given=given, kept=kept, source=source_commit, data=data_commit)
