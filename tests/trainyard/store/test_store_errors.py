"""Store failures become one-line errors with their own exit codes (3 missing, 4 refused, 5 unavailable, 6 not
writable), and every S3 request is bounded by the configured timeouts."""

from __future__ import annotations

import errno
import os

import pytest
from boto3.exceptions import S3UploadFailedError
from botocore.exceptions import (
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

from trainyard import config
from trainyard.errors import (
    ConfigError,
    CredentialsRefused,
    StoreMissing,
    StoreNotWritable,
    StoreUnavailable,
)
from trainyard.store import LocalBackend, StoreTimeouts, infra_error, open_store
from trainyard.store.infra import translate


def client_error(code: str, operation: str = "GetObject", status: int = 403) -> ClientError:
    """The exact shape botocore raises for an S3 error answer."""
    return ClientError({"Error": {"Code": code, "Message": code, "BucketName": "the-bucket"},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, operation)


@pytest.mark.parametrize("exc, kind, code, names", [
    (client_error("NoSuchBucket", status=404), StoreMissing, 3, "the-bucket"),
    (client_error("404", "HeadBucket", 404), StoreMissing, 3, "bucket"),
    (client_error("InvalidAccessKeyId"), CredentialsRefused, 4, "InvalidAccessKeyId"),
    (client_error("SignatureDoesNotMatch"), CredentialsRefused, 4, "SignatureDoesNotMatch"),
    (client_error("AccessDenied"), CredentialsRefused, 4, "AccessDenied"),
    (client_error("403", "HeadObject"), CredentialsRefused, 4, "403"),
    (NoCredentialsError(), CredentialsRefused, 4, "AWS_ACCESS_KEY_ID"),
    (client_error("ServiceUnavailable", status=503), StoreUnavailable, 5, "ServiceUnavailable"),
    (EndpointConnectionError(endpoint_url="http://127.0.0.1:9/b/k"), StoreUnavailable, 5, "cannot be reached"),
    (ReadTimeoutError(endpoint_url="http://127.0.0.1:9/b/k"), StoreUnavailable, 5, "read timeout"),
    (OSError(errno.ENOSPC, "No space left on device", "/s/blobs/x"), StoreNotWritable, 6, "no space left"),
    (OSError(errno.EROFS, "Read-only file system", "/s/blobs/x"), StoreNotWritable, 6, "read-only"),
    (OSError(errno.EACCES, "Permission denied", "/s/blobs/x"), StoreNotWritable, 6, "permission denied"),
])
def test_each_failure_is_its_class_and_exit_code_with_one_line_naming_the_store(exc, kind, code, names):
    error = translate(exc, "s3://the-bucket/p at http://127.0.0.1:9")
    assert isinstance(error, kind) and error.exit_code == code
    text = str(error)
    assert "\n" not in text and names.lower() in text.lower() and "s3://the-bucket/p" in text


def test_wrapped_causes_are_found_and_non_infra_errors_are_left_alone():
    try:  # boto3's upload_file wraps the ClientError in a message-only S3UploadFailedError
        try:
            raise client_error("InvalidAccessKeyId", "PutObject")
        except ClientError as inner:
            raise S3UploadFailedError(f"Failed to upload: {inner}")  # noqa: B904 - boto3 does exactly this
    except S3UploadFailedError as exc:
        assert isinstance(translate(exc, "s3://b"), CredentialsRefused)
    try:  # a 404 turned into KeyError `from None` is an absent key, not a missing bucket
        try:
            raise client_error("NoSuchBucket", status=404)
        except ClientError:
            raise KeyError("k") from None
    except KeyError as exc:
        assert translate(exc, "s3://b") is None
    assert translate(ValueError("x"), "s3://b") is None
    # outside a store (the CLI's last resort) a permission error is the user's own file's, not exit 6
    assert infra_error(OSError(errno.EACCES, "Permission denied", "/home/me/data.csv")) is None
    assert infra_error(OSError(errno.ENOSPC, "No space left", "/tmp/x")).exit_code == 6
    unreachable = infra_error(EndpointConnectionError(endpoint_url="http://10.9.9.9:9000/bkt/key?x=1"))
    assert unreachable.exit_code == 5 and "http://10.9.9.9:9000" in str(unreachable)


def test_default_timeouts_bound_a_stalled_request_within_60_seconds(monkeypatch):
    default = StoreTimeouts.from_settings(config.load())
    assert default == StoreTimeouts(5.0, 12.0, 2)
    assert default.bound <= 60, default.bound
    monkeypatch.setenv("TRAINYARD_STORE_READ_TIMEOUT", "2.5")
    monkeypatch.setenv("TRAINYARD_STORE_RETRIES", "0")
    assert StoreTimeouts.from_settings() == StoreTimeouts(5.0, 2.5, 0)
    for name, bad in (("TRAINYARD_STORE_READ_TIMEOUT", "0"), ("TRAINYARD_STORE_CONNECT_TIMEOUT", "inf"),
                      ("TRAINYARD_STORE_RETRIES", "-1"), ("TRAINYARD_STORE_RETRIES", "99")):
        monkeypatch.setenv(name, bad)
        with pytest.raises(ConfigError, match=name.removeprefix("TRAINYARD_").lower()):
            config.load()
        monkeypatch.delenv(name)


def test_the_s3_client_and_its_transfers_carry_the_timeouts(monkeypatch):
    monkeypatch.setenv("TRAINYARD_STORE_CONNECT_TIMEOUT", "1.5")
    monkeypatch.setenv("TRAINYARD_STORE_READ_TIMEOUT", "4")
    monkeypatch.setenv("TRAINYARD_STORE_RETRIES", "3")
    backend = open_store("s3://bkt/p", client_kwargs={"region_name": "us-east-1"}).backend
    cfg = backend.client.meta.config
    assert (cfg.connect_timeout, cfg.read_timeout) == (1.5, 4.0)
    assert cfg.retries == {"total_max_attempts": 4, "mode": "standard"}
    # s3transfer would retry a stalled download 5 times on top of botocore's attempts
    assert backend._transfer_config.num_download_attempts == 1


def test_a_missing_file_store_is_named_on_read_and_is_created_by_a_first_write(tmp_path, capsys):
    from trainyard.cli import main

    typo = tmp_path / "typo"
    backend = LocalBackend(typo)
    with pytest.raises(StoreMissing, match=f"{typo}.*does not exist"):
        backend.check()
    # a first `data put` reads the branch head and lists blobs before its first write creates the directory
    assert backend.read_versioned("repos/x/branches/latest.json") is None and list(backend.list("blobs/")) == []
    for args in (["data", "log", "x"], ["data", "inspect", "x"]):
        assert main(["--store", f"file://{typo}", *args]) == 3
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and f"file://{typo} does not exist" in err[0] and "no commits" not in err[0], err
    assert not typo.exists()
    src = tmp_path / "a.txt"
    src.write_text("a\n")
    assert main(["--store", f"file://{typo}", "data", "put", "x", str(src)]) == 0
    assert main(["--store", f"file://{typo}", "data", "log", "x"]) == 0
    backend.check()
    # once the store exists, an absent repo is only absent
    assert main(["--store", f"file://{typo}", "data", "log", "nope"]) == 3
    assert "has no commits" in capsys.readouterr().err


def test_a_failed_local_write_is_one_error_and_leaves_no_temp_file(tmp_path, monkeypatch):
    backend = LocalBackend(tmp_path / "store")
    backend.write("kept", b"old")
    src = tmp_path / "big"
    src.write_bytes(b"x" * 3_000_000)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(StoreNotWritable, match="no space left"):
        backend.upload_file("blobs/big", src)
    with pytest.raises(StoreNotWritable, match="no space left"):
        backend.write("kept", b"new")
    monkeypatch.undo()
    assert backend.read("kept") == b"old"
    assert [p.name for p in (tmp_path / "store").rglob(".tmp-*")] == []
    # an unreadable source is the user's problem, not the store's
    with pytest.raises(FileNotFoundError):
        backend.upload_file("blobs/none", tmp_path / "absent")


def test_the_cli_maps_an_infra_exception_that_escaped_every_store(monkeypatch, capsys):
    import importlib

    cli_app = importlib.import_module("trainyard.cli.app")  # the module; trainyard.cli.app is also the Typer app

    def broken(**kwargs):
        raise EndpointConnectionError(endpoint_url="http://127.0.0.1:9/bkt/key")
    monkeypatch.setattr(cli_app, "app", broken)
    monkeypatch.delenv("TRAINYARD_DEBUG", raising=False)
    assert cli_app.main(["list"]) == 5
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "http://127.0.0.1:9" in err[0], err
    assert "unexpected" not in err[0]
