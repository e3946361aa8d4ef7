"""`trainyard deploy -m data.mf` and `data ingest`: kaos manifests served over HTTP become a data commit."""

from __future__ import annotations

import hashlib
import json

import pytest

from tests.conftest import REPO, serving, static_server, store_keys
from trainyard.cli import main
from trainyard.store import open_store

MNIST = REPO / "templates" / "mnist"


@pytest.fixture
def served_mnist():
    """The mnist data folder over HTTP on 127.0.0.1 (a free port), stopped at the end."""
    with serving(static_server(MNIST / "data")) as base:
        yield base


def _manifest(tmp_path, base: str, name: str = "features.mf") -> tuple:
    lines, expected = [], {}
    for csv in sorted((MNIST / "data").rglob("*.csv")):
        rel = csv.relative_to(MNIST / "data").as_posix()
        data = csv.read_bytes()
        expected[rel] = hashlib.sha256(data).hexdigest()
        lines.append(json.dumps({"url": f"{base}/{rel}", "path": rel, "sha256": expected[rel], "size": len(data)}))
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path, expected


def test_deploy_with_a_manifest_ingests_the_data_commit(tmp_path, served_mnist, capsys, monkeypatch):
    monkeypatch.setenv("TRAINYARD_URL_ALLOW_LOOPBACK", "true")  # the local demo server is on 127.0.0.1
    uri = f"file://{tmp_path / 'store'}"
    mf, expected = _manifest(tmp_path, served_mnist)
    assert main(["--store", uri, "deploy", "-s", str(MNIST / "model-train"), "-m", str(mf), "--upload-only",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    commit = open_store(uri).resolve("features")
    assert out["data"] == commit.id
    assert {p: e["sha256"] for p, e in commit.manifest.items()} == expected
    # the same bytes as deploying the folder: a manifest is just another way to bring a data commit
    assert main(["--store", uri, "deploy", "-s", str(MNIST / "model-train"), "-d", str(MNIST / "data"),
                 "--upload-only", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["data"] == commit.id


def test_loopback_urls_are_refused_without_the_local_allowance(tmp_path, served_mnist, capsys, monkeypatch):
    monkeypatch.delenv("TRAINYARD_URL_ALLOW_LOOPBACK", raising=False)
    uri = f"file://{tmp_path / 'store'}"
    assert main(["--store", uri, "deploy", "-s", str(MNIST / "model-train"), "-d", str(MNIST / "data"),
                 "--upload-only", "--json"]) == 0
    store = open_store(uri)
    before = store_keys(store)
    mf, _ = _manifest(tmp_path, served_mnist)
    capsys.readouterr()
    assert main(["--store", uri, "deploy", "-s", str(MNIST / "model-train"), "-m", str(mf), "--upload-only"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: ") and "features.mf:1" in line and "url_allow_loopback" in line
    assert store_keys(store) == before
    assert main(["--store", uri, "deploy", "-s", str(MNIST / "model-train"), "--local"]) == 2
    assert "exactly one of -d/--data DIR or -m/--manifest FILE" in capsys.readouterr().err
    assert main(["--store", uri, "deploy", "-s", str(MNIST / "model-train"), "--upload-only"]) == 0  # source alone


def test_data_ingest_reports_what_it_downloaded(tmp_path, served_mnist, capsys, monkeypatch):
    monkeypatch.setenv("TRAINYARD_URL_ALLOW_LOOPBACK", "true")
    uri = f"file://{tmp_path / 'store'}"
    mf, expected = _manifest(tmp_path, served_mnist, name="digits.mf")
    assert main(["--store", uri, "data", "ingest", "digits", str(mf), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["repo"] == "digits" and report["files"] == len(expected) and report["retries"] == 0
    assert sorted(open_store(uri).resolve("digits").manifest) == sorted(expected)
