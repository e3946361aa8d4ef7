"""Datum records at scale: a task publishes one batch (and its key list), a plan reads a few objects, collect compacts
them into an index; per-datum records written before batches still count; concurrent writers lose nothing."""

from __future__ import annotations

import hashlib
import threading

from trainyard.datums import (
    RecordWriter,
    compact_records,
    datum_records,
    has_record,
    load_record,
    load_records,
    save_records,
)
from trainyard.records import DatumRecord
from trainyard.store import keys

PIPELINE, STEP = "captions", "upper"


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _record(i: int) -> DatumRecord:
    return DatumRecord(datum=f"/captions.tsv/{i:016d}", datum_id=_sha(f"id {i}"), key=_sha(f"key {i}"), code="v1",
                       outputs={f"{i}.txt": {"sha256": _sha(f"out {i}"), "size": 10}}, log=_sha("log"))


class _Counted:
    """Counts the requests a store's backend serves (what S3 would bill), by kind."""

    def __init__(self, store) -> None:
        self.counts: dict[str, int] = {}
        self.lock = threading.Lock()
        backend = store.backend
        for name in ("read", "read_versioned", "exists", "list", "write"):
            setattr(backend, name, self._wrap(name, getattr(backend, name)))

    def _wrap(self, name, method):
        def counted(*args, **kwargs):
            with self.lock:
                self.counts[name] = self.counts.get(name, 0) + 1
            return method(*args, **kwargs)
        return counted

    def reset(self) -> dict[str, int]:
        counts, self.counts = self.counts, {}
        return counts


def _step_objects(store) -> dict[str, int]:
    """How many objects of each kind the step holds: batch, keys, index, record."""
    kinds: dict[str, int] = {}
    for key in store.list_keys(keys.datum_step_prefix(PIPELINE, STEP)):
        kind = keys.datum_part(key, PIPELINE, STEP)[0]
        kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def test_a_task_publishes_batches_and_a_plan_reads_a_few_objects_not_one_per_datum(store):
    records = [_record(i) for i in range(2500)]
    with RecordWriter(store, PIPELINE, STEP, size=1000) as writer:
        for record in records:
            writer.add(record)
    assert _step_objects(store) == {"batch": 3, "keys": 3}  # 2,500 records in 3 objects, each with its key list

    counted = _Counted(store)
    recorded = datum_records(store, PIPELINE, STEP)
    assert recorded.keys() == {r.key for r in records}
    reads = counted.reset()
    assert reads.get("exists", 0) == 0 and reads["read"] == 3 and reads["list"] <= 3

    # collect compacts the key lists into one index: the next plan reads that one object
    assert compact_records(store, recorded) is not None
    assert _step_objects(store) == {"batch": 3, "keys": 3, "index": 1}
    counted.reset()
    assert datum_records(store, PIPELINE, STEP).keys() == {r.key for r in records}
    assert counted.reset()["read"] == 1
    assert compact_records(store, datum_records(store, PIPELINE, STEP)) is None  # nothing new: no second index

    # a record is found by its key; collect reads only the batches that hold the keys it wants
    assert load_record(store, PIPELINE, STEP, records[1234].key) == records[1234]
    wanted = [records[5].key, records[6].key]
    counted.reset()
    got = list(load_records(store, recorded, recorded.locate(wanted)))
    assert sorted(r.key for r in got) == sorted(wanted) and counted.reset()["read"] == 1


def test_per_datum_records_written_before_batches_still_count_and_collect_moves_them_into_batches(store):
    old = [_record(i) for i in range(40)]
    for record in old:  # what trainyard wrote before batches: one object per datum
        store.put_json(keys.datum_record(PIPELINE, STEP, record.key), record.to_json())
    new = [_record(i) for i in range(40, 60)]
    save_records(store, PIPELINE, STEP, new)

    recorded = datum_records(store, PIPELINE, STEP)
    assert recorded.keys() == {r.key for r in old + new}
    assert has_record(store, PIPELINE, STEP, old[3].key) and has_record(store, PIPELINE, STEP, new[3].key)
    assert not has_record(store, PIPELINE, STEP, _sha("never processed"))
    assert load_record(store, PIPELINE, STEP, old[7].key) == old[7]

    # collect reads them once, one by one, and keeps them in a batch; the index then sends readers there
    located = recorded.locate(r.key for r in old + new)
    got = {r.key: r for r in load_records(store, recorded, located)}
    assert got == {r.key: r for r in old + new}
    with RecordWriter(store, PIPELINE, STEP) as writer:
        for record in old:
            writer.add(got[record.key])
    assert compact_records(store, recorded, migrated=[r.key for r in old]) is not None

    counted = _Counted(store)
    again = datum_records(store, PIPELINE, STEP)
    assert again.keys() == {r.key for r in old + new} and again.records == set()
    assert list(load_records(store, again, again.locate([old[0].key]))) == [old[0]]
    reads = counted.reset()
    assert reads["read"] == 2  # the index, then the one batch: no per-datum object read


def test_concurrent_tasks_and_collects_never_lose_each_others_records(store):
    batches = [[_record(1000 * t + i) for i in range(50)] for t in range(6)]
    threads = [threading.Thread(target=save_records, args=(store, PIPELINE, STEP, b)) for b in batches[:4]]
    for thread in threads:
        thread.start()
    stale = datum_records(store, PIPELINE, STEP)  # read while the tasks publish: may miss some of them
    for thread in threads:
        thread.join()
    save_records(store, PIPELINE, STEP, batches[4])
    fresh = datum_records(store, PIPELINE, STEP)
    compact_records(store, fresh)  # an index of the first five batches
    save_records(store, PIPELINE, STEP, batches[5])
    stale.generation = fresh.generation  # a collect that read before the others compacts last, with less in it
    stale.uncovered = 1
    compact_records(store, stale)

    everything = {r.key for b in batches for r in b}
    assert datum_records(store, PIPELINE, STEP).keys() == everything
    assert {r.key for r in load_records(store, datum_records(store, PIPELINE, STEP),
                                        datum_records(store, PIPELINE, STEP).locate(everything))} == everything


def test_a_batch_is_written_once_and_never_overwritten(store):
    records = [_record(i) for i in range(3)]
    first = save_records(store, PIPELINE, STEP, records)
    stored = store.get_json(keys.datum_batch(PIPELINE, STEP, first))
    assert save_records(store, PIPELINE, STEP, records) == first  # the same content is the same object
    other = save_records(store, PIPELINE, STEP, [*records[:2], _record(9)])
    assert other != first and store.get_json(keys.datum_batch(PIPELINE, STEP, first)) == stored
    assert stored["schema_version"] == 1 and [r["key"] for r in stored["records"]] == [r.key for r in records]


def test_datum_keys_are_the_keys_datum_key_gives_one_at_a_time():
    from trainyard.datums import datum_key, datum_keys

    ids = [_sha(f"id {i}") for i in range(50)] + ['a "quoted" \\ id', "é\u2028", ""]
    for code, params in (("builtin:fetch-urls:1", {}), (_sha("code"), {"lr": 0.1, "name": 'é"\n', "n": [1, None]})):
        assert datum_keys(ids, code, params) == [datum_key(i, code, params) for i in ids]


def test_a_small_run_adds_a_key_list_not_a_new_index_until_enough_have_gathered(store, monkeypatch):
    import trainyard.datums

    monkeypatch.setattr(trainyard.datums, "COMPACT_LISTS", 3)
    save_records(store, PIPELINE, STEP, [_record(i) for i in range(100)])
    assert compact_records(store, datum_records(store, PIPELINE, STEP)) is not None  # the first index
    for run in range(2):  # two runs of 5 changed datums: each adds one small key list and no index
        save_records(store, PIPELINE, STEP, [_record(1000 + 10 * run + i) for i in range(5)])
        assert compact_records(store, datum_records(store, PIPELINE, STEP)) is None
    assert _step_objects(store) == {"batch": 3, "keys": 3, "index": 1}
    assert len(datum_records(store, PIPELINE, STEP).keys()) == 110
    save_records(store, PIPELINE, STEP, [_record(2000)])  # the third list not in the index: folded into a new one
    assert compact_records(store, datum_records(store, PIPELINE, STEP)) is not None
    save_records(store, PIPELINE, STEP, [_record(3000 + i) for i in range(40)])  # over a quarter of the index
    assert compact_records(store, datum_records(store, PIPELINE, STEP)) is not None
    assert _step_objects(store)["index"] == 3
    recorded = datum_records(store, PIPELINE, STEP)
    assert (len(recorded.keys()), recorded.uncovered) == (151, 0)
