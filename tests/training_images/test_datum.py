"""The datum step's task at scale: a large chunk is a slice of the plan's stored pending list (not an argv list),
and its result, the XCom, names at most a few dozen datums, failures first."""

from __future__ import annotations

import json
from pathlib import Path

from training_images import phases
from training_images.datum.__main__ import RESULT_DATUMS, DatumPlan, main
from trainyard.datums import datum_records, put_file
from trainyard.store import open_store


def _step(tmp_path, monkeypatch, lines: int):
    uri = f"file://{tmp_path / 'store'}"
    monkeypatch.setenv("TRAINYARD_STORE", uri)
    monkeypatch.setenv("TRAINYARD_RESULT_PATH", str(tmp_path / "result.json"))
    store = open_store(uri)
    data = tmp_path / "captions.tsv"
    data.write_text("".join(f"line {i}\n" for i in range(lines)))
    commit, _ = put_file(store, "rawdata", data, split="line", target_file_datums=1)
    inputs = [{"name": "rawdata", "repo": "rawdata", "commit": commit.id, "glob": "/captions.tsv/*"}]
    argv = ["--inputs", json.dumps(inputs), "--code-version", "builtin:fetch-urls:1", "--transform",
            "builtin:fetch-urls", "--step", "fetch", "--pipeline", "scale"]
    pending = sorted(f"/{path}" for path in commit.manifest)
    return store, argv, pending


def test_a_large_chunk_is_a_slice_of_the_stored_pending_list(tmp_path, monkeypatch):
    store, argv, pending = _step(tmp_path, monkeypatch, 12)
    sha = store.put_blob_bytes(json.dumps(pending).encode())
    work = tmp_path / "work"
    assert main([*argv, "--datums-from", f"{sha}:4:9", "--phase", "prepare", "--work", str(work)]) == 0
    plan = DatumPlan.model_validate_json((work / phases.PLAN_FILE).read_text())
    assert [p.datum for p in plan.pending] == pending[4:9]
    laid_out = sorted(p.name for p in (Path(plan.pending[0].folder) / "in").rglob("*") if p.is_file())
    assert laid_out == [pending[4].rsplit("/", 1)[1]]  # its input, ready for the transform


def test_a_task_result_lists_a_few_dozen_datums_failures_first(tmp_path, monkeypatch):
    store, argv, pending = _step(tmp_path, monkeypatch, RESULT_DATUMS + 10)
    work = tmp_path / "work"
    chunk = ["--datums", json.dumps(pending)]
    assert main([*argv, *chunk, "--phase", "prepare", "--work", str(work)]) == 0
    (work / phases.DONE_FILE).touch()  # the transform's container ended before it ran any datum
    assert main([*argv, *chunk, "--phase", "finish", "--work", str(work)]) == 1
    result = json.loads((tmp_path / "result.json").read_text())
    assert (result["failed"], result["datums_left_out"], len(result["datums"])) == (RESULT_DATUMS + 10, 10,
                                                                                    RESULT_DATUMS)
    assert {d["status"] for d in result["datums"]} == {"failed"}
    assert datum_records(store, "scale", "fetch").keys() == set()  # no failed datum is recorded as processed
