"""Shared benchmark plumbing: an isolated Airflow home and store per bench, and timed commands that must succeed."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def venv_bin() -> Path:
    bin_dir = REPO / ".venv" / "bin"
    return bin_dir if (bin_dir / "python").exists() else Path(sys.executable).parent


def base_env(work: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "TRAINYARD_"))}
    env.update({
        "TRAINYARD_HOME": str(REPO),
        "AIRFLOW_HOME": str(work / "airflow"),
        "AIRFLOW_CONFIG": str(REPO / "airflow.cfg"),
        "TRAINYARD_STORE": f"file://{work / 'store'}",
        "TRAINYARD_VENV_CACHE": str(work / "venvs"),
        "TRAINYARD_RUNNER": "local",
        "PATH": f"{venv_bin()}{os.pathsep}{os.environ.get('PATH', '')}",
    })
    return env


def run(cmd: list[str], env: dict[str, str], log: Path, cwd: Path = REPO, what: str = "") -> tuple[float, float]:
    """Run cmd with output to log; return (wall seconds, start epoch). Exits the bench if cmd fails."""
    started = time.time()
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-40:]
        print("\n".join(tail), file=sys.stderr)
        sys.exit(f"bench: {what or cmd[0]} exited {proc.returncode}; full log: {log}")
    return wall, started


# ------------------------------------------------------------------------------------ the mnist pipeline, timed
# What bench/pipeline and bench/server run: the mnist template's one default combination, trained every time.
MNIST_CONF = '{"source":"mnist","data":"features","no_cache":true}'
LOG_TIMESTAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z ")


def check_dag_success(log: Path, dag_id: str) -> None:
    text = log.read_text(errors="replace")
    finished = [line for line in text.splitlines() if "DagRun Finished" in line and f"dag_id={dag_id}" in line]
    if not finished or "state=success" not in finished[-1]:
        sys.exit(f"bench: {dag_id} run did not finish in state success; log: {log}")


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp + "+00:00").timestamp()


def breakdown(log: Path, started: float, wall: float) -> list[tuple[str, float]]:
    """Split one `airflow dags test` run into phases using the log's UTC timestamps."""
    events: list[tuple[float, str]] = []
    for line in log.read_text(errors="replace").splitlines():
        m = LOG_TIMESTAMP.match(line)
        if m:
            events.append((_epoch(m.group(1)), line[m.end():]))
    if not events:
        return []
    phases: list[tuple[str, float]] = [("process start -> first log line (imports)", events[0][0] - started)]
    first_task = next((t for t, msg in events if "[DAG TEST] starting task_id=" in msg), None)
    if first_task is not None:
        phases.append(("first log line -> first task start (parse DAG, create run)", first_task - events[0][0]))
    task, t_start, t_step, t_post, prev_end = None, 0.0, None, 0.0, None
    for t, msg in events:
        m = re.search(r"\[DAG TEST\] starting task_id=(\S+)", msg)
        if m:
            if prev_end is not None:
                phases.append((f"gap before {m.group(1)}", t - prev_end))
            task, t_start, t_step = m.group(1), t, None
            continue
        if task and "running step" in msg and "locally" in msg:
            t_step = t
            phases.append((f"{task}: task start -> step subprocess launched", t - t_start))
            continue
        if task and t_step is not None and "Post Execute" in msg:
            phases.append((f"{task}: step subprocess (python -m training_images.{task})", t - t_step))
            t_step = -1.0
            t_post = t
            continue
        m = re.search(r"\[DAG TEST\] end task task_id=(\S+)", msg)
        if m and task:
            if t_step is None:
                phases.append((f"{task}: in-process task (start -> end)", t - t_start))
            else:
                phases.append((f"{task}: post execute -> task end", t - t_post))
            task, prev_end = None, t
    if prev_end is not None:
        phases.append(("last task end -> process exit", started + wall - prev_end))
    return phases


# ------------------------------------------------------------------------------------ Airflow's task records
def ts(stamp: str | None) -> float | None:
    return datetime.fromisoformat(stamp).timestamp() if stamp else None


def task_log_lines(path: Path) -> list[str]:
    """A task log (JSON lines) as readable lines: time, level, event, and the exception of an error."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            out.append(line)
            continue
        if not isinstance(event, dict):
            out.append(line)
            continue
        out.append(f"{event.get('timestamp', '')[11:23]} {event.get('level', ''):<7} {event.get('event', '')}")
        for detail in event.get("error_detail") or []:
            if isinstance(detail, dict):
                out.append(f"    {detail.get('exc_type')}: {detail.get('exc_value')}")
    return out
