"""file:// backend: a directory tree, with atomic renames and flock-guarded compare-and-swap."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from trainyard.store.backend import Backend, PreconditionFailed, ProgressCallback

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

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def read(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise KeyError(key) from None

    def read_versioned(self, key: str) -> tuple[bytes, str] | None:
        try:
            data = self._path(key).read_bytes()
        except FileNotFoundError:
            return None
        return data, hashlib.sha256(data).hexdigest()

    def _atomic_write(self, path: Path, data: bytes) -> None:
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
        path.parent.mkdir(parents=True, exist_ok=True)
        # One lock file per key serialises writers across threads and processes on this machine.
        with open(path.with_name(path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            current = self.read_versioned(key)
            if if_absent and current is not None:
                raise PreconditionFailed(key)
            if if_version and (current is None or current[1] != if_version):
                raise PreconditionFailed(key)
            self._atomic_write(path, data)

    def upload_file(self, key: str, path: Path, progress: ProgressCallback | None = None) -> None:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-")
        try:
            with open(path, "rb") as src, os.fdopen(fd, "wb") as out:
                while chunk := src.read(_CHUNK):
                    out.write(chunk)
                    if progress:
                        progress(len(chunk))
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def download_file(self, key: str, dest: Path, progress: ProgressCallback | None = None) -> None:
        src = self._path(key)
        if not src.is_file():
            raise KeyError(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
        if progress:
            progress(dest.stat().st_size)

    def list(self, prefix: str) -> Iterator[str]:
        # Walk only the deepest existing directory of the prefix so listing stays cheap.
        base = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self._path(base) if base else self.root
        if not start.is_dir():
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
