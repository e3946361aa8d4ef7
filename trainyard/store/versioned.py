"""Content-addressed blobs, immutable commits, atomically moved branches and short ids over any backend."""

from __future__ import annotations

import dataclasses
import functools
import getpass
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tenacity import RetryError, Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from trainyard.errors import AmbiguousId, ConflictError, CorruptBlob, NotFound, TrainyardError
from trainyard.store import keys, trees
from trainyard.store.trees import plain_json_strings
from trainyard.store.backend import Backend, PreconditionFailed
from trainyard.store.local import LocalBackend

REPO_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
HEX = re.compile(r"^[0-9a-f]+$")
SHORT_ID_MIN = 5
SHORT_ID_LEN = 5
_CHUNK = 1 << 20
# Blobs smaller than this that a put writes together go into packs of about PACK_TARGET bytes: one object, not one
# per datum (Pachyderm packs small files into chunks the same way).
PACK_BELOW = 1 << 20
PACK_TARGET = 32 << 20
# Coalesced reads of a pack: gaps up to this many bytes are read through rather than split into two requests.
_PACK_GAP = 1 << 20
# A branch document keeps at most this many log entries (twice over before it seals the older half in a segment).
LOG_KEEP = 64

Manifest = dict[str, dict[str, Any]]


# "Move the branch whatever it points at": the default for commit(); read-modify-write callers pass the head they read.
ANY_HEAD = object()


def canonical_json(obj: Any) -> bytes:
    """Serialise deterministically so equal content always hashes equally."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path, progress=None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
            if progress:
                progress(len(chunk))
    return digest.hexdigest()


def manifest_id(manifest: Manifest) -> str:
    """A commit id is the hash of its manifest only, so identical content gives an identical id."""
    paths = sorted(manifest)
    if plain_json_strings(paths):
        # The bytes canonical_json would give, written directly: a million paths in a fraction of the time.
        text = ",".join(f'"{path}":{{"sha256":"{manifest[path]["sha256"]}","size":{int(manifest[path]["size"])}}}'
                        for path in paths)
        return sha256_bytes(("{" + text + "}").encode())
    body = {path: {"sha256": entry["sha256"], "size": entry["size"]} for path, entry in manifest.items()}
    return sha256_bytes(canonical_json(body))


def check_repo_name(repo: str) -> str:
    if not REPO_NAME.match(repo or ""):
        raise TrainyardError(
            f"invalid repo name {repo!r}: use lowercase letters, digits, '.', '_' or '-' (at most 63 characters)"
        )
    return repo


def progress_bars_enabled(quiet: bool) -> bool:
    return not quiet and sys.stderr.isatty()


class _Bar:
    """A rich progress bar on stderr when it is a terminal, nothing otherwise; safe to update from worker threads.

    Bars open at the same time (hashing while uploading) share one live display: rich draws one at a time.
    """

    _progress = None
    _open = 0
    _lock = threading.Lock()

    def __init__(self, total: int | None, desc: str, enabled: bool) -> None:
        self._task = None
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import (BarColumn, DownloadColumn, Progress, TaskProgressColumn, TextColumn,
                                   TimeRemainingColumn, TransferSpeedColumn)

        with _Bar._lock:
            if _Bar._progress is None:
                # Some ptys report a width of 0; fall back to a sane width rather than draw nothing.
                width = min(shutil.get_terminal_size((100, 24)).columns or 100, 120)
                _Bar._progress = Progress(
                    TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                    DownloadColumn(binary_units=True), TransferSpeedColumn(), TimeRemainingColumn(),
                    console=Console(file=sys.stderr, width=width), refresh_per_second=8)
                _Bar._progress.start()
            _Bar._open += 1
            self._task = _Bar._progress.add_task(desc, total=total)

    def update(self, n: int) -> None:
        if self._task is not None:
            _Bar._progress.advance(self._task, n)

    def close(self) -> None:
        if self._task is None:
            return
        with _Bar._lock:
            _Bar._open -= 1
            if _Bar._open == 0:
                _Bar._progress.stop()
                _Bar._progress = None
        self._task = None


@dataclasses.dataclass(frozen=True)
class Commit:
    """An immutable snapshot of a repo: its manifest plus who, when, why and what came before.

    A commit stored as a tree loads its manifest only when it is first asked for, so a log of commits of a
    million-path repo reads a few small documents.
    """

    repo: str
    id: str
    parent: str | None
    author: str
    time: float
    message: str
    tree: str | None = None
    files: int | None = None
    bytes: int | None = None
    loaded: Manifest | None = dataclasses.field(default=None, repr=False, compare=False)
    loader: Callable[[], Manifest] | None = dataclasses.field(default=None, repr=False, compare=False)

    @functools.cached_property
    def manifest(self) -> Manifest:
        return self.loaded if self.loaded is not None else self.loader()

    @property
    def short(self) -> str:
        return self.id[:SHORT_ID_LEN]

    @property
    def ref(self) -> str:
        return f"{self.repo}:{self.short}"

    @property
    def size(self) -> int:
        if self.bytes is not None:
            return self.bytes
        return sum(entry["size"] for entry in self.manifest.values())

    @property
    def file_count(self) -> int:
        return self.files if self.files is not None else len(self.manifest)

    def summary(self) -> dict[str, Any]:
        """What a log shows of a commit: everything but the manifest, and its file count (no tree is read)."""
        return {"repo": self.repo, "id": self.id, "parent": self.parent, "author": self.author, "time": self.time,
                "message": self.message, "files": self.file_count}

    def to_json(self) -> dict[str, Any]:
        return {"repo": self.repo, "id": self.id, "manifest": self.manifest, "parent": self.parent,
                "author": self.author, "time": self.time, "message": self.message}


@dataclasses.dataclass
class UploadReport:
    """What an upload did: the manifest plus how many blobs and bytes were actually sent."""

    manifest: Manifest
    blobs_uploaded: int = 0
    bytes_uploaded: int = 0
    blobs_skipped: int = 0


class Store:
    """The versioned store used by the CLI, the operators and every step."""

    def __init__(self, backend: Backend, *, concurrency: int = 8) -> None:
        self.backend = backend
        self.concurrency = concurrency
        self._tree_nodes: dict[str, set[str]] = {}
        # What the last commit() wrote (bench/scale reads it); None before any commit.
        self.last_written: trees.Written | None = None

    @property
    def uri(self) -> str:
        return self.backend.uri

    # -- blobs -------------------------------------------------------------------------------------
    @staticmethod
    def blob_key(sha: str) -> str:
        return keys.blob(sha)

    def has_blob(self, sha: str) -> bool:
        return self.backend.exists(self.blob_key(sha))

    def stored_blobs(self) -> list[str]:
        """The sha256 of every blob the store holds (one listing; quarantined copies are not blobs)."""
        return sorted(keys.blob_sha(key) for key in self.backend.list(keys.BLOBS))

    def quarantined_blobs(self) -> set[str]:
        """The sha256 of every blob ever quarantined (or found missing): a manifest is no proof that they are stored."""
        return {keys.quarantined_sha(key) for key in self.backend.list(keys.QUARANTINE)}

    def put_blob_bytes(self, data: bytes) -> str:
        sha = sha256_bytes(data)
        if not self.has_blob(sha):
            try:
                self.backend.write(self.blob_key(sha), data, if_absent=True)
            except PreconditionFailed:
                pass  # a concurrent writer stored the same content
        return sha

    def put_packed(self, blobs: list[bytes], *, known: Mapping[str, Mapping[str, Any]] | None = None
                   ) -> list[dict[str, Any]]:
        """Store small blobs together in packs and return one manifest entry per blob, in order.

        Each entry keeps the blob's own sha256 (so datum ids, incremental processing and provenance are unchanged)
        plus the pack that holds it and its offset there. A blob in `known` (sha256 -> an entry already stored, e.g.
        the head commit's) is not written again; a blob of PACK_BELOW or more is stored on its own.
        """
        known = known or {}
        quarantined = self.quarantined_blobs() if known else set()
        entries: list[dict[str, Any] | None] = [None] * len(blobs)
        where: dict[str, dict[str, Any]] = {}
        pending: list[tuple[str, bytes]] = []
        big: list[bytes] = []
        sha256 = hashlib.sha256
        for index, data in enumerate(blobs):
            sha = sha256(data).hexdigest()
            entry = where.get(sha)
            if entry is None:
                if sha in known and sha not in quarantined:
                    entry = _entry(known[sha])
                elif len(data) >= PACK_BELOW or sha in quarantined:
                    # A blob found damaged in its pack is stored again on its own: commits that name the pack read
                    # it from there (packs are never rewritten).
                    entry = {"sha256": sha, "size": len(data)}
                    big.append(bytes(data))
                else:
                    entry = {"sha256": sha, "size": len(data)}
                    pending.append((sha, data))
                where[sha] = entry
            entries[index] = entry

        def seal(batch: list[tuple[str, bytes]]) -> None:
            body = b"".join(data for _, data in batch)
            pack = sha256_bytes(body)
            offset = 0
            for sha, data in batch:
                where[sha].update(pack=pack, offset=offset)
                offset += len(data)
            # Content-addressed: writing the same pack twice (a retried put) is harmless.
            self.backend.write(keys.pack(pack), body)

        batches: list[list[tuple[str, bytes]]] = [[]]
        filled = 0
        for item in pending:
            if filled and filled + len(item[1]) > PACK_TARGET:
                batches.append([])
                filled = 0
            batches[-1].append(item)
            filled += len(item[1])
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            list(pool.map(seal, [batch for batch in batches if batch]))
            list(pool.map(self.put_blob_bytes, big))
        return entries  # type: ignore[return-value]

    def _unpacked(self, pack: str, entry: Mapping[str, Any], pack_found: bool, where: str | None) -> bytes:
        """A packed blob whose pack is missing or damaged: its own blob if a later put stored it again, else the
        one-line error; the blob is marked so no manifest counts as proof of it and the next put stores it."""
        sha = entry["sha256"]
        try:
            data = self.backend.read(self.blob_key(sha))
            if sha256_bytes(data) == sha:
                return data
        except KeyError:
            pass
        self._mark_missing(sha)
        if not pack_found:
            raise NotFound(f"pack {keys.pack(pack)} holding blob {sha[:12]}{_where(where)} is missing from the "
                           f"store {self.uri}; put the data again (`trainyard data put`) to restore it")
        raise CorruptBlob(
            f"blob {sha[:12]}{_where(where)} in pack {keys.pack(pack)} of {self.uri} is corrupt (its bytes do not "
            "match its sha256); run `trainyard fsck`, then put the data again (`trainyard data put`)")

    def read_entry(self, entry: Mapping[str, Any], *, where: str | None = None) -> bytes:
        """The verified bytes of a manifest entry, from its pack or its own blob."""
        if "pack" not in entry:
            return self.get_blob_bytes(entry["sha256"], where=where)
        return self._read_packed(entry["pack"], [entry], where=where)[entry["sha256"]]

    def _read_packed(self, pack: str, entries: list[Mapping[str, Any]], *, where: str | None = None
                     ) -> dict[str, bytes]:
        """The verified bytes of entries of one pack, in as few range reads as their offsets allow."""
        got: dict[str, bytes] = {}
        ordered = sorted(entries, key=lambda e: e["offset"])
        start = 0
        while start < len(ordered):
            end = start + 1
            span_end = ordered[start]["offset"] + ordered[start]["size"]
            while (end < len(ordered) and ordered[end]["offset"] - span_end <= _PACK_GAP
                   and ordered[end]["offset"] + ordered[end]["size"] - ordered[start]["offset"] <= PACK_TARGET):
                span_end = max(span_end, ordered[end]["offset"] + ordered[end]["size"])
                end += 1
            base = ordered[start]["offset"]
            try:
                data = self.backend.read_range(keys.pack(pack), base, span_end - base)
            except KeyError:
                data = b""
            for entry in ordered[start:end]:
                piece = data[entry["offset"] - base:entry["offset"] - base + entry["size"]]
                if sha256_bytes(piece) != entry["sha256"]:
                    piece = self._unpacked(pack, entry, bool(data), where)
                got[entry["sha256"]] = piece
            start = end
        return got

    def _missing(self, sha: str, where: str | None) -> NotFound | CorruptBlob:
        """The error for a blob that is not there: CorruptBlob when a read quarantined it, else NotFound."""
        try:
            quarantined = self.backend.exists(keys.quarantine(sha))
        except Exception:  # noqa: BLE001 - the missing blob is the error to report
            quarantined = False
        if quarantined:
            return CorruptBlob(
                f"blob {self.blob_key(sha)}{_where(where)} in {self.uri} was corrupt (its bytes did not match its "
                f"sha256) and is quarantined at {keys.quarantine(sha)}; put the data again (`trainyard data put` or "
                "`trainyard deploy --upload-only`) to restore it, `trainyard fsck` lists what uses it")
        self._mark_missing(sha)
        return NotFound(f"blob {self.blob_key(sha)}{_where(where)} is missing from the store {self.uri}; put the "
                        "data again (`trainyard data put` or `trainyard deploy --upload-only`) to restore it")

    def _corrupt(self, sha: str, where: str | None, quarantine: bool) -> CorruptBlob:
        """The one-line error for a blob whose bytes do not match its sha256, after quarantining it (when asked)."""
        done = ""
        if quarantine:
            try:
                done = {"quarantined": f" and was moved to {keys.quarantine(sha)}",
                        "intact": " when read (its stored bytes match now: a transfer error, or a concurrent re-upload)",
                        "missing": " and is gone"}[self.quarantine_blob(sha)]
            except Exception as exc:  # noqa: BLE001 - the corruption is the error to report, not the failed move
                done = f" and could not be quarantined ({type(exc).__name__}: {exc})"
        return CorruptBlob(
            f"blob {self.blob_key(sha)}{_where(where)} in {self.uri} is corrupt (its bytes do not match its sha256)"
            f"{done}; run `trainyard fsck --repair`, then put the data again (`trainyard data put` or "
            "`trainyard deploy --upload-only`)")

    def get_blob_bytes(self, sha: str, *, where: str | None = None, quarantine: bool = True) -> bytes:
        """A blob's bytes, verified; a corrupt blob is quarantined (unless quarantine=False) and CorruptBlob raised.

        `where` names what uses the blob (a path of a repo's commit) for the error message.
        """
        try:
            data = self.backend.read(self.blob_key(sha))
        except KeyError:
            raise self._missing(sha, where) from None
        if sha256_bytes(data) != sha:
            raise self._corrupt(sha, where, quarantine)
        return data

    def fetch_blob(self, sha: str, dest: Path, progress=None, *, where: str | None = None) -> None:
        """Download a blob to dest, verifying its sha256 before it becomes visible at dest; a corrupt blob is
        quarantined and CorruptBlob raised."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-")
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            try:
                self.backend.download_file(self.blob_key(sha), tmp, progress)
            except KeyError:
                raise self._missing(sha, where) from None
            if sha256_file(tmp) != sha:
                raise self._corrupt(sha, where, quarantine=True)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)

    def blob_digest(self, sha: str, progress=None) -> tuple[str, int] | None:
        """(sha256 of the stored bytes, size) of a blob, streamed rather than read whole; None when it is missing."""
        key = self.blob_key(sha)
        if isinstance(self.backend, LocalBackend):
            # Hash the file in place: a copy first would read every byte twice.
            path = self.backend.root / key
            try:
                size = path.stat().st_size
                return sha256_file(path, progress), size
            except FileNotFoundError:
                return None
        fd, tmp_name = tempfile.mkstemp(prefix=".trainyard-fsck-")
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            try:
                self.backend.download_file(key, tmp, progress)
            except KeyError:
                return None
            return sha256_file(tmp), tmp.stat().st_size
        finally:
            tmp.unlink(missing_ok=True)

    def quarantine_blob(self, sha: str) -> str:
        """Move a corrupt blob's bytes to keys.quarantine(sha) and delete its blob key, so the store no longer claims
        to hold it and the next upload of that content writes it again.

        The bytes are checked again first: a blob that matches its sha256 now is left alone ("intact"), so nothing
        sound is ever deleted. Returns "quarantined", "intact" or "missing" (marked, so uploads write it again).
        """
        key = self.blob_key(sha)
        fd, tmp_name = tempfile.mkstemp(prefix=".trainyard-quarantine-")
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            try:
                self.backend.download_file(key, tmp)
            except KeyError:
                if self.backend.exists(keys.quarantine(sha)):
                    return "quarantined"  # by a concurrent reader of the same corrupt bytes
                self._mark_missing(sha)
                return "missing"
            if sha256_file(tmp) == sha:
                return "intact"
            # The first corrupt copy is kept as evidence; a later one adds nothing.
            if not self.backend.exists(keys.quarantine(sha)):
                self.backend.upload_file(keys.quarantine(sha), tmp)
            self.backend.delete(key)
            return "quarantined"
        finally:
            tmp.unlink(missing_ok=True)

    def pack_digest(self, pack: str) -> tuple[str, int] | None:
        """(sha256 of a pack's stored bytes, size); None when it is missing."""
        try:
            data = self.backend.read(keys.pack(pack))
        except KeyError:
            return None
        return sha256_bytes(data), len(data)

    def packed_intact(self, entry: Mapping[str, Any]) -> bool:
        """Whether a packed blob's own bytes in its pack still match its sha256 (fsck, for a damaged pack)."""
        try:
            piece = self.backend.read_range(keys.pack(entry["pack"]), entry["offset"], entry["size"])
        except KeyError:
            return False
        return sha256_bytes(piece) == entry["sha256"]

    def mark_missing(self, sha: str) -> None:
        """Say a blob must be stored again: no manifest counts as proof of it any more (fsck --repair)."""
        self._mark_missing(sha)

    def _mark_missing(self, sha: str) -> None:
        """Record a referenced blob found missing under the quarantine prefix (empty), so no head manifest counts as
        proof that it is stored; best effort, as it runs on the way to reporting an error."""
        try:
            if not self.backend.exists(keys.quarantine_missing(sha)):
                self.backend.write(keys.quarantine_missing(sha), b"", if_absent=True)
        except Exception:  # noqa: BLE001,S110 - a read-only store still gets the real error
            pass

    def _known_blobs(self, wanted: int, repo: str | None) -> tuple[set[str], bool]:
        """Blobs known to be stored, and whether that set is complete, learned in a few requests.

        A listing of the blob namespace, capped at about one page per 1,000 files wanted, replaces one HEAD per
        file. Past the cap the set is partial: the repo's head manifest then counts as proof of presence (blobs are
        written before any commit names them) except for blobs ever quarantined or found missing, which are
        checked with HEAD like any other unknown blob.
        """
        known: set[str] = set()
        max_keys = 1000 * (wanted // 1000 + 2)
        complete = True
        for count, key in enumerate(self.backend.list(keys.BLOBS)):
            if count >= max_keys:
                complete = False
                break
            known.add(keys.blob_sha(key))
        if repo and not complete:
            head = self.branch_head(repo)
            if head:
                # A packed blob is no proof of a blob of its own: an entry made from this set names no pack.
                listed = {e["sha256"] for e in self.get_commit(repo, head).manifest.values() if "pack" not in e}
                known.update(listed - self.quarantined_blobs())
        return known, complete

    def upload_files(self, files: Mapping[str, Path], *, quiet: bool = True, desc: str = "",
                     repo: str | None = None, known_hashes: Mapping[str, str] | None = None,
                     move: bool = False) -> UploadReport:
        """Hash and upload files (relative path -> local path); blobs already stored send no bytes.

        Pass the target repo so its head manifest counts as proof that unchanged files are stored, and
        known_hashes for files this process already hashed while writing them (a verified download). With move the
        files are the caller's temp files: a file:// store renames them into place instead of copying.
        """
        known_hashes = known_hashes or {}
        total = sum(p.stat().st_size for p in files.values())
        bars = progress_bars_enabled(quiet)
        hashing = _Bar(total, f"hashing {desc}".strip(), bars)
        uploading = _Bar(total, f"uploading {desc}".strip(), bars)
        report = UploadReport(manifest={})
        lock = threading.Lock()
        claimed: set[str] = set()
        known, complete = self._known_blobs(len(files), repo)

        def one(item: tuple[str, Path]) -> None:
            rel, path = item
            size = path.stat().st_size
            sha = known_hashes.get(rel)
            if sha is None:
                sha = sha256_file(path, hashing.update)
            else:
                hashing.update(size)
            with lock:
                report.manifest[rel] = {"sha256": sha, "size": size}
                first = sha not in claimed
                claimed.add(sha)
            if first and not (sha in known or (not complete and self.has_blob(sha))):
                self.backend.upload_file(self.blob_key(sha), path, uploading.update, move=move)
                with lock:
                    report.blobs_uploaded += 1
                    report.bytes_uploaded += size
            else:
                uploading.update(size)
                with lock:
                    report.blobs_skipped += 1

        try:
            with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
                # Biggest first keeps the threads busy until the end.
                ordered = sorted(files.items(), key=lambda kv: -kv[1].stat().st_size)
                list(pool.map(one, ordered))
        finally:
            hashing.close()
            uploading.close()
        report.manifest = dict(sorted(report.manifest.items()))
        return report

    def materialize(self, manifest: Manifest, dest: Path, *, quiet: bool = True, where: str | None = None) -> None:
        """Download every file of a manifest under dest, refusing paths that would escape it.

        `where` names the manifest (e.g. "repo 'features' commit 9fd9d") so a corrupt or missing blob's error says
        which path of which commit it is.
        """
        dest = dest.resolve()
        targets = {}
        for rel in manifest:
            target = (dest / rel).resolve()
            if dest not in target.parents:
                raise TrainyardError(f"manifest path {rel!r} escapes the destination directory")
            targets[rel] = target
        bar = _Bar(sum(e["size"] for e in manifest.values()), "downloading", progress_bars_enabled(quiet))
        loose = [rel for rel, entry in manifest.items() if "pack" not in entry]
        packed: dict[str, list[str]] = {}
        for rel, entry in manifest.items():
            if "pack" in entry:
                packed.setdefault(entry["pack"], []).append(rel)

        def unpack(pack: str) -> None:
            rels = packed[pack]
            got = self._read_packed(pack, [manifest[rel] for rel in rels], where=where)
            for rel in rels:
                target = targets[rel]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(got[manifest[rel]["sha256"]])
                bar.update(manifest[rel]["size"])

        try:
            with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
                list(pool.map(lambda rel: self.fetch_blob(manifest[rel]["sha256"], targets[rel], bar.update,
                                                          where=f"{rel!r} of {where}" if where else repr(rel)),
                              loose))
                list(pool.map(unpack, packed))
        finally:
            bar.close()

    # -- JSON documents ------------------------------------------------------------------------------
    def put_json(self, key: str, obj: Any, *, create_only: bool = False) -> bool:
        """Write a JSON document; with create_only an existing document is kept and False is returned."""
        try:
            self.backend.write(key, canonical_json(obj), if_absent=create_only)
            return True
        except PreconditionFailed:
            return False

    def get_json(self, key: str) -> Any:
        try:
            return json.loads(self.backend.read(key))
        except KeyError:
            raise NotFound(f"{key} not found in the store {self.uri}") from None

    def get_record(self, key: str, kind: Any) -> Any:
        """A typed record (a trainyard.records.Record class): read, upgraded if older, validated."""
        return kind.load(self.get_json(key), where=f"{key} in the store {self.uri}")

    def put_record(self, key: str, record: Any, *, create_only: bool = False) -> bool:
        """Write a typed record; with create_only an existing one is kept and False is returned."""
        return self.put_json(key, record.to_json(), create_only=create_only)

    def exists(self, key: str) -> bool:
        return self.backend.exists(key)

    def list_keys(self, prefix: str) -> list[str]:
        """Every key that starts with prefix (build it with trainyard.store.keys), sorted."""
        return sorted(self.backend.list(prefix))

    def list_json(self, prefix: str) -> list[Any]:
        """Every JSON document under prefix, in key order."""
        return [self.get_json(key) for key in self.list_keys(prefix) if key.endswith(keys.JSON)]

    def get_bytes(self, key: str) -> bytes:
        """A document that is not JSON (a step log); NotFound when absent."""
        try:
            return self.backend.read(key)
        except KeyError:
            raise NotFound(f"{key} not found in the store {self.uri}") from None

    def put_bytes(self, key: str, data: bytes) -> None:
        """Replace a document that is not JSON, atomically (a step log that grows while the step runs)."""
        self.backend.write(key, data)

    def delete(self, key: str) -> None:
        """Remove a record that is no longer wanted (a deleted pipeline); blobs and commits are never deleted."""
        self.backend.delete(key)

    # -- repos and commits -------------------------------------------------------------------------
    def repos(self) -> list[str]:
        names = {keys.repo_of(key) for key in self.backend.list(keys.REPOS)}
        return sorted(name for name in names if name)

    def branch_head(self, repo: str, branch: str = "latest") -> str | None:
        got = self.backend.read_versioned(keys.branch(repo, branch))
        return json.loads(got[0])["head"] if got else None

    def commit(self, repo: str, manifest: Manifest, *, message: str = "", author: str | None = None,
               branch: str = "latest", expect_head: str | None | object = ANY_HEAD) -> tuple[Commit, bool]:
        """Record a commit and move the branch to it; returns (commit, created). Blobs must already be stored.

        With expect_head (a commit id, or None for an empty repo) the branch moves only if it still points there,
        else ConflictError: a read-modify-write of the head's manifest never silently drops a concurrent commit.
        """
        check_repo_name(repo)
        if not manifest:
            raise TrainyardError(f"refusing to commit an empty manifest to repo {repo!r}")
        commit_id = manifest_id(manifest)
        key = keys.commit(repo, commit_id)
        head = self.branch_head(repo, branch)
        if expect_head is not ANY_HEAD and head != expect_head:
            raise ConflictError(f"repo {repo!r} moved to {str(head)[:12]} while this commit was being prepared")
        if head == commit_id:
            return self.get_commit(repo, commit_id), False
        if all(entry.keys() <= _ENTRY_FIELDS for entry in manifest.values()):
            manifest = dict(manifest)  # the common case (a put's entries): a copy, not a million new entries
        else:
            manifest = {path: _entry(entry) for path, entry in manifest.items()}
        parent_nodes = self._tree_nodes.get(head, frozenset()) if head else frozenset()
        written = trees.write_tree(self.backend.write, manifest, parent_nodes)
        self._remember_tree(commit_id, written.nodes)
        record = {
            "format": 2, "repo": repo, "id": commit_id, "parent": head if head != commit_id else None,
            "author": author or os.environ.get("TRAINYARD_AUTHOR") or getpass.getuser(),
            "time": time.time(), "message": message, "tree": written.root, "files": len(manifest),
            "bytes": sum(entry["size"] for entry in manifest.values()),
        }
        # The tree and the commit object are published before the branch moves, so a reader never sees a dangling
        # head.
        created = self.put_json(key, record, create_only=True)
        self._move_branch(repo, branch, commit_id, expect_head)
        self.last_written = written
        return self._commit_from(record, loaded=manifest), created

    def _move_branch(self, repo: str, branch: str, commit_id: str,
                     expect_head: str | None | object = ANY_HEAD) -> None:
        def move(doc: dict | None) -> dict | None:
            doc = doc or {"head": None, "log": []}
            if doc["head"] == commit_id:
                return None
            if expect_head is not ANY_HEAD and doc["head"] != expect_head:
                raise ConflictError(f"repo {repo!r} moved to {str(doc['head'])[:12]} while committing; retry")
            log = [{"commit": commit_id, "time": time.time()}, *doc["log"]]
            older = doc.get("older")
            if len(log) > 2 * LOG_KEEP:
                # The branch document stays small: the older entries go into a sealed, content-addressed segment
                # that points at the one before it. Writing it again on a lost race is harmless.
                segment = {"entries": log[LOG_KEEP:], "older": older}
                older = sha256_bytes(canonical_json(segment))
                self.put_json(keys.history(repo, branch, older), segment)
                log = log[:LOG_KEEP]
            return {"head": commit_id, "log": log, "older": older}

        self.update_json(keys.branch(repo, branch), move, what=f"branch {repo}:{branch}")

    def update_json(self, key: str, mutate: Callable[[Any], Any], *, attempts: int = 50, what: str = "") -> Any:
        """Compare-and-swap a JSON document: mutate(current or None) returns the new document, or None to keep it.

        Concurrent writers retry on a lost race (backing off exponentially, up to half a second), so no update is
        ever silently dropped. Returns what was written (or the current document when mutate kept it).
        """
        def swap() -> Any:
            current = self.backend.read_versioned(key)
            doc = json.loads(current[0]) if current else None
            new = mutate(doc)
            if new is None:
                return doc
            if current:
                self.backend.write(key, canonical_json(new), if_version=current[1])
            else:
                self.backend.write(key, canonical_json(new), if_absent=True)
            return new

        retrying = Retrying(retry=retry_if_exception_type(PreconditionFailed), stop=stop_after_attempt(attempts),
                            wait=wait_exponential(multiplier=0.01, max=0.5))
        try:
            return retrying(swap)
        except RetryError:
            raise ConflictError(f"{what or key} kept changing; {attempts} compare-and-swap attempts lost") from None

    def get_commit(self, repo: str, commit_id: str) -> Commit:
        try:
            doc = json.loads(self.backend.read(keys.commit(repo, commit_id)))
        except KeyError:
            raise NotFound(f"commit {commit_id} not found in repo {repo!r}") from None
        return self._commit_from(doc)

    def _commit_from(self, doc: dict[str, Any], loaded: Manifest | None = None) -> Commit:
        """A commit document of either format: with its manifest inline (format 1) or as a tree (format 2)."""
        fields = {name: doc[name] for name in ("repo", "id", "parent", "author", "time", "message")}
        if "tree" not in doc:
            return Commit(**fields, loaded=doc["manifest"])
        return Commit(**fields, tree=doc["tree"], files=doc.get("files"), bytes=doc.get("bytes"), loaded=loaded,
                      loader=lambda: self._load_tree(doc["repo"], doc["id"], doc["tree"]))

    def read_tree(self, root: str, *, where: str = "") -> Manifest:
        """The manifest a tree holds; NotFound or CorruptBlob (7) when a node is missing or damaged (fsck)."""
        return trees.read_tree(self.backend.read, root, concurrency=self.concurrency, where=where)[0]

    def _load_tree(self, repo: str, commit_id: str, root: str) -> Manifest:
        manifest, nodes = trees.read_tree(self.backend.read, root, concurrency=self.concurrency,
                                          where=f"repo {repo!r} commit {commit_id[:SHORT_ID_LEN]}")
        self._remember_tree(commit_id, nodes)
        return manifest

    def _remember_tree(self, commit_id: str, nodes: set[str]) -> None:
        # The node ids of the last few trees read or written: the next commit on top writes only what is new.
        self._tree_nodes[commit_id] = nodes
        while len(self._tree_nodes) > 4:
            self._tree_nodes.pop(next(iter(self._tree_nodes)))

    def log(self, repo: str, branch: str = "latest") -> list[Commit]:
        """Commits the branch has pointed at, newest first; concurrent commits all appear."""
        got = self.backend.read_versioned(keys.branch(repo, branch))
        if not got:
            raise NotFound(f"repo {repo!r} has no commits; deploy or put data into it first")
        return [self.get_commit(repo, entry["commit"]) for entry in self.branch_log(repo, branch, json.loads(got[0]))]

    def branch_log(self, repo: str, branch: str, doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """The log entries of a branch document, newest first, following its sealed segments."""
        yield from doc["log"]
        older = doc.get("older")
        while older:
            segment = self.get_json(keys.history(repo, branch, older))
            yield from segment["entries"]
            older = segment.get("older")

    def resolve(self, repo: str, ref: str = "latest") -> Commit:
        """Resolve 'latest', a branch name, a full id or a unique short id (5+ hex) to a commit."""
        check_repo_name(repo)
        ref = (ref or "latest").strip().lower()
        if not HEX.match(ref) or len(ref) < SHORT_ID_MIN:
            head = self.branch_head(repo, ref)
            if head:
                return self.get_commit(repo, head)
            if HEX.match(ref):
                raise NotFound(f"short id {ref!r} is too short: give at least {SHORT_ID_MIN} hex characters")
            raise NotFound(
                f"repo {repo!r} has no branch {ref!r}; known repos: {', '.join(self.repos()) or 'none'}"
            )
        matches = sorted({keys.commit_id(k) for k in self.backend.list(keys.commit_prefix(repo, ref))})
        if not matches:
            raise NotFound(f"no commit in repo {repo!r} starts with {ref!r}; list commits with `trainyard data log {repo}`")
        if len(matches) > 1:
            raise AmbiguousId(
                f"short id {ref!r} is ambiguous in repo {repo!r}; candidates: {', '.join(m[:12] for m in matches)}"
                " — give more characters"
            )
        return self.get_commit(repo, matches[0])


_ENTRY_FIELDS = frozenset(("sha256", "size", "pack", "offset"))


def _entry(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a manifest entry a commit keeps: sha256 and size, and where a packed blob lies."""
    kept = {"sha256": entry["sha256"], "size": entry["size"]}
    if "pack" in entry:
        kept.update(pack=entry["pack"], offset=entry["offset"])
    return kept


def _where(where: str | None) -> str:
    return f" ({where})" if where else ""


def parse_ref(text: str) -> tuple[str, str]:
    """Split 'repo:ref' (or '/repo:ref', kaos style) into (repo, ref); ref defaults to 'latest'."""
    text = text.strip().lstrip("/")
    repo, _, ref = text.partition(":")
    return repo, ref or "latest"
