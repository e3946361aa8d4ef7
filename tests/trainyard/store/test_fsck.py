"""fsck: counts on a sound store, and each kind of damage named with what uses it (both backends)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from trainyard import fsck
from trainyard.cli import main
from trainyard.records import AirflowTask, CommitInfo, Lineage, ModelRecord
from trainyard.store import keys, open_store
from trainyard.store.versioned import canonical_json

CONTENTS = {"features/train.csv": b"1,0\n" * 100, "features/test.csv": b"2,1\n" * 10, "README": b"digits"}


def _put(store, tmp_path: Path, repo: str = "features", contents: dict[str, bytes] = CONTENTS):
    files = {}
    for rel, data in contents.items():
        path = tmp_path / repo / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        files[rel] = path
    commit, _ = store.commit(repo, store.upload_files(files, repo=repo).manifest)
    return commit


def _model(store, source, data, outputs: dict[str, bytes]) -> ModelRecord:
    """A registered model whose outputs manifest lists `outputs`, as the train and register steps store it."""
    manifest = {rel: {"sha256": store.put_blob_bytes(blob), "size": len(blob)} for rel, blob in outputs.items()}
    record = ModelRecord(
        model_id=f"{source.id[:12]}_{data.id[:12]}:abcdef123456", name=source.repo, metrics={"acc": 1.0}, params={},
        outputs=store.put_blob_bytes(canonical_json(manifest)), log=store.put_blob_bytes(b"training log"),
        env="image", registered_at=time.time(),
        lineage=Lineage(source=CommitInfo(repo=source.repo, commit=source.id),
                        data=CommitInfo(repo=data.repo, commit=data.id), params_hash="0" * 12,
                        airflow=AirflowTask(run_id="manual__1")))
    store.put_record(keys.model(record.model_id), record)
    return record


def test_a_sound_store_has_no_damage_and_the_counts_add_up(store, tmp_path):
    commit = _put(store, tmp_path)
    report = fsck.check(store)
    assert report.damaged == []
    assert report.blobs == 3 and report.bytes == sum(len(b) for b in CONTENTS.values())
    # three manifest entries, and the branch's head (its log names the same commit once)
    assert report.references == 4
    assert report.records == 2  # the commit and the branch
    assert store.get_commit("features", commit.id)  # nothing was touched


def test_a_missing_blob_is_named_with_the_commit_and_path_that_use_it(store, tmp_path):
    commit = _put(store, tmp_path)
    sha = commit.manifest["features/train.csv"]["sha256"]
    store.delete(keys.blob(sha))
    report = fsck.check(store)
    (damage,) = report.damaged
    assert (damage.key, damage.kind) == (keys.blob(sha), "missing")
    assert damage.commits == [commit.ref] and damage.paths == [f"{commit.ref} features/train.csv"]
    assert report.needs_upload == [damage]


def test_a_model_whose_outputs_blob_is_gone_is_named(store, tmp_path):
    source = _put(store, tmp_path, "mnist", {"mnist/model/train": b"#!/bin/sh\n"})
    data = _put(store, tmp_path)
    model = _model(store, source, data, {"model/model.pkl": b"weights"})
    assert fsck.check(store).damaged == []
    store.delete(keys.blob(model.outputs))
    (damage,) = fsck.check(store).damaged
    assert (damage.key, damage.kind, damage.models, damage.commits) == (keys.blob(model.outputs), "missing",
                                                                         [model.model_id], [])


def test_a_corrupt_blob_names_the_commit_and_the_models_trained_on_it(store, tmp_path):
    source = _put(store, tmp_path, "mnist", {"mnist/model/train": b"#!/bin/sh\n"})
    data = _put(store, tmp_path)
    model = _model(store, source, data, {"model/model.pkl": b"weights"})
    weights = keys.blob(store.put_blob_bytes(b"weights"))
    sha = data.manifest["features/test.csv"]["sha256"]
    store.backend.write(keys.blob(sha), b"bit rot")
    (damage,) = fsck.check(store).damaged
    assert (damage.key, damage.kind) == (keys.blob(sha), "corrupt")
    assert damage.commits == [data.ref] and damage.models == [model.model_id]
    # a model's own outputs count as used by it directly
    store.backend.write(weights, b"not weights")
    damaged = {d.key: d for d in fsck.check(store).damaged}
    assert damaged[weights].models == [model.model_id] and damaged[weights].kind == "corrupt"


def test_repair_quarantines_only_the_corrupt_blob(store, tmp_path):
    commit = _put(store, tmp_path)
    sha = commit.manifest["README"]["sha256"]
    store.backend.write(keys.blob(sha), b"bit rot")
    before = set(store.list_keys(""))
    report = fsck.check(store, repair=True)
    assert [d.key for d in report.damaged] == [keys.blob(sha)]
    assert report.damaged[0].action.startswith("quarantined")
    after = set(store.list_keys(""))
    assert before - after == {keys.blob(sha)} and after - before == {keys.quarantine(sha)}
    assert store.get_bytes(keys.quarantine(sha)) == b"bit rot"
    # still damaged until the data is put again; then sound
    assert [d.kind for d in fsck.check(store).damaged] == ["missing"]
    _put(store, tmp_path)
    assert fsck.check(store).damaged == []


def test_cli_json_and_exit_codes(tmp_path, capsys):
    uri = f"file://{tmp_path / 'store'}"
    commit = _put(open_store(uri), tmp_path)
    assert main(["--store", uri, "fsck", "--json"]) == 0
    clean = json.loads(capsys.readouterr().out)
    assert (clean["blobs"], clean["damaged"], clean["needs_upload"]) == (3, [], [])
    sha = commit.manifest["features/test.csv"]["sha256"]
    (tmp_path / "store" / keys.blob(sha)).write_bytes(b"bit rot")
    assert main(["--store", uri, "fsck", "--json"]) == 7
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert [d["key"] for d in report["damaged"]] == [keys.blob(sha)] == report["needs_upload"]
    assert report["damaged"][0]["commits"] == [commit.ref]
    err = captured.err.strip().splitlines()
    assert err[-1].startswith("error: 1 damaged object(s)") and "fsck --repair" in err[-1]
    assert main(["--store", uri, "fsck"]) == 7
    out = capsys.readouterr().out
    assert keys.blob(sha) in out and "corrupt" in out and commit.ref in out


@pytest.mark.parametrize("store_uri", ["file"], indirect=True)
def test_past_the_listing_cap_a_head_manifest_is_no_proof_for_a_quarantined_blob(store, tmp_path):
    # More blobs than one upload of a few files lists (about 2,000): the head manifest is what proves presence.
    for i in range(2100):
        store.put_blob_bytes(f"filler {i}".encode())
    commit = _put(store, tmp_path)
    sha = commit.manifest["features/train.csv"]["sha256"]
    store.backend.write(keys.blob(sha), b"bit rot")
    assert fsck.check(store, repair=True).damaged[0].action.startswith("quarantined")
    files = {rel: tmp_path / "features" / rel for rel in CONTENTS}
    report = store.upload_files(files, repo="features")
    assert (report.blobs_uploaded, report.bytes_uploaded) == (1, len(CONTENTS["features/train.csv"]))
    assert fsck.check(store).damaged == []
