"""No orphans: a killed `trainyard deploy` takes its training with it, its run is marked failed at the next
command, and a step enforces its own timeout where it runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import REPO
from trainyard.store import open_store


def _processes_with(token: str) -> list[int]:
    """Pids of the processes whose environment carries token (the CLI's children inherit it)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if token.encode() in (proc / "environ").read_bytes():
                found.append(int(proc.name))
        except OSError:
            pass
    return found


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "trainyard.cli", *args]


@pytest.mark.e2e
def test_killed_deploy_takes_its_training_with_it_and_the_next_command_fails_its_run(airflow_db, tmp_path, sleepy,
                                                                                    scenario):
    src, data = sleepy
    uri = f"file://{tmp_path / 'store'}"
    token = f"ORPHAN_TOKEN_{uuid.uuid4().hex}"
    marker = tmp_path / "started"
    env = {**os.environ, token: "1", "SLEEPY_SECONDS": "120", "SLEEPY_MARKER": str(marker)}
    # A first deploy stores the bundles, so the scenario has something stored to lose.
    quick = {**os.environ, "SLEEPY_SECONDS": "0"}
    assert subprocess.run(_cli("--store", uri, "deploy", "-s", str(src), "-d", str(data), "--local",
                               "-h", '{"run": [1]}'), env=quick, capture_output=True).returncode == 0
    store = open_store(uri)
    scenario.watch(store)
    cli = subprocess.Popen(_cli("--store", uri, "deploy", "-s", str(src), "-d", str(data), "--local",
                                "-h", '{"run": [2]}'), env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert time.monotonic() < deadline and cli.poll() is None, "the training never started"
            time.sleep(0.2)
        assert len(_processes_with(token)) >= 3  # the CLI, its train step, the user's code (and the sandbox)
        cli.send_signal(signal.SIGKILL)
        cli.wait()
        killed_at = time.monotonic()
        while _processes_with(token) and time.monotonic() - killed_at < 10:
            time.sleep(0.1)
        left = _processes_with(token)
        assert left == [], f"processes left running after the CLI was killed: {left}"
    finally:
        for pid in _processes_with(token):
            os.kill(pid, signal.SIGKILL)
    # The next command marks the dead driver's run failed, says so, and works.
    proc = subprocess.run(_cli("--store", uri, "deploy", "-s", str(src), "-d", str(data), "--local",
                               "-h", '{"run": [3]}'), env=quick, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "was left running by a trainyard that was killed; marked failed" in proc.stderr
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        states = [r.state for r in session.query(DagRun).filter(DagRun.dag_id == "train_pipeline").all()]
    assert "running" not in [str(getattr(s, "value", s)) for s in states]
    scenario.check(store)


def test_the_train_step_enforces_its_own_timeout(tmp_path, sleepy):
    """Run the step by hand, with no parent to watch it: its deadline still stops the user's code."""
    from trainyard.cli import main

    src, data = sleepy
    uri = f"file://{tmp_path / 'store'}"
    assert main(["--store", uri, "deploy", "-s", str(src), "-d", str(data), "--upload-only", "--json"]) == 0
    env = {**os.environ, "TRAINYARD_STORE": uri, "SLEEPY_SECONDS": "60", "TRAINYARD_DEADLINE": str(time.time() + 3),
           "TRAINYARD_RESULT_PATH": str(tmp_path / "return.json")}
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "training_images.train", "--source", "src", "--data", "data"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    took = time.monotonic() - started
    assert proc.returncode == 124, proc.stdout[-1000:] + proc.stderr[-1000:]
    assert "ran past its timeout" in proc.stdout
    assert took < 20, f"the step took {took:.1f} s with a 3 s deadline"
