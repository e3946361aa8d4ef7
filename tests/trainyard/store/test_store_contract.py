"""One contract for every store backend: file:// in a tmp dir and s3:// on a real S3 API (moto server)."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest

from trainyard.errors import AmbiguousId, CorruptBlob, NotFound
from trainyard.store import PreconditionFailed, keys
from trainyard.store.versioned import manifest_id


def write_files(root: Path, contents: dict[str, bytes]) -> dict[str, Path]:
    files = {}
    for rel, data in contents.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        files[rel] = path
    return files


def count_s3_puts(store) -> list[str]:
    """Record every S3 call that sends object bytes (PutObject, multipart parts)."""
    calls: list[str] = []
    if hasattr(store.backend, "client"):
        for op in ("PutObject", "UploadPart", "CreateMultipartUpload"):
            store.backend.client.meta.events.register(f"before-call.s3.{op}", lambda model, **kw: calls.append(model.name))
    return calls


def test_blobs_are_content_addressed_and_existing_blobs_send_no_bytes(store, tmp_path):
    files = write_files(tmp_path / "b", {"a.txt": b"alpha" * 1000, "dir/b.bin": b"\x00\x01" * 5000})
    first = store.upload_files(files)
    assert first.manifest["a.txt"] == {"sha256": hashlib.sha256(b"alpha" * 1000).hexdigest(), "size": 5000}
    assert first.blobs_uploaded == 2 and first.bytes_uploaded == 15000
    assert store.read_entry(first.manifest["a.txt"]) == b"alpha" * 1000

    puts = count_s3_puts(store)
    again = store.upload_files(files)
    assert again.manifest == first.manifest
    assert (again.blobs_uploaded, again.bytes_uploaded, again.blobs_skipped) == (0, 0, 2)
    assert puts == []


def test_identical_content_gives_identical_commit_ids_and_commits_are_immutable(store, tmp_path):
    files = write_files(tmp_path / "d", {"x.csv": b"1,2\n", "y.csv": b"3,4\n"})
    manifest = store.upload_files(files).manifest
    first, created = store.commit("features", manifest, message="first", author="ada")
    assert created and first.id == manifest_id(manifest)
    again, created_again = store.commit("features", manifest, message="second", author="bob")
    assert not created_again and again.id == first.id
    assert store.get_commit("features", first.id).message == "first"  # not overwritten

    changed = store.upload_files(write_files(tmp_path / "e", {"x.csv": b"1,2\n", "y.csv": b"3,5\n"})).manifest
    second, _ = store.commit("features", changed, message="change y")
    assert second.id != first.id and second.parent == first.id
    assert store.resolve("features", "latest").id == second.id
    assert [c.id for c in store.log("features")] == [second.id, first.id]


def test_concurrent_commits_never_lose_one(store):
    sha = store.put_blob_bytes(b"shared")
    ids, errors = [], []

    def commit(i: int) -> None:
        try:
            c, _ = store.commit("race", {f"file-{i}.txt": {"sha256": sha, "size": 6}}, message=f"writer {i}")
            ids.append(c.id)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=commit, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    logged = [c.id for c in store.log("race")]
    assert sorted(logged) == sorted(ids) and len(set(logged)) == 8
    assert store.resolve("race").id == logged[0]


def _colliding_manifests(sha: str) -> tuple[dict, dict]:
    seen: dict[str, dict] = {}
    i = 0
    while True:
        manifest = {f"f{i}": {"sha256": sha, "size": 1}}
        prefix = manifest_id(manifest)[:5]
        if prefix in seen:
            return seen[prefix], manifest
        seen[prefix] = manifest
        i += 1


def test_short_ids_resolve_uniquely_and_ambiguity_lists_candidates(store):
    sha = store.put_blob_bytes(b"x")
    m1, m2 = _colliding_manifests(sha)
    c1, _ = store.commit("shorty", m1)
    assert store.resolve("shorty", c1.id[:5]).id == c1.id
    c2, _ = store.commit("shorty", m2)
    with pytest.raises(AmbiguousId) as err:
        store.resolve("shorty", c1.id[:5])
    assert c1.id[:12] in str(err.value) and c2.id[:12] in str(err.value)
    assert store.resolve("shorty", c2.id[:20]).id == c2.id
    unknown = next(p for p in ("fffff", "00000", "abcde") if not c1.id.startswith(p) and not c2.id.startswith(p))
    with pytest.raises(NotFound, match=f"no commit in repo 'shorty' starts with '{unknown}'"):
        store.resolve("shorty", unknown)
    with pytest.raises(NotFound, match="at least 5"):
        store.resolve("shorty", "abc")


def test_corrupt_blob_is_an_error_and_never_lands_at_the_destination(store, tmp_path):
    sha = store.put_blob_bytes(b"precious model weights")
    store.backend.write(store.blob_key(sha), b"bit rot")
    with pytest.raises(CorruptBlob, match=sha):
        store.get_blob_bytes(sha)
    dest = tmp_path / "out" / "weights.bin"
    with pytest.raises(CorruptBlob):
        store.fetch_blob(sha, dest)
    assert not dest.exists()


def test_materialize_round_trips_a_commit(store, tmp_path):
    contents = {"features/training/a.csv": b"1,0\n", "features/test/b.csv": b"2,1\n" * 100}
    manifest = store.upload_files(write_files(tmp_path / "src", contents)).manifest
    commit, _ = store.commit("features", manifest)
    out = tmp_path / "out"
    store.materialize(store.resolve("features", commit.id[:7]).manifest, out)
    assert {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()} == contents


def test_conditional_writes_are_enforced_by_the_backend(store):
    store.backend.write("branches/demo.json", b"v1", if_absent=True)
    with pytest.raises(PreconditionFailed):
        store.backend.write("branches/demo.json", b"v2", if_absent=True)
    data, version = store.backend.read_versioned("branches/demo.json")
    store.backend.write("branches/demo.json", b"v2", if_version=version)
    with pytest.raises(PreconditionFailed):
        store.backend.write("branches/demo.json", b"v3", if_version=version)
    assert store.backend.read("branches/demo.json") == b"v2"


def test_materialize_refuses_paths_that_escape_the_destination(store, tmp_path):
    from trainyard.errors import TrainyardError

    sha = store.put_blob_bytes(b"payload")
    for bad in ("../outside.txt", "/etc/cron.d/job", "a/../../outside.txt"):
        with pytest.raises(TrainyardError, match="escapes the destination"):
            store.materialize({bad: {"sha256": sha, "size": 7}}, tmp_path / "dest")
    assert not (tmp_path / "outside.txt").exists() and not (tmp_path / "dest").exists()


def test_a_corrupt_blob_names_its_key_commit_and_fix_and_is_quarantined(store, tmp_path):
    contents = {"features/train.csv": b"1,0\n" * 50, "features/test.csv": b"2,1\n"}
    manifest = store.upload_files(write_files(tmp_path / "src", contents)).manifest
    commit, _ = store.commit("features", manifest)
    sha = manifest["features/train.csv"]["sha256"]
    store.backend.write(store.blob_key(sha), b"bit rot")
    with pytest.raises(CorruptBlob) as caught:
        store.materialize(commit.manifest, tmp_path / "out", where=f"commit {commit.ref}")
    message = str(caught.value)
    assert "\n" not in message
    for part in (keys.blob(sha), "'features/train.csv'", commit.ref, "trainyard fsck --repair", "put the data again"):
        assert part in message, part
    # Quarantined: the bad bytes moved aside, and the store no longer claims to hold the blob.
    assert not store.has_blob(sha)
    assert store.get_bytes(keys.quarantine(sha)) == b"bit rot"
    assert sha in store.quarantined_blobs()
    # A later read still says corrupt (and where it went), not merely "missing".
    with pytest.raises(CorruptBlob, match="quarantined at"):
        store.get_blob_bytes(sha)


def test_the_next_upload_of_a_quarantined_blob_writes_it_again(store, tmp_path):
    files = write_files(tmp_path / "b", {"a.txt": b"alpha" * 100, "b.txt": b"beta" * 100})
    manifest = store.upload_files(files, repo="heal").manifest
    store.commit("heal", manifest)
    sha = manifest["a.txt"]["sha256"]
    store.backend.write(store.blob_key(sha), b"bit rot")
    with pytest.raises(CorruptBlob):
        store.get_blob_bytes(sha)
    # The head manifest still lists the blob; the upload must not take that as proof it is stored.
    again = store.upload_files(files, repo="heal")
    assert (again.blobs_uploaded, again.bytes_uploaded) == (1, 500)
    assert store.get_blob_bytes(sha) == b"alpha" * 100
    # put_blob_bytes heals the same way.
    sha_b = store.put_blob_bytes(b"gamma")
    store.backend.write(store.blob_key(sha_b), b"rot")
    with pytest.raises(CorruptBlob):
        store.get_blob_bytes(sha_b)
    assert store.put_blob_bytes(b"gamma") == sha_b and store.get_blob_bytes(sha_b) == b"gamma"


def test_quarantine_leaves_a_sound_blob_alone(store):
    sha = store.put_blob_bytes(b"sound bytes")
    assert store.quarantine_blob(sha) == "intact"
    assert store.get_blob_bytes(sha) == b"sound bytes"
    assert not store.exists(keys.quarantine(sha))


def test_packed_datums_trees_and_segmented_logs_work_on_every_backend(store, tmp_path):
    from trainyard.datums import put_file
    from trainyard.store import open_store
    from trainyard.store.versioned import LOG_KEEP

    src = tmp_path / "captions.tsv"
    src.write_bytes(b"".join(b"line %d\n" % i for i in range(3000)))
    first, datums = put_file(store, "captions", src, split="line", target_file_datums=3)
    assert datums == 1000 and {e["pack"] for e in first.manifest.values()} == {first.manifest[next(iter(
        first.manifest))]["pack"]}
    dest = tmp_path / "out"
    store.materialize(first.manifest, dest)
    assert (dest / "captions.tsv" / f"{999:016d}").read_bytes() == b"line 2997\nline 2998\nline 2999\n"
    assert store.read_entry(first.manifest[f"captions.tsv/{5:016d}"]) == b"line 15\nline 16\nline 17\n"
    for i in range(2 * LOG_KEEP + 1):
        store.commit("captions", {**first.manifest, "extra": {"sha256": store.put_blob_bytes(b"%d" % i),
                                                              "size": len(b"%d" % i)}})
    reopened = open_store(store.uri) if store.uri.startswith("file") else store
    assert len(reopened.log("captions")) == 2 * LOG_KEEP + 2
    assert reopened.resolve("captions", first.short).manifest == first.manifest


def test_an_upload_that_may_move_its_files_renames_them_into_a_file_store(store, tmp_path):
    files = write_files(tmp_path / "downloads", {"a.bin": b"alpha" * 1000, "b.bin": b"beta"})
    report = store.upload_files(files, move=True)
    assert store.read_entry(report.manifest["a.bin"]) == b"alpha" * 1000
    assert store.read_entry(report.manifest["b.bin"]) == b"beta"
    # file:// renames the caller's temp files into the store (no second copy); S3 uploads and leaves them
    assert files["a.bin"].exists() is store.uri.startswith("s3://")
