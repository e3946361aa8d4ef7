"""The trainyard CLI: bad inputs give one clear line, a documented exit code, and leave the store unchanged."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.conftest import REPO, store_keys
from trainyard.cli import main
from trainyard.store import open_store

MNIST = REPO / "templates" / "mnist"


@pytest.fixture
def bundles(tmp_path):
    shutil.copytree(MNIST / "model-train", tmp_path / "model-train")
    shutil.copytree(MNIST / "data", tmp_path / "data")
    return tmp_path / "model-train", tmp_path / "data"


@pytest.fixture
def seeded(tmp_path, bundles):
    """A store that already holds one deploy, so 'unchanged' means something."""
    uri = f"file://{tmp_path / 'store'}"
    src, data = bundles
    assert main(["--store", uri, "deploy", "-s", str(src), "-d", str(data), "--upload-only", "--json"]) == 0
    return uri


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: ")
    return err[0]


def test_upload_only_is_idempotent_and_sends_no_bytes_the_second_time(tmp_path, bundles, capsys):
    uri = f"file://{tmp_path / 'store'}"
    src, data = bundles
    assert main(["--store", uri, "deploy", "-s", str(src), "-d", str(data), "--upload-only", "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert main(["--store", uri, "deploy", "-s", str(src), "-d", str(data), "--upload-only", "--json"]) == 0
    second = json.loads(capsys.readouterr().out)
    assert (first["source"], first["data"]) == (second["source"], second["data"])
    assert first["uploaded"]["bytes"] > 0 and second["uploaded"] == {"blobs": 0, "bytes": 0}


@pytest.mark.parametrize(
    ("breakage", "extra", "code", "message"),
    [
        (lambda s, d: (s / "mnist/model/train").unlink(), [], 2, "has no model/train script; add an executable"),
        (lambda s, d: [p.unlink() for p in d.rglob("*.csv")], [], 2, "is empty; put the training data files"),
        (lambda s, d: None, ["--memory", "2GB"], 2, "invalid memory '2GB'.*2Gi"),
        (lambda s, d: None, ["--gpu", "-1"], 2, "cannot be negative"),
        (lambda s, d: None, ["-h", "[1, 2]"], 2, "must be a JSON object of lists"),
        (lambda s, d: None, ["-h", '{"C": 10}'], 2, r"'C' must be a list of values, e.g. \{\"C\": \[10\]\}"),
        (lambda s, d: None, ["-h", '{"C": []}'], 2, "'C' has an empty list"),
        (lambda s, d: None, ["-h", json.dumps({f"p{i}": list(range(10)) for i in range(4)})], 2,
         "10000 combinations .* above the cap of 256"),
        (lambda s, d: None, ["--metric", "accuracy:best"], 2, "invalid metric 'accuracy:best'"),
        (lambda s, d: None, ["--timeout", "0"], 2, "--timeout must be at least 1"),
    ],
    ids=["missing-train", "empty-data", "memory-2GB", "negative-gpu", "grid-not-object", "grid-scalar",
         "grid-empty-list", "grid-10000", "bad-metric", "zero-timeout"],
)
def test_bad_deploys(seeded, bundles, capsys, breakage, extra, code, message):
    src, data = bundles
    store = open_store(seeded)
    before = store_keys(store)
    breakage(src, data)
    assert main(["--store", seeded, "deploy", "-s", str(src), "-d", str(data), "--local", *extra]) == code
    assert pytest.importorskip("re").search(message, _one_error_line(capsys))
    assert store_keys(store) == before


def test_kubernetes_runner_with_file_store_is_refused_before_upload(seeded, bundles, capsys, monkeypatch):
    monkeypatch.setenv("TRAINYARD_RUNNER", "kubernetes")
    before = store_keys(open_store(seeded))
    src, data = bundles
    assert main(["--store", seeded, "deploy", "-s", str(src), "-d", str(data)]) == 2
    assert "cannot use the local store" in _one_error_line(capsys)
    assert store_keys(open_store(seeded)) == before


def test_unknown_short_id(seeded, capsys):
    capsys.readouterr()
    head = open_store(seeded).resolve("features").id
    unknown = "fffff" if not head.startswith("fffff") else "00000"
    assert main(["--store", seeded, "data", "inspect", f"features:{unknown}"]) == 3
    line = _one_error_line(capsys)
    assert f"no commit in repo 'features' starts with '{unknown}'" in line and "trainyard data log features" in line


def test_data_log_and_inspect(seeded, capsys):
    capsys.readouterr()
    assert main(["--store", seeded, "data", "log", "features", "--json"]) == 0
    (entry,) = json.loads(capsys.readouterr().out)
    assert entry["files"] == 3
    assert main(["--store", seeded, "data", "inspect", f"features:{entry['id'][:6]}"]) == 0
    assert "features/training/training.csv" in capsys.readouterr().out


def test_template_get_copies_the_mnist_bundles(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["template", "get", "mnist"]) == 0
    assert (tmp_path / "mnist/model-train/mnist/model/train").is_file()
    assert main(["template", "get", "nope"]) == 3
