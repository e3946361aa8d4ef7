"""The ingest DAG: a 50-line manifest over HTTP, mapped over chunks of lines; a bad line commits nothing."""

from __future__ import annotations

import hashlib
import http.server
import json
import os

import pytest

from tests.conftest import serving
from trainyard.datums import put_file
from trainyard.store import open_store

pytestmark = pytest.mark.e2e


@pytest.fixture
def flaky_server(tmp_path):
    """50 files over HTTP on 127.0.0.1; `truncate` makes one file come back short, `fail_twice` a 503 twice."""
    root = tmp_path / "www"
    root.mkdir()
    for i in range(50):
        (root / f"f{i:02d}.bin").write_bytes(os.urandom(2048))
    state = {"truncate": None, "fail_twice": None, "calls": {}}

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(root), **k)

        def log_message(self, *a):
            pass

        def do_GET(self):
            name = self.path.lstrip("/")
            state["calls"][name] = state["calls"].get(name, 0) + 1
            if name == state["fail_twice"] and state["calls"][name] <= 2:
                self.send_error(503)
                return
            if name == state["truncate"]:
                body = (root / name).read_bytes()[:100]
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            super().do_GET()

    with serving(http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)) as base:
        yield base, root, state


def test_ingest_maps_over_chunks_and_commits_only_when_every_line_arrived(airflow_db, tmp_path, monkeypatch,
                                                                          flaky_server):
    from operators.inprocess import run_pipeline

    base, root, state = flaky_server
    uri = f"file://{tmp_path / 'store'}"
    monkeypatch.setenv("TRAINYARD_URL_ALLOW_LOOPBACK", "true")
    store = open_store(uri)
    lines = []
    for i in range(50):
        data = (root / f"f{i:02d}.bin").read_bytes()
        lines.append(json.dumps({"url": f"{base}/f{i:02d}.bin", "path": f"blobs/f{i:02d}.bin",
                                 "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}))
    manifest = tmp_path / "features.mf"
    manifest.write_text("\n".join(lines) + "\n")
    put_file(store, "manifests", manifest, split="line", target_file_datums=10)
    conf = {"manifest": "features.mf", "repo": "features", "lines_per_datum": 10}

    state["truncate"] = "f23.bin"  # line 24 of the manifest
    bad = run_pipeline("ingest", conf, store_uri=uri)
    assert bad["state"] == "failed"
    assert "features" not in store.repos()  # nothing was committed


    state["truncate"], state["fail_twice"] = None, "f25.bin"  # in the chunk that failed before
    good = run_pipeline("ingest", conf, store_uri=uri)
    assert good["state"] == "success"
    commit = store.resolve("features")
    assert len(commit.manifest) == 50 and commit.manifest["blobs/f25.bin"]["size"] == 2048
    assert state["calls"]["f25.bin"] == 3  # failed twice, then succeeded
    assert state["calls"]["f00.bin"] == 1  # chunks that succeeded in the failed run were not fetched again
