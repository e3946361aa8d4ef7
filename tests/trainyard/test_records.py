"""Typed records: documents written by older trainyard releases (tests/fixtures/records, from the writers in git
history) are read through the types on both stores, by the core and the CLI; new records carry their schema version;
a record from a newer trainyard or a malformed one is a one-line error; fields a reader does not know are kept."""

from __future__ import annotations

import json

import pytest

from tests.conftest import REPO
from trainyard import datums, registry, runs
from trainyard.cli import main
from trainyard.records import RecordError, RunRecord
from trainyard.store import keys, open_store

FIXTURES = REPO / "tests" / "fixtures" / "records"
RUN = "manual__2025-11-20T10:00:00+00:00"
BEST = "25a6634263c1_3a6eb0790f39:f64551fcd6f0"
FAILED = "25a6634263c1_3a6eb0790f39:3946ca64ff78"
DATA = "3a6eb0790f39ac87c94f3856b2dd2c5d110e6811602261a9a923d3bb23adc8b7"
DATUM_KEY = "2c70e12b7a0646f92279f427c7b38e7334d8e5389cff167a1dc30e73f826b683"


def _fixture(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def _old_store(store) -> None:
    """What a store written by those releases holds, byte for byte as they wrote it."""
    store.put_json(keys.run_results("train_pipeline", RUN), _fixture("results-fed654c.json"))
    store.put_json(keys.model(BEST), _fixture("model-04e2336.json"))
    store.put_json(keys.registry("mnist"), _fixture("registry-fed654c.json"))
    store.put_json(keys.datum_record("caption_pipeline", "images", DATUM_KEY), _fixture("datum-record-5bc9605.json"))
    store.put_json(keys.run_plan("train_pipeline", RUN), _fixture("plan-fed654c.json"))
    store.put_json(keys.run_trained("train_pipeline", RUN, BEST), _fixture("trained-fed654c.json"))
    store.put_json(keys.run_failed("train_pipeline", RUN, FAILED), _fixture("failed-fed654c.json"))


def test_records_written_before_schema_versions_are_read_through_the_types(store):
    _old_store(store)

    (run,) = runs.list_results(store, "train_pipeline")
    assert run.schema_version == 1 and run.run_id == RUN
    # AI Center's fields, added after this record was written, are filled in from what it holds.
    assert run.parameters.pipeline == "train_pipeline"
    assert (run.parameters.inputs.package, run.parameters.inputs.train_data) == ("mnist", f"features:{DATA}")
    assert (run.run_summary.start_at, run.run_summary.end_at, run.run_summary.score) == (1763632800.0, 1763632861.5,
                                                                                         0.9813)
    assert run.best.model_id == BEST and run.best.metrics["accuracy_test"] == 0.9813
    assert [(f.label, f.error, f.exit_code) for f in run.failures] == [("C=10", "MemoryError", 1)]
    assert run.training_data.data == f"features:{DATA}"

    model = registry.load_model(store, BEST)
    assert (model.lineage.parent, model.lineage.airflow.map_index, model.artifacts) == (None, None, [])
    assert model.lineage.data.message == "digits, 1797 rows" and model.metrics["report"].startswith("  precision")
    assert registry.find_model(store, "25a66").model_id == BEST
    assert registry.find_version(store, "mnist", "best").model_id == BEST

    record = datums.load_record(store, "caption_pipeline", "images", DATUM_KEY)
    assert record.inputs is None and record.model_extra["input"] == f"rawdata:{DATA}"
    assert record.outputs["image.png"]["size"] == 2048

    plan = runs.load_plan(store, "train_pipeline", RUN)
    assert [c.model_id for c in plan.combinations] == [BEST, FAILED]
    assert runs.load_trained(store, "train_pipeline", RUN, BEST).map_index == "0"
    assert runs.load_failure(store, "train_pipeline", RUN, FAILED).tail[-1] == "MemoryError"


def _cli(capsys, argv: list[str], code: int = 0) -> str:
    capsys.readouterr()
    assert main(argv) == code
    return capsys.readouterr().out


def test_the_cli_shows_old_records(tmp_path, capsys):
    uri = f"file://{tmp_path / 'store'}"
    _old_store(open_store(uri))

    (listed,) = json.loads(_cli(capsys, ["--store", uri, "list", "--json"]))
    assert listed["parameters"]["run_id"] == RUN and listed["schema_version"] == 1
    table = _cli(capsys, ["--store", uri, "list"])
    assert RUN in table and "accuracy_test=0.9813" in table and "partial" in table

    ranked = json.loads(_cli(capsys, ["--store", uri, "info", "-i", "0", "--json"]))
    assert [m["model_id"] for m in ranked["models"]] == [BEST]
    assert ranked["failures"][0]["error"] == "MemoryError"

    shown = _cli(capsys, ["--store", uri, "info", "--model", "25a66"])
    assert "parent    none (first version of this model)" in shown and "digits, 1797 rows" in shown
    assert "(text) precision  recall" in shown

    versions = json.loads(_cli(capsys, ["--store", uri, "models", "mnist", "--json"]))
    assert versions["aliases"] == {"latest": "1.0", "best": "1.0"} and versions["versions"][0]["model_id"] == BEST


def test_new_records_carry_their_schema_version_and_keep_fields_they_do_not_know(store):
    old = _fixture("registry-fed654c.json") | {"owner": "ada"}  # a field some other writer added
    store.put_json(keys.registry("mnist"), old)

    registry.add_version(store, "mnist", model_id="m2", metrics={"accuracy_test": 0.99}, run_id="r2",
                         pipeline="train_pipeline", metric="accuracy_test:max", models=["m2"])

    raw = store.get_json(keys.registry("mnist"))
    assert raw["schema_version"] == 1 and raw["owner"] == "ada"
    assert [v["version"] for v in raw["versions"]] == ["1.0", "1.1"]
    assert raw["versions"][0] == old["versions"][0]
    assert raw["aliases"] == {"latest": "1.1", "best": "1.1"}


def test_a_record_from_a_newer_trainyard_is_refused_in_one_line(tmp_path, capsys):
    uri = f"file://{tmp_path / 'store'}"
    store = open_store(uri)
    store.put_json(keys.run_results("train_pipeline", RUN), _fixture("results-fed654c.json") | {"schema_version": 2})

    capsys.readouterr()
    assert main(["--store", uri, "list"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert err == (f"error: {keys.run_results('train_pipeline', RUN)} in the store {uri} has schema_version 2, "
                   "newer than this trainyard reads (1); upgrade trainyard to read it")


def test_a_malformed_record_names_where_it_is_and_what_is_wrong(store):
    broken = _fixture("results-fed654c.json")
    del broken["run_summary"]["state"]
    store.put_json(keys.run_results("train_pipeline", RUN), broken)

    with pytest.raises(RecordError, match=r"_results\.json in the store .* is not a valid RunRecord: "
                                          r"run_summary\.state: Field required"):
        runs.read_results(store, "train_pipeline", RUN)
    with pytest.raises(RecordError, match="schema_version 'one'; it must be a whole number"):
        RunRecord.load(_fixture("results-fed654c.json") | {"schema_version": "one"})
