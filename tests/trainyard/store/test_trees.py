"""Manifests as trees, packed datums and segmented branch logs: metadata in proportion to change, at scale."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from trainyard import fsck
from trainyard.datums import put_file
from trainyard.errors import CorruptBlob
from trainyard.store import keys, open_store
from trainyard.store.versioned import LOG_KEEP, canonical_json, manifest_id


@pytest.fixture
def store(tmp_path):
    return open_store(f"file://{tmp_path}/store")


def _bytes_under(root: Path, *prefixes: str) -> dict[str, int]:
    """Size of every stored object under the given key prefixes (lock files are not objects)."""
    sizes = {}
    for prefix in prefixes:
        base = root / prefix
        if base.exists():
            for path in base.rglob("*"):
                if path.is_file() and not path.name.endswith(".lock"):
                    sizes[str(path.relative_to(root))] = path.stat().st_size
    return sizes


def _lines(start: int, stop: int) -> bytes:
    return b"".join(b"%08d\tcaption of image %d, a small datum\n" % (i, i) for i in range(start, stop))


def test_a_ten_line_append_to_100000_datums_writes_under_one_percent_of_the_first_puts_metadata(store, tmp_path):
    root = tmp_path / "store"
    src = tmp_path / "captions.tsv"
    src.write_bytes(_lines(0, 1_000_000))
    first, datums = put_file(store, "rawdata", src, split="line", target_file_datums=10)
    assert datums == 100_000
    metadata = (keys.TREES, keys.REPOS)
    before = _bytes_under(root, *metadata)
    first_put = sum(before.values())
    # Packed: a handful of objects hold the 100,000 datums, not one object each.
    assert len(_bytes_under(root, keys.BLOBS)) == 0 and 1 <= len(_bytes_under(root, keys.PACKS)) <= 4

    with open(src, "ab") as fh:
        fh.write(_lines(1_000_000, 1_000_010))
    second, datums = put_file(store, "rawdata", src, split="line", target_file_datums=10)
    assert datums == 100_001 and second.parent == first.id
    after = _bytes_under(root, *metadata)
    appended = sum(size for key, size in after.items() if before.get(key) != size)
    assert appended / first_put < 0.01, (appended, first_put)

    # A fresh process reads the new commit whole, and the new datum's bytes from its pack.
    again = open_store(f"file://{root}").resolve("rawdata", second.short)
    assert again.id == second.id == manifest_id(again.manifest) and len(again.manifest) == 100_001
    last = again.manifest[f"captions.tsv/{100_000:016d}"]
    assert store.read_entry(last) == _lines(1_000_000, 1_000_010)
    assert store.read_entry(again.manifest[f"captions.tsv/{4_321:016d}"]) == _lines(43_210, 43_220)


def test_identical_content_gives_identical_ids_and_shares_every_node(store, tmp_path):
    manifest = {f"d/{i:05d}": {"sha256": hashlib.sha256(b"%d" % i).hexdigest(), "size": i} for i in range(5000)}
    one, _ = store.commit("a", manifest)
    two, _ = store.commit("b", manifest)
    assert one.id == two.id == manifest_id(manifest)
    assert store.last_written.nodes_written > 0 and store.last_written.bytes_written > 0
    # b's tree is a's, node for node: listing the trees shows no second copy.
    assert one.tree == two.tree


def test_a_branch_log_is_kept_in_segments_and_read_whole(store):
    ids = []
    for i in range(3 * LOG_KEEP + 5):
        data = b"%d" % i
        commit, _ = store.commit("r", {"f": {"sha256": store.put_blob_bytes(data), "size": len(data)}})
        ids.append(commit.id)
    doc = store.get_json(keys.branch("r", "latest"))
    assert len(doc["log"]) <= 2 * LOG_KEEP and doc["older"]  # the branch document stays small
    assert [c.id for c in store.log("r")] == ids[::-1]
    assert fsck.check(store).damaged == []


def test_a_store_written_before_trees_stays_readable_and_takes_new_commits(store, tmp_path):
    # The format-1 layout: the manifest inline in the commit, the whole log in the branch document.
    manifest = {"a.txt": {"sha256": store.put_blob_bytes(b"alpha"), "size": 5}}
    old_id = manifest_id(manifest)
    store.put_json(keys.commit("old", old_id), {"repo": "old", "id": old_id, "parent": None, "author": "me",
                                                "time": 1.0, "message": "before trees", "manifest": manifest})
    store.put_json(keys.branch("old", "latest"), {"head": old_id, "log": [{"commit": old_id, "time": 1.0}]})
    old = store.resolve("old")
    assert old.manifest == manifest and old.message == "before trees" and old.size == 5

    src = tmp_path / "b.tsv"
    src.write_bytes(b"1\n2\n3\n")
    new, datums = put_file(store, "old", src, split="line")
    assert datums == 3 and new.parent == old_id and "a.txt" in new.manifest
    assert [c.id for c in store.log("old")] == [new.id, old_id]
    assert fsck.check(store).damaged == []


def test_a_corrupt_packed_datum_fails_in_one_line_and_the_next_put_stores_it_again(store, tmp_path):
    src = tmp_path / "c.tsv"
    src.write_bytes(b"one\ntwo\nthree\n")
    commit, _ = put_file(store, "raw", src, split="line")
    entry = commit.manifest["c.tsv/0000000000000001"]
    pack_file = tmp_path / "store" / keys.pack(entry["pack"])
    data = bytearray(pack_file.read_bytes())
    data[entry["offset"]] ^= 0xFF
    pack_file.write_bytes(bytes(data))

    with pytest.raises(CorruptBlob, match=r"corrupt .*trainyard data put"):
        store.read_entry(entry)
    report = fsck.check(store, repair=True)
    assert [(d.key, d.kind) for d in report.damaged] == [(keys.pack(entry["pack"]), "corrupt")]

    # Identical content is the identical commit; the put stores the damaged datum again on its own, and the
    # commit (whose tree names the damaged pack) reads it from there.
    healed, _ = put_file(store, "raw", src, split="line", message="again")
    assert healed.id == commit.id and store.has_blob(entry["sha256"])
    fresh = open_store(f"file://{tmp_path}/store").resolve("raw")
    assert store.read_entry(fresh.manifest["c.tsv/0000000000000001"]) == b"two\n"
    assert fsck.check(store).damaged == []


def test_a_damaged_tree_node_is_reported_by_fsck(store, tmp_path):
    manifest = {f"d/{i:04d}": {"sha256": store.put_blob_bytes(b"%d" % i), "size": len(b"%d" % i)}
                for i in range(2000)}
    commit, _ = store.commit("r", manifest)
    node = tmp_path / "store" / keys.tree(commit.tree)
    node.write_bytes(node.read_bytes().replace(b'"v":1', b'"v":2', 1))
    report = fsck.check(store)
    assert [(d.key, d.kind) for d in report.damaged] == [(keys.commit("r", commit.id), "corrupt")]
    with pytest.raises(CorruptBlob, match="does not match its hash"):
        open_store(f"file://{tmp_path}/store").resolve("r").manifest


def test_a_commit_document_is_small_whatever_the_repo_size(store):
    manifest = {f"d/{i:06d}": {"sha256": hashlib.sha256(b"%d" % i).hexdigest(), "size": 1} for i in range(20_000)}
    commit, _ = store.commit("big", manifest)
    doc = store.get_json(keys.commit("big", commit.id))
    assert len(canonical_json(doc)) < 1000 and doc["files"] == 20_000 and "manifest" not in doc
    assert json.loads(json.dumps(store.resolve("big").to_json()))["manifest"] == manifest
