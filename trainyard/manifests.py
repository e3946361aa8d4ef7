"""kaos data manifests (`-m data.mf`): validate every line, fetch in parallel with retries, commit all or nothing."""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import json
import os
import re
import ssl
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any
from urllib.parse import parse_qs, urlsplit

import tenacity

from trainyard.bundles import name_problem
from trainyard.errors import TrainyardError
from trainyard.store.versioned import Commit, Store, _Bar, check_repo_name, progress_bars_enabled
from trainyard.urlpolicy import HostLookupError, UrlPolicy, UrlPolicyError, redact

KEYS = ("url", "path", "sha256", "size")
SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
_CHUNK = 1 << 20
# A server's Retry-After is honoured up to this many seconds; longer waits are better left to the task's own retries.
MAX_RETRY_AFTER = 60.0
# HTTP and S3 answers that mean "try again later" rather than "this URL is wrong".
_TRANSIENT_STATUS = {408, 425, 429}
_TRANSIENT_S3_CODES = {"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout", "Throttling",
                       "ThrottlingException", "RequestLimitExceeded", "503", "500"}
# Failure details listed in full; past this the rest of the failed lines are named by number only.
_DETAILED_FAILURES = 20


class ManifestError(TrainyardError):
    """A data manifest line is invalid, or its data could not be fetched."""

    exit_code = 2

    def __init__(self, message: str, failures: list[tuple[ManifestEntry, str]] | None = None) -> None:
        super().__init__(message)
        # For callers that report failures as data (a step's JSON result): (entry, reason) per failed line.
        self.failures = failures or []


class _Transient(Exception):
    """A failure worth another attempt: network trouble, 5xx/429, a short or corrupted body."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class _Permanent(Exception):
    """A failure another attempt cannot fix: 4xx, a refused URL, a missing object."""


@dataclasses.dataclass(frozen=True)
class ManifestEntry:
    """One manifest line: fetch url into path of the data repo; sha256 and size are verified when given."""

    line: int
    url: str
    path: str
    sha256: str | None = None
    size: int | None = None


# -- parsing ------------------------------------------------------------------------------------------------------
def _check_path(path: str) -> str | None:
    """Why a manifest path is unusable as a repo path, or None."""
    if not path:
        return "is empty"
    if "\\" in path:
        return "contains a backslash; use / between directories"
    problem = name_problem(path)  # the rule every committed file name follows (bundles, data put)
    if problem:
        return problem
    if path.startswith("/"):
        return "is absolute; write it relative to the data repo root, without the leading /"
    parts = path.split("/")
    if ".." in parts:
        return "contains '..'; paths must stay inside the data repo"
    if "" in parts or "." in parts:
        normal = "/".join(p for p in parts if p not in ("", "."))
        return f"is not normalised; write it as {normal!r}" if normal else "names no file"
    return None


def _parse_line(raw: str, number: int, source: str) -> ManifestEntry:
    def bad(problem: str) -> ManifestError:
        return ManifestError(f"{source}:{number}: {problem}")

    example = 'write one JSON object per line, like {"url": "https://host/file", "path": "dir/file"}'
    try:
        obj = json.loads(raw)
    except ValueError as exc:
        raise bad(f"not valid JSON ({exc}); {example}") from None
    if not isinstance(obj, dict):
        raise bad(f"expected a JSON object, got {type(obj).__name__}; {example}")
    unknown = sorted(set(obj) - set(KEYS))
    if unknown:
        raise bad(f"unknown key(s) {', '.join(map(repr, unknown))}; a line may only have {', '.join(KEYS)}")
    for key in ("url", "path"):
        if not isinstance(obj.get(key), str) or not obj[key]:
            raise bad(f"{key!r} must be a non-empty string; {example}")
    sha = obj.get("sha256")
    if sha is not None and not (isinstance(sha, str) and SHA256.match(sha)):
        raise bad(f"'sha256' must be 64 hex characters (the file's SHA-256), got {sha!r}; fix or drop it")
    size = obj.get("size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        raise bad(f"'size' must be a whole number of bytes >= 0, got {size!r}; fix or drop it")
    problem = _check_path(obj["path"])
    if problem:
        raise bad(f"path {obj['path']!r} {problem}")
    return ManifestEntry(line=number, url=obj["url"], path=obj["path"], sha256=sha.lower() if sha else None,
                         size=size)


def parse_manifest(text: str, *, source: str = "manifest", policy: UrlPolicy) -> list[ManifestEntry]:
    """Validate a whole manifest (JSON lines, paths, URLs against the policy) before anything is downloaded.

    Blank lines and lines starting with # are skipped. The first problem raises ManifestError naming source:line.
    """
    entries: list[ManifestEntry] = []
    seen: dict[str, int] = {}
    resolved: dict[str, tuple[str, ...]] = {}
    # Split on newlines only: str.splitlines would also split at U+2028 and friends, which JSON strings may hold.
    for number, raw in enumerate(text.removeprefix("\ufeff").split("\n"), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        entry = _parse_line(stripped, number, source)
        if entry.path in seen:
            raise ManifestError(f"{source}:{number}: path {entry.path!r} is already used on line {seen[entry.path]}; "
                                "give each file its own path")
        try:
            policy.check(entry.url, resolved=resolved)
        except UrlPolicyError as exc:
            raise ManifestError(f"{source}:{number}: {exc}") from None
        seen[entry.path] = number
        entries.append(entry)
    if not entries:
        raise ManifestError(f"{source} has no entries; add lines like "
                            '{"url": "https://host/file", "path": "dir/file"}')
    # A path cannot be both a file and a directory holding other files.
    for entry in entries:
        parts = entry.path.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            if parent in seen:
                raise ManifestError(f"{source}:{entry.line}: path {entry.path!r} puts a file under {parent!r}, which "
                                    f"line {seen[parent]} uses as a file; rename one of them")
    return entries


# -- fetching -----------------------------------------------------------------------------------------------------
class _Sink:
    """Writes chunks to an open file while hashing, counting and stopping as soon as the declared size is exceeded."""

    def __init__(self, out: IO[bytes], entry: ManifestEntry, progress: Callable[[int], Any] | None) -> None:
        self.out, self.entry, self.progress = out, entry, progress
        self.digest = hashlib.sha256()
        self.written = 0

    def expect(self, length: int | None) -> None:
        if length is not None and self.entry.size is not None and length != self.entry.size:
            raise _Transient(f"size mismatch: expected {self.entry.size:,} bytes, the server announces {length:,}")

    def write(self, chunk: bytes) -> None:
        self.written += len(chunk)
        if self.entry.size is not None and self.written > self.entry.size:
            raise _Transient(f"got more than the {self.entry.size:,} bytes the manifest declares")
        self.digest.update(chunk)
        try:
            self.out.write(chunk)
        except OSError as exc:
            raise _Permanent(f"cannot write the download ({exc.strerror or exc}); free space in the temp dir")
        if self.progress:
            self.progress(len(chunk))

    def verify(self) -> None:
        if self.entry.size is not None and self.written != self.entry.size:
            raise _Transient(f"size mismatch: expected {self.entry.size:,} bytes, got {self.written:,}")
        got = self.digest.hexdigest()
        if self.entry.sha256 is not None and got != self.entry.sha256:
            raise _Transient(f"sha256 mismatch: expected {self.entry.sha256}, got {got}")


def _retry_after(headers) -> float | None:
    try:
        return min(float(headers.get("Retry-After", "")), MAX_RETRY_AFTER)
    except (TypeError, ValueError):
        return None


def _fetch_http(entry: ManifestEntry, sink: _Sink, policy: UrlPolicy, timeout: float,
                opener: urllib.request.OpenerDirector | None = None) -> None:
    request = urllib.request.Request(entry.url, headers={"User-Agent": "trainyard", "Accept-Encoding": "identity"})
    try:
        with (opener or policy.opener()).open(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            length = int(length) if length and length.isdigit() else None
            sink.expect(length)
            # One buffer per download, filled in place: read(n) would allocate (and page-fault) a new 1 MiB bytes
            # object per chunk.
            buffer = memoryview(bytearray(_CHUNK))
            while n := response.readinto(buffer):
                sink.write(buffer[:n])
            # http.client returns b"" rather than raising when the connection closes early.
            if length is not None and sink.written != length:
                raise _Transient(f"the connection closed after {sink.written:,} of {length:,} bytes")
    except urllib.error.HTTPError as exc:
        reason = f"HTTP {exc.code} {exc.reason}"
        exc.close()
        if exc.code >= 500 or exc.code in _TRANSIENT_STATUS:
            raise _Transient(reason, _retry_after(exc.headers)) from None
        raise _Permanent(f"{reason}; check the URL and that the data is published") from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, ssl.SSLCertVerificationError):
            raise _Permanent(f"TLS certificate not trusted ({exc.reason.verify_message}); fix the server's "
                             "certificate or the URL") from None
        raise _Transient(f"cannot connect ({exc.reason})") from None
    except (OSError, http.client.HTTPException) as exc:
        raise _Transient(f"connection failed ({type(exc).__name__}: {exc})") from None


def _s3_client():
    import boto3

    kwargs = {"endpoint_url": os.environ["AWS_ENDPOINT_URL"]} if os.environ.get("AWS_ENDPOINT_URL") else {}
    return boto3.session.Session().client("s3", **kwargs)


def _fetch_s3(entry: ManifestEntry, sink: _Sink, client) -> None:
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, ParamValidationError

    parts = urlsplit(entry.url)
    args = {"Bucket": parts.netloc, "Key": parts.path[1:]}
    version = parse_qs(parts.query).get("versionId")
    if version:
        args["VersionId"] = version[0]
    try:
        body = client.get_object(**args)
        try:
            sink.expect(body.get("ContentLength"))
            for chunk in body["Body"].iter_chunks(_CHUNK):
                sink.write(chunk)
        finally:
            body["Body"].close()
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        reason = f"S3 {code or status}: {error.get('Message') or exc}"
        if code in _TRANSIENT_S3_CODES or status >= 500 or status == 429:
            raise _Transient(reason) from None
        raise _Permanent(f"{reason}; check the bucket, key and the credentials' access") from None
    except (NoCredentialsError, ParamValidationError) as exc:
        raise _Permanent(f"S3: {exc}; configure S3 credentials the way the store's are configured") from None
    except (BotoCoreError, OSError) as exc:
        raise _Transient(f"S3 connection failed ({exc})") from None


def _fetch_file(entry: ManifestEntry, sink: _Sink) -> None:
    path = Path(urllib.request.url2pathname(urlsplit(entry.url).path))
    try:
        with open(path, "rb") as src:
            sink.expect(os.fstat(src.fileno()).st_size)
            while chunk := src.read(_CHUNK):
                sink.write(chunk)
    except OSError as exc:
        raise _Permanent(f"cannot read {path} ({exc.strerror or exc})") from None


def _download(entry: ManifestEntry, dest: Path, policy: UrlPolicy, *, timeout: float, s3_client,
              progress: Callable[[int], Any] | None, atomic: bool = True,
              opener: urllib.request.OpenerDirector | None = None,
              resolved: dict[str, tuple[str, ...]] | None = None) -> tuple[int, str]:
    """One attempt: download entry to dest, verified; returns (bytes written, sha256). Raises _Transient for what
    another attempt may fix; nothing of a failed attempt is left behind.

    atomic writes through a temp file renamed onto dest, so dest is never a part; without it dest itself is written
    (ingest's own private temp dir, where nothing else looks at a part). opener and resolved are shared by the
    downloads of one ingest: one urllib opener, and one DNS lookup per host for the re-check below.
    """
    if atomic:
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        tmp = Path(tmp_name)
    else:
        tmp = dest
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    sink = None
    try:
        with os.fdopen(fd, "wb") as out:
            sink = _Sink(out, entry, progress)
            # Re-checked here, not only when parsing: DNS answers can change in between. (Every connection's peer
            # address is checked again as it connects, see urlpolicy._checked_connect.)
            try:
                scheme = policy.check(entry.url, resolved=resolved).scheme.lower()
            except HostLookupError as exc:
                raise _Transient(str(exc)) from None
            except UrlPolicyError as exc:
                raise _Permanent(str(exc)) from None
            if scheme in ("http", "https"):
                _fetch_http(entry, sink, policy, timeout, opener)
            elif scheme == "s3":
                _fetch_s3(entry, sink, s3_client if s3_client is not None else _s3_client())
            else:
                _fetch_file(entry, sink)
            sink.verify()
        if atomic:
            os.replace(tmp, dest)
        return sink.written, sink.digest.hexdigest()
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, _Transient) and progress and sink is not None and sink.written:
            progress(-sink.written)  # the next attempt counts its bytes again
        raise


def _backoff(base: float) -> Callable[[tenacity.RetryCallState], float]:
    """Exponential waits (base, 2 x base, 4 x base ...), never shorter than the server's Retry-After."""
    exponential = tenacity.wait_exponential(multiplier=base)

    def wait(state: tenacity.RetryCallState) -> float:
        retry_after = getattr(state.outcome.exception(), "retry_after", None) if state.outcome else None
        return max(exponential(state), retry_after or 0.0)

    return wait


def _fetch(entry: ManifestEntry, dest: Path, policy: UrlPolicy, *, attempts: int, backoff: float, timeout: float,
           s3_client, progress: Callable[[int], Any] | None, atomic: bool = True,
           opener: urllib.request.OpenerDirector | None = None,
           resolved: dict[str, tuple[str, ...]] | None = None) -> tuple[int, int, str]:
    """Download one entry to dest, retrying transient failures; returns (bytes written, retries, sha256). Raises
    ManifestError naming the line once attempts are spent, or at once for a failure another attempt cannot fix.
    atomic, opener and resolved: see _download."""
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    shown = redact(entry.url)
    retrying = tenacity.Retrying(stop=tenacity.stop_after_attempt(attempts), wait=_backoff(backoff),
                                 retry=tenacity.retry_if_exception_type(_Transient), reraise=True)
    try:
        written, sha = retrying(_download, entry, dest, policy, timeout=timeout, s3_client=s3_client,
                                progress=progress, atomic=atomic, opener=opener, resolved=resolved)
    except (UrlPolicyError, _Permanent) as exc:
        # UrlPolicyError comes from inside urllib too: a redirect or the connected address broke the policy.
        raise ManifestError(f"line {entry.line} ({shown}): {exc}") from None
    except _Transient as exc:
        raise ManifestError(f"line {entry.line} ({shown}): {exc} (after {attempts} attempts)") from None
    return written, retrying.statistics["attempt_number"] - 1, sha


def fetch(entry: ManifestEntry, dest: Path, policy: UrlPolicy, *, attempts: int = 3, backoff: float = 0.2,
          timeout: float = 30, s3_client=None, progress: Callable[[int], Any] | None = None) -> int:
    """Download one manifest entry to dest (via a temp file, then rename), verifying size and sha256; return bytes.

    Connection errors, timeouts, HTTP 5xx/429 and size or checksum mismatches are retried with exponential backoff;
    other 4xx answers and policy refusals fail at once. Raises ManifestError naming the line.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    return _fetch(entry, dest, policy, attempts=attempts, backoff=backoff, timeout=timeout, s3_client=s3_client,
                  progress=progress)[0]


# -- ingesting ----------------------------------------------------------------------------------------------------
def _failure_message(source: str, failures: list[tuple[ManifestEntry, str]], total: int) -> str:
    shown = "; ".join(reason for _, reason in failures[:_DETAILED_FAILURES])
    rest = failures[_DETAILED_FAILURES:]
    more = f"; and lines {', '.join(str(e.line) for e, _ in rest)}" if rest else ""
    return (f"{source}: {len(failures)} of {total} entries failed, so nothing was committed: {shown}{more}. "
            "Fix or remove those lines and ingest again (files already fetched are not uploaded twice)")


def ingest(entries: Iterable[ManifestEntry], store: Store, repo: str, policy: UrlPolicy, *, concurrency: int = 8,
           message: str = "", quiet: bool = True, s3_client=None, attempts: int = 3, backoff: float = 0.2,
           timeout: float = 30, source: str = "manifest") -> tuple[Commit, dict[str, Any]]:
    """Fetch every entry in parallel, then upload and commit them to repo as one commit; all or nothing.

    If any entry still fails after its retries, ManifestError names every failed line and no commit is made (blobs
    of the entries that succeeded may already be stored; they are content-addressed, so that is harmless).
    Returns (commit, stats) with files, bytes, retries, blobs uploaded/skipped, whether the commit is new, seconds.
    """
    entries = list(entries)
    check_repo_name(repo)
    if not entries:
        raise ManifestError(f"{source} has no entries; nothing to ingest into repo {repo!r}")
    paths: dict[str, int] = {}
    for entry in entries:
        if entry.path in paths:
            raise ManifestError(f"{source}:{entry.line}: path {entry.path!r} is already used on line "
                                f"{paths[entry.path]}; give each file its own path")
        paths[entry.path] = entry.line
    if s3_client is None and any(e.url.lower().startswith("s3:") for e in entries):
        # One client for all threads: boto3 clients are thread-safe, sessions are not.
        s3_client = _s3_client()
    started = time.monotonic()
    sizes = [e.size for e in entries]
    bar = _Bar(sum(sizes) if None not in sizes else None, f"fetching {repo}", progress_bars_enabled(quiet))
    lock = threading.Lock()
    failures: list[tuple[ManifestEntry, str]] = []
    done: dict[str, Path] = {}
    hashes: dict[str, str] = {}
    totals = {"bytes": 0, "retries": 0}

    # Shared by every download of this ingest: one opener, and one DNS lookup per host for the re-check before each
    # download (parse_manifest's lookups are older; every connection's peer address is still checked as it opens).
    opener, resolved = policy.opener(), {}
    with tempfile.TemporaryDirectory(prefix="trainyard-ingest-") as tmp:
        def one(item: tuple[int, ManifestEntry]) -> None:
            index, entry = item
            # Local names are indexes, never manifest paths, so nothing from the manifest shapes local file names.
            # The dir is this ingest's own (mode 0700): files are written in place, with no temp name and rename.
            local = Path(tmp) / f"{index:07d}"
            try:
                written, retries, sha = _fetch(entry, local, policy, attempts=attempts, backoff=backoff,
                                               timeout=timeout, s3_client=s3_client, progress=bar.update,
                                               atomic=False, opener=opener, resolved=resolved)
            except ManifestError as exc:
                with lock:
                    failures.append((entry, str(exc)))
                return
            with lock:
                done[entry.path] = local
                hashes[entry.path] = sha
                totals["bytes"] += written
                totals["retries"] += retries

        try:
            with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
                list(pool.map(one, enumerate(entries)))
        finally:
            bar.close()
        if failures:
            failures.sort(key=lambda f: f[0].line)
            raise ManifestError(_failure_message(source, failures, len(entries)), failures)
        # The downloads were hashed as they streamed; hashing them again for the upload would double the work.
        report = store.upload_files(done, quiet=quiet, desc=repo, repo=repo, known_hashes=hashes, move=True)
        commit, created = store.commit(repo, report.manifest,
                                       message=message or f"ingest {len(entries)} files from a data manifest")
    stats = {"files": len(entries), "bytes": totals["bytes"], "retries": totals["retries"],
             "blobs_uploaded": report.blobs_uploaded, "blobs_skipped": report.blobs_skipped,
             "bytes_uploaded": report.bytes_uploaded, "created": created,
             "seconds": round(time.monotonic() - started, 3)}
    return commit, stats
