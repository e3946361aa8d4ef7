"""s3:// backend over boto3; works with AWS, MinIO and moto, using S3 conditional writes."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import Any

from trainyard.store.backend import Backend, PreconditionFailed, ProgressCallback

_CONDITION_CODES = {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}


class S3Backend(Backend):
    """Objects live under s3://bucket/prefix. Credentials come from boto3's chain or client_kwargs."""

    def __init__(self, bucket: str, prefix: str = "", *, client_kwargs: dict[str, Any] | None = None,
                 max_concurrency: int = 8) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.uri = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self._client_kwargs = dict(client_kwargs or {})
        self._max_concurrency = max_concurrency

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("client", None)
        return state

    @cached_property
    def client(self):
        import boto3
        from botocore.config import Config

        kwargs = dict(self._client_kwargs)
        if "endpoint_url" not in kwargs and os.environ.get("AWS_ENDPOINT_URL"):
            kwargs["endpoint_url"] = os.environ["AWS_ENDPOINT_URL"]
        kwargs.setdefault("config", Config(max_pool_connections=max(16, self._max_concurrency * 2),
                                           retries={"max_attempts": 5, "mode": "standard"}))
        return boto3.session.Session().client("s3", **kwargs)

    @cached_property
    def _transfer_config(self):
        from boto3.s3.transfer import TransferConfig

        return TransferConfig(multipart_threshold=64 << 20, max_concurrency=self._max_concurrency)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    @staticmethod
    def _code(exc) -> str:
        return str(exc.response.get("Error", {}).get("Code", ""))

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

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

        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if self._code(exc) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return obj["Body"].read(), obj["ETag"]

    def write(self, key: str, data: bytes, *, if_version: str | None = None, if_absent: bool = False) -> None:
        from botocore.exceptions import ClientError

        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(key), "Body": data}
        if if_absent:
            kwargs["IfNoneMatch"] = "*"
        if if_version:
            kwargs["IfMatch"] = if_version
        try:
            self.client.put_object(**kwargs)
        except ClientError as exc:
            if self._code(exc) in _CONDITION_CODES or self._code(exc) == "NoSuchKey":
                raise PreconditionFailed(key) from None
            raise

    def upload_file(self, key: str, path: Path, progress: ProgressCallback | None = None) -> None:
        self.client.upload_file(str(path), self.bucket, self._key(key), Config=self._transfer_config,
                                Callback=progress)

    def download_file(self, key: str, dest: Path, progress: ProgressCallback | None = None) -> None:
        from botocore.exceptions import ClientError

        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-")
        os.close(fd)
        try:
            self.client.download_file(self.bucket, self._key(key), tmp, Config=self._transfer_config,
                                      Callback=progress)
            os.replace(tmp, dest)
        except ClientError as exc:
            Path(tmp).unlink(missing_ok=True)
            if self._code(exc) in ("404", "NoSuchKey", "NotFound"):
                raise KeyError(key) from None
            raise
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def list(self, prefix: str) -> Iterator[str]:
        strip = len(self.prefix) + 1 if self.prefix else 0
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
            for obj in page.get("Contents", []):
                yield obj["Key"][strip:]

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
