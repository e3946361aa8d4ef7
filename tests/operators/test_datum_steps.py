"""Datum steps under dag.test(): one mapped task per chunk, outputs keyed by content, re-runs process only new datums."""

from __future__ import annotations

import json

import pytest

from trainyard.datums import put_file
from trainyard.store import open_store

TRANSFORM = """#!/usr/bin/env python3
import os, pathlib, sys
src, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
datum = os.environ["TRAINYARD_DATUM"].strip("/").replace("/", "_")
text = "".join(p.read_text() for p in sorted(src.rglob("*")) if p.is_file())
flaky = pathlib.Path(os.environ["FLAKY_MARKER"])
if "line 7\\n" in text and not flaky.exists():
    flaky.write_text("failed once")
    sys.exit("transient failure on the datum holding line 7")
(out / f"{datum}.txt").write_text(text.upper())
print(f"{datum}: {len(text.splitlines())} lines")
"""


# Airflow 3 runs only DAGs it has parsed from a file in a configured bundle (dag.test syncs bundles to the DB), so
# the test DAG is a file in a bundle of its own.
DAG_FILE = """
import pendulum
from airflow.sdk import DAG

from operators.datums import datum_step

with DAG("datum_test", schedule=None, start_date=pendulum.datetime(2026, 1, 1), catchup=False) as dag:
    _, _, upper = datum_step("upper", inputs=[{"repo": "rawdata", "glob": "/captions.tsv/*"}], code_repo="steps",
                             transform="upper/transform", output_repo="upper-out", max_tasks=8)
    # a join, Pachyderm's join_on: each raw datum with the upper-cased output named after it
    pair_plan, _, _ = datum_step(
        "pair", combine="inner", code_repo="steps", transform="pair/transform", output_repo="pairs", nest_outputs=True,
        inputs=[{"name": "raw", "repo": "rawdata", "glob": "/captions.tsv/*", "join_on": "/captions.tsv/(*)"},
                {"name": "upper", "repo": "upper-out", "glob": "/*", "join_on": "/captions.tsv_(*).txt"}])
    upper >> pair_plan
"""

PAIR = """#!/usr/bin/env python3
import os, pathlib, sys
src, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
raw = "".join(p.read_text() for p in sorted((src / "raw").rglob("*")) if p.is_file())
upper = "".join(p.read_text() for p in sorted((src / "upper").rglob("*")) if p.is_file())
assert upper == raw.upper(), (raw, upper)
(out / "pair.txt").write_text(f"{len(raw.splitlines())} lines matched")  # the same name for every datum
"""


def _lines(n: int) -> str:
    return "".join(f"line {i}\n" for i in range(n))


def _asset_events(uri: str, run_id: str) -> list[dict]:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = (session.query(AssetEvent).join(AssetModel, AssetEvent.asset_id == AssetModel.id)
                .filter(AssetModel.uri == uri, AssetEvent.source_run_id == run_id).all())
        return [row.extra for row in rows]


def _xcoms(dag_id: str, run_id: str, task_id: str) -> dict[int, object]:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(XComModel).filter_by(dag_id=dag_id, run_id=run_id, task_id=task_id).all()
        return {(row.map_index, row.key): row.value for row in rows}


@pytest.mark.e2e
def test_a_datum_step_processes_only_new_datums_and_retries_a_failed_one_alone(airflow_db, tmp_path, monkeypatch):
    uri = f"file://{tmp_path / 'store'}"
    monkeypatch.setenv("TRAINYARD_STORE", uri)
    monkeypatch.setenv("FLAKY_MARKER", str(tmp_path / "flaky"))
    store = open_store(uri)
    captions = tmp_path / "captions.tsv"
    captions.write_text(_lines(100))
    put_file(store, "rawdata", captions, split="line", target_file_datums=5)
    code, pair = tmp_path / "transform", tmp_path / "pair"
    code.write_text(TRANSFORM)
    pair.write_text(PAIR)
    report = store.upload_files({"upper/transform": code, "pair/transform": pair})
    store.commit("steps", report.manifest)

    dags = tmp_path / "dags"
    dags.mkdir()
    dag_file = dags / "datum_test.py"
    dag_file.write_text(DAG_FILE)
    local = "airflow.dag_processing.bundles.local.LocalDagBundle"
    monkeypatch.setenv("AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST", json.dumps([
        {"name": "dags-folder", "classpath": local, "kwargs": {}},
        {"name": "datum-test", "classpath": local, "kwargs": {"path": str(dags)}}]))
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(dag_file))
    assert bag.import_errors == {}
    dag = bag.dags["datum_test"]

    first = dag.test()
    assert first.state == "success"
    plan = _xcoms("datum_test", first.run_id, "upper_plan")
    assert plan[(-1, "plan")]["pending"] == 20 and plan[(-1, "plan")]["tasks"] == 8
    chunks = _xcoms("datum_test", first.run_id, "upper")
    results = [v for (idx, key), v in chunks.items() if key == "return_value"]
    assert len(results) == 8 and sum(r["processed"] for r in results) == 20
    flaky = [d for r in results for d in r["datums"] if d["attempts"] == 2]
    assert len(flaky) == 1 and flaky[0]["status"] == "processed"  # the failing datum was retried alone
    out = store.resolve("upper-out")
    assert len(out.manifest) == 20
    assert store.get_blob_bytes(out.manifest["captions.tsv_0000000000000001.txt"]["sha256"]) == \
        "".join(f"LINE {i}\n" for i in range(5, 10)).encode()
    pairs = store.resolve("pairs")
    assert sorted(pairs.manifest) == [f"{i:016d}/pair.txt" for i in range(20)]  # nested per datum
    # each collect announces its commit as an Airflow Asset event, which DAGs can be scheduled on
    assert _asset_events("trainyard://repos/upper-out", first.run_id) == [{"repo": "upper-out", "commit": out.id,
                                                                            "created": True}]

    captions.write_text(_lines(105))  # append 5 lines: exactly one new datum
    put_file(store, "rawdata", captions, split="line", target_file_datums=5)
    second = dag.test()
    assert second.state == "success"
    plan = _xcoms("datum_test", second.run_id, "upper_plan")[(-1, "plan")]
    assert (plan["datums"], plan["pending"], plan["skipped"], plan["tasks"]) == (21, 1, 20, 1)
    (only,) = [v for (idx, key), v in _xcoms("datum_test", second.run_id, "upper").items() if key == "return_value"]
    assert only["processed"] == 1 and only["datums"][0]["datum"] == "/captions.tsv/0000000000000020"
    assert len(store.resolve("upper-out").manifest) == 21
    pair_plan = _xcoms("datum_test", second.run_id, "pair_plan")[(-1, "plan")]
    assert (pair_plan["datums"], pair_plan["pending"]) == (21, 1)  # only the new pairing is joined again
    assert len(store.resolve("pairs").manifest) == 21

    third = dag.test()  # nothing new: the mapped step has no tasks, collect still runs and changes nothing
    assert third.state == "success"
    assert _xcoms("datum_test", third.run_id, "upper_plan")[(-1, "plan")]["pending"] == 0
    assert store.resolve("upper-out").id == store.resolve("upper-out").id
    assert json.loads(json.dumps(store.resolve("upper-out").manifest))  # committed, readable
