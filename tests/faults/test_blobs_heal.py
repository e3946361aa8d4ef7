"""Blobs heal (issue 13, defect 2): real bytes of a stored blob are corrupted on file:// and on S3 (moto).

`trainyard fsck` names exactly that blob and the commits and models that use it and exits 7; `--repair` plus putting
the data again restores it and training works again. A training that reads the corrupt blob fails with a run failure
that names CorruptBlob, not "the train task did not run or left no result", and the next deploy heals the store.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainyard.cli import main
from trainyard.store import keys, open_store

TRAIN = """#!/usr/bin/env python3
\"\"\"A tiny training: count the data's rows and report the count as a metric.\"\"\"
import glob, json, os, sys
out = sys.argv[1]
files = sorted(glob.glob(os.path.join(os.environ["TRAINYARD_DATA_DIR"], "*.csv")))
rows = sum(len(open(f).read().splitlines()) for f in files)
for sub in ("model", "metrics"):
    os.makedirs(os.path.join(out, sub), exist_ok=True)
open(os.path.join(out, "model", "model.txt"), "w").write(str(rows))
json.dump({"rows": rows}, open(os.path.join(out, "metrics", "metrics.json"), "w"))
print(f"rows: {rows}")
"""
ROWS = "".join(f"{i},{i % 10}\n" for i in range(2000)).encode()


@pytest.fixture
def bundles(tmp_path):
    src, data = tmp_path / "src", tmp_path / "data"
    (src / "tiny" / "model").mkdir(parents=True)
    (src / "tiny" / "model" / "train").write_text(TRAIN)
    (src / "tiny" / "model" / "train").chmod(0o755)
    data.mkdir()
    (data / "rows.csv").write_bytes(ROWS)
    (data / "header.csv").write_text("id,label\n")
    return src, data


@pytest.fixture
def deployed(store_uri, bundles, airflow_db, monkeypatch, capsys):
    """The tiny bundle trained once (one model) in the store under test."""
    monkeypatch.setenv("TRAINYARD_STORE", store_uri)
    first = _cli(capsys, "deploy", "-s", str(bundles[0]), "-d", str(bundles[1]), "--local", "--json")
    assert first[0] == 0 and first[1]["state"] == "success", first
    return first[1]


def _cli(capsys, *args: str) -> tuple[int, dict, str]:
    """Run `trainyard --json ARGS` in-process: (exit code, the JSON on stdout, stderr)."""
    capsys.readouterr()
    code = main(["--json", *args])
    out, err = capsys.readouterr()
    return code, json.loads(out) if out.strip() else {}, err


def _corrupt(store_uri: str, key: str) -> None:
    """Write other bytes to the blob's key, behind the store's back (disk or bucket)."""
    if store_uri.startswith("file://"):
        Path(store_uri.removeprefix("file://"), key).write_bytes(b"bit rot where the rows were\n")
        return
    import boto3

    bucket, _, prefix = store_uri.removeprefix("s3://").partition("/")
    boto3.client("s3").put_object(Bucket=bucket, Key=f"{prefix}/{key}", Body=b"bit rot where the rows were\n")


def test_fsck_names_the_corrupt_blob_and_repair_with_a_reupload_restores_it(store_uri, bundles, deployed, scenario,
                                                                           capsys):
    store = open_store(store_uri)
    src, data = bundles
    data_commit = store.resolve("data", deployed["data"])
    sha = data_commit.manifest["rows.csv"]["sha256"]
    scenario.watch(store)
    _corrupt(store_uri, keys.blob(sha))

    code, report, err = _cli(capsys, "fsck")
    assert code == 7 and "fsck --repair" in err.strip().splitlines()[-1]
    (damage,) = report["damaged"]
    assert (damage["key"], damage["kind"]) == (keys.blob(sha), "corrupt")
    assert damage["commits"] == [data_commit.ref] and damage["paths"] == [f"{data_commit.ref} rows.csv"]
    assert damage["models"] == [deployed["model_id"]]

    code, report, _ = _cli(capsys, "fsck", "--repair")
    assert code == 7 and report["damaged"][0]["action"].startswith("quarantined")
    assert store.has_blob(sha) is False and store.exists(keys.quarantine(sha))

    code, put, _ = _cli(capsys, "deploy", "-s", str(src), "-d", str(data), "--upload-only")
    assert code == 0 and put["uploaded"] == {"blobs": 1, "bytes": len(ROWS)}
    assert _cli(capsys, "fsck")[0] == 0
    code, again, _ = _cli(capsys, "deploy", "-s", str(src), "-d", str(data), "--local", "--no-cache")
    assert code == 0 and again["state"] == "success" and again["metrics"]["rows"] == 2001
    scenario.check(store)


@pytest.mark.parametrize("store_uri", ["file"], indirect=True)
def test_training_on_a_corrupt_blob_fails_naming_corrupt_blob_and_the_next_deploy_heals(store_uri, bundles, deployed,
                                                                                       scenario, capsys):
    store = open_store(store_uri)
    src, data = bundles
    sha = store.resolve("data", deployed["data"]).manifest["rows.csv"]["sha256"]
    scenario.watch(store)
    _corrupt(store_uri, keys.blob(sha))

    code, failed, _ = _cli(capsys, "deploy", "-s", str(src), "-d", str(data), "--local", "--no-cache")
    assert code == 1 and failed["state"] == "failed"
    (failure,) = failed["failures"]
    assert "CorruptBlob" in failure["error"] and keys.blob(sha) in failure["error"], failure
    assert "did not run" not in failure["error"] and "exit code" in failure["error"]
    # `trainyard list` shows the same cause (run #0 is the newest)
    assert main(["info", "-i", "0"]) == 0
    assert "CorruptBlob" in capsys.readouterr().out
    # The read quarantined the blob, so following the advice (put the data again) writes it and training works.
    code, healed, _ = _cli(capsys, "deploy", "-s", str(src), "-d", str(data), "--local", "--no-cache")
    assert code == 0 and healed["uploaded"]["blobs"] == 1 and healed["state"] == "success", healed
    scenario.check(store)
