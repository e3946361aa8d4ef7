"""s3:// backend over boto3; works with AWS, MinIO and moto, using S3 conditional writes."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import Any

from trainyard.store.backend import Backend, PreconditionFailed, ProgressCallback
from trainyard.store.infra import StoreTimeouts, translating

_CONDITION_CODES = {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}


class S3Backend(Backend):
    """Objects live under s3://bucket/prefix. Credentials come from boto3's chain or client_kwargs."""

    def __init__(self, bucket: str, prefix: str = "", *, client_kwargs: dict[str, Any] | None = None,
                 max_concurrency: int = 8, timeouts: StoreTimeouts | None = None) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.uri = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self._client_kwargs = dict(client_kwargs or {})
        self._max_concurrency = max_concurrency
        self._timeouts = timeouts

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("client", None)
        return state

    @cached_property
    def client(self):
        import boto3

        kwargs = dict(self._client_kwargs)
        if "endpoint_url" not in kwargs and os.environ.get("AWS_ENDPOINT_URL"):
            kwargs["endpoint_url"] = os.environ["AWS_ENDPOINT_URL"]
        # Connect and read timeouts with a few retries: a stalled endpoint fails within timeouts.bound, not never.
        config = self.timeouts.botocore_config(max_pool_connections=max(16, self._max_concurrency * 2))
        kwargs["config"] = config.merge(kwargs["config"]) if "config" in kwargs else config
        return boto3.session.Session().client("s3", **kwargs)

    @cached_property
    def timeouts(self) -> StoreTimeouts:
        return self._timeouts or StoreTimeouts.from_settings()

    @property
    def where(self) -> str:
        """The store as errors name it: its URI and the endpoint it is reached at."""
        endpoint = self._client_kwargs.get("endpoint_url") or os.environ.get("AWS_ENDPOINT_URL") or "AWS S3"
        return f"{self.uri} at {endpoint}"

    def _translating(self):
        return translating(self.where, timeouts=self.timeouts, bucket=self.bucket)

    def check(self) -> None:
        """One HEAD on the bucket, within the timeouts: StoreUnavailable, CredentialsRefused or StoreMissing."""
        with self._translating():
            self.client.head_bucket(Bucket=self.bucket)

    @cached_property
    def _transfer_config(self):
        from boto3.s3.transfer import TransferConfig

        # s3transfer retries a download that stalls mid-body on its own, on top of botocore's retries: one attempt
        # keeps a stalled endpoint within timeouts.bound.
        return TransferConfig(multipart_threshold=64 << 20, max_concurrency=self._max_concurrency,
                              num_download_attempts=1)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    @staticmethod
    def _code(exc) -> str:
        return str(exc.response.get("Error", {}).get("Code", ""))

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        with self._translating():
            try:
                self.client.head_object(Bucket=self.bucket, Key=self._key(key))
                return True
            except ClientError as exc:
                if self._code(exc) in ("404", "NoSuchKey", "NotFound"):
                    return False
                raise

    def read(self, key: str) -> bytes:
        got = self.read_versioned(key)
        if got is None:
            raise KeyError(key)
        return got[0]

    def read_versioned(self, key: str) -> tuple[bytes, str] | None:
        from botocore.exceptions import ClientError

        with self._translating():
            try:
                obj = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            except ClientError as exc:
                if self._code(exc) in ("404", "NoSuchKey", "NotFound"):
                    return None
                raise
            return obj["Body"].read(), obj["ETag"]

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        from botocore.exceptions import ClientError

        if length <= 0:
            return b""
        with self._translating():
            try:
                obj = self.client.get_object(Bucket=self.bucket, Key=self._key(key),
                                             Range=f"bytes={offset}-{offset + length - 1}")
            except ClientError as exc:
                if self._code(exc) in ("404", "NoSuchKey", "NotFound"):
                    raise KeyError(key) from None
                raise
            return obj["Body"].read()

    def write(self, key: str, data: bytes, *, if_version: str | None = None, if_absent: bool = False) -> None:
        from botocore.exceptions import ClientError

        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(key), "Body": data}
        if if_absent:
            kwargs["IfNoneMatch"] = "*"
        if if_version:
            kwargs["IfMatch"] = if_version
        with self._translating():
            try:
                self.client.put_object(**kwargs)
            except ClientError as exc:
                if self._code(exc) in _CONDITION_CODES or self._code(exc) == "NoSuchKey":
                    raise PreconditionFailed(key) from None
                raise

    def upload_file(self, key: str, path: Path, progress: ProgressCallback | None = None, *,
                    move: bool = False) -> None:
        with self._translating():
            self.client.upload_file(str(path), self.bucket, self._key(key), Config=self._transfer_config,
                                    Callback=progress)

    def download_file(self, key: str, dest: Path, progress: ProgressCallback | None = None) -> None:
        from botocore.exceptions import ClientError

        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-")
        os.close(fd)
        try:
            with self._translating():
                try:
                    self.client.download_file(self.bucket, self._key(key), tmp, Config=self._transfer_config,
                                              Callback=progress)
                except ClientError as exc:
                    if self._code(exc) in ("404", "NoSuchKey", "NotFound"):
                        raise KeyError(key) from None
                    raise
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def list(self, prefix: str) -> Iterator[str]:
        strip = len(self.prefix) + 1 if self.prefix else 0
        paginator = self.client.get_paginator("list_objects_v2")
        pages = iter(paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix)))
        while True:
            # Only the request is translated: an exception thrown into this generator by its consumer is not ours.
            with self._translating():
                page = next(pages, None)
            if page is None:
                return
            for obj in page.get("Contents", []):
                yield obj["Key"][strip:]

    def delete(self, key: str) -> None:
        with self._translating():
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
