"""Infrastructure failures of a store (botocore, OSError) as one-line TrainyardErrors with their own exit codes."""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator
from dataclasses import dataclass

from trainyard.errors import (
    CredentialsRefused,
    StoreMissing,
    StoreNotWritable,
    StoreUnavailable,
    TrainyardError,
)

_MISSING_BUCKET = {"NoSuchBucket"}
_REFUSED = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken", "ExpiredToken",
            "TokenRefreshRequired", "AllAccessDisabled", "AccountProblem", "InvalidSecurity", "403", "Forbidden",
            "UnrecognizedClientException", "InvalidClientTokenId"}
_SERVER_DOWN = {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "RequestTimeTooSkewed",
                "500", "502", "503", "504", "BadGateway", "GatewayTimeout"}
_FULL = {errno.ENOSPC, errno.EDQUOT}
_READ_ONLY = {errno.EROFS, errno.EACCES, errno.EPERM}
# botocore's standard retry mode waits rand(0,1) x min(base x 2**i, 20 s) before retry i; base is 1 s for
# throttling answers (50 ms otherwise), so 1 s is the worst case the bound has to allow for.
_BACKOFF_BASE, _BACKOFF_MAX = 1.0, 20.0


@dataclass(frozen=True)
class StoreTimeouts:
    """How long one store request may take: connect and read timeouts, and retries after the first attempt."""

    connect: float = 5.0
    read: float = 12.0
    retries: int = 2

    @classmethod
    def from_settings(cls, settings=None) -> StoreTimeouts:
        """The [trainyard] store_connect_timeout / store_read_timeout / store_retries settings (env first)."""
        if settings is None:
            from trainyard import config

            settings = config.load()
        return cls(settings.store_connect_timeout, settings.store_read_timeout, settings.store_retries)

    @property
    def attempts(self) -> int:
        return self.retries + 1

    @property
    def bound(self) -> float:
        """The longest one request can take before it fails: every attempt stalls to both timeouts, plus the
        longest backoff between attempts."""
        backoff = sum(min(_BACKOFF_BASE * 2 ** i, _BACKOFF_MAX) for i in range(self.retries))
        return self.attempts * (self.connect + self.read) + backoff

    def botocore_config(self, **extra):
        from botocore.config import Config

        return Config(connect_timeout=self.connect, read_timeout=self.read,
                      retries={"total_max_attempts": self.attempts, "mode": "standard"}, **extra)

    def describe(self) -> str:
        return (f"after {self.attempts} attempt(s) (connect timeout {self.connect:g} s, read timeout {self.read:g} s; "
                "[trainyard] store_connect_timeout, store_read_timeout, store_retries)")


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """The exception and what it wraps: __cause__, __context__, and s3transfer's last_exception."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        current = todo.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        # `raise X from None` (a 404 that became KeyError) says the context is not the cause: do not follow it.
        context = None if current.__suppress_context__ else current.__context__
        todo += [current.__cause__, context, getattr(current, "last_exception", None)]


def _client_code(exc: BaseException) -> str | None:
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return None
    error = response.get("Error", {})
    return str(error.get("Code") or response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def translate(exc: BaseException, where: str | None = None, *, timeouts: StoreTimeouts | None = None,
              bucket: str | None = None) -> TrainyardError | None:
    """The TrainyardError an infrastructure failure means (exit 3/4/5/6), or None when it is not one.

    `where` names the store (URI and endpoint); without it (the CLI's last resort) the message names what the
    exception itself names.
    """
    for cause in _causes(exc):
        if isinstance(cause, TrainyardError):
            return cause
        found = _botocore(cause, where, timeouts, bucket) or _oserror(cause, where)
        if found is not None:
            return found
    return None


def _botocore(exc: BaseException, where: str | None, timeouts: StoreTimeouts | None,
              bucket: str | None) -> TrainyardError | None:
    try:
        from botocore import exceptions as bce
    except ImportError:  # the file:// store works without boto3
        return None
    store = where or "the S3 store"
    tried = f" {timeouts.describe()}" if timeouts else ""
    if isinstance(exc, (bce.NoCredentialsError, bce.PartialCredentialsError, bce.CredentialRetrievalError)):
        return CredentialsRefused(
            f"no usable S3 credentials for {store} ({_one_line(exc)}): export AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or save them with `trainyard init`")
    if isinstance(exc, bce.ClientError):
        code = _client_code(exc) or ""
        operation = getattr(exc, "operation_name", "")
        if code in _MISSING_BUCKET or (operation == "HeadBucket" and code in ("404", "NotFound")):
            name = (exc.response.get("Error", {}).get("BucketName") or bucket or "the bucket")
            return StoreMissing(
                f"bucket {name!r} does not exist ({store}): create it (e.g. `aws s3 mb s3://{name}`) or fix "
                "--store / TRAINYARD_STORE")
        if code in _REFUSED:
            return CredentialsRefused(
                f"{store} refused the credentials ({code} on {operation or 'a request'}): check AWS_ACCESS_KEY_ID "
                "and AWS_SECRET_ACCESS_KEY (or `trainyard init`), and that they may read and write the bucket")
        if code in _SERVER_DOWN:
            return StoreUnavailable(f"{store} kept failing with {code} on {operation or 'a request'}{tried}; "
                                    "check the S3 server, then run the command again")
        return None
    if isinstance(exc, (bce.EndpointConnectionError, bce.ConnectTimeoutError, bce.ReadTimeoutError,
                        bce.ConnectionClosedError, bce.HTTPClientError, bce.ResponseStreamingError,
                        bce.IncompleteReadError)):
        if isinstance(exc, bce.ReadTimeoutError):
            what = "stopped answering (read timeout)"
        elif isinstance(exc, bce.ConnectTimeoutError):
            what = "did not accept a connection in time (connect timeout)"
        else:
            what = "cannot be reached"
        if where is None:
            url = str(getattr(exc, "kwargs", {}).get("endpoint_url") or "")
            where = f"the S3 endpoint {'/'.join(url.split('/')[:3])}" if "://" in url else store
        return StoreUnavailable(f"{where} {what}{tried}: check that the S3 endpoint is up and that AWS_ENDPOINT_URL "
                                "(or `trainyard init`) names it, then run the command again")
    return None


def _oserror(exc: BaseException, where: str | None) -> TrainyardError | None:
    if not isinstance(exc, OSError) or exc.errno is None:
        return None
    path = exc.filename or where or "the store"
    if exc.errno in _FULL:
        return StoreNotWritable(
            f"no space left on the device of {where or path} (writing {path}): free space or point --store "
            "elsewhere, then run the command again; nothing stored before was changed")
    if where is None:
        # Outside a store a permission error is more likely the user's own file than the store: not ours to map.
        if exc.errno == errno.EROFS:
            return StoreNotWritable(f"{path} is on a read-only file system: remount it read-write or write elsewhere")
        return None
    if exc.errno in _READ_ONLY:
        why = "is read-only" if exc.errno == errno.EROFS else "is not writable (permission denied)"
        return StoreNotWritable(
            f"the store {where} {why} (writing {path}): make it writable, or point --store / TRAINYARD_STORE at a "
            "writable store; nothing stored was changed")
    return None


@contextlib.contextmanager
def translating(where: str, *, timeouts: StoreTimeouts | None = None, bucket: str | None = None) -> Iterator[None]:
    """Re-raise an infrastructure failure inside the block as its TrainyardError (one line, own exit code)."""
    try:
        yield
    except TrainyardError:
        raise
    except Exception as exc:
        found = translate(exc, where, timeouts=timeouts, bucket=bucket)
        if found is None:
            raise
        raise found from exc
