"""Open a versioned store from a URI: file:///path (the embedded default) or s3://bucket/prefix."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from trainyard.errors import ConfigError
from trainyard.store.backend import Backend, PreconditionFailed
from trainyard.store.local import LocalBackend
from trainyard.store.s3 import S3Backend
from trainyard.store.versioned import Commit, Store, UploadReport, parse_ref

__all__ = ["Backend", "Commit", "LocalBackend", "PreconditionFailed", "S3Backend", "Store", "UploadReport",
           "open_store", "parse_ref"]


def open_store(uri: str, *, client_kwargs: dict[str, Any] | None = None, concurrency: int = 8) -> Store:
    """Return a Store for the URI; S3 credentials come from client_kwargs or boto3's default chain."""
    if "://" not in uri:
        return Store(LocalBackend(Path(uri)), concurrency=concurrency)
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Store(LocalBackend(Path(parsed.netloc + parsed.path)), concurrency=concurrency)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ConfigError(f"store URI {uri!r} has no bucket; use s3://bucket/prefix")
        return Store(S3Backend(parsed.netloc, parsed.path, client_kwargs=client_kwargs,
                               max_concurrency=concurrency), concurrency=concurrency)
    raise ConfigError(f"unsupported store URI scheme {parsed.scheme!r} in {uri!r}; use file:// or s3://")
