"""Server mode: trigger a pipeline on a running Airflow, follow it to the end, and stop it (`trainyard kill`)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from trainyard.airflow_api import FINISHED_TASK_STATES, TERMINAL_RUN_STATES, AirflowClient
from trainyard.errors import NotFound, TrainyardError


class KillTimeout(TrainyardError):
    """Tasks of a stopped run were still running when `trainyard kill` gave up waiting."""


def _task_name(ti: dict) -> str:
    index = ti.get("map_index", -1)
    return ti["task_id"] + (f"[{index}]" if index is not None and index >= 0 else "")


def trigger(client: AirflowClient, dag_id: str, conf: dict, *, say: Callable[[str], None]) -> str:
    """Trigger the DAG with conf, then unpause it if it is paused so the run starts; the run id.

    Unpausing comes after the trigger, so a conf the Params reject leaves the DAG as it was."""
    dag = client.check_dag(dag_id)
    run = client.trigger(dag_id, conf)
    if dag.get("is_paused"):
        client.unpause(dag_id)
        say(f"unpaused {dag_id} on {client.endpoint} so that its runs start")
    return run["dag_run_id"]


def wait(client: AirflowClient, dag_id: str, run_id: str, *, say: Callable[[str], None],
         poll: float = 1.0) -> str:
    """Print each task's state changes until the run ends; the run's final state."""
    seen: dict[str, str] = {}
    started = time.monotonic()
    while True:
        run = client.run(dag_id, run_id)
        for ti in sorted(client.task_instances(dag_id, run_id), key=lambda t: (t.get("start_date") or "~",
                                                                              t["task_id"], t.get("map_index", -1))):
            name, state = _task_name(ti), ti.get("state") or "none"
            if state in ("none", "scheduled") or seen.get(name) == state:
                continue
            seen[name] = state
            say(f"[{time.monotonic() - started:5.0f}s] {name:<24} {state}")
        if run["state"] in TERMINAL_RUN_STATES:
            return run["state"]
        time.sleep(poll)


def newest_active_run(client: AirflowClient, dag_id: str) -> str:
    for run in client.runs(dag_id):
        if run["state"] not in TERMINAL_RUN_STATES:
            return run["dag_run_id"]
    raise NotFound(f"{dag_id} has no queued or running run on {client.endpoint}; see `trainyard list`")


def kill(client: AirflowClient, dag_id: str, run_id: str, *, timeout: float = 60,
         say: Callable[[str], None] = lambda line: print(line, file=sys.stderr)) -> list[str]:
    """Fail the run and wait until none of its tasks is running; the tasks that were stopped."""
    before = client.task_instances(dag_id, run_id)
    running = [_task_name(ti) for ti in before if ti.get("state") in ("running", "queued", "up_for_retry")]
    client.fail_run(dag_id, run_id)
    say(f"run {run_id} marked failed; stopping {', '.join(running) or 'no running task'}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        still = [_task_name(ti) for ti in client.task_instances(dag_id, run_id)
                 if ti.get("state") not in FINISHED_TASK_STATES and ti.get("state") is not None]
        if not still:
            return running
        time.sleep(1)
    raise KillTimeout(f"run {run_id}: {', '.join(still)} still not stopped after {timeout:.0f} s; "
                      f"see {client.run_url(dag_id, run_id)}")
