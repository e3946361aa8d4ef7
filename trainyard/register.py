"""Registering a run: publish every trained model, pick the best, add a registry version, write `_results.json`.

The register step's body, in the core so the CLI can record a run whose every model is cached without starting
Airflow or a step process; `training_images/register` is its argv and result wrapper.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from collections.abc import Callable

from trainyard import contract, registry, runs
from trainyard.errors import NotFound
from trainyard.metrics import available, default_metric, parse_spec, rank
from trainyard.records import (
    AirflowTask,
    ArtifactsData,
    BestModel,
    CommitInfo,
    Failure,
    Lineage,
    ModelRecord,
    ParentVersion,
    RegistryRef,
    RegistryVersion,
    RunEnv,
    RunModel,
    RunOutputs,
    RunParameters,
    RunPlan,
    RunRecord,
    RunRecordInputs,
    RunSummary,
    TrainedModel,
    TrainingData,
)
from trainyard.store import keys
from trainyard.store.versioned import Store

Say = Callable[[str], None]


def _quiet(_line: str) -> None:
    """Say nothing."""


@dataclasses.dataclass
class Registered:
    """What registering a run did: its record, and the registry version and failures it reported."""

    results: RunRecord
    version: str | None
    failures: list[Failure]
    models: list[RunModel]


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds")


def _lineage(store: Store, plan: RunPlan, trained: TrainedModel, parent: RegistryVersion | None) -> Lineage:
    def commit(ref: str) -> CommitInfo:
        repo, _, cid = ref.partition(":")
        c = store.get_commit(repo, cid)
        return CommitInfo(repo=c.repo, commit=c.id, author=c.author, time=c.time, message=c.message)

    return Lineage(
        source=commit(plan.source), data=commit(plan.data), params_hash=contract.params_hash(trained.params),
        env=trained.env,
        airflow=AirflowTask(dag_id=plan.pipeline, run_id=plan.run_id, task_id=trained.task_id,
                            map_index=trained.map_index, label=trained.label),
        # The registry version that was current when this model was registered: what it improves on.
        parent=parent and ParentVersion(name=plan.name, version=parent.version, model_id=parent.model_id),
    )


def _publish(store: Store, plan: RunPlan, trained: TrainedModel, parent: RegistryVersion | None,
             say: Say) -> ModelRecord:
    """The model record (outputs were uploaded by the train step); published last, never overwritten."""
    record = ModelRecord(
        model_id=trained.model_id, name=plan.name, metrics=trained.metrics, params=trained.params,
        outputs=trained.outputs, log=trained.log, env=trained.env, artifacts=trained.artifacts,
        train_seconds=trained.train_seconds, env_parameters=trained.env_parameters,
        lineage=_lineage(store, plan, trained, parent), registered_at=time.time(),
    )
    record, created = registry.publish_model(store, record)
    say(f"model {trained.model_id} ({trained.label}) "
        f"{'registered' if created else 'already registered (same inputs)'}")
    return record


def _models(store: Store, plan: RunPlan, parent: RegistryVersion | None,
            say: Say) -> tuple[list[RunModel], list[Failure]]:
    """Each planned combination's model (trained now, or a planned cache hit), or why it has none."""
    models, failures, seen = [], [], set()
    # The train task's map index of each combination the resolve step sent to train (its order: uncached, unique).
    train_index: dict[str, int] = {}
    for combo in plan.combinations:
        if not combo.cached and combo.model_id not in train_index:
            train_index[combo.model_id] = len(train_index)
    for combo in plan.combinations:
        mid = combo.model_id
        if mid in seen:  # two combinations that merge to the same params are one model
            continue
        seen.add(mid)
        trained = None if combo.cached else runs.load_trained(store, plan.pipeline, plan.run_id, mid)
        cached = combo.cached
        if trained is not None:
            record = _publish(store, plan, trained, parent, say)
            winner = record.lineage.airflow.run_id
            if winner != plan.run_id and not plan.no_cache:
                # An identical run trained the same model at the same time and published it first: the model this
                # run reports is that run's, so it is recorded as reused from it, not as a second training.
                cached = True
                say(f"model {mid} ({combo.label}) was trained at the same time by run {winner}, which registered "
                    "it first; this run reuses it")
        elif combo.cached and registry.has_model(store, mid):
            # Only a planned cache hit reuses the model: a combination this run was to train (no_cache, or trained
            # since by another run) and did not is a failure, even when an older model with that id exists.
            record = registry.load_model(store, mid)
            say(f"model {mid} ({combo.label}) reused from cache, trained in run {record.lineage.airflow.run_id}")
        else:
            failure = {"model_id": mid, "label": combo.label, "error": "the train task did not run or left no result"}
            stored = runs.load_failure(store, plan.pipeline, plan.run_id, mid)
            if stored is not None:  # what the train step (or the operator, when no pod ran) recorded
                failure.update(stored.model_dump(exclude={"schema_version"}, exclude_unset=True))
            elif last := runs.last_error_line(store, plan.pipeline, plan.run_id, "train", train_index.get(mid)):
                # The step died before it could record why (killed, a crash): its log's last line is the cause.
                failure["error"] = f"the train task left no result; its log ends: {last}"
            failure["error"] = runs.failure_line(failure)
            failures.append(Failure.model_validate(failure))
            continue
        models.append(RunModel(model_id=mid, label=combo.label, hyper=combo.hyper, cached=cached,
                               metrics=record.metrics, params=record.params, artifacts=record.artifacts,
                               train_seconds=record.train_seconds, env_parameters=record.env_parameters))
    return models, failures


def _best(plan: RunPlan, models: list[RunModel], warn: Say) -> tuple[RunModel | None, str | None]:
    """The run's best model by its metric (the first model when no model reports it), and the metric spec."""
    metric = plan.metric or (default_metric(models[0].metrics) if models else None)
    spec, best = None, None
    if metric and models:
        name, direction = parse_spec(metric)
        spec = f"{name}:{direction}"
        if name in available(models):
            best = rank(models, spec)[0][0]
        else:
            warn(f"warning: no model reported the metric {name!r}; available: {', '.join(available(models))}")
    best = best or (models[0] if models else None)
    for model in models:
        model.best = best is not None and model.model_id == best.model_id
    return best, spec


def register_run(store: Store, plan: RunPlan, *, say: Say = _quiet, warn: Say = _quiet) -> Registered:
    """Register a run from its plan (and its train steps' records): the register step's whole job."""
    try:
        parent = registry.find_version(store, plan.name, "latest")
    except NotFound:
        parent = None
    models, failures = _models(store, plan, parent, say)
    best, spec = _best(plan, models, warn)

    current = parent and parent.version  # the package version this run started from (AI Center's inputs)
    version = None
    if best is not None:
        entry, created = registry.add_version(
            store, plan.name, model_id=best.model_id, metrics=best.metrics, run_id=plan.run_id,
            pipeline=plan.pipeline, metric=spec, models=[m.model_id for m in models], major=plan.major)
        version = entry.version
        say(f"registry {plan.name} {'version ' + version + ' added' if created else 'unchanged at ' + version}"
            f": best {best.model_id} ({best.label})"
            + (f" {spec} = {best.metrics.get(spec.split(':')[0])}" if spec else ""))

    ended = time.time()
    state = "failed" if not models else "partial" if failures else "success"
    score = best.metrics.get(spec.split(":")[0]) if best and spec else None
    # UiPath AI Center's _results.json (parameters: pipeline, inputs with package, version, train_data and gpu,
    # env; run_summary: execution_time, start_at, end_at, outputs with train_data, artifacts_data, package and the
    # new version), plus what a sweep adds: every model, the best by the metric, resources and failures.
    results = RunRecord(
        parameters=RunParameters(
            pipeline=plan.pipeline, pipeline_name=plan.pipeline, run_id=plan.run_id,
            inputs=RunRecordInputs(package=plan.name, version=current, train_data=plan.data, source=plan.source,
                                   data=plan.data, params=plan.grid, gpu=plan.resources.gpu, cpu=plan.resources.cpu,
                                   memory=plan.resources.memory, timeout=plan.timeout),
            env=RunEnv(runner=plan.runner, image=plan.image, no_cache=plan.no_cache,
                       save_training_data=plan.save_training_data, artifacts_directory="artifacts",
                       # the variables train.py saw (AI Center packages get their params as environment variables)
                       parameters=best.env_parameters if best else {}),
        ),
        run_summary=RunSummary(
            state=state, start_time=plan.start_time, end_time=ended, start_at=plan.start_time, end_at=ended,
            start=_iso(plan.start_time), end=_iso(ended), execution_time=round(ended - plan.start_time, 3),
            cached=bool(models) and all(m.cached for m in models), metric=spec, score=score,
            outputs=RunOutputs(
                package=plan.name, version=version,
                # --save-training-data keeps the exact data commit (immutable, so a reference is the snapshot)
                train_data=plan.data if plan.save_training_data else None,
                artifacts_data=best and ArtifactsData(model_id=best.model_id, paths=best.artifacts),
                model_ids=[m.model_id for m in models],
                best=best and BestModel(model_id=best.model_id, label=best.label, value=score),
                registry=version and RegistryRef(name=plan.name, version=version),
                artifacts={m.model_id: m.artifacts for m in models if m.artifacts},
                failures=failures,
            ),
        ),
        models=models,
        # A commit reference pins the exact bytes: commits and blobs are immutable, so no copy is needed.
        training_data=TrainingData(source=plan.source, data=plan.data) if plan.save_training_data else None,
    )
    runs.save_results(store, results)
    return Registered(results=results, version=version, failures=failures, models=models)


# -- a run whose every model is cached, recorded without Airflow (`trainyard deploy`) --------------------------------
CACHED_RUN_PREFIX = "cached__"
# The register step's task id and map index in the log key: the same place a pipeline run's register log lives.
REGISTER_TASK = "register"


def cached_run_id(now: dt.datetime | None = None) -> str:
    """A run id for a run recorded without Airflow, shaped like Airflow's manual run ids (it sorts with them)."""
    now = now or dt.datetime.now(dt.UTC)
    return f"{CACHED_RUN_PREFIX}{now.isoformat()}"


def record_cached_run(store: Store, plan: RunPlan) -> RunRecord:
    """Record a run whose every combination is a cache hit without starting a pipeline: save its plan and register
    it here, as the pipeline's register step would (the same function); what it says is kept as the run's register
    log."""
    runs.save_plan(store, plan)
    lines: list[str] = []
    registered = register_run(store, plan, say=lines.append, warn=lines.append)
    store.put_bytes(keys.log(plan.pipeline, plan.run_id, REGISTER_TASK, -1, 1),
                    "".join(line + "\n" for line in lines).encode())
    return registered.results
