"""The local runner: GPU requests on a machine without GPUs fail clearly unless CPU fallback is allowed."""

from __future__ import annotations

from pathlib import Path

import pendulum
import pytest
from airflow.sdk import DAG

from operators import TrainyardStepOperator
from operators.step import GpuUnavailable, local_gpu_count

pytestmark = pytest.mark.skipif(local_gpu_count() > 0, reason="this machine has a GPU; the refusal cannot happen")


def _gpu_step(tmp_path):
    with DAG("local", start_date=pendulum.datetime(2026, 1, 1), schedule=None):
        return TrainyardStepOperator(task_id="train", step="build", gpu=1,
                                     store_uri=f"file://{tmp_path / 'store'}",
                                     arguments=["--source", "nothing:latest"])


def test_gpu_request_without_gpus_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("TRAINYARD_ALLOW_CPU_FALLBACK", raising=False)
    with pytest.raises(GpuUnavailable, match=r"asks for 1 GPU\(s\) but this machine has 0.*ALLOW_CPU_FALLBACK"):
        _gpu_step(tmp_path).execute({})


def test_cpu_fallback_runs_the_rendered_command(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAINYARD_ALLOW_CPU_FALLBACK", "true")
    # The fallback lets the step start; the build step then fails on the missing repo, proving it really ran.
    with pytest.raises(Exception, match="exited with code 1.*repo 'nothing' has no commits|no branch"):
        _gpu_step(tmp_path).execute({})


def test_a_step_past_its_timeout_is_stopped_with_its_children(tmp_path):
    import os
    import sys
    import time

    task = _gpu_step(tmp_path)
    child_pid = tmp_path / "child.pid"
    script = ("import subprocess, sys, time; "
              f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
              f"open({str(child_pid)!r}, 'w').write(str(p.pid)); print('started', flush=True); time.sleep(60)")
    started = time.monotonic()
    code, tail, timed_out = task._run([sys.executable, "-c", script], str(tmp_path), dict(os.environ), 2)
    assert timed_out == 2 and time.monotonic() - started < 20
    assert tail == ["started"] and code != 0
    status = Path(f"/proc/{int(child_pid.read_text())}/status")
    time.sleep(0.2)
    # the whole process group went, not just the step's own process (a zombie awaiting its reaper is gone too)
    assert not status.exists() or "State:\tZ" in status.read_text()
