"""Open a versioned store from a URI: file:///path (the embedded default) or s3://bucket/prefix."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from trainyard.errors import ConfigError, NotFound, StoreMissing, TrainyardError
from trainyard.store.backend import Backend, PreconditionFailed
from trainyard.store.infra import StoreTimeouts, translate
from trainyard.store.local import LocalBackend
from trainyard.store.s3 import S3Backend
from trainyard.store.versioned import Commit, Store, UploadReport, parse_ref

__all__ = ["Backend", "Commit", "LocalBackend", "PreconditionFailed", "S3Backend", "Store", "StoreTimeouts",
           "UploadReport", "check_store", "infra_error", "open_store", "parse_ref"]


def check_store(store: Store) -> None:
    """Fail fast, within the store's timeouts, when the store cannot be used: one request (a HEAD on the bucket) or
    a stat of the directory. Raises StoreUnavailable (5), CredentialsRefused (4), StoreMissing (3) or
    StoreNotWritable (6)."""
    check = getattr(store.backend, "check", None)
    if check is not None:
        check()


def infra_error(exc: BaseException) -> TrainyardError | None:
    """The one-line error (and exit code) of a botocore or OSError failure that escaped a store, or None; for a
    NotFound ("repo has no commits") read from a file:// store whose directory does not exist, StoreMissing."""
    if isinstance(exc, NotFound) and not isinstance(exc, StoreMissing):
        return LocalBackend.missing_store()
    return translate(exc)


def open_store(uri: str, *, client_kwargs: dict[str, Any] | None = None, concurrency: int = 8,
               timeouts: StoreTimeouts | None = None) -> Store:
    """Return a Store for the URI; S3 credentials come from client_kwargs or boto3's default chain, and its
    timeouts from `timeouts` or the [trainyard] store_connect_timeout, store_read_timeout and store_retries
    settings."""
    if "://" not in uri:
        return Store(LocalBackend(Path(uri)), concurrency=concurrency)
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Store(LocalBackend(Path(parsed.netloc + parsed.path)), concurrency=concurrency)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ConfigError(f"store URI {uri!r} has no bucket; use s3://bucket/prefix")
        return Store(S3Backend(parsed.netloc, parsed.path, client_kwargs=client_kwargs,
                               max_concurrency=concurrency, timeouts=timeouts), concurrency=concurrency)
    raise ConfigError(f"unsupported store URI scheme {parsed.scheme!r} in {uri!r}; use file:// or s3://")
