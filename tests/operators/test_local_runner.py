"""The local runner: GPU requests without GPUs fail clearly, and a step is stopped with its children when its
timeout passes or its task is killed."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pendulum
import pytest
from airflow.sdk import DAG

from operators import TrainyardStepOperator
from operators.step import KILL_GRACE_SECONDS, GpuUnavailable, StepFailed, StepKilled, local_gpu_count
from operators.step_logs import KILLED_LINE
from trainyard.store import keys, open_store

without_gpus = pytest.mark.skipif(local_gpu_count() > 0, reason="this machine has a GPU; the refusal cannot happen")


def _gpu_step(tmp_path):
    with DAG("local", start_date=pendulum.datetime(2026, 1, 1), schedule=None):
        return TrainyardStepOperator(task_id="train", step="build", gpu=1,
                                     store_uri=f"file://{tmp_path / 'store'}",
                                     arguments=["--source", "nothing:latest"])


@without_gpus
def test_gpu_request_without_gpus_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("TRAINYARD_ALLOW_CPU_FALLBACK", raising=False)
    with pytest.raises(GpuUnavailable, match=r"asks for 1 GPU\(s\) but this machine has 0.*ALLOW_CPU_FALLBACK"):
        _gpu_step(tmp_path).execute({})


@without_gpus
def test_cpu_fallback_runs_the_rendered_command(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAINYARD_ALLOW_CPU_FALLBACK", "true")
    # The fallback lets the step start; the build step then fails on the missing repo, proving it really ran.
    with pytest.raises(StepFailed, match=r"^step 'train' exited with code 1: .*NotFound: repo 'nothing' has no branch"):
        _gpu_step(tmp_path).execute({})


def _context(task) -> dict:
    ti = SimpleNamespace(dag_id=task.dag_id, task_id=task.task_id, map_index=-1, try_number=1)
    return {"ti": ti, "run_id": "manual__1", "dag": task.dag}


def _gone(pid: int) -> bool:
    """The process has exited (a zombie left for its reaper counts as gone: it runs nothing)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "State:\tZ" in status.read_text()


def _spawning_script(pids: Path, *, child_ignores_sigterm: bool = False) -> str:
    """A step that starts a child, records both pids, prints, then sleeps."""
    child = "import time; time.sleep(60)"
    if child_ignores_sigterm:
        child = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('child up', flush=True); " \
                "time.sleep(60)"
    return ("import os, subprocess, sys, time; "
            f"p = subprocess.Popen([sys.executable, '-c', {child!r}]); time.sleep(0.3); "
            f"open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{p.pid}}'); print('started', flush=True); "
            "time.sleep(60)")


def test_a_step_past_its_timeout_is_stopped_with_its_children(tmp_path):
    task = _gpu_step(tmp_path)
    pids = tmp_path / "pids"
    started = time.monotonic()
    writer = task.store_log_writer(_context(task))
    code, tail, timed_out = task._run([sys.executable, "-c", _spawning_script(pids)], str(tmp_path),
                                      dict(os.environ), 2, writer)
    assert timed_out == 2 and time.monotonic() - started < 20
    assert tail == ["started"] and code != 0
    # the whole process group went, not just the step's own process
    assert all(_wait(lambda pid=int(pid): _gone(pid), 2) for pid in pids.read_text().split())
    log = open_store(f"file://{tmp_path / 'store'}").backend.read(keys.log("local", "manual__1", "train", -1, 1))
    assert log.decode() == "started\nstopped: the step ran past its timeout of 2 s\n"


def _wait(predicate, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def _sleeping_step(tmp_path, script: str):
    """A local step whose container command is `python -c SCRIPT` (the rendered pod's command, run as is)."""
    with DAG("local", start_date=pendulum.datetime(2026, 1, 1), schedule=None):
        return TrainyardStepOperator(task_id="train", step="train", store_uri=f"file://{tmp_path / 'store'}",
                                     runner="local", cmds=[sys.executable, "-c", script], do_xcom_push=False)


@pytest.mark.parametrize("child_ignores_sigterm", [False, True], ids=["children-exit", "child-ignores-sigterm"])
def test_on_kill_stops_a_running_step_and_its_children(tmp_path, child_ignores_sigterm):
    pids = tmp_path / "pids"
    task = _sleeping_step(tmp_path, _spawning_script(pids, child_ignores_sigterm=child_ignores_sigterm))
    outcome: dict[str, BaseException] = {}

    def run() -> None:
        try:
            task.execute(_context(task))
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert _wait(lambda: pids.exists() and len(pids.read_text().split()) == 2, 30), "the step never started"
    step_pid, child_pid = (int(p) for p in pids.read_text().split())

    # What the task's SIGTERM handler does when the run is marked failed (`trainyard kill`): it returns at once.
    began = time.monotonic()
    task.on_kill()
    assert time.monotonic() - began < 0.5
    thread.join(KILL_GRACE_SECONDS + 5)
    assert not thread.is_alive(), "the step was not stopped"
    # a child that ignores SIGTERM is stopped by the SIGKILL after the grace
    assert _gone(step_pid) and _wait(lambda: _gone(child_pid), 1)

    error = outcome.get("error")
    assert isinstance(error, StepKilled) and "stopped: the task was killed" in str(error)
    log = open_store(f"file://{tmp_path / 'store'}").backend.read(keys.log("local", "manual__1", "train", -1, 1))
    assert log.decode().startswith("child up\nstarted\n" if child_ignores_sigterm else "started\n")
    assert log.decode().endswith(f"\n{KILLED_LINE}\n")


def test_on_kill_before_the_step_starts_stops_it_from_starting(tmp_path):
    marker = tmp_path / "ran"
    task = _sleeping_step(tmp_path, f"open({str(marker)!r}, 'w').write('ran')")
    task.on_kill()
    with pytest.raises(StepKilled, match="stopped: the task was killed before it started"):
        task.execute(_context(task))
    assert not marker.exists()


def test_sigterm_to_the_task_process_stops_the_step(tmp_path):
    # The real path of `trainyard kill`: the supervisor SIGTERMs the task process, whose handler (as in Airflow's
    # task runner) calls on_kill on the main thread while that thread is reading the step's output.
    import subprocess

    pids = tmp_path / "pids"
    task_script = f"""
import signal, sys
from types import SimpleNamespace
sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
import pendulum
from airflow.sdk import DAG
from operators import TrainyardStepOperator
with DAG("local", start_date=pendulum.datetime(2026, 1, 1), schedule=None):
    task = TrainyardStepOperator(task_id="train", step="train", store_uri={f"file://{tmp_path / 'store'}"!r},
                                 runner="local", cmds=[sys.executable, "-c", {_spawning_script(pids)!r}],
                                 do_xcom_push=False)
signal.signal(signal.SIGTERM, lambda signum, frame: task.on_kill())
ti = SimpleNamespace(dag_id="local", task_id="train", map_index=-1, try_number=1)
try:
    task.execute({{"ti": ti, "run_id": "manual__1", "dag": task.dag}})
except Exception as exc:
    print("task failed:", exc, flush=True)
    sys.exit(1)
"""
    proc = subprocess.Popen([sys.executable, "-c", task_script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        assert _wait(lambda: pids.exists() and len(pids.read_text().split()) == 2, 60), "the step never started"
        began = time.monotonic()
        proc.terminate()
        out, _ = proc.communicate(timeout=KILL_GRACE_SECONDS + 10)
    finally:
        proc.kill()
    # stopped within the grace, not after the step's own 60 s (the exit includes the interpreter's shutdown)
    assert proc.returncode == 1 and time.monotonic() - began < KILL_GRACE_SECONDS + 5, out
    assert "task failed: step 'train' stopped: the task was killed" in out
    assert all(_wait(lambda pid=int(pid): _gone(pid), 2) for pid in pids.read_text().split())
    log = open_store(f"file://{tmp_path / 'store'}").backend.read(keys.log("local", "manual__1", "train", -1, 1))
    assert log.decode() == f"started\n{KILLED_LINE}\n"
