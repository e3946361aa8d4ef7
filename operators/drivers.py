"""Runs driven in-process (`trainyard deploy --local`): a lease per driver, and failing the runs of dead drivers.

`dag.test()` runs a DAG inside the CLI's own process. If that process is killed (SIGKILL, a closed laptop lid, an
OOM kill), nothing tells Airflow: the run would stay `running` in the metadata DB forever. Each driver leaves a
lease file (its pid and the kernel's start time for it, so a reused pid is not mistaken for it); the next in-process
command marks the runs of every dead driver failed, and says so.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)


def _lease_dir() -> Path:
    return Path(os.path.expanduser(os.environ.get("AIRFLOW_HOME", "~/airflow"))) / "trainyard-drivers"


def _start_time(pid: int) -> str | None:
    """The kernel's start time of pid (field 22 of /proc/<pid>/stat), or None when no such process runs."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


@contextlib.contextmanager
def lease(dag_id: str) -> Iterator[Path]:
    """Hold a lease while this process drives a run of dag_id; it is removed when the run ends, however it ends."""
    directory = _lease_dir()
    directory.mkdir(parents=True, exist_ok=True)
    pid = os.getpid()
    path = directory / f"{pid}-{dag_id}.json"
    path.write_text(json.dumps({"pid": pid, "start": _start_time(pid), "dag_id": dag_id, "since": time.time()}))
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def _dead(entry: dict) -> bool:
    return _start_time(int(entry["pid"])) != entry.get("start")


def reap() -> list[str]:
    """Mark failed the unfinished runs (and their unfinished tasks) of every driver that died; their run ids."""
    directory = _lease_dir()
    if not directory.is_dir():
        return []
    from datetime import datetime, timezone

    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState, TaskInstanceState

    reaped = []
    for path in sorted(directory.glob("*.json")):
        try:
            entry = json.loads(path.read_text())
        except (OSError, ValueError):
            path.unlink(missing_ok=True)
            continue
        if int(entry.get("pid", 0)) == os.getpid() or not _dead(entry):
            continue
        since = datetime.fromtimestamp(float(entry.get("since", 0)) - 1, tz=timezone.utc)
        with create_session() as session:
            dead_runs = session.query(DagRun).filter(
                DagRun.dag_id == entry["dag_id"], DagRun.state.in_([DagRunState.RUNNING, DagRunState.QUEUED]),
                DagRun.start_date >= since).all()
            for run in dead_runs:
                for ti in session.query(TaskInstance).filter(TaskInstance.dag_id == run.dag_id,
                                                              TaskInstance.run_id == run.run_id).all():
                    if ti.state not in (TaskInstanceState.SUCCESS, TaskInstanceState.FAILED,
                                        TaskInstanceState.SKIPPED, TaskInstanceState.UPSTREAM_FAILED):
                        ti.state = TaskInstanceState.FAILED
                run.state = DagRunState.FAILED
                run.end_date = datetime.now(tz=timezone.utc)
                reaped.append(run.run_id)
                log.warning("run %s of %s was left running by a driver that died (pid %s); marked failed",
                            run.run_id, run.dag_id, entry["pid"])
        path.unlink(missing_ok=True)
    return reaped
