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
    assert store.read_entry(out.manifest["captions.tsv_0000000000000001.txt"]) == \
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


def _plan(uri: str, step: str = "upper", *, code_repo: str | None = None,
          transform: str = "builtin:fetch-urls") -> tuple[dict, list[dict]]:
    """Run a datum step's plan as its task does, outside a DAG run: (the plan XCom, the chunks it maps over)."""
    from types import SimpleNamespace

    from operators.datums import PlanDatumsOperator

    pushed: dict = {}
    plan = PlanDatumsOperator(task_id=f"{step}_plan", step=step, inputs=[{"repo": "rawdata", "glob": "/captions.tsv/*"}],
                              code_repo=code_repo, transform=transform, store_uri=uri, max_tasks=8)
    chunks = plan.execute({"dag": SimpleNamespace(dag_id="scale"),
                           "ti": SimpleNamespace(xcom_push=lambda key, value: pushed.__setitem__(key, value))})
    return pushed["plan"], chunks


def _chunk_datums(store, chunk: dict) -> list[str]:
    """A chunk's datums: in the chunk, or (a large one) a slice of the pending list the plan stored as a blob."""
    if "pending" in chunk:
        return json.loads(store.get_blob_bytes(chunk["pending"]))[chunk["start"]:chunk["stop"]]
    return chunk["datums"]


def _mark_processed(store, plan: dict, chunks: list[dict], *, per_datum: bool = False) -> None:
    """Record each planned datum as processed, as the datum tasks do (one writer per task), or as trainyard did
    before batches (one record object per datum)."""
    from trainyard.datums import DatumInput, RecordWriter, datum_key, work_units
    from trainyard.records import DatumRecord
    from trainyard.store import keys

    commit = store.get_commit(plan["inputs"][0]["repo"], plan["inputs"][0]["commit"])
    units = work_units([DatumInput(name="rawdata", manifest=commit.manifest, glob="/captions.tsv/*")])
    for task in chunks:
        with RecordWriter(store, "scale", "upper") as records:
            for datum in _chunk_datums(store, task):
                key = datum_key(units[datum]["id"], plan["code_version"], {})
                record = DatumRecord(datum=datum, datum_id=units[datum]["id"], key=key, code=plan["code_version"],
                                     outputs={datum.rsplit("/", 1)[1]: units[datum]["files"][datum.lstrip("/")]})
                if per_datum:
                    store.put_json(keys.datum_record("scale", "upper", key), record.to_json())
                else:
                    records.add(record)


def test_a_re_run_after_changing_ten_of_20000_datums_plans_exactly_those_ten_in_a_few_reads(tmp_path, monkeypatch):
    import hashlib

    from trainyard.store import open_store

    uri = f"file://{tmp_path / 'store'}"
    store = open_store(uri)

    def manifest(changed: set[int]) -> dict:
        return {f"captions.tsv/{i:016d}": {"sha256": hashlib.sha256(f"{i} {i in changed}".encode()).hexdigest(),
                                           "size": 80} for i in range(20000)}

    store.commit("rawdata", manifest(set()))
    plan, chunks = _plan(uri)
    assert (plan["datums"], plan["pending"], len(chunks)) == (20000, 20000, 8)
    # 2,500 datums a task: too many for an argv string, so each task gets its slice of one stored list
    from operators.datums import DatumStepOperator

    assert [c["stop"] - c["start"] for c in chunks] == [2500] * 8 and len({c["pending"] for c in chunks}) == 1
    task = DatumStepOperator(task_id="upper", chunk=chunks[3], plan_task="upper_plan", step_name="upper",
                             combine="single", transform="builtin:fetch-urls")
    assert task.literal_arguments[-2:] == ["--datums-from", f"{chunks[3]['pending']}:7500:10000"]
    _mark_processed(store, plan, chunks[:1], per_datum=True)  # one task's worth recorded the old way
    _mark_processed(store, plan, chunks[1:])
    assert _plan(uri)[0]["pending"] == 0  # per-datum records and batches both count

    changed = {7, 1500, 2600, 4000, 9999, 10000, 12345, 15000, 18000, 19999}
    store.commit("rawdata", manifest(changed))
    # the requests the plan makes of the store, as S3 would serve (and bill) them
    requests: list[str] = []
    for name in ("read", "exists", "list"):
        method = getattr(store.backend, name)
        setattr(store.backend, name, lambda key, _m=method, _n=name: requests.append(f"{_n} {key}") or _m(key))
    monkeypatch.setattr("operators.hooks.open_store", lambda *args, **kwargs: store)
    plan, chunks = _plan(uri)
    assert plan["pending"] == 10
    assert sorted(d for c in chunks for d in _chunk_datums(store, c)) == [
        f"/captions.tsv/{i:016d}" for i in sorted(changed)]
    assert all("datums" in c for c in chunks)  # ten datums go in the chunks themselves
    on_records = [r for r in requests if r.split()[1].startswith("datums/")]
    assert len(on_records) <= 12, on_records  # listings and key lists: not one request per datum (20,000)


SCALE_DAG_FILE = """
import pendulum
from airflow.sdk import DAG

from operators.datums import datum_step

with DAG("scale", schedule=None, start_date=pendulum.datetime(2026, 1, 1), catchup=False) as dag:
    datum_step("upper", inputs=[{"repo": "rawdata", "glob": "/captions.tsv/*"}], code_repo="steps",
               transform="upper/transform", output_repo="upper-out", max_tasks=8)
"""


def _metadata_bytes(root) -> dict[str, int]:
    """Every commit, branch and tree object of a file:// store, by path, with its size (no blobs, no packs)."""
    return {str(path.relative_to(root)): path.stat().st_size for top in ("trees", "repos")
            for path in (root / top).rglob("*") if path.is_file() and not path.name.endswith(".lock")}


@pytest.mark.e2e
def test_a_ten_line_append_to_100000_datums_writes_under_1pct_metadata_and_the_step_processes_only_it(
        airflow_db, tmp_path, monkeypatch):
    root = tmp_path / "store"
    uri = f"file://{root}"
    monkeypatch.setenv("TRAINYARD_STORE", uri)
    monkeypatch.setenv("FLAKY_MARKER", str(tmp_path / "flaky"))
    store = open_store(uri)
    code = tmp_path / "transform"
    code.write_text(TRANSFORM)
    store.commit("steps", store.upload_files({"upper/transform": code}).manifest)

    captions = tmp_path / "captions.tsv"
    with open(captions, "w") as fh:
        for block in range(0, 1_000_000, 100_000):
            fh.write("".join(f"caption {i}: a person rides a wave at dusk\n" for i in range(block, block + 100_000)))
    first, datums = put_file(store, "rawdata", captions, split="line", target_file_datums=10)
    assert datums == 100_000
    before = _metadata_bytes(root)

    # A first run processed every datum: recorded through the real record writer, with the keys the plan makes.
    plan, chunks = _plan(uri, code_repo="steps", transform="upper/transform")
    assert (plan["datums"], plan["pending"]) == (100_000, 100_000)
    _mark_processed(store, plan, chunks)

    with open(captions, "a") as fh:
        fh.write("".join(f"caption {i}: appended\n" for i in range(1_000_000, 1_000_010)))
    second, datums = put_file(store, "rawdata", captions, split="line", target_file_datums=10)
    assert datums == 100_001 and second.parent == first.id
    after = _metadata_bytes(root)
    written = sum(size for key, size in after.items() if before.get(key) != size)
    assert written < 0.01 * sum(before.values()), (written, sum(before.values()))

    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "scale.py").write_text(SCALE_DAG_FILE)
    local = "airflow.dag_processing.bundles.local.LocalDagBundle"
    monkeypatch.setenv("AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST", json.dumps([
        {"name": "dags-folder", "classpath": local, "kwargs": {}},
        {"name": "scale-test", "classpath": local, "kwargs": {"path": str(dags)}}]))
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(dags / "scale.py"))
    assert bag.import_errors == {}
    run = bag.dags["scale"].test()
    assert run.state == "success"
    planned = _xcoms("scale", run.run_id, "upper_plan")[(-1, "plan")]
    assert (planned["datums"], planned["pending"], planned["skipped"], planned["tasks"]) == (100_001, 1, 100_000, 1)
    (only,) = [v for (_, key), v in _xcoms("scale", run.run_id, "upper").items() if key == "return_value"]
    assert only["processed"] == 1 and [d["datum"] for d in only["datums"]] == [f"/captions.tsv/{100_000:016d}"]
    out = store.resolve("upper-out").manifest
    assert len(out) == 100_001
    assert store.read_entry(out[f"captions.tsv_{100_000:016d}.txt"]).startswith(b"CAPTION 1000000: APPENDED")
