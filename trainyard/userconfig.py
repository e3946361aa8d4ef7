"""The user's server profile written by `trainyard init`: which Airflow to talk to, where the store is, credentials.

Files, in TRAINYARD_CONFIG_DIR (default $XDG_CONFIG_HOME/trainyard, else ~/.config/trainyard):
  config.json       {"endpoint", "username", "store", "store_endpoint"}: nothing secret
  credentials.json  {"password", "aws_access_key_id", "aws_secret_access_key"}: mode 0600, directory 0700
Env wins over the files: TRAINYARD_ENDPOINT, TRAINYARD_USERNAME, TRAINYARD_PASSWORD, AWS_* (boto3's own chain).
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from pathlib import Path

from trainyard.errors import ConfigError

CONFIG_FILE = "config.json"
CREDENTIALS_FILE = "credentials.json"


def config_dir() -> Path:
    if os.environ.get("TRAINYARD_CONFIG_DIR"):
        return Path(os.environ["TRAINYARD_CONFIG_DIR"]).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or "~/.config"
    return Path(base).expanduser() / "trainyard"


def _read(name: str) -> dict:
    path = config_dir() / name
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text())
    except ValueError as exc:
        raise ConfigError(f"{path} is not valid JSON ({exc}); fix it or run `trainyard init` again") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{path} must hold a JSON object; run `trainyard init` again")
    return value


def saved() -> dict:
    """config.json as written by `trainyard init` (empty when there is none)."""
    return _read(CONFIG_FILE)


@dataclasses.dataclass(frozen=True)
class ServerProfile:
    """How to reach the Airflow server; `password` is never printed (repr hides it)."""

    endpoint: str
    username: str
    password: str = dataclasses.field(repr=False)

    def client(self):
        from trainyard.airflow_api import AirflowClient

        return AirflowClient(endpoint=self.endpoint, username=self.username, password=self.password)


def server_profile() -> ServerProfile | None:
    """The configured server (env > config files), or None when the CLI runs pipelines in-process."""
    endpoint = os.environ.get("TRAINYARD_ENDPOINT") or saved().get("endpoint")
    if not endpoint:
        return None
    password = os.environ.get("TRAINYARD_PASSWORD") or _read(CREDENTIALS_FILE).get("password")
    if not password:
        raise ConfigError(f"no password for Airflow at {endpoint}: set TRAINYARD_PASSWORD or run "
                          f"`trainyard init -e {endpoint}`")
    username = os.environ.get("TRAINYARD_USERNAME") or saved().get("username") or "admin"
    return ServerProfile(endpoint=endpoint.rstrip("/"), username=username, password=password)


def store_client_kwargs() -> dict:
    """boto3 client arguments for an s3:// store from `trainyard init` (env AWS_* and ~/.aws still apply first)."""
    kwargs = {}
    creds = _read(CREDENTIALS_FILE)
    if creds.get("aws_access_key_id") and not os.environ.get("AWS_ACCESS_KEY_ID"):
        kwargs = {"aws_access_key_id": creds["aws_access_key_id"],
                  "aws_secret_access_key": creds.get("aws_secret_access_key")}
    endpoint = saved().get("store_endpoint")
    if endpoint and not os.environ.get("AWS_ENDPOINT_URL"):
        kwargs["endpoint_url"] = endpoint
    return kwargs


def _write_private(path: Path, value: dict) -> None:
    """Write a file only its owner can read, created with 0600 so it is never readable by others, not even briefly."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(value, out, indent=2)
    os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)


def save(*, endpoint: str, username: str, password: str, store: str | None, store_endpoint: str | None,
         aws_access_key_id: str | None = None, aws_secret_access_key: str | None = None) -> Path:
    """Write config.json and credentials.json (0600) in a 0700 directory; returns the directory."""
    directory = config_dir()
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, stat.S_IRWXU)
    public = {"endpoint": endpoint.rstrip("/"), "username": username}
    if store:
        public["store"] = store
    if store_endpoint:
        public["store_endpoint"] = store_endpoint
    (directory / CONFIG_FILE).write_text(json.dumps(public, indent=2) + "\n")
    secret = {"password": password}
    if aws_access_key_id:
        secret.update(aws_access_key_id=aws_access_key_id, aws_secret_access_key=aws_secret_access_key)
    _write_private(directory / CREDENTIALS_FILE, secret)
    return directory
