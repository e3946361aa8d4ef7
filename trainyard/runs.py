"""Run records: the plan a run trains, per-combination outcomes, `_results.json`, and settings kept per pipeline."""

from __future__ import annotations

from typing import Any

from trainyard.errors import NotFound
from trainyard.store.versioned import Store

# Resources and options a pipeline keeps between deploys until the user changes them (kaos reset them each time).
REMEMBERED = ("cpu", "memory", "gpu", "timeout", "metric")


def run_prefix(pipeline: str, run_id: str) -> str:
    return f"runs/{pipeline}/{run_id}/"


def plan_key(pipeline: str, run_id: str) -> str:
    return run_prefix(pipeline, run_id) + "plan.json"


def trained_key(pipeline: str, run_id: str, model_id: str) -> str:
    return run_prefix(pipeline, run_id) + f"trained/{model_id.replace(':', '-')}.json"


def failure_key(pipeline: str, run_id: str, model_id: str) -> str:
    return run_prefix(pipeline, run_id) + f"failed/{model_id.replace(':', '-')}.json"


def results_key(pipeline: str, run_id: str) -> str:
    return run_prefix(pipeline, run_id) + "_results.json"


def read_results(store: Store, pipeline: str, run_id: str) -> dict[str, Any] | None:
    """A run's `_results.json`, or None when it wrote none (it failed before registering, or still runs)."""
    key = results_key(pipeline, run_id)
    return store.get_json(key) if store.exists(key) else None


def list_results(store: Store, pipeline: str) -> list[dict[str, Any]]:
    """Every run's `_results.json`, newest first (by start time)."""
    runs = [store.get_json(k) for k in store.backend.list(f"runs/{pipeline}/") if k.endswith("/_results.json")]
    return sorted(runs, key=lambda r: r["run_summary"]["start_time"], reverse=True)


def nth_run(store: Store, pipeline: str, index: int) -> dict[str, Any]:
    runs = list_results(store, pipeline)
    if not 0 <= index < len(runs):
        raise NotFound(f"no run #{index} of {pipeline}: there are {len(runs)} run(s); see `trainyard list`")
    return runs[index]


def settings_key(pipeline: str, name: str) -> str:
    return f"pipelines/{pipeline}/{name}/settings.json"


def remembered_settings(store: Store, pipeline: str, name: str) -> dict[str, Any]:
    try:
        return store.get_json(settings_key(pipeline, name))
    except NotFound:
        return {}


def remember_settings(store: Store, pipeline: str, name: str, given: dict[str, Any]) -> dict[str, Any]:
    """Merge the values the user gave this time over what the pipeline remembered; returns the result."""
    changes = {k: v for k, v in given.items() if k in REMEMBERED and v is not None}

    def mutate(doc: dict | None) -> dict | None:
        doc = doc or {}
        merged = {**doc, **changes}
        return merged if merged != doc else None

    return store.update_json(settings_key(pipeline, name), mutate, what=f"{pipeline} settings for {name}") or {}


def waiting_key(pipeline: str, run_id: str, task_id: str, map_index: int | str) -> str:
    """Why a step's pod waits for a node (the scheduler's reason), kept while it waits; empty once it runs."""
    return run_prefix(pipeline, run_id) + f"waiting/{task_id}/{map_index}.json"


def waiting_reasons(store: Store, pipeline: str, run_id: str) -> list[dict[str, Any]]:
    """The run's steps that wait for a node now, each {"task_id", "reason", "since"}."""
    notes = [store.get_json(k) for k in store.backend.list(run_prefix(pipeline, run_id) + "waiting/")]
    return [n for n in notes if n.get("reason")]


def log_key(pipeline: str, run_id: str, task_id: str, map_index: int | str, try_number: int | str) -> str:
    """Where a step's log is kept while it runs and after: one object per task, map index and try."""
    return f"logs/{pipeline}/{run_id}/{task_id}/{map_index}/{try_number}.log"


def log_prefix(pipeline: str, run_id: str) -> str:
    return f"logs/{pipeline}/{run_id}/"
