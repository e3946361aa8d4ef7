"""Hostile and absurd input: numbers past sane bounds, empty metrics, control characters in file names, links out
of what is committed. Each is one error line and exit 2 with nothing stored, and the next normal command works."""

from __future__ import annotations

import json
import os
import re
import shutil
import threading

import pytest

from tests.conftest import REPO, store_keys
from trainyard import runs
from trainyard.cli import main
from trainyard.options import MAX_TIMEOUT
from trainyard.store import open_store

MNIST = REPO / "templates" / "mnist"


@pytest.fixture
def seeded(tmp_path):
    """The mnist bundles and a store that already holds them (so 'nothing stored' means something)."""
    shutil.copytree(MNIST / "model-train", tmp_path / "model-train")
    shutil.copytree(MNIST / "data", tmp_path / "data")
    src, data = tmp_path / "model-train", tmp_path / "data"
    uri = f"file://{tmp_path / 'store'}"
    assert main(["--store", uri, "deploy", "-s", str(src), "-d", str(data), "--upload-only", "--json"]) == 0
    return uri, src, data


def _one_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: "), err
    return err[0]


def _refused(capsys, scenario, store, argv: list[str], pattern: str) -> None:
    """argv is bad input: one error line matching pattern, exit 2, the store unchanged."""
    scenario.watch(store)
    before = store_keys(store)
    capsys.readouterr()
    assert main(argv) == 2
    line = _one_error(capsys)
    assert re.search(pattern, line), line
    assert store_keys(store) == before


@pytest.mark.parametrize(("extra", "pattern"), [
    (["--timeout", "9" * 20], rf"--timeout must be at most {MAX_TIMEOUT}, got 9{{20}}"),
    (["--parallelism", "9" * 20], r"--parallelism must be between 1 and 1024 .*got 9{20}"),
    (["--gpu", "9" * 20], r"gpu 9{20} is above the maximum"),
    (["--cpu", "9" * 20], r"cpu 9{20} is above the maximum"),
    (["--cpu", "0.0000001"], r"--cpu 0.0000001 is below the minimum 1m"),
    (["--memory", "1"], r"--memory 1 is below the minimum 1Mi"),
    (["--metric", ""], r"invalid metric '': use NAME or NAME:max / NAME:min"),
], ids=["timeout-20-digits", "parallelism-20-digits", "gpu-20-digits", "cpu-20-digits", "cpu-tiny", "memory-1-byte",
        "empty-metric"])
def test_absurd_options_are_refused_before_anything_is_remembered(seeded, capsys, scenario, extra, pattern):
    uri, src, data = seeded
    store = open_store(uri)
    _refused(capsys, scenario, store, ["--store", uri, "deploy", "-s", str(src), "-d", str(data), "--local", *extra],
             pattern)
    assert not store.list_keys("pipelines/")  # nothing remembered
    scenario.check(store)
    assert main(["--store", uri, "deploy", "-s", str(src), "-d", str(data), "--upload-only"]) == 0


def test_an_absurd_value_remembered_by_an_older_version_is_ignored_with_a_warning(seeded, capfd, scenario,
                                                                                   airflow_db, monkeypatch):
    """A store written before the bounds existed: later deploys run (the watchdog timer does not overflow)."""
    uri, src, data = seeded
    store = open_store(uri)
    runs.remember_settings(store, "train_pipeline", "mnist", {"timeout": int("9" * 20)})
    crashed = []
    monkeypatch.setattr(threading, "excepthook", crashed.append)
    scenario.watch(store)
    capfd.readouterr()
    assert main(["--store", uri, "deploy", "-s", str(src), "-d", str(data), "--local", "--json"]) == 0
    out, err = capfd.readouterr()
    run = json.loads(out)
    assert crashed == []
    assert runs.load_plan(store, "train_pipeline", run["run_id"]).timeout is None
    assert re.search(r"ignoring a remembered option of train_pipeline for mnist: remembered timeout must be at most "
                     rf"{MAX_TIMEOUT}.*deploy once with --timeout to replace it", err), err[-3000:]
    scenario.check(store)
    # Deploying with a sane --timeout replaces the remembered value, and the warning is gone.
    assert main(["--store", uri, "deploy", "-s", str(src), "-d", str(data), "--local", "--timeout", "600",
                 "--json"]) == 0
    assert "ignoring a remembered option" not in capfd.readouterr().err
    assert runs.remembered_settings(store, "train_pipeline", "mnist")["timeout"] == 600


@pytest.mark.parametrize("name", ["bad\nname.csv", "esc\x1b[2J.csv", "del\x7f.csv"], ids=["newline", "escape", "del"])
def test_file_names_with_control_characters_are_refused_on_every_path_that_commits(seeded, tmp_path, capsys,
                                                                                    scenario, name):
    uri, src, data = seeded
    store = open_store(uri)
    bad = data / "features" / name
    bad.write_text("1,2\n")
    escaped = re.escape(repr(f"features/{name}"))
    # deploy -d: the data bundle
    _refused(capsys, scenario, store, ["--store", uri, "deploy", "-s", str(src), "-d", str(data), "--upload-only"],
             rf"error: file {escaped} in .* has a control character")
    # deploy -s: the source bundle
    os.replace(bad, src / "mnist" / name)
    _refused(capsys, scenario, store, ["--store", uri, "deploy", "-s", str(src), "--upload-only"],
             rf"error: file {re.escape(repr(name))} in .* has a control character")
    # data put
    _refused(capsys, scenario, store, ["--store", uri, "data", "put", "raw", str(src / "mnist" / name), "--no-run"],
             rf"error: file {re.escape(repr(name))} has a control character")
    # data ingest: a manifest line that names such a path
    manifest = tmp_path / "raw.jsonl"
    manifest.write_text(json.dumps({"url": "https://example.com/a.csv", "path": f"dir/{name}"}) + "\n")
    _refused(capsys, scenario, store, ["--store", uri, "data", "ingest", "raw", str(manifest)],
             rf"path {re.escape(repr(f'dir/{name}'))} has a control character")
    os.remove(src / "mnist" / name)
    scenario.check(store)
    capsys.readouterr()
    assert main(["--store", uri, "deploy", "-s", str(src), "-d", str(data), "--upload-only"]) == 0


def test_links_out_of_what_is_committed_are_refused_by_every_command(seeded, tmp_path, capsys, scenario):
    uri, src, data = seeded
    store = open_store(uri)
    link = data / "features" / "passwd.csv"
    link.symlink_to("/etc/passwd")
    outside = r"symlink .*passwd.csv -> /etc/passwd points outside .*; copy the file into it or remove the link"
    _refused(capsys, scenario, store, ["--store", uri, "deploy", "-s", str(src), "-d", str(data), "--upload-only"],
             outside)
    _refused(capsys, scenario, store, ["--store", uri, "data", "put", "raw", str(link), "--no-run"], outside)
    link.unlink()
    scenario.check(store)
    capsys.readouterr()
    assert main(["--store", uri, "data", "put", "raw", str(data / "features" / "training" / "training.csv"),
                 "--no-run"]) == 0
