"""fsck over a datum step's records: batches, their key lists and indexes, and per-datum records written before
batches; a missing blob or batch is named with the record that uses it (both backends)."""

from __future__ import annotations

from trainyard import fsck
from trainyard.datums import compact_records, datum_records, save_records
from trainyard.records import DatumRecord
from trainyard.store import keys

PIPELINE, STEP = "captions", "upper"


def _record(store, i: int, *, stored: bool = True) -> DatumRecord:
    out = f"output {i}".encode()
    sha = store.put_blob_bytes(out) if stored else "f" * 64
    return DatumRecord(datum=f"/captions.tsv/{i:016d}", datum_id=f"{i:064x}", key=f"{i + 1000:064x}", code="v1",
                       outputs={f"{i}.txt": {"sha256": sha, "size": len(out)}}, log=store.put_blob_bytes(b"log"))


def test_fsck_follows_batches_key_lists_indexes_and_old_per_datum_records(store):
    old = _record(store, 0)
    store.put_json(keys.datum_record(PIPELINE, STEP, old.key), old.to_json())
    batch = save_records(store, PIPELINE, STEP, [_record(store, i) for i in range(1, 4)])
    compact_records(store, datum_records(store, PIPELINE, STEP))
    report = fsck.check(store)
    assert report.damaged == []
    assert report.records == 4  # the per-datum record, the batch, its key list and the index
    # each record's output and log, the key list's and the index's batch
    assert report.references == 4 * 2 + 2
    assert store.exists(keys.datum_batch(PIPELINE, STEP, batch))


def test_a_missing_output_blob_and_a_missing_batch_are_named_with_their_records(store):
    broken = _record(store, 7, stored=False)
    batch = save_records(store, PIPELINE, STEP, [_record(store, 6), broken])
    other = save_records(store, PIPELINE, STEP, [_record(store, 8)])
    store.delete(keys.datum_batch(PIPELINE, STEP, other))
    damaged = {d.key: d for d in fsck.check(store).damaged}
    assert set(damaged) == {keys.blob("f" * 64), keys.datum_batch(PIPELINE, STEP, other)}
    assert damaged[keys.blob("f" * 64)].others == [
        f"datum batch {keys.datum_batch(PIPELINE, STEP, batch)} ({broken.datum})"]
    assert damaged[keys.datum_batch(PIPELINE, STEP, other)].kind == "missing"
    assert damaged[keys.datum_batch(PIPELINE, STEP, other)].others == [
        f"datum keys {keys.datum_batch_keys(PIPELINE, STEP, other)}"]
