"""Shared fixtures: an isolated Airflow home, a real S3 API (moto server on 127.0.0.1) and both store backends."""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import shutil
import sys
import tempfile
import threading
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# pytest imports this file as `conftest`, and a test's `from tests.conftest import ...` imports it a second time as
# `tests.conftest`: both must set up the same home, or Airflow, already configured by the first, reads one
# metadata DB while the CLI processes a later test starts write to the other. One home per pytest process.
_owner, _, _home = os.environ.get("TRAINYARD_TESTS_HOME", "").partition(":")
_SESSION_HOME = Path(_home) if _owner == str(os.getpid()) else Path(tempfile.mkdtemp(prefix="trainyard-tests-"))
os.environ["TRAINYARD_TESTS_HOME"] = f"{os.getpid()}:{_SESSION_HOME}"

# Before anything imports Airflow: point it at this checkout's airflow.cfg and a private home, so tests never
# touch the developer's own store, venvs or metadata database.
os.environ["TRAINYARD_HOME"] = str(REPO)
os.environ["AIRFLOW_HOME"] = str(_SESSION_HOME / "airflow")
os.environ["AIRFLOW_CONFIG"] = str(REPO / "airflow.cfg")
os.environ["TRAINYARD_VENV_CACHE"] = str(_SESSION_HOME / "venvs")
# No `trainyard init` profile of the developer's may turn the CLI tests into server-mode calls.
os.environ["TRAINYARD_CONFIG_DIR"] = str(_SESSION_HOME / "config")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
for var in ("TRAINYARD_STORE", "TRAINYARD_RUNNER", "AWS_ENDPOINT_URL", "TRAINYARD_ENDPOINT", "TRAINYARD_PASSWORD"):
    os.environ.pop(var, None)
sys.path.insert(0, str(REPO))
# Airflow puts the plugins folder on sys.path; the UI plugin package (trainyard_ui) is imported from there.
sys.path.insert(0, str(REPO / "plugins"))


@pytest.fixture(scope="session")
def moto_endpoint():
    """A real S3 API served over HTTP on 127.0.0.1 (moto), on a free port, stopped at the end."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one access-log line per S3 request drowns failures
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_env(moto_endpoint, monkeypatch):
    """Credentials and endpoint for the moto server, the way a user would export them."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing-key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret-key")
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    return moto_endpoint


@pytest.fixture
def s3_bucket(s3_env):
    """A fresh bucket with versioning on."""
    import boto3

    name = f"trainyard-{uuid.uuid4().hex[:12]}"
    client = boto3.client("s3", endpoint_url=s3_env)
    client.create_bucket(Bucket=name)
    client.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    return name


@pytest.fixture(params=["file", "s3"])
def store_uri(request, tmp_path):
    """The same contract runs against file:// in a tmp dir and s3:// on the moto server."""
    if request.param == "file":
        return f"file://{tmp_path / 'store'}"
    bucket = request.getfixturevalue("s3_bucket")
    return f"s3://{bucket}/prefix"


@pytest.fixture
def store(store_uri):
    from trainyard.store import open_store

    return open_store(store_uri)


@pytest.fixture(scope="session")
def airflow_db():
    """Airflow's SQLite metadata DB, created in-process once per session (no CLI start)."""
    from airflow.utils import db

    db.initdb()
    return os.environ["AIRFLOW_HOME"]


@pytest.fixture(scope="session")
def airflow_server(moto_endpoint, tmp_path_factory):
    """A real Airflow on 127.0.0.1 (api-server, scheduler, dag-processor, triggerer; LocalExecutor; PostgreSQL
    metadata when installed, else SQLite with the reason printed) whose store is an s3:// bucket on the moto server.
    The server gets the store's credentials only as the `trainyard_store` connection. Shared by the server-mode
    tests; stopped at the end of the session."""
    import json

    import boto3

    from trainyard.local_airflow import LocalAirflow

    bucket = f"server-{uuid.uuid4().hex[:10]}"
    creds = {"aws_access_key_id": "server-key-id", "aws_secret_access_key": "server-secret-FAKE-0123456789"}
    boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1", **creds).create_bucket(Bucket=bucket)
    connection = {"conn_type": "aws", "login": creds["aws_access_key_id"],
                  "password": creds["aws_secret_access_key"],
                  "extra": {"endpoint_url": moto_endpoint, "region_name": "us-east-1"}}
    work = tmp_path_factory.mktemp("airflow-server")
    server = LocalAirflow(work, env={
        "TRAINYARD_STORE": f"s3://{bucket}/store",
        "TRAINYARD_RUNNER": "local",
        "TRAINYARD_VENV_CACHE": os.environ["TRAINYARD_VENV_CACHE"],
        "AIRFLOW_CONN_TRAINYARD_STORE": json.dumps(connection),
        "AWS_DEFAULT_REGION": "us-east-1",
    })
    print(f"\nairflow_server: {server.url}, metadata in {server.database_note}, logs in {server.logs}")
    server.start()
    try:
        server.wait_for_dags(["train_pipeline", "caption_pipeline", "predict"])
        server.store_uri = f"s3://{bucket}/store"
        server.store_credentials = creds
        server.moto_endpoint = moto_endpoint
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def image_server():
    """The captioning template's own image server (serve.py) on a free port of 127.0.0.1, stopped at the end."""
    import subprocess

    proc = subprocess.Popen([sys.executable, str(REPO / "templates" / "captioning" / "serve.py"), "--port", "0",
                             "--quiet"], stdout=subprocess.PIPE, text=True)
    try:
        yield proc.stdout.readline().strip().rstrip("/")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@contextlib.contextmanager
def serving(server):
    """Run an HTTP server bound to 127.0.0.1 port 0 on a thread; yield its base URL; stop it afterwards."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def static_server(directory: Path) -> http.server.ThreadingHTTPServer:
    """A quiet static file server for `directory` on 127.0.0.1, a free port (start it with `serving`)."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
    handler.log_message = lambda *a, **k: None
    return http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)


@pytest.fixture
def sleepy(tmp_path):
    """The sleepy-train bundle and its data, copied out of the checkout: its train sleeps $SLEEPY_SECONDS."""
    src, data = tmp_path / "src", tmp_path / "data"
    shutil.copytree(REPO / "tests" / "fixtures" / "sleepy-train", src)
    shutil.copytree(REPO / "tests" / "fixtures" / "sleepy-train-data", data)
    return src, data


def store_keys(store) -> set[str]:
    """Every key in a store, to prove a failed command left it unchanged."""
    return set(store.backend.list(""))
