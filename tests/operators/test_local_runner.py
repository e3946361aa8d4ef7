"""The local runner: GPU requests on a machine without GPUs fail clearly unless CPU fallback is allowed."""

from __future__ import annotations

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
