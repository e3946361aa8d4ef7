"""file:// backend: a directory tree, with atomic renames and flock-guarded compare-and-swap."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from trainyard.errors import StoreMissing
from trainyard.store.backend import Backend, PreconditionFailed, ProgressCallback
from trainyard.store.infra import translate, translating

_CHUNK = 1 << 20


class LocalBackend(Backend):
    """Store objects as files under a root directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self.uri = f"file://{self.root}"

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root not in path.parents:
            raise ValueError(f"store key {key!r} escapes the store root")
        return path

    # Roots that were read while they did not exist. A first `data put` or `deploy` reads (the branch head, the
    # blob listing) before its first write creates the directory, so a read answers "absent" there; a command
    # that then fails with NotFound while the root is still missing was given a wrong path, and missing_store()
    # says so instead of "repo has no commits".
    absent_roots: set[Path] = set()

    def _absent(self, key: str) -> KeyError:
        if not self.root.is_dir():
            LocalBackend.absent_roots.add(self.root)
        return KeyError(key)

    def missing(self) -> StoreMissing | None:
        """StoreMissing when the store's directory does not exist, else None."""
        if self.root.is_dir():
            return None
        return StoreMissing(f"the store {self.uri} does not exist (no directory {self.root}): fix --store / "
                            "TRAINYARD_STORE, or create the store with a first `trainyard data put` or `deploy`")

    @classmethod
    def missing_store(cls) -> StoreMissing | None:
        """StoreMissing for a store this process read while it did not exist and that still does not exist."""
        for root in sorted(cls.absent_roots):
            found = LocalBackend(root).missing()
            if found is not None:
                return found
        return None

    def check(self) -> None:
        """The store's directory exists (StoreMissing) and can be written (StoreNotWritable)."""
        if (missing := self.missing()) is not None:
            raise missing
        if not os.access(self.root, os.W_OK):
            code = errno.EROFS if _read_only(self.root) else errno.EACCES
            raise translate(OSError(code, os.strerror(code), str(self.root)), self.uri)
        if os.statvfs(self.root).f_bavail == 0:
            raise translate(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.root)), self.uri)

    def exists(self, key: str) -> bool:
        if self._path(key).is_file():
            return True
        self._absent(key)
        return False

    def read(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise self._absent(key) from None

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        try:
            with open(self._path(key), "rb") as fh:
                fh.seek(offset)
                return fh.read(length)
        except FileNotFoundError:
            raise self._absent(key) from None

    def read_versioned(self, key: str) -> tuple[bytes, str] | None:
        try:
            data = self._path(key).read_bytes()
        except FileNotFoundError:
            self._absent(key)
            return None
        return data, hashlib.sha256(data).hexdigest()

    def _atomic_write(self, path: Path, data: bytes) -> None:
        # The temp file is renamed over the key only once fully written, and removed on any failure (disk full):
        # the key keeps its old bytes or gets the new ones, never a part.
        with translating(self.uri):
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise

    def write(self, key: str, data: bytes, *, if_version: str | None = None, if_absent: bool = False) -> None:
        path = self._path(key)
        if not (if_version or if_absent):
            self._atomic_write(path, data)
            return
        with translating(self.uri):
            path.parent.mkdir(parents=True, exist_ok=True)
            # One lock file per key serialises writers across threads and processes on this machine.
            lock = open(path.with_name(path.name + ".lock"), "a")
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            current = self.read_versioned(key)
            if if_absent and current is not None:
                raise PreconditionFailed(key)
            if if_version and (current is None or current[1] != if_version):
                raise PreconditionFailed(key)
            self._atomic_write(path, data)

    def upload_file(self, key: str, path: Path, progress: ProgressCallback | None = None, *,
                    move: bool = False) -> None:
        dest = self._path(key)
        if move:
            # The caller's own verified temp file: renamed into place, not copied (an ingest's downloads).
            size = path.stat().st_size
            with translating(self.uri):
                dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.replace(path, dest)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    with translating(self.uri):
                        raise
            else:
                if progress:
                    progress(size)
                return
            # another filesystem: copied as below
        src = open(path, "rb")  # outside translating: an unreadable source is the user's file, not the store
        with src:
            with translating(self.uri):
                dest.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-")
            try:
                with translating(self.uri), os.fdopen(fd, "wb") as out:
                    while chunk := src.read(_CHUNK):
                        out.write(chunk)
                        if progress:
                            progress(len(chunk))
                with translating(self.uri):
                    os.replace(tmp, dest)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise

    def download_file(self, key: str, dest: Path, progress: ProgressCallback | None = None) -> None:
        src = self._path(key)
        if not src.is_file():
            raise self._absent(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
        if progress:
            progress(dest.stat().st_size)

    def list(self, prefix: str) -> Iterator[str]:
        # Walk only the deepest existing directory of the prefix so listing stays cheap.
        base = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self._path(base) if base else self.root
        if not start.is_dir():
            self._absent(prefix)  # a store not written yet lists as empty (see absent_roots)
            return
        for dirpath, _dirs, files in os.walk(start):
            for name in files:
                if name.startswith(".tmp-") or name.endswith(".lock"):
                    continue
                key = os.path.relpath(os.path.join(dirpath, name), self.root).replace(os.sep, "/")
                if key.startswith(prefix):
                    yield key

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)


def _read_only(path: Path) -> bool:
    """Whether path's file system is mounted read-only (ST_RDONLY), as opposed to a permission denied."""
    return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
