"""The in-process runner (`trainyard deploy --local`) runs up to `--parallelism` trainings of a sweep at once: the
start and end dates Airflow recorded for the train task instances overlap, and with `--parallelism 1` they do not."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.e2e
FIXTURE = REPO / "tests" / "fixtures"


@pytest.fixture
def sleepy(tmp_path):
    src, data = tmp_path / "src", tmp_path / "data"
    shutil.copytree(FIXTURE / "sleepy-train", src)
    shutil.copytree(FIXTURE / "sleepy-train-data", data)
    return src, data


def _deploy(uri: str, src, data, *args: str) -> dict:
    """`trainyard deploy --local` as a user runs it; every training sleeps 2 s, so overlap is unambiguous."""
    env = {**os.environ, "SLEEPY_SECONDS": "2"}
    proc = subprocess.run([sys.executable, "-m", "trainyard.cli", "--store", uri, "deploy", "-s", str(src),
                           "-d", str(data), "--local", "--json", *args], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def _train_intervals(run_id: str) -> list[tuple]:
    """(map index, state, start, end) of each train task instance of the run, as Airflow's metadata DB has them."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        tis = session.query(TaskInstance).filter(TaskInstance.dag_id == "train_pipeline",
                                                 TaskInstance.run_id == run_id,
                                                 TaskInstance.task_id == "train").all()
        return sorted((ti.map_index, str(getattr(ti.state, "value", ti.state)), ti.start_date, ti.end_date)
                      for ti in tis)


def _overlap(intervals: list[tuple]) -> float:
    """Seconds during which at least two of the intervals ran at once (0 when they never did)."""
    spans = [(start, end) for _, _, start, end in intervals]
    shared = 0.0
    for i, (a_start, a_end) in enumerate(spans):
        for b_start, b_end in spans[i + 1:]:
            shared += max(0.0, (min(a_end, b_end) - max(a_start, b_start)).total_seconds())
    return shared


def test_a_local_sweep_runs_two_trainings_at_once_with_parallelism_2(airflow_db, tmp_path, sleepy):
    src, data = sleepy
    uri = f"file://{tmp_path / 'store'}"
    run = _deploy(uri, src, data, "--parallelism", "2", "-h", '{"run": [1, 2]}')
    assert run["state"] == "success" and len(run["models"]) == 2 and not run["cached"]
    intervals = _train_intervals(run["run_id"])
    assert [(index, state) for index, state, _, _ in intervals] == [(0, "success"), (1, "success")]
    # Both trainings sleep 2 s: run one after another they could not share a second.
    assert _overlap(intervals) > 1.0, intervals


def test_parallelism_1_runs_the_trainings_one_after_another(airflow_db, tmp_path, sleepy):
    src, data = sleepy
    uri = f"file://{tmp_path / 'store'}"
    run = _deploy(uri, src, data, "--parallelism", "1", "-h", '{"run": [1, 2]}')
    assert run["state"] == "success" and len(run["models"]) == 2
    intervals = _train_intervals(run["run_id"])
    assert len(intervals) == 2 and _overlap(intervals) == 0.0, intervals
