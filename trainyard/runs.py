"""Run records: the plan a run trains, per-combination outcomes, `_results.json`, step logs, settings per pipeline."""

from __future__ import annotations

from typing import Any

from trainyard.errors import NotFound
from trainyard.options import RunOptions
from trainyard.records import RunPlan, RunRecord, TrainedModel, TrainFailure
from trainyard.store import keys
from trainyard.store.versioned import Store

# Resources and options a pipeline keeps between deploys until the user changes them (kaos reset them each time).
REMEMBERED = RunOptions.remembered()


# -- the plan (resolve step) and each combination's outcome (train step) -------------------------------------------
def save_plan(store: Store, plan: RunPlan | dict[str, Any]) -> RunPlan:
    """Write the plan the run trains; a dict is checked against RunPlan first."""
    plan = plan if isinstance(plan, RunPlan) else RunPlan.model_validate(plan)
    store.put_record(keys.run_plan(plan.pipeline, plan.run_id), plan)
    return plan


def load_plan(store: Store, pipeline: str, run_id: str) -> RunPlan:
    """The run's plan; NotFound when the resolve step did not finish."""
    return store.get_record(keys.run_plan(pipeline, run_id), RunPlan)


def has_plan(store: Store, pipeline: str, run_id: str) -> bool:
    return store.exists(keys.run_plan(pipeline, run_id))


def save_trained(store: Store, pipeline: str, run_id: str, trained: TrainedModel) -> None:
    """Outputs are uploaded; this record lets the register step publish the model even if XComs are lost."""
    store.put_record(keys.run_trained(pipeline, run_id, trained.model_id), trained)


def load_trained(store: Store, pipeline: str, run_id: str, model_id: str) -> TrainedModel | None:
    key = keys.run_trained(pipeline, run_id, model_id)
    return store.get_record(key, TrainedModel) if store.exists(key) else None


def save_failure(store: Store, pipeline: str, run_id: str, failure: TrainFailure) -> None:
    store.put_record(keys.run_failed(pipeline, run_id, failure.model_id), failure)


def load_failure(store: Store, pipeline: str, run_id: str, model_id: str) -> TrainFailure | None:
    key = keys.run_failed(pipeline, run_id, model_id)
    return store.get_record(key, TrainFailure) if store.exists(key) else None


def failure_line(failure: TrainFailure | dict[str, Any]) -> str:
    """A failure as one line: its error, with the step's exit code when it is known and not already said."""
    error = (failure.get("error") if isinstance(failure, dict) else failure.error) or "failed"
    code = failure.get("exit_code") if isinstance(failure, dict) else failure.exit_code
    error = " ".join(str(error).split())  # an error line never spans lines in a table or a one-line summary
    return error if code is None or f"exit code {code}" in error else f"{error} (exit code {code})"


def last_error_line(store: Store, pipeline: str, run_id: str, step: str, map_index: int | None) -> str | None:
    """The last non-empty line of the newest try's log of a step (its error, when it died without recording one)."""
    for _task, _index, _try, key in newest_logs(store, pipeline, run_id, step, map_index):
        lines = [line.strip() for line in read_log(store, key).decode(errors="replace").splitlines()]
        lines = [line for line in lines if line]
        if lines:
            return lines[-1]
    return None


# -- the run record (register step) --------------------------------------------------------------------------------
def save_results(store: Store, results: RunRecord) -> None:
    params = results.parameters
    store.put_record(keys.run_results(params.pipeline, params.run_id), results)


def read_results(store: Store, pipeline: str, run_id: str) -> RunRecord | None:
    """A run's `_results.json`, or None when it wrote none (it failed before registering, or still runs)."""
    key = keys.run_results(pipeline, run_id)
    return store.get_record(key, RunRecord) if store.exists(key) else None


def has_results(store: Store, pipeline: str, run_id: str) -> bool:
    return store.exists(keys.run_results(pipeline, run_id))


def list_results(store: Store, pipeline: str) -> list[RunRecord]:
    """Every run's `_results.json`, newest first (by start time)."""
    found = [store.get_record(k, RunRecord) for k in store.list_keys(keys.run_prefix(pipeline))
             if keys.is_run_results(k)]
    return sorted(found, key=lambda r: r.run_summary.start_time, reverse=True)


def nth_run(store: Store, pipeline: str, index: int) -> RunRecord:
    found = list_results(store, pipeline)
    if not 0 <= index < len(found):
        raise NotFound(f"no run #{index} of {pipeline}: there are {len(found)} run(s); see `trainyard list`")
    return found[index]


# -- settings a pipeline remembers per source repo -----------------------------------------------------------------
def remembered_settings(store: Store, pipeline: str, name: str) -> dict[str, Any]:
    try:
        return store.get_json(keys.pipeline_settings(pipeline, name))
    except NotFound:
        return {}


def remember_settings(store: Store, pipeline: str, name: str, given: dict[str, Any]) -> dict[str, Any]:
    """Merge the values the user gave this time over what the pipeline remembered; returns the result."""
    changes = {k: v for k, v in given.items() if k in REMEMBERED and v is not None}

    def mutate(doc: dict | None) -> dict | None:
        doc = doc or {}
        merged = {**doc, **changes}
        return merged if merged != doc else None

    return store.update_json(keys.pipeline_settings(pipeline, name), mutate,
                             what=f"{pipeline} settings for {name}") or {}


# -- while a run runs: why a pod waits, and the step logs ----------------------------------------------------------
def waiting_reasons(store: Store, pipeline: str, run_id: str) -> list[dict[str, Any]]:
    """The run's steps that wait for a node now, each {"task_id", "reason", "since"}."""
    notes = store.list_json(keys.run_waiting_prefix(pipeline, run_id))
    return [n for n in notes if n.get("reason")]


def newest_logs(store: Store, pipeline: str, run_id: str, step: str | None = None,
                map_index: int | None = None) -> list[tuple[str, str, int, str]]:
    """(task, map index, try, key) of the newest try's log of each task of a run, filtered by step and map index."""
    newest: dict[tuple[str, str], tuple[int, str]] = {}
    for key in store.list_keys(keys.log_prefix(pipeline, run_id)):
        task, index, tries = keys.parse_log(key, pipeline, run_id)
        if step and task != step or map_index is not None and index != str(map_index):
            continue
        if (task, index) not in newest or tries > newest[(task, index)][0]:
            newest[(task, index)] = (tries, key)
    return [(task, index, *newest[(task, index)]) for task, index in sorted(newest)]


def read_log(store: Store, key: str) -> bytes:
    """A step log found by newest_logs (it grows while the step runs)."""
    return store.get_bytes(key)
