"""Server mode end to end: `trainyard init`, `deploy --wait`, list/info/logs and `kill` against a real Airflow.

The Airflow (api-server, scheduler, dag-processor, triggerer; LocalExecutor) and the moto S3 server are started
once per session by tests/conftest.airflow_server. The CLI runs in-process (`trainyard.cli.main`) and reaches
Airflow only through its REST API and the store only through S3.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import time
from pathlib import Path

import pytest

from tests.conftest import REPO
from trainyard.cli import main
from trainyard.local_airflow import free_port

MNIST = REPO / "templates" / "mnist"
pytestmark = pytest.mark.e2e

SLEEPY_TRAIN = """#!/usr/bin/env python3
import os, sys, time
with open(os.environ["SLEEPY_PID_FILE"], "w") as fh:
    fh.write(str(os.getpid()))
print("sleepy: started, pid", os.getpid(), flush=True)
for i in range(600):
    print("sleepy: epoch", i, flush=True)
    time.sleep(1)
"""


@pytest.fixture
def profile(airflow_server, tmp_path, monkeypatch):
    """A user who ran `trainyard init` against the server, with the store's S3 keys in their env at that moment."""
    monkeypatch.setenv("TRAINYARD_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("TRAINYARD_PASSWORD", airflow_server.password)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", airflow_server.store_credentials["aws_access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", airflow_server.store_credentials["aws_secret_access_key"])
    assert main(["init", "-e", airflow_server.url, "-u", airflow_server.username, "--store",
                 airflow_server.store_uri, "--store-endpoint", airflow_server.moto_endpoint]) == 0
    # From here on the CLI must find everything in the profile: no store or S3 settings in the environment.
    for var in ("TRAINYARD_PASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path / "config"


def _json_out(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


def test_init_keeps_credentials_private_and_never_prints_them(airflow_server, profile, capsys):
    config_file, secret_file = profile / "config.json", profile / "credentials.json"
    assert stat.S_IMODE(os.stat(secret_file).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(profile).st_mode) == 0o700
    saved = json.loads(config_file.read_text())
    assert saved == {"endpoint": airflow_server.url, "username": "admin", "store": airflow_server.store_uri,
                     "store_endpoint": airflow_server.moto_endpoint}
    assert json.loads(secret_file.read_text())["password"] == airflow_server.password
    out = capsys.readouterr()
    for secret in (airflow_server.password, airflow_server.store_credentials["aws_secret_access_key"]):
        assert secret not in out.out + out.err
        assert secret not in config_file.read_text()


def test_deploy_wait_trains_mnist_through_the_rest_api(airflow_server, profile, tmp_path, capsys):
    # The server is shared by the session: the metric is given, since a pipeline remembers the last one it was given.
    shutil.copytree(MNIST / "model-train", tmp_path / "src")
    shutil.copytree(MNIST / "data", tmp_path / "data")
    code = main(["deploy", "-s", str(tmp_path / "src"), "-d", str(tmp_path / "data"), "--wait",
                 "-h", '{"kernel": ["linear", "rbf"]}', "--metric", "accuracy_test:max", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-3000:]
    result = json.loads(captured.out)
    run_id = result["run_id"]
    assert result["state"] == "success" and result["airflow_state"] == "success"
    assert result["endpoint"] == airflow_server.url
    assert len(result["models"]) == 2 and result["metrics"]["accuracy_test"] > 0.9
    assert result["version"]["name"] == "mnist"
    assert "resolve" in captured.err and "train[1]" in captured.err  # progress followed task by task

    # Airflow itself ran it: the REST API reports the run and its mapped train tasks.
    client = airflow_server.client()
    assert client.run("train_pipeline", run_id)["state"] == "success"
    train = [t for t in client.task_instances("train_pipeline", run_id) if t["task_id"] == "train"]
    assert sorted(t["map_index"] for t in train) == [0, 1] and {t["state"] for t in train} == {"success"}

    assert main(["list", "--json"]) == 0
    listed = _json_out(capsys)
    assert listed[0]["parameters"]["run_id"] == run_id

    assert main(["info", "-i", "0", "--json"]) == 0
    info = _json_out(capsys)
    assert info["run_id"] == run_id and info["metric"] == "accuracy_test"
    scores = [m["metrics"]["accuracy_test"] for m in info["models"]]
    assert scores == sorted(scores, reverse=True)

    assert main(["logs", "--run-id", run_id, "--step", "train", "--map-index", "1"]) == 0
    logs = capsys.readouterr().out
    assert "== train [1] try 1 ==" in logs and "params:" in logs and "'kernel': 'rbf'" in logs
    assert airflow_server.store_credentials["aws_secret_access_key"] not in logs


def test_kill_stops_a_long_training_and_keeps_its_log(airflow_server, profile, tmp_path, capsys, monkeypatch):
    bundle = tmp_path / "sleepy-src" / "sleepy"
    (bundle / "model").mkdir(parents=True)
    (bundle / "Dockerfile").write_text("FROM python:3.11-slim\n")
    train = bundle / "model" / "train"
    train.write_text(SLEEPY_TRAIN)
    train.chmod(0o755)
    data = tmp_path / "sleepy-data"
    data.mkdir()
    (data / "rows.csv").write_text("1,2\n")
    pid_file = tmp_path / "sleepy.pid"
    # The train step inherits the worker's environment; the pid file is how the test sees the process.
    (bundle / "model" / "params.json").write_text("{}")
    train.write_text(SLEEPY_TRAIN.replace('os.environ["SLEEPY_PID_FILE"]', repr(str(pid_file))))

    assert main(["deploy", "-s", str(bundle.parent), "-d", str(data), "--json"]) == 0
    run_id = _json_out(capsys)["run_id"]
    deadline = time.monotonic() + 120
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(1)
    assert pid_file.exists(), "the training never started"
    pid = _host_pid(int(pid_file.read_text()))
    time.sleep(3)  # a few epochs, and one flush of the store log

    assert main(["list"]) == 0
    assert run_id in capsys.readouterr().out  # an unfinished run is listed from Airflow

    assert main(["kill", "--run-id", run_id]) == 0
    out = capsys.readouterr()
    assert f"killed run {run_id}: stopped train[0]" in out.out
    assert airflow_server.client().run("train_pipeline", run_id)["state"] == "failed"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.5)
    assert not _alive(pid), "the training process survived the kill"

    assert main(["logs", "--run-id", run_id, "--step", "train"]) == 0
    assert "sleepy: epoch 1" in capsys.readouterr().out
    # --json: the run is over now, so a second kill stops nothing and says so as JSON
    assert main(["kill", "--run-id", run_id, "--json"]) == 0
    assert _json_out(capsys) == {"pipeline": "train_pipeline", "run_id": run_id, "stopped": []}


def _host_pid(inner: int) -> int:
    """The training's pid on this machine: in the sandbox user code has its own PID namespace, where it is `inner`
    (NSpid lists a process's pid in each namespace, this machine's first)."""
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            nspid = next(line for line in status.read_text().splitlines() if line.startswith("NSpid:")).split()[1:]
            cmdline = (status.parent / "cmdline").read_bytes()
        except (OSError, StopIteration):
            continue
        if len(nspid) > 1 and nspid[-1] == str(inner) and b"model/train" in cmdline:
            return int(nspid[0])
    return inner  # unsandboxed: the same pid everywhere


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except OSError:
        return False


def _one_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: ")
    return err[0]


def test_server_errors_are_one_line_with_documented_exit_codes(airflow_server, profile, tmp_path, capsys,
                                                                monkeypatch):
    monkeypatch.setenv("TRAINYARD_PASSWORD", "not-the-password")
    assert main(["init", "-e", airflow_server.url, "--store", airflow_server.store_uri]) == 4
    assert "refused the login of user 'admin' (HTTP 401)" in _one_error(capsys)
    assert json.loads((profile / "credentials.json").read_text())["password"] == airflow_server.password

    down = f"http://127.0.0.1:{free_port()}"
    assert main(["init", "-e", down]) == 5
    assert f"cannot reach Airflow at {down}" in _one_error(capsys)
    monkeypatch.delenv("TRAINYARD_PASSWORD")

    assert main(["trigger", "no_such_dag"]) == 3
    line = _one_error(capsys)
    assert "has no DAG 'no_such_dag'" in line and "train_pipeline" in line

    assert main(["trigger", "train_pipeline", "-c", '{"gpu": -3}']) == 2
    line = _one_error(capsys)
    assert "rejected triggering 'train_pipeline'" in line and "gpu" in line

    monkeypatch.setenv("TRAINYARD_ENDPOINT", down)
    shutil.copytree(MNIST / "model-train", tmp_path / "src")
    shutil.copytree(MNIST / "data", tmp_path / "data")
    assert main(["deploy", "-s", str(tmp_path / "src"), "-d", str(tmp_path / "data")]) == 5
    assert "cannot reach Airflow" in _one_error(capsys)
    assert "exit codes:" in main.__globals__["EXIT_CODES"] and "5  unavailable" in main.__globals__["EXIT_CODES"]


def test_data_put_announces_the_commit_to_the_server_as_an_asset_event(airflow_server, profile, tmp_path, capsys):
    tsv = tmp_path / "captions.tsv"
    tsv.write_text("a red square\thttp://127.0.0.1:1/a.png\n")
    assert main(["data", "put", "rawdata", str(tsv), "--split", "line", "--json"]) == 0
    commit = json.loads(capsys.readouterr().out)["commit"]
    client = airflow_server.client()
    asset = next(a for a in client.call("GET", "/api/v2/assets?limit=100")["assets"]
             if a["uri"] == "trainyard://repos/rawdata")
    events = client.call("GET", f"/api/v2/assets/events?asset_id={asset['id']}")["asset_events"]
    assert [e for e in events if e["extra"].get("commit") == commit and e["extra"].get("repo") == "rawdata"]
