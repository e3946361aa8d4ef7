"""The storage contract: primitive key/value operations that each backend implements once."""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator
from pathlib import Path

ProgressCallback = Callable[[int], None]


class PreconditionFailed(Exception):
    """A conditional write lost: the key already exists, or changed since it was read."""


class Backend(abc.ABC):
    """Keys are '/'-separated strings relative to the store root; values are bytes or files."""

    uri: str

    @abc.abstractmethod
    def exists(self, key: str) -> bool:
        """Return whether the key exists; for S3 this is one HEAD request."""

    @abc.abstractmethod
    def read(self, key: str) -> bytes:
        """Return the value; raise KeyError when the key is absent."""

    @abc.abstractmethod
    def read_range(self, key: str, offset: int, length: int) -> bytes:
        """Return `length` bytes of the value from `offset` (a packed datum); raise KeyError when the key is absent."""

    @abc.abstractmethod
    def read_versioned(self, key: str) -> tuple[bytes, str] | None:
        """Return (value, version token) for compare-and-swap, or None when absent."""

    @abc.abstractmethod
    def write(self, key: str, data: bytes, *, if_version: str | None = None, if_absent: bool = False) -> None:
        """Write atomically; with if_absent or if_version the write is conditional (PreconditionFailed)."""

    @abc.abstractmethod
    def upload_file(self, key: str, path: Path, progress: ProgressCallback | None = None, *,
                    move: bool = False) -> None:
        """Copy a local file to the key, atomically, reporting bytes sent; with move the file is the caller's to
        give up, and a backend that can (a file:// store on the same filesystem) renames it instead."""

    @abc.abstractmethod
    def download_file(self, key: str, dest: Path, progress: ProgressCallback | None = None) -> None:
        """Copy the key's value to a local file; raise KeyError when absent."""

    @abc.abstractmethod
    def list(self, prefix: str) -> Iterator[str]:
        """Yield every key that starts with prefix."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove a key (used only for scratch data and tests, never for published objects)."""
