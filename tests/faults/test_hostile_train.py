"""A hostile `train` hunts for the store's secret in /proc, its environment and the credentials files; it finds none.

The store is S3 (moto over HTTP) with a fresh random secret key, also written where users keep it: ~/.aws/credentials
and the `trainyard init` profile. The bundle's `train` (tests/fixtures/hostile-train) reads everything it can and
saves it as artifacts and in its log. Afterwards the secret, in plain, base64 (each alignment) and hex, is looked
for in every object of the bucket and every log. With isolation off, the same hunt finds it: the test can fail.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shutil
from pathlib import Path

import pytest

from tests.conftest import REPO
from trainyard.cli import main
from trainyard.store import open_store

FIXTURE = REPO / "tests" / "fixtures"


def forms(secret: str) -> list[bytes]:
    """The secret as bytes, hex, and base64 at each of the three alignments it can take inside a longer text."""
    raw = secret.encode()
    found = [raw, raw.hex().encode()]
    for pad in range(3):
        encoded = base64.b64encode(b"\0" * pad + raw)
        # Drop the characters that also encode the padding or the bytes after the secret.
        start = (pad * 4 + 2) // 3
        found.append(encoded[start:len(encoded) - 4])
    return found


@pytest.fixture
def hostile(tmp_path, s3_bucket, monkeypatch):
    """A user with a random store secret in the environment, ~/.aws/credentials and the trainyard profile."""
    secret = "hunt" + secrets.token_hex(16)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    home = tmp_path / "home"
    (home / ".aws").mkdir(parents=True)
    (home / ".aws" / "credentials").write_text(f"[default]\naws_access_key_id = x\naws_secret_access_key = {secret}\n")
    monkeypatch.setenv("HOME", str(home))
    profile = tmp_path / "profile"
    profile.mkdir()
    (profile / "credentials.json").write_text(json.dumps({"aws_secret_access_key": secret}))
    monkeypatch.setenv("TRAINYARD_CONFIG_DIR", str(profile))
    src, data = tmp_path / "src", tmp_path / "data"
    shutil.copytree(FIXTURE / "hostile-train", src)
    shutil.copytree(FIXTURE / "hostile-train-data", data)
    return {"secret": secret, "uri": f"s3://{s3_bucket}/store", "bucket": s3_bucket, "src": src, "data": data}


def _deploy(capsys, h) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["--store", h["uri"], "deploy", "-s", str(h["src"]), "-d", str(h["data"]), "--local", "--json"])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def _everything_stored(bucket: str, endpoint: str) -> dict[str, bytes]:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint)
    keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for o in page.get("Contents", [])]
    return {k: client.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}


def _leaks(secret: str, texts: dict[str, bytes]) -> list[str]:
    return sorted(f"{name} ({form[:12]!r}...)" for name, text in texts.items() for form in forms(secret) if form in text)


def _logs() -> dict[str, bytes]:
    logs = Path(os.environ["AIRFLOW_HOME"]) / "logs"
    return {str(p): p.read_bytes() for p in logs.rglob("*") if p.is_file()} if logs.exists() else {}


@pytest.mark.e2e
def test_hostile_train_finds_no_secret_anywhere(airflow_db, hostile, capsys, s3_env, scenario):
    from training_images.sandbox import pfs_support

    ok, reason = pfs_support()
    if not ok:
        pytest.skip(f"no sandbox on this machine, so user code would be refused, not isolated: {reason}")
    code, output = _deploy(capsys, hostile)
    assert code == 0, output[-2000:]
    stored = _everything_stored(hostile["bucket"], s3_env)
    loot = [k for k in stored if k.startswith("store/blobs/") and b'"env":' in stored[k][:20]]
    assert loot, "the hostile train's loot was not uploaded: the hunt did not run"
    hunted = json.loads(re.search(r"hunted: (\{[^}]*\})", output).group(1))
    # It looked: at least itself in /proc, and the files under $HOME and /tmp.
    assert hunted["processes"] >= 1 and hunted["files_read"] > 0, hunted
    assert _leaks(hostile["secret"], {**stored, **_logs(), "cli output": output.encode()}) == []
    # The sandbox showed it no process outside its own namespace: two at most (bubblewrap's init and itself).
    assert hunted["processes"] <= 3, hunted
    store = open_store(hostile["uri"])
    scenario.watch(store)
    # The next normal command works: the same deploy again is a cache hit.
    code, output = _deploy(capsys, hostile)
    assert code == 0 and '"cached": true' in output, output[-2000:]
    scenario.check(store)


@pytest.mark.e2e
def test_without_isolation_the_same_hunt_finds_the_secret(airflow_db, hostile, capsys, s3_env, monkeypatch):
    monkeypatch.setenv("TRAINYARD_ISOLATION", "none")
    code, output = _deploy(capsys, hostile)
    assert code == 0, output[-2000:]
    stored = _everything_stored(hostile["bucket"], s3_env)
    assert _leaks(hostile["secret"], stored), "the unisolated hunt should have found the secret (the check is blind)"
    assert "runs unisolated and can read the store's credentials" in output + "".join(
        v.decode(errors="replace") for v in _logs().values())
