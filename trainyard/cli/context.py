"""What one command works with: its settings, its store, the Airflow server `trainyard init` chose, and the
embedded Airflow of this checkout."""

import dataclasses
import functools
import json
import os
import sys
from pathlib import Path
from typing import Any

from pydantic_settings import PydanticBaseSettingsSource

from trainyard import config, userconfig
from trainyard.errors import ConfigError
from trainyard.store import open_store
from trainyard.store.versioned import Commit, Store

REPO_ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = REPO_ROOT / "templates"


def embedded_airflow_env() -> None:
    """Point Airflow at this checkout's airflow.cfg when the user has not chosen one."""
    os.environ.setdefault("TRAINYARD_HOME", str(REPO_ROOT))
    os.environ.setdefault("AIRFLOW_HOME", str(REPO_ROOT / ".airflow"))
    if (REPO_ROOT / "airflow.cfg").is_file():
        os.environ.setdefault("AIRFLOW_CONFIG", str(REPO_ROOT / "airflow.cfg"))


# Settings a `trainyard init` profile may set for the CLI (the server's own settings live in its airflow.cfg).
PROFILE_SETTINGS = ("store",)


class ProfileSource(PydanticBaseSettingsSource):
    """The settings `trainyard init` saved in the user's profile (PROFILE_SETTINGS only)."""

    def get_field_value(self, field, field_name):  # the profile is read whole in __call__
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return {k: v for k, v in userconfig.saved().items() if k in PROFILE_SETTINGS and v}


class CliSettings(config.Settings):
    """The CLI's settings: argument (--store) > env > the `trainyard init` profile > airflow.cfg > default. Only
    the CLI reads the profile; operators, DAG files and steps use config.Settings, which never does."""

    @classmethod
    def settings_customise_sources(cls, settings_cls, *args, **kwargs) -> tuple[PydanticBaseSettingsSource, ...]:
        *before, airflow_cfg = super().settings_customise_sources(settings_cls, *args, **kwargs)
        return (*before, ProfileSource(settings_cls), airflow_cfg)


def cli_settings(**overrides: Any) -> config.Settings:
    """Resolve the settings of one command (CliSettings)."""
    return config.load(CliSettings, **overrides)


def store_at(uri: str) -> Store:
    """The store, with the S3 credentials and endpoint `trainyard init` saved (env and ~/.aws still come first)."""
    return open_store(uri, client_kwargs=userconfig.store_client_kwargs() or None)


def json_object_arg(text: str, what: str) -> dict:
    """A JSON object given inline or as a file name (-h/--hyperparams, -c/--conf)."""
    source = Path(text).read_text() if text and Path(text).is_file() else text
    try:
        value = json.loads(source or "{}")
    except ValueError as exc:
        raise ConfigError(f"{what} is not valid JSON ({exc}); pass a JSON object or a file holding one") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{what} must be a JSON object of lists, e.g. '{{\"C\": [1, 10]}}'")
    return value


@dataclasses.dataclass
class Session:
    """One command's global options, and what it opens from them once (the store, the server's REST client)."""

    store_uri: str | None = None
    json: bool = False

    def settings(self, **overrides: Any) -> config.Settings:
        """Settings with --store applied: argument > env > `trainyard init` profile > airflow.cfg > default."""
        return cli_settings(store=self.store_uri, **overrides)

    @functools.cached_property
    def store(self) -> Store:
        return store_at(self.settings().store)

    @functools.cached_property
    def profile_client(self):
        """A REST client for the server `trainyard init` chose, or None; one per command, so it logs in once."""
        profile = userconfig.server_profile()
        return profile.client() if profile else None

    def server(self, *, local: bool = False):
        """The Airflow server this command talks to, or None to run in-process (`--local`, or no `trainyard init`)."""
        return None if local else self.profile_client

    def announce(self, commit: Commit, settings: config.Settings) -> None:
        """Tell Airflow about a new commit (an Asset event): over REST when `trainyard init` chose a server, else in
        the embedded metadata DB when [trainyard] announce_commits is on. DAGs scheduled on the repo (caption_pipeline
        on rawdata) run."""
        client = self.profile_client
        if client is not None:
            if client.announce(f"trainyard://repos/{commit.repo}", {"repo": commit.repo, "commit": commit.id}):
                print(f"announced {commit.ref} to {client.endpoint} (asset trainyard://repos/{commit.repo})",
                      file=sys.stderr)
            return
        if not settings.announce_commits:
            return
        embedded_airflow_env()
        from operators.assets import announce_commit  # Airflow is imported only when asked for

        if announce_commit(commit.repo, commit.id):
            print(f"announced {commit.ref} to Airflow (asset trainyard://repos/{commit.repo})", file=sys.stderr)
