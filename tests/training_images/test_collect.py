"""Collect: the same output commit and provenance from batches as from the per-datum records trainyard wrote before
them, and an old store's records move into batches and an index on its first collect."""

from __future__ import annotations

import hashlib
import json
import random

import pytest

from training_images.collect.__main__ import main as collect
from trainyard.cli import main as cli
from trainyard.datums import DatumInput, RecordWriter, datum_key, datum_records, load_provenance, work_units
from trainyard.records import DatumRecord
from trainyard.store import keys, open_store

PIPELINE, STEP, VERSION = "captions", "upper", "builtin:fetch-urls:1"
INPUT = {"name": "rawdata", "repo": "rawdata", "glob": "/captions.tsv/*", "join_on": None}


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _records(store) -> tuple[list[dict], list[DatumRecord]]:
    """40 datums (some with the same bytes) and a record for each, as datum tasks write them."""
    manifest = {f"captions.tsv/{i:016d}": {"sha256": _sha(f"datum {i % 37}"), "size": 80} for i in range(40)}
    commit, _ = store.commit("rawdata", manifest)
    units = work_units([DatumInput(name="rawdata", manifest=commit.manifest, glob=INPUT["glob"])])
    records = {}
    for datum, unit in units.items():
        key = datum_key(unit["id"], VERSION, {})
        index = int(datum.rsplit("/", 1)[1])
        records.setdefault(key, DatumRecord(
            datum=datum, datum_id=unit["id"], key=key, code=VERSION, inputs=[{**INPUT, "commit": commit.id}],
            # every datum also writes common.txt, alike: provenance names the last datum in path order
            outputs={f"{index % 37}.txt": {"sha256": _sha(f"out {index % 37}"), "size": 9},
                     "common.txt": {"sha256": _sha("common"), "size": 6}}))
    return [{**INPUT, "commit": commit.id}], list(records.values())


def _expected(store, inputs: list[dict], records: list[DatumRecord], nest: bool) -> tuple[dict, dict]:
    """What collect wrote before batches: a walk over the datums in path order, the last writer of a path naming it."""
    commit = store.get_commit("rawdata", inputs[0]["commit"])
    units = work_units([DatumInput(name="rawdata", manifest=commit.manifest, glob=INPUT["glob"])])
    by_key = {r.key: r for r in records}
    merged, origin = {}, {}
    for datum, unit in sorted(units.items()):
        key = datum_key(unit["id"], VERSION, {})
        prefix = datum.strip("/").replace("/", "_") + "/" if nest else ""
        for rel, entry in by_key[key].outputs.items():
            merged[prefix + rel], origin[prefix + rel] = entry, {"datum": datum, "key": key}
    return merged, origin


def _collect(store, uri: str, inputs: list[dict], nest: bool):
    argv = ["--inputs", json.dumps(inputs), "--code-version", VERSION, "--transform", "builtin:fetch-urls",
            "--step", STEP, "--pipeline", PIPELINE, "--output", "upper-out", *(["--nest"] if nest else [])]
    assert collect(argv) == 0
    commit = store.resolve("upper-out")
    return commit, load_provenance(store, commit)


@pytest.mark.parametrize("nest", [False, True])
def test_collect_builds_the_same_commit_and_provenance_from_batches_as_from_per_datum_records(tmp_path, monkeypatch,
                                                                                             capsys, nest):
    monkeypatch.setenv("TRAINYARD_RESULT_PATH", str(tmp_path / "result.json"))
    commits = {}
    for layout in ("per-datum", "batches"):
        uri = f"file://{tmp_path / layout}"
        monkeypatch.setenv("TRAINYARD_STORE", uri)
        store = open_store(uri)
        inputs, records = _records(store)
        if layout == "per-datum":  # what trainyard wrote before batches
            for record in records:
                store.put_json(keys.datum_record(PIPELINE, STEP, record.key), record.to_json())
        else:  # tasks of 7 datums each, in no particular order
            random.Random(5).shuffle(records)
            for i in range(0, len(records), 7):
                with RecordWriter(store, PIPELINE, STEP) as writer:
                    for record in records[i:i + 7]:
                        writer.add(record)
        merged, origin = _expected(store, inputs, records, nest)
        commit, provenance = _collect(store, uri, inputs, nest)
        assert commit.manifest == merged
        assert {path: f.model_dump() for path, f in provenance.files.items()} == origin
        assert origin["common.txt" if not nest else "captions.tsv_0000000000000039/common.txt"]["datum"] == \
            "/captions.tsv/0000000000000039"
        commits[layout] = commit.id
        # `trainyard info --file` finds the datum's record (in a batch, or its own object) through the provenance
        capsys.readouterr()
        path = "captions.tsv_0000000000000005/5.txt" if nest else "5.txt"
        assert cli(["--store", uri, "info", "--file", f"upper-out:{path}", "--json"]) == 0
        shown = json.loads(capsys.readouterr().out)
        assert (shown["datum"], shown["inputs"][0]["commit"]) == ("/captions.tsv/0000000000000005", inputs[0]["commit"])

        # the records are now in batches with one index; collecting again changes nothing
        recorded = datum_records(store, PIPELINE, STEP)
        assert recorded.records == set() and len(recorded.keys()) == 40 and recorded.uncovered == 0
        written: list[str] = []  # what the store is asked to write: an unchanged commit's provenance is not rewritten
        watched = open_store(uri)
        write = watched.backend.write
        watched.backend.write = lambda key, *a, _seen=written, _write=write, **kw: _seen.append(key) or _write(key, *a,
                                                                                                        **kw)
        with monkeypatch.context() as patched:
            patched.setattr("trainyard.contract.store_from_env", lambda _store=watched: _store)
            again, again_provenance = _collect(store, uri, inputs, nest)
        assert again.id == commit.id and again_provenance == provenance
        assert keys.provenance("upper-out", commit.id) not in written
    assert commits["per-datum"] == commits["batches"]


def test_collect_names_the_datums_without_a_record_and_commits_nothing(tmp_path, monkeypatch, capsys):
    uri = f"file://{tmp_path / 'store'}"
    monkeypatch.setenv("TRAINYARD_STORE", uri)
    monkeypatch.setenv("TRAINYARD_RESULT_PATH", str(tmp_path / "result.json"))
    store = open_store(uri)
    inputs, records = _records(store)
    with RecordWriter(store, PIPELINE, STEP) as writer:
        for record in records[1:]:
            writer.add(record)
    argv = ["--inputs", json.dumps(inputs), "--code-version", VERSION, "--transform", "builtin:fetch-urls",
            "--step", STEP, "--pipeline", PIPELINE, "--output", "upper-out"]
    assert collect(argv) == 1
    assert capsys.readouterr().err.strip() == f"1 datum(s) have no output: {records[0].datum}"
    assert store.branch_head("upper-out") is None
