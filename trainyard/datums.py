"""Pachyderm's datum model: split files into datums, glob a commit into datums, join, cross and chunk them."""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import itertools
import json
import re
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, Self, TypeVar

from tenacity import Retrying, retry_if_exception_type, stop_after_attempt

from trainyard.bundles import check_link, check_name
from trainyard.errors import ConflictError, NotFound, TrainyardError
from trainyard.records import DatumBatch, DatumIndex, DatumKeys, DatumRecord, Provenance
from trainyard.store import keys
from trainyard.store.trees import paused_gc, plain_json_strings
from trainyard.store.versioned import Commit, Manifest, Store, canonical_json, check_repo_name, sha256_bytes

# Concurrent puts to one repo each retry on top of the other's commit; a few rounds settle any real contention.
_PUT_ATTEMPTS = 8

SPLITS = ("line", "json")
# Pachyderm names the files of a split file by a 16-digit zero-padded index, so they sort in file order.
INDEX_WIDTH = 16

T = TypeVar("T")


class DatumError(TrainyardError):
    """A split, put, glob, join or chunk was asked for with bad input; nothing was stored."""

    exit_code = 2


class SplitError(DatumError):
    """A file cannot be split as asked (bad datum count, a line that is not JSON)."""


class GlobError(DatumError):
    """A glob or join pattern is malformed."""


# -- splitting ------------------------------------------------------------------------------------------------------
def _check_target(n: int) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise SplitError(f"--target-file-datums must be at least 1, got {n!r}")


def _lines(data: bytes) -> list[bytes]:
    """Lines with their newline; only b'\\n' ends a line, so a lone '\\r' inside a record does not split it."""
    pieces = data.split(b"\n")
    lines = [piece + b"\n" for piece in pieces[:-1]]
    if pieces[-1]:
        lines.append(pieces[-1])  # a last line without a newline is data too
    return lines


def _group(lines: list[bytes], n: int, prefix: bytes = b"") -> list[bytes]:
    return [prefix + b"".join(lines[i:i + n]) for i in range(0, len(lines), n)]


_BLOCK = 64 << 20


def split_lines(data: bytes, n: int, *, header: bool = False) -> list[bytes]:
    """Split into datums of n lines (the last may have fewer); with header the first line tops every datum.

    The header is not counted in n. A file that is empty (or only a header) gives no datums. Without a header the
    datums are views into `data`, not copies: a million datums cost no second copy of the file.
    """
    _check_target(n)
    import numpy as np  # the ends of every n-th line in one pass over the bytes, not one Python call per line

    view = memoryview(data)
    # In blocks: one comparison over a whole 1 GB file would first make a 1 GB array of booleans.
    ends = np.concatenate([np.flatnonzero(np.frombuffer(data, dtype=np.uint8, count=min(_BLOCK, len(data) - at),
                                                        offset=at) == 0x0A) + at + 1
                           for at in range(0, len(data), _BLOCK)] or [np.zeros(0, dtype=np.int64)])
    head = b""
    start = 0
    if header:
        if not data:
            return []
        start = int(ends[0]) if len(ends) else len(data)
        head, ends = bytes(view[:start]), ends[1:]
    cuts = ends[n - 1::n].tolist()
    if not cuts or cuts[-1] < len(data):
        cuts.append(len(data))  # the last lines, fewer than n, or a last line without a newline
    bounds = zip([start, *cuts[:-1]], cuts)
    if header:
        return [head + view[a:b] for a, b in bounds if b > a]
    return [view[a:b] for a, b in bounds if b > a]


def split_json(data: bytes, n: int) -> list[bytes]:
    """Split JSON lines into datums of n records; every non-blank line must parse as one JSON value.

    Blank lines hold no record: they are dropped and not counted. Errors name the 1-based line number.
    """
    _check_target(n)
    records = []
    for number, line in enumerate(_lines(data), start=1):
        if not line.strip():
            continue
        try:
            json.loads(line.rstrip(b"\r\n"))  # so the column is counted on this line
        except ValueError as exc:
            detail = f"{exc.msg} at column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else str(exc)
            raise SplitError(
                f"line {number} is not valid JSON ({detail}); --split json needs one value per line"
            ) from None
        records.append(line)
    return _group(records, n)


def split_file_paths(path: str, count: int) -> list[str]:
    """Where the datums of a split file live in the repo: a directory named after the file, one file per datum."""
    return [f"{path}/{i:0{INDEX_WIDTH}d}" for i in range(count)]


# -- put file -------------------------------------------------------------------------------------------------------
def _check_put_options(split: str | None, target_file_datums: int | None, header: bool) -> None:
    if split is not None and split not in SPLITS:
        raise DatumError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    if target_file_datums is not None:
        if split is None:
            raise DatumError("--target-file-datums needs --split line or --split json")
        _check_target(target_file_datums)
    if header and split != "line":
        raise DatumError("--header only works with --split line (it repeats the first line atop every datum)")


def repo_path(path: str) -> str:
    """Normalise a path inside a repo ('/a/b' or 'a/b' -> 'a/b'), refusing anything that could escape it."""
    rel = path.strip().lstrip("/")
    parts = rel.split("/")
    if not rel or any(part in ("", ".", "..") for part in parts) or "\\" in rel:
        raise DatumError(f"--path {path!r} is not a file path inside the repo; use e.g. /captions.tsv or data/a.csv")
    return rel


def put_file(store: Store, repo: str, file: Path, *, split: str | None = None, target_file_datums: int | None = None,
             header: bool = False, path: str | None = None, message: str = "") -> tuple[Commit, int]:
    """Add one file, whole or split into datums, on top of the repo's latest commit; returns (commit, datums).

    Like Pachyderm's put file: the new commit keeps every file of the head commit and replaces this file's
    path (a file, or the directory a split file becomes). Everything is validated before a byte is uploaded.
    Putting content that gives the same datums again makes no new commit: the manifest, hence the id, is unchanged.
    """
    file = Path(file)
    _check_put_options(split, target_file_datums, header)
    try:
        check_repo_name(repo)
    except TrainyardError as exc:
        raise DatumError(str(exc)) from None
    if not file.is_file():
        what = "does not exist" if not file.exists() else "is not a regular file"
        raise DatumError(f"{file} {what}; pass the path of the file to put")
    try:
        # The same rules as a bundle's files: a link must stay in the folder it lies in, the name must be printable.
        if file.is_symlink():
            check_link(file.parent, file, what="its folder")
        dest = repo_path(path if path is not None else file.name)
        check_name(dest)
    except TrainyardError as exc:
        raise DatumError(str(exc)) from None

    chunks: list[bytes] = []
    if split is not None:
        data = file.read_bytes()
        n = target_file_datums or 1  # Pachyderm's default: every line (record) is its own datum
        try:
            with paused_gc():
                chunks = split_lines(data, n, header=header) if split == "line" else split_json(data, n)
        except SplitError as exc:
            raise SplitError(f"{file}: {exc}") from None
        if not chunks:
            raise SplitError(f"{file} has no {'records' if split == 'json' else 'lines'} to split"
                             + (" after its header" if header and data else ""))

    # Another commit may land between reading the head and moving the branch; then redo on top of it.
    retrying = Retrying(retry=retry_if_exception_type(ConflictError), stop=stop_after_attempt(_PUT_ATTEMPTS),
                        reraise=True)
    with paused_gc():
        return retrying(_put_on_head, store, repo, file, dest, split, chunks, message)


def _put_on_head(store: Store, repo: str, file: Path, dest: str, split: str | None, chunks: list[bytes],
                 message: str) -> tuple[Commit, int]:
    head = store.branch_head(repo)
    parent: Manifest = store.get_commit(repo, head).manifest if head else {}
    for ancestor in itertools.accumulate(dest.split("/")[:-1], lambda a, b: f"{a}/{b}"):
        if ancestor in parent:
            raise DatumError(f"cannot put {dest!r} into repo {repo!r}: {ancestor!r} is a file there, not a directory;"
                             " choose another --path")
    manifest = {p: e for p, e in parent.items() if p != dest and not p.startswith(dest + "/")}

    if split is None:
        report = store.upload_files({dest: file}, repo=repo)
        manifest.update(report.manifest)
        datums = 1
    else:
        # Datums go into packs, a few objects for the whole file instead of one per datum; each keeps its own
        # sha256. Those the head already holds are not written again and cost no request at all.
        known = {e["sha256"]: e for e in parent.values()}
        entries = store.put_packed(chunks, known=known)
        manifest.update(zip(split_file_paths(dest, len(chunks)), entries))
        datums = len(chunks)

    how = f" (split {split}, {datums} datum(s))" if split else ""
    commit, _ = store.commit(repo, manifest, message=message or f"put file {file.name} -> /{dest}{how}",
                             expect_head=head)
    return commit, datums


# -- glob -----------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Glob:
    segments: int
    regex: re.Pattern[str]
    dirs_only: bool


def _compile(pattern: str) -> _Glob:
    if not isinstance(pattern, str) or not pattern.strip():
        raise GlobError("glob pattern is empty; use / for the whole repo, /* for each top-level file or directory")
    body = pattern.strip().strip("/")
    # A trailing '/' matches directories only, as in a shell.
    dirs_only = pattern.strip().endswith("/") and bool(body)
    if not body:
        return _Glob(0, re.compile(""), False)
    segments = body.split("/")
    for segment in segments:
        if not segment:
            raise GlobError(f"glob {pattern!r} has an empty path segment ('//')")
        if segment == "**":
            raise GlobError(f"glob {pattern!r} uses '**', which is not supported; give one '*' per directory level")
    # The same translation as Pachyderm's globs (below), with '**' refused above.
    regex, _ = _pfs_glob_regex(body, pattern)
    return _Glob(len(segments), re.compile(regex), dirs_only)


def glob_datums(manifest: dict[str, dict], pattern: str) -> dict[str, dict]:
    """Turn a commit's manifest into datums, as Pachyderm's glob does; returns {datum_path: sub_manifest}.

    Each match of the pattern against a path prefix is one datum: a file, or a directory with every file under it.
    '/' is one datum holding the whole repo, '/*' one per top-level entry, '/*/*' one per second-level entry,
    '/*.tsv' one per top-level .tsv file or directory, '/captions.tsv/*' one per datum of a split file, '/*/' one
    per top-level directory only. Datum paths start with '/'; sub-manifests keep the repo paths as keys.
    """
    glob = _compile(pattern)
    if glob.segments == 0:
        return {"/": dict(sorted(manifest.items()))} if manifest else {}
    with paused_gc():
        return _glob_datums(manifest, glob)


def _glob_datums(manifest: dict[str, dict], glob: _Glob) -> dict[str, dict]:
    found: dict[str, dict] = {}
    segments, match = glob.segments, glob.regex.fullmatch
    for key in sorted(manifest):
        # maxsplit: only the first `segments` parts are matched, whatever the depth below them
        parts = key.strip("/").split("/", segments)
        if len(parts) < segments or (glob.dirs_only and len(parts) == segments):
            continue
        prefix = "/".join(parts[:segments]) if len(parts) > segments else key.strip("/")
        if match(prefix):
            datum = found.get(prefix)
            if datum is None:
                datum = found[prefix] = {}
            datum[key] = manifest[key]
    return {f"/{prefix}": files for prefix, files in sorted(found.items())}


def datum_id(sub_manifest: dict[str, dict]) -> str:
    """The identity of a datum's content: sha256 of the canonical JSON of {relative path: {sha256, size}}.

    Paths are taken relative to the deepest directory that holds all of the datum's files, so a file datum is
    identified by its name and bytes and a directory datum by the layout and bytes beneath it: moving a datum
    elsewhere in the repo (or renaming the directory it is) keeps its id, changing any byte or file name does not.
    The same datum in two commits has the same id, which is what lets a step skip datums it has already processed.
    """
    if not sub_manifest:
        raise DatumError("a datum holds at least one file; got an empty manifest")
    if len(sub_manifest) == 1:
        # A file datum, the common case at a million datums: canonical_json's bytes, written directly.
        (key, entry), = sub_manifest.items()
        name = key.strip("/").rsplit("/", 1)[-1]
        if plain_json_strings([name]):
            text = f'{{"{name}":{{"sha256":"{entry["sha256"]}","size":{int(entry["size"])}}}}}'
            return hashlib.sha256(text.encode()).hexdigest()
    split = {key: key.strip("/").split("/") for key in sub_manifest}
    dirs = [parts[:-1] for parts in split.values()]
    common = 0
    while all(len(d) > common for d in dirs) and len({d[common] for d in dirs}) == 1:
        common += 1
    relative = {"/".join(parts[common:]): {"sha256": sub_manifest[key]["sha256"], "size": sub_manifest[key]["size"]}
                for key, parts in split.items()}
    return sha256_bytes(canonical_json(relative))


# -- join and cross -------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class JoinedDatum:
    """One datum of a join: the captured key and the datum path on each side (None where an outer join found none)."""

    key: str
    left: str | None
    right: str | None
    left_id: str | None
    right_id: str | None

    @property
    def id(self) -> str:
        """Changes when either side's content changes, so a processed pairing is recognised in a later run."""
        return sha256_bytes(canonical_json([self.key, self.left_id, self.right_id]))


def _join_glob(pattern: str) -> _Glob:
    glob = _compile(pattern)
    if glob.regex.groups != 1:
        raise GlobError(f"join glob {pattern!r} must hold exactly one capture group in parentheses, e.g. /(*).tsv "
                        f"or /(*)/; it has {glob.regex.groups}")
    return glob


def _keyed(datums: dict[str, dict], glob: _Glob) -> dict[str, list[str]]:
    keyed: dict[str, list[str]] = {}
    for path, files in datums.items():
        is_dir = any(key.strip("/") != path.strip("/") for key in files)
        if glob.dirs_only and not is_dir:
            continue
        match = glob.regex.fullmatch(path.strip("/"))
        if match and match.group(1) is not None:
            keyed.setdefault(match.group(1), []).append(path)
    return keyed


def join(left: dict[str, dict], left_glob: str, right: dict[str, dict], right_glob: str, *,
         mode: Literal["inner", "outer"] = "inner") -> list[JoinedDatum]:
    """Pair the datums of two inputs whose capture group matches, as Pachyderm's join_on does.

    Each glob (e.g. /(*).tsv, /(*)/) is matched against that side's datum paths; datums it does not match take no
    part. Datums sharing a key are paired every way; inner drops keys found on one side only, outer keeps them with
    the other side None. Sorted by key, then left path, then right path.
    """
    if mode not in ("inner", "outer"):
        raise DatumError(f"join mode must be 'inner' or 'outer', got {mode!r}")
    with paused_gc():
        return _join(left, left_glob, right, right_glob, mode)


def _join(left: dict[str, dict], left_glob: str, right: dict[str, dict], right_glob: str,
          mode: Literal["inner", "outer"]) -> list[JoinedDatum]:
    lkeys, rkeys = _keyed(left, _join_glob(left_glob)), _keyed(right, _join_glob(right_glob))
    keys = set(lkeys) & set(rkeys) if mode == "inner" else set(lkeys) | set(rkeys)
    joined = []
    for key in keys:
        lefts: list[str | None] = sorted(lkeys.get(key, [])) or [None]
        rights: list[str | None] = sorted(rkeys.get(key, [])) or [None]
        for lp, rp in itertools.product(lefts, rights):
            joined.append(JoinedDatum(key=key, left=lp, right=rp,
                                      left_id=datum_id(left[lp]) if lp is not None else None,
                                      right_id=datum_id(right[rp]) if rp is not None else None))
    return sorted(joined, key=lambda d: (d.key, d.left or "", d.right or ""))


def cross(left: dict[str, Any], right: dict[str, Any]) -> list[tuple[str, str]]:
    """Every pairing of a left datum path with a right one (Pachyderm's cross), sorted."""
    return list(itertools.product(sorted(left), sorted(right)))


# -- task mapping ---------------------------------------------------------------------------------------------------
def chunk(datums: list[T], max_tasks: int) -> list[list[T]]:
    """Split datums into at most max_tasks contiguous chunks whose sizes differ by at most one; deterministic.

    Thousands of datums must not become thousands of mapped Airflow tasks: each task processes one chunk.
    """
    if not isinstance(max_tasks, int) or isinstance(max_tasks, bool) or max_tasks < 1:
        raise DatumError(f"max_tasks must be at least 1, got {max_tasks!r}")
    items = list(datums)
    count = min(max_tasks, len(items))
    if count == 0:
        return []
    size, extra = divmod(len(items), count)
    chunks, start = [], 0
    for i in range(count):
        end = start + size + (1 if i < extra else 0)
        chunks.append(items[start:end])
        start = end
    return chunks


# -- incremental processing -----------------------------------------------------------------------------------------
def code_version(manifest: dict[str, dict], paths: list[str]) -> str:
    """The version of a step's code: a hash of the files under the given directories of its source commit.

    Only the step's own code counts, so changing another step's script does not make this one reprocess anything.
    """
    prefixes = [p.strip("/").removeprefix("./") for p in paths]
    everything = any(x in ("", ".") for x in prefixes)
    files = {p: e["sha256"] for p, e in sorted(manifest.items())
             if everything or any(p.startswith(x + "/") for x in prefixes)}
    if not files:
        raise DatumError(f"no code under {', '.join(paths)} in the step's source commit; check the transform path")
    return sha256_bytes(canonical_json(files))


# Transforms trainyard ships (`builtin:<name>`); bump a version when its output for the same input changes.
BUILTIN_TRANSFORMS = {"fetch-urls": "1", "fetch-manifest": "1"}


def transform_version(transform: str, manifest: dict[str, dict] | None, code_paths: list[str] = ()) -> str:
    """The code version of a step's transform: a built-in's declared version, else the hash of its folder's files
    plus those of `code_paths` (shared modules it imports, e.g. steps/common)."""
    if transform.startswith("builtin:"):
        name = transform.removeprefix("builtin:")
        if name not in BUILTIN_TRANSFORMS:
            raise DatumError(f"unknown built-in transform {transform!r}; known: "
                             f"{', '.join('builtin:' + n for n in BUILTIN_TRANSFORMS)}")
        return f"builtin:{name}:{BUILTIN_TRANSFORMS[name]}"
    return code_version(manifest or {}, [transform_code_dir(transform), *code_paths])


def transform_code_dir(transform: str) -> str:
    """The directory whose files version a transform: its own folder ('' for one at the bundle's root)."""
    return transform.strip("/").rpartition("/")[0]


def datum_key(datum: str, code: str, params: dict[str, Any]) -> str:
    """What a datum's output is keyed by: (datum content, step code version, step params). Same key, same output."""
    return sha256_bytes(canonical_json({"datum": datum, "code": code, "params": params}))


def datum_keys(datum_ids: Iterable[str], code: str, params: dict[str, Any]) -> list[str]:
    """datum_key() of many datums: the same keys, with the JSON around each id serialised once (a plan keys a
    million datums)."""
    head, _, tail = canonical_json({"code": code, "datum": "\0", "params": params}).partition(b'"\\u0000"')
    keyed = []
    for datum in datum_ids:
        # Content ids are hex; anything else is serialised the long way, so it is escaped exactly as datum_key does.
        if datum.isascii() and datum.isalnum():
            keyed.append(hashlib.sha256(b"%s\"%s\"%s" % (head, datum.encode(), tail)).hexdigest())
        else:
            keyed.append(datum_key(datum, code, params))
    return keyed


_BATCHES_IN_FLIGHT = 3
# Key lists a plan may read one by one before collect folds them into a new index.
COMPACT_LISTS = 64
# A task publishes its records in batches of at most this many: a task stopped part-way keeps what it finished, and
# no one object grows past a few MB (a record is about 500 bytes).
BATCH_RECORDS = 10_000


@dataclasses.dataclass
class DatumRecords:
    """Where a datum step's records are: the datum keys each batch holds, and the keys with a per-datum record.

    Read with a few listings and reads (the newest index plus the key lists it does not cover), never one request
    per datum; `uncovered` counts the objects no index covers yet (and `uncovered_keys` their keys), which collect
    compacts into a new index once they are worth it.
    """

    pipeline: str
    step: str
    batches: dict[str, list[str]]
    records: set[str]
    uncovered: int = 0
    generation: int = 0  # of the index read; collect's next index is one more
    indexed: int = 0  # keys the index read holds
    uncovered_keys: int = 0

    def keys(self) -> set[str]:
        """Every processed datum key: what a plan skips."""
        done = set(self.records)
        for batch_keys in self.batches.values():
            done.update(batch_keys)
        return done

    def __contains__(self, key: str) -> bool:
        return key in self.records or any(key in batch_keys for batch_keys in self.batches.values())

    def locate(self, wanted: Iterable[str]) -> dict[str, str | None]:
        """{key: the batch holding it, or None for a per-datum record} for each wanted key that was processed."""
        wanted = set(wanted)
        found: dict[str, str | None] = {}
        for batch, batch_keys in self.batches.items():
            for key in batch_keys:
                if key in wanted and key not in found:
                    found[key] = batch
        for key in self.records & wanted:
            found.setdefault(key, None)
        return found


def _read_all(store: Store, items: list[str], read):
    with ThreadPoolExecutor(max_workers=store.concurrency) as pool:
        return list(pool.map(read, items))


def datum_records(store: Store, pipeline: str, step: str) -> DatumRecords:
    """What the step has recorded, read from the newest index and the batch key lists it does not cover.

    Without an index (a store written before batches, or before its first collect) the step's prefix is listed
    once, so per-datum records count too; after collect has indexed them, they are read from the index.
    """
    indexes = store.list_keys(keys.datum_index_prefix(pipeline, step))
    batches: dict[str, list[str]] = {}
    records: set[str] = set()
    generation = indexed = 0
    if indexes:
        # Names sort by generation: the last was compacted from every earlier one (a concurrent collect's index
        # may lack a key list, which is then read below as not covered).
        index = store.get_record(indexes[-1], DatumIndex)
        batches, records = index.batches, set(index.records)
        generation = keys.datum_index_generation(indexes[-1])
        indexed = len(records) + sum(len(batch_keys) for batch_keys in batches.values())
    else:
        for key in store.list_keys(keys.datum_step_prefix(pipeline, step)):
            part = keys.datum_part(key, pipeline, step)
            if part and part[0] == "record":
                records.add(part[1])
    fresh = [key for key in store.list_keys(keys.datum_batch_keys_prefix(pipeline, step))
             if (part := keys.datum_part(key, pipeline, step)) and part[0] == "keys" and part[1] not in batches]
    new_keys = 0 if indexes else len(records)
    for listed in _read_all(store, fresh, lambda key: store.get_record(key, DatumKeys)):
        batches[listed.batch] = listed.keys
        new_keys += len(listed.keys)
    return DatumRecords(pipeline, step, batches, records, uncovered=len(fresh) + (0 if indexes else len(records)),
                        generation=generation, indexed=indexed, uncovered_keys=new_keys)


def has_record(store: Store, pipeline: str, step: str, key: str) -> bool:
    """Whether the datum keyed `key` (datum_key) was processed by this step: a re-run skips it.

    One datum; to ask about many, read datum_records() once and test its keys().
    """
    return store.exists(keys.datum_record(pipeline, step, key)) or key in datum_records(store, pipeline, step)


def _load_batch(store: Store, pipeline: str, step: str, batch: str) -> DatumBatch:
    return store.get_record(keys.datum_batch(pipeline, step, batch), DatumBatch)


def load_record(store: Store, pipeline: str, step: str, key: str, recorded: DatumRecords | None = None) -> DatumRecord:
    """A processed datum's record; NotFound when the datum failed or its task never ran."""
    try:
        return store.get_record(keys.datum_record(pipeline, step, key), DatumRecord)
    except NotFound:
        pass
    recorded = recorded or datum_records(store, pipeline, step)
    batch = recorded.locate([key]).get(key)
    if batch is not None:
        for record in _load_batch(store, pipeline, step, batch).records:
            if record.key == key:
                return record
    raise NotFound(f"datum {key} has no record in step {pipeline}.{step} of the store {store.uri}")


def load_records(store: Store, recorded: DatumRecords, located: dict[str, str | None]) -> Iterator[DatumRecord]:
    """The record of each key of `located` (from recorded.locate()), each once and in no set order, reading only the
    batches that hold them, a few at a time, so a million records are never held at once. Per-datum records (None)
    are read one by one."""
    by_batch: dict[str | None, list[str]] = {}
    for key, batch in located.items():
        by_batch.setdefault(batch, []).append(key)
    singles = by_batch.pop(None, [])
    # A few batches in flight at once: reads overlap, and memory holds a few batches, never all of them.
    with ThreadPoolExecutor(max_workers=_BATCHES_IN_FLIGHT) as pool:
        queue = iter(sorted(by_batch))
        flight = collections.deque((name, pool.submit(_load_batch, store, recorded.pipeline, recorded.step, name))
                                   for name in itertools.islice(queue, _BATCHES_IN_FLIGHT))
        while flight:
            name, future = flight.popleft()
            batch = future.result()
            following = next(queue, None)
            if following is not None:
                flight.append((following, pool.submit(_load_batch, store, recorded.pipeline, recorded.step, following)))
            needed = set(by_batch[name])
            for record in batch.records:
                if record.key in needed:
                    needed.discard(record.key)
                    yield record
    for i in range(0, len(singles), BATCH_RECORDS):
        keys_ = singles[i:i + BATCH_RECORDS]
        for key, record in zip(keys_, _read_all(store, keys_, lambda k: store.get_record(
                keys.datum_record(recorded.pipeline, recorded.step, k), DatumRecord))):
            yield record if record.key == key else record.model_copy(update={"key": key})


def merge_records(store: Store, recorded: DatumRecords, located: dict[str, str | None],
                  names_of: dict[str, list[str]], *, path_of: Callable[[str, str], str],
                  conflict: Callable[[str, str, str], str]) -> tuple[dict[str, dict], dict[str, tuple[str, str]],
                                                                  list[str]]:
    """What a collect commits: every datum's outputs in one manifest, which datum (name, key) wrote each path, and
    the keys of per-datum records read on the way, copied into batches so later collects read a few objects.

    names_of: datum key -> the names of the datums with that key (two with the same content share a record);
    path_of(name, rel): where a datum's output `rel` lands; conflict(first, second, path): the message when two
    datums write one path with different content (SystemExit). Records come batch by batch, in no datum order; the
    merge keeps what a walk in name order kept (the last name names a file several wrote alike), so the commit and
    provenance do not depend on the order.
    """
    merged: dict[str, dict] = {}
    origin: dict[str, tuple[str, str]] = {}
    migrated: list[str] = []
    with RecordWriter(store, recorded.pipeline, recorded.step) as rewrite:
        for record in load_records(store, recorded, located):
            if located[record.key] is None:  # a per-datum record: kept in a batch from now on
                rewrite.add(record)
                migrated.append(record.key)
            for name in names_of[record.key]:
                for rel, entry in record.outputs.items():
                    path = path_of(name, rel)
                    seen = merged.get(path)
                    if seen is not None and seen["sha256"] != entry["sha256"]:
                        raise SystemExit(conflict(*sorted((origin[path][0], name)), path))
                    if seen is None or name > origin[path][0]:
                        merged[path], origin[path] = entry, (name, record.key)
    return merged, origin, migrated


def batch_id(batch: DatumBatch) -> str:
    """A batch is named after its content, so writing it again (a retried write) makes the same object."""
    return sha256_bytes(canonical_json(batch.to_json()))


def save_records(store: Store, pipeline: str, step: str, records: list[DatumRecord]) -> str | None:
    """Publish processed datums' records, last (their outputs are stored): one batch object, then its key list,
    which is what makes later runs skip them. Both are created once and never overwritten; returns the batch id."""
    if not records:
        return None
    missing = [r.datum for r in records if not r.key]
    if missing:
        raise DatumError(f"datum records without a key cannot be published: {', '.join(missing[:5])}")
    batch = DatumBatch(pipeline=pipeline, step=step, records=records)
    name = batch_id(batch)
    store.put_record(keys.datum_batch(pipeline, step, name), batch, create_only=True)
    store.put_record(keys.datum_batch_keys(pipeline, step, name),
                     DatumKeys(batch=name, keys=[r.key for r in records]), create_only=True)
    return name


def save_record(store: Store, pipeline: str, step: str, record: DatumRecord) -> bool:
    """Publish one processed datum's record (a batch of one); for many, use a RecordWriter."""
    return save_records(store, pipeline, step, [record]) is not None


class RecordWriter:
    """Collects a task's records and publishes them in batches of `size`, and what is left when it closes
    (also when the task fails: every record added is for a datum whose outputs are stored)."""

    def __init__(self, store: Store, pipeline: str, step: str, size: int = BATCH_RECORDS) -> None:
        self.store, self.pipeline, self.step, self.size = store, pipeline, step, size
        self.pending: list[DatumRecord] = []
        self.batches: list[str] = []

    def add(self, record: DatumRecord) -> None:
        self.pending.append(record)
        if len(self.pending) >= self.size:
            self.flush()

    def flush(self) -> None:
        name = save_records(self.store, self.pipeline, self.step, self.pending)
        if name:
            self.batches.append(name)
        self.pending = []

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.flush()


def compact_records(store: Store, recorded: DatumRecords, migrated: Iterable[str] = ()) -> str | None:
    """Write one index of every batch's keys and per-datum record: create-only, one generation after the index it
    was read from, so the next plan reads it instead of one key list per task.

    An index is written whole, so it is written only when what it lacks is worth it: COMPACT_LISTS key lists for a
    plan to read one by one, or a quarter of its keys; a run that changes ten datums of a million adds one small
    key list, not a new index (writes stay in proportion to what runs add). `migrated`: keys whose per-datum
    records collect has just copied into batches; the index then sends readers there. Returns the index's key, or
    None when none was written.
    """
    migrated = set(migrated)
    if migrated:
        generation = recorded.generation
        recorded = datum_records(store, recorded.pipeline, recorded.step)  # with the batches just written
        recorded.records.difference_update(migrated)
        recorded.generation = max(generation, recorded.generation)
    elif recorded.uncovered < COMPACT_LISTS and 4 * recorded.uncovered_keys < recorded.indexed:
        return None
    if not recorded.uncovered:
        return None
    index = DatumIndex(batches=recorded.batches, records=sorted(recorded.records))
    name = sha256_bytes(canonical_json(index.to_json()))[:16]
    recorded.generation += 1
    key = keys.datum_index(recorded.pipeline, recorded.step, recorded.generation, name)
    store.put_record(key, index, create_only=True)
    recorded.uncovered = recorded.uncovered_keys = 0
    recorded.indexed = len(recorded.records) + sum(len(batch_keys) for batch_keys in recorded.batches.values())
    return key


def save_provenance(store: Store, commit: Commit, provenance: Provenance) -> None:
    """Record which datum produced each file of a datum step's output commit."""
    store.put_record(keys.provenance(commit.repo, commit.id), provenance)


def has_provenance(store: Store, commit: Commit) -> bool:
    """Whether the commit's provenance is stored: a collect that made no new commit need not write it again (at a
    million files it is a large object)."""
    return store.exists(keys.provenance(commit.repo, commit.id))


def load_provenance(store: Store, commit: Commit) -> Provenance:
    """NotFound when the commit was not written by a datum step."""
    return store.get_record(keys.provenance(commit.repo, commit.id), Provenance)


# -- work units: what one datum task processes, for a single input, a join or a cross -------------------------------
COMBINE_MODES = ("single", "inner", "outer", "cross")


@dataclasses.dataclass(frozen=True)
class DatumInput:
    """One input of a datum step: a commit's manifest cut by a glob; `join_on` captures the key of a join."""

    name: str
    manifest: dict[str, dict]
    glob: str
    join_on: str | None = None


def check_combine(combine: str, inputs: int) -> None:
    """A combine mode and its number of inputs: single takes one, a join or cross two."""
    if combine not in COMBINE_MODES:
        raise DatumError(f"combine must be one of {', '.join(COMBINE_MODES)}, got {combine!r}")
    if (combine == "single") != (inputs == 1) or inputs > 2:
        raise DatumError(f"combine {combine!r} takes {'one input' if combine == 'single' else 'two inputs'}, "
                         f"got {inputs}")


def work_units(inputs: list[DatumInput], combine: str = "single") -> dict[str, dict[str, Any]]:
    """The units a datum step processes, {name: {"files": {path: entry}, "id": content id}}.

    single: one unit per datum, files at their repo paths. inner/outer: one unit per joined pair, cross: one per
    pairing; their files sit under each input's name (`captions/...`, `features/...`) and their id hashes both
    sides, so a unit is processed again exactly when either side's content changes.
    """
    check_combine(combine, len(inputs))
    with paused_gc():
        return _work_units(inputs, combine)


def _work_units(inputs: list[DatumInput], combine: str) -> dict[str, dict[str, Any]]:
    datums = [glob_datums(i.manifest, i.glob) for i in inputs]
    if combine == "single":
        # glob_datums returns its datums sorted
        return {path: {"files": files, "id": datum_id(files)} for path, files in datums[0].items()}
    left, right = inputs

    def files_of(side: DatumInput, side_datums: dict, path: str | None) -> dict:
        return {} if path is None else {f"{side.name}/{p.lstrip('/')}": e for p, e in side_datums[path].items()}

    units: dict[str, dict[str, Any]] = {}
    if combine == "cross":
        for lp, rp in cross(datums[0], datums[1]):
            uid = sha256_bytes(canonical_json([datum_id(datums[0][lp]), datum_id(datums[1][rp])]))
            units[f"{lp} x {rp}"] = {"files": {**files_of(left, datums[0], lp), **files_of(right, datums[1], rp)},
                                     "id": uid}
        return units
    if not left.join_on or not right.join_on:
        raise DatumError("a join needs join_on on both inputs, e.g. /captions.tsv/(*) and /(*)/")
    for jd in join(datums[0], left.join_on, datums[1], right.join_on, mode=combine):
        name = jd.key if (jd.key not in units) else f"{jd.key} ({jd.left} x {jd.right})"
        units[name] = {"files": {**files_of(left, datums[0], jd.left), **files_of(right, datums[1], jd.right)},
                       "id": jd.id}
    return units


# -- Pachyderm pipeline inputs: pfs globs with capture groups, and cross, union, join and group over N inputs ----
# Semantics follow Pachyderm's datum iterators (docs: "Glob Pattern", "Cross and Union Inputs", "Join", "Group"):
# a pfs input is one datum per glob match; cross multiplies its inputs' datums, union concatenates them; join pairs
# the parts whose join_on keys are equal (outer_join inputs also keep parts without a partner); group gathers every
# part with the same group_by key into one datum. A datum is a tuple of parts, each seen at /pfs/<name>/<path>.
_EXTGLOB = re.compile(r"[!@+]\(")
_GO_TEMPLATE = re.compile(r"\$(?:\{([A-Za-z0-9_]+)\}|([A-Za-z0-9_]+)|(\$))")


@dataclasses.dataclass(frozen=True)
class PfsGlob:
    """A compiled Pachyderm glob: the regex over a path without its leading '/', and how paths are cut to match."""

    pattern: str
    regex: re.Pattern[str]
    depth: int  # path segments a match spans (0: the whole repo); unused when recursive
    recursive: bool  # holds '**', which crosses '/' and matches files at any depth
    dirs_only: bool

    @property
    def groups(self) -> int:
        return self.regex.groups


def _pfs_glob_regex(body: str, pattern: str) -> tuple[str, int]:
    """Translate a glob body (no leading '/') to a regex; returns (regex, '/'-separated segments)."""
    out: list[str] = []
    depth, in_brace, segments = 0, False, 1
    i = 0
    while i < len(body):
        c = body[i]
        if c == "\\":
            if i + 1 == len(body):
                raise GlobError(f"glob {pattern!r} ends with a lone backslash")
            out.append(re.escape(body[i + 1]))
            i += 2
            continue
        if body.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = i + 1
            if j < len(body) and body[j] in "!^":
                j += 1
            if j < len(body) and body[j] == "]":
                j += 1
            end = body.find("]", j)
            if end == -1:
                raise GlobError(f"glob {pattern!r} has an unclosed '['")
            members = body[i + 1:end]
            if "/" in members:
                raise GlobError(f"glob {pattern!r} has a '/' inside '[...]'; a class matches one character of a name")
            negated = members[:1] in ("!", "^")
            members = (members[1:] if negated else members).replace("\\", "\\\\")
            out.append(f"[^/{members}]" if negated else f"[{members}]")
            i = end + 1
            continue
        elif c == "{":
            if in_brace:
                raise GlobError(f"glob {pattern!r} nests '{{' alternatives, which is not supported")
            in_brace = True
            out.append("(?:")
        elif c == "," and in_brace:
            out.append("|")
        elif c == "}" and in_brace:
            in_brace = False
            out.append(")")
        elif c == "(":
            depth += 1
            out.append("(")
        elif c == ")":
            if depth == 0:
                raise GlobError(f"glob {pattern!r} has a ')' without its '('")
            depth -= 1
            out.append(")")
        elif c == "/":
            if in_brace:
                raise GlobError(f"glob {pattern!r} has a '/' inside '{{...}}'; alternatives must stay within a name")
            if i + 1 < len(body) and body[i + 1] == "/":
                raise GlobError(f"glob {pattern!r} has an empty path segment ('//')")
            segments += 1
            out.append("/")
        else:
            out.append(re.escape(c))
        i += 1
    if in_brace:
        raise GlobError(f"glob {pattern!r} has an unclosed '{{'")
    if depth:
        raise GlobError(f"glob {pattern!r} has an unclosed '('")
    return "".join(out), segments


def compile_pfs_glob(pattern: str) -> PfsGlob:
    """Compile a pfs input's glob as Pachyderm reads it: absolute ('/...'), '*' and '?' within a name, '**' across
    directories, '[...]' classes, '{a,b}' alternatives and '(...)' capture groups for join_on and group_by."""
    if not isinstance(pattern, str) or not pattern.strip():
        raise GlobError("glob is empty; use / for the whole repo as one datum, /* for one datum per top-level entry")
    text = pattern.strip()
    if not text.startswith("/"):
        raise GlobError(f"glob {pattern!r} does not start with '/': globs match paths from the repo's root, "
                        f"e.g. /{text}")
    if _EXTGLOB.search(text):
        raise GlobError(f"glob {pattern!r} uses an extended glob (!(...), @(...), +(...)), which is not supported")
    dirs_only = len(text) > 1 and text.endswith("/")
    body = text.strip("/")
    if not body:
        return PfsGlob(pattern, re.compile(""), 0, False, False)
    regex, segments = _pfs_glob_regex(body, pattern)
    recursive = "**" in body.replace("\\*", "")
    if recursive and dirs_only:
        raise GlobError(f"glob {pattern!r} ends with '/' after '**'; '**' matches files, drop the trailing '/'")
    try:
        compiled = re.compile(regex)
    except re.error as exc:
        raise GlobError(f"glob {pattern!r} is not a valid glob ({exc})") from None
    return PfsGlob(pattern, compiled, segments, recursive, dirs_only)


@dataclasses.dataclass(frozen=True)
class GlobMatch:
    """One datum of a pfs input: the matched path ('/' for the root), its files (repo path -> entry), the captures."""

    path: str
    files: dict[str, dict]
    groups: tuple[str | None, ...] = ()


def pfs_glob(manifest: dict[str, dict], pattern: str | PfsGlob) -> list[GlobMatch]:
    """The datums a pfs input's glob makes of a commit, sorted by path.

    Each file or directory whose path matches is one datum (a directory brings every file under it), as Pachyderm's
    glob does: '/' is the whole repo, '/*' each top-level entry, '/*/*' each second-level one, a trailing '/' keeps
    directories only, and '**' (which crosses '/') matches files at any depth, e.g. /**test*.txt.
    """
    glob = pattern if isinstance(pattern, PfsGlob) else compile_pfs_glob(pattern)
    if glob.depth == 0:
        return [GlobMatch("/", dict(sorted(manifest.items())))] if manifest else []
    found: dict[str, dict[str, dict]] = {}
    captures: dict[str, tuple[str | None, ...]] = {}
    verdicts: dict[str, re.Match[str] | None] = {}
    for key in sorted(manifest):
        clean = key.strip("/")
        if glob.recursive:
            prefix = clean
        else:
            parts = clean.split("/")
            if len(parts) < glob.depth or (glob.dirs_only and len(parts) == glob.depth):
                continue
            prefix = "/".join(parts[:glob.depth])
        if prefix not in verdicts:
            verdicts[prefix] = glob.regex.fullmatch(prefix)
        match = verdicts[prefix]
        if match:
            found.setdefault(prefix, {})[key] = manifest[key]
            captures[prefix] = match.groups()
    return [GlobMatch(f"/{prefix}", files, captures[prefix]) for prefix, files in sorted(found.items())]


def expand_captures(template: str, groups: tuple[str | None, ...]) -> str:
    """Expand a join_on / group_by template ('$1', '$1$2', '${2}') with a match's capture groups.

    As Go's regexp Expand (which Pachyderm uses): '$name' takes the longest run of letters, digits and '_' as the
    name, so write '${1}x' rather than '$1x'; '$$' is a '$'; an unknown group expands to nothing.
    """
    def one(match: re.Match[str]) -> str:
        if match.group(3):
            return "$"
        name = match.group(1) or match.group(2)
        if name.isdigit() and 0 < int(name) <= len(groups):
            return groups[int(name) - 1] or ""
        return ""

    return _GO_TEMPLATE.sub(one, template)


def template_groups(template: str) -> list[int]:
    """The capture group numbers a join_on / group_by template refers to (names that are not numbers give 0)."""
    numbers = []
    for braced, plain, dollar in _GO_TEMPLATE.findall(template):
        if not dollar:
            name = braced or plain
            numbers.append(int(name) if name.isdigit() else 0)
    return numbers


@dataclasses.dataclass
class PfsSource:
    """A pfs input resolved to a commit: its name (/pfs/<name>), repo, commit manifest and glob, plus its keys."""

    name: str
    repo: str
    glob: str
    manifest: dict[str, dict]
    commit: str | None = None
    join_on: str | None = None
    group_by: str | None = None
    outer_join: bool = False
    lazy: bool = False


@dataclasses.dataclass
class Combined:
    """A cross, union, join or group of inputs (each a PfsSource or another Combined)."""

    kind: Literal["cross", "union", "join", "group"]
    inputs: list[PfsSource | Combined]


@dataclasses.dataclass(frozen=True)
class DatumPart:
    """One input's share of a datum: the glob match `path` of `repo`, its files seen at /pfs/<name>/<repo path>."""

    name: str
    repo: str
    commit: str | None
    path: str
    files: dict[str, dict] = dataclasses.field(hash=False, compare=False)
    join_key: str = ""
    group_key: str = ""
    lazy: bool = False

    @property
    def label(self) -> str:
        return f"{self.name}:{self.path}"


Datum = tuple[DatumPart, ...]


def _ordered(parts) -> Datum:
    return tuple(sorted(parts, key=lambda p: (p.name, p.path, p.repo)))


def _source_datums(source: PfsSource) -> list[Datum]:
    glob = compile_pfs_glob(source.glob)
    datums = []
    for match in pfs_glob(source.manifest, glob):
        datums.append((DatumPart(
            name=source.name, repo=source.repo, commit=source.commit, path=match.path, files=match.files,
            join_key=expand_captures(source.join_on, match.groups) if source.join_on else "",
            group_key=expand_captures(source.group_by, match.groups) if source.group_by else "",
            lazy=source.lazy),))
    return datums


def _outer(node: PfsSource | Combined) -> bool:
    return isinstance(node, PfsSource) and node.outer_join


def input_datums(node: PfsSource | Combined) -> list[Datum]:
    """Every datum of an input tree, each a tuple of parts ordered by input name; sorted by their labels."""
    if isinstance(node, PfsSource):
        datums = _source_datums(node)
    elif node.kind == "union":
        datums = [d for child in node.inputs for d in input_datums(child)]
    elif node.kind == "cross":
        sides = [input_datums(child) for child in node.inputs]
        datums = [_ordered(p for d in combo for p in d) for combo in itertools.product(*sides)]
    elif node.kind == "join":
        # key -> for each input, the parts with that key (a part of a nested datum carries its own key)
        table: dict[str, list[list[DatumPart]]] = {}
        for i, child in enumerate(node.inputs):
            for datum in input_datums(child):
                for part in datum:
                    table.setdefault(part.join_key, [[] for _ in node.inputs])[i].append(part)
        datums = []
        for lists in table.values():
            if not all(lists):
                # a key some input lacks: only outer_join inputs keep their parts; if none does, no datum
                lists = [parts for child, parts in zip(node.inputs, lists) if parts and _outer(child)]
                if not lists:
                    continue
            datums += [_ordered(combo) for combo in itertools.product(*lists)]
    elif node.kind == "group":
        groups: dict[str, list[DatumPart]] = {}
        for child in node.inputs:
            for datum in input_datums(child):
                for part in datum:
                    groups.setdefault(part.group_key, []).append(part)
        datums = [_ordered(groups[key]) for key in sorted(groups)]
    else:
        raise DatumError(f"unknown input kind {node.kind!r}; use pfs, cross, union, join or group")
    return sorted(datums, key=lambda d: [(p.name, p.path, p.repo) for p in d])


def pfs_datum_id(datum: Datum) -> str:
    """A datum's identity: each part's input name and path with its files' content. The transform sees exactly
    this (/pfs/<name>/<path>), so the same id means the same input; changing a byte, a name or a path changes it."""
    return sha256_bytes(canonical_json([[p.name, p.path, {k: [e["sha256"], e["size"]] for k, e in p.files.items()}]
                                        for p in datum]))


def datum_label(datum: Datum) -> str:
    """How `pachctl list datum` names a datum: its parts as name:path, comma-separated."""
    return ", ".join(p.label for p in datum)


def datum_files(datum: Datum) -> dict[str, dict]:
    """Where a datum's files sit under /pfs: {"<name>/<repo path>": entry}; two parts writing one path is an error."""
    files: dict[str, dict] = {}
    for part in datum:
        for key, entry in part.files.items():
            path = f"{part.name}/{key.strip('/')}"
            if path in files and files[path]["sha256"] != entry["sha256"]:
                raise DatumError(f"datum {datum_label(datum)} holds /pfs/{path} twice with different content; "
                                 "give the inputs distinct names")
            files[path] = entry
    return files
