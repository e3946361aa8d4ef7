"""StoreHook: turns the trainyard store settings plus an Airflow connection into a Store or step env."""

from __future__ import annotations

import os
from functools import cached_property

from airflow.sdk import BaseHook

from trainyard import config
from trainyard.store import Store, open_store

_PASSTHROUGH_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION",
                    "AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE")


class StoreHook(BaseHook):
    """Store access: credentials from the Airflow connection `store_conn_id` (aws type) or the environment."""

    conn_name_attr = "store_conn_id"
    default_conn_name = "trainyard_store"
    conn_type = "aws"
    hook_name = "trainyard store"

    def __init__(self, *, store_uri: str | None = None, store_conn_id: str | None = None) -> None:
        super().__init__()
        self._store_uri = store_uri
        self._store_conn_id = store_conn_id

    @cached_property
    def settings(self) -> config.Settings:
        """`[trainyard]` settings under this hook's own arguments, read when the store is first used."""
        return config.load(store=self._store_uri, store_conn_id=self._store_conn_id)

    @property
    def store_uri(self) -> str:
        return self.settings.store

    @property
    def store_conn_id(self) -> str:
        return self.settings.store_conn_id

    @cached_property
    def credentials(self) -> dict[str, str]:
        """AWS-style env entries for the store; empty for file:// stores."""
        if not self.store_uri.startswith("s3://"):
            return {}
        creds = {k: os.environ[k] for k in _PASSTHROUGH_ENV if os.environ.get(k)}
        try:
            conn = self.get_connection(self.store_conn_id)
        except Exception:  # noqa: BLE001 - a missing connection means "use the environment's credentials"
            self.log.debug("no Airflow connection %s; using the environment's AWS credentials", self.store_conn_id)
            return creds
        extra = conn.extra_dejson
        if conn.login:
            creds["AWS_ACCESS_KEY_ID"] = conn.login
        if conn.password:
            creds["AWS_SECRET_ACCESS_KEY"] = conn.password
        endpoint = extra.get("endpoint_url") or (extra.get("service_config", {}).get("s3", {}) or {}).get("endpoint_url")
        if endpoint:
            creds["AWS_ENDPOINT_URL"] = endpoint
        if extra.get("region_name"):
            creds["AWS_DEFAULT_REGION"] = extra["region_name"]
        return creds

    def get_conn(self) -> Store:
        creds = self.credentials
        kwargs = {}
        if creds.get("AWS_ACCESS_KEY_ID"):
            kwargs = {"aws_access_key_id": creds["AWS_ACCESS_KEY_ID"],
                      "aws_secret_access_key": creds.get("AWS_SECRET_ACCESS_KEY"),
                      "aws_session_token": creds.get("AWS_SESSION_TOKEN")}
        if creds.get("AWS_ENDPOINT_URL"):
            kwargs["endpoint_url"] = creds["AWS_ENDPOINT_URL"]
        if creds.get("AWS_DEFAULT_REGION"):
            kwargs["region_name"] = creds["AWS_DEFAULT_REGION"]
        return open_store(self.store_uri, client_kwargs=kwargs or None)
