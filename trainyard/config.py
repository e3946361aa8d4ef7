"""trainyard settings, typed: argument > env > airflow.cfg [trainyard] > default (the CLI adds its profile)."""

from __future__ import annotations

import configparser
import math
import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, ValidationError
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from trainyard.errors import ConfigError, ResourceError
from trainyard.resources import cpu_cores, memory_bytes

RUNNERS = ("local", "kubernetes")
PFS_MODES = ("auto", "always", "never")
# How user code is kept from the store's credentials: `sandbox` (bubblewrap: its own PID namespace, credential files
# hidden), `auto` (the sandbox where bubblewrap works; without it, refuse only when there are credentials to leak),
# `none` (no isolation: it can read them), `pod` (set by trainyard in Kubernetes pods: the pod is the wall).
ISOLATION_MODES = ("auto", "sandbox", "none", "pod")
# Settings a step reads itself (URL policy of fetch steps, archive caps of the train step); none is a secret.
STEP_SETTINGS = ("url_schemes", "url_allowed_hosts", "url_allow_private", "url_allow_loopback", "url_allow_file",
                 "max_unpacked_size", "max_archive_members", "max_compression_ratio",
                 "store_connect_timeout", "store_read_timeout", "store_retries")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _one_of(choices: tuple[str, ...]) -> BeforeValidator:
    def check(value: Any) -> str:
        text = str(value).strip().lower()
        if text not in choices:
            raise ValueError(f"is not one of {', '.join(choices)}")
        return text
    return BeforeValidator(check)


def _whole(minimum: int) -> BeforeValidator:
    def check(value: Any) -> int:
        text = str(value).strip()
        if isinstance(value, bool) or not text.isdigit() or int(text) < minimum:
            raise ValueError(f"must be a whole number >= {minimum}")
        return int(text)
    return BeforeValidator(check)


def _at_most(maximum: int) -> AfterValidator:
    def check(value: int) -> int:
        if value > maximum:
            raise ValueError(f"must be at most {maximum}")
        return value
    return AfterValidator(check)


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text not in (*_TRUE, *_FALSE):
        raise ValueError(f"must be true or false ({', '.join(_TRUE)} / {', '.join(_FALSE)})")
    return text in _TRUE


def _quantity(parse, example: str) -> BeforeValidator:
    def check(value: Any) -> str:
        try:
            if parse(value) > 0:
                return str(value).strip()
        except ResourceError:
            pass
        raise ValueError(f"must be a positive Kubernetes quantity such as {example}")
    return BeforeValidator(check)


def _ratio(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or number < 1:
        raise ValueError("must be a number >= 1")
    return number


def _seconds(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number) or not 0 < number <= 3600:
        raise ValueError("must be a number of seconds above 0 and at most 3600")
    return number


def _names(value: Any) -> tuple[str, ...]:
    """A comma-separated list (env and airflow.cfg) as lowercase names; a list or tuple is taken as it is."""
    items = value.split(",") if isinstance(value, str) else list(value)
    return tuple(n for n in (str(i).strip().lower().rstrip(".") for i in items) if n)


def _store(value: Any) -> str:
    text = str(value).strip()
    if not (text.startswith(("file://", "s3://")) or "://" not in text):
        raise ValueError("is not a store URI (use file:///path or s3://bucket/prefix)")
    return text


WholeNumber = Annotated[int, _whole(1)]
Count = Annotated[int, _whole(0)]
Flag = Annotated[bool, BeforeValidator(_flag)]
Seconds = Annotated[float, BeforeValidator(_seconds)]
Cpu = Annotated[str, _quantity(cpu_cores, "0.5, 2 or 500m")]
Memory = Annotated[str, _quantity(memory_bytes, "8Gi or 500M")]
Names = Annotated[tuple[str, ...], NoDecode, BeforeValidator(_names)]


class AirflowCfgSource(PydanticBaseSettingsSource):
    """airflow.cfg's [trainyard] section (found the way Airflow finds it, $VARS expanded); empty values are unset."""

    def get_field_value(self, field, field_name):  # the whole section is read at once in __call__
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        section = _airflow_cfg_section()
        return {name: section[name] for name in self.settings_cls.model_fields if section.get(name, "").strip()}


class Settings(BaseSettings):
    """Resolved settings, each parsed once into its type. Field names match env vars (`TRAINYARD_<NAME>`, or
    Airflow's `AIRFLOW__TRAINYARD__<NAME>`) and airflow.cfg [trainyard] keys."""

    model_config = SettingsConfigDict(env_prefix="TRAINYARD_", env_ignore_empty=True, frozen=True, extra="forbid")

    runner: Annotated[str, _one_of(RUNNERS)] = "local"
    store: Annotated[str, BeforeValidator(_store)] = "file://~/.trainyard/store"
    # Airflow connection holding S3 credentials (aws type); used by operators, never passed as params.
    store_conn_id: str = "trainyard_store"
    # Kubernetes Secret whose keys become the step container's AWS_* env vars.
    store_secret: str = "trainyard-store"
    # How long the store may take before a command fails with exit 5 instead of hanging: seconds to connect and
    # to wait for each answer, and retries (with backoff) after the first attempt. With the defaults a stalled S3
    # endpoint fails within 3 x (5 + 12) s plus at most 3 s of backoff = 54 s (trainyard.store.infra.StoreTimeouts).
    store_connect_timeout: Seconds = 5.0
    store_read_timeout: Seconds = 12.0
    store_retries: Annotated[int, _whole(0), _at_most(10)] = 2
    namespace: str = "default"
    step_image: str = "trainyard/steps:latest"
    # Where build pods push `<registry>/<source repo>:<source commit>` and train pods pull it from.
    registry: str = "registry.local:5000"
    # The registry speaks plain HTTP or has a self-signed certificate (a registry on the cluster's loopback).
    registry_insecure: Flag = False
    # The image of build pods: buildah and skopeo (training_images/builder/Dockerfile).
    builder_image: str = "trainyard/builder:latest"
    # A registry that serves Docker Hub's names (python:3.11-slim) to builds; empty: Docker Hub itself.
    docker_hub_mirror: str = ""
    # Image of the XCom sidecar KubernetesPodOperator adds to every pod that returns a result; empty: the
    # `kubernetes_default` connection's `xcom_sidecar_container_image`, else the provider's default (alpine).
    xcom_sidecar_image: str = ""
    # Pods use the node's network, to reach a store or registry on the node's loopback (the local cluster).
    pod_host_network: Flag = False
    # Seconds a pod may wait for a node before its step fails with the scheduler's reason (e.g. "0/1 nodes are
    # available: 1 Insufficient nvidia.com/gpu"); the reason is in the step's log from the first poll on.
    schedule_timeout: WholeNumber = 900
    # Base of the image built for a source bundle without a Dockerfile (AI Center packages): base + its requirements.
    default_base_image: str = "python:3.11-slim"
    gpu_node_selector: str = "nvidia.com/gpu.present=true"
    gpu_toleration: str = "nvidia.com/gpu"
    venv_cache: str = "~/.cache/trainyard/venvs"
    default_cpu: Cpu = "1"
    default_memory: Memory = "2Gi"
    max_cpu: Cpu = "64"
    max_memory: Memory = "512Gi"
    max_gpu: Count = 8
    allow_cpu_fallback: Flag = False
    # Remote data manifests: URL schemes allowed, an optional host allowlist (comma-separated, empty = any public
    # host), and explicit allowances for private/loopback addresses (refused by default, checked after DNS and
    # after each redirect) and for file:// URLs.
    url_schemes: Names = ("https", "http", "s3")
    url_allowed_hosts: Names = ()
    url_allow_private: Flag = False
    url_allow_loopback: Flag = False
    url_allow_file: Flag = False
    # Whether CLI commits (data put, deploy, data ingest) are announced as Airflow Asset events in the embedded
    # metadata DB, so DAGs scheduled on a repo (caption_pipeline on rawdata) are queued. Off by default because it
    # imports Airflow into every such command.
    announce_commits: Flag = False
    # kaos bundles' /pfs view on the local runner: auto (when the code mentions /pfs/), always, or never.
    pfs: Annotated[str, _one_of(PFS_MODES)] = "auto"
    # User code's isolation on the local runner (ISOLATION_MODES); `none` lets it read the store's credentials.
    isolation: Annotated[str, _one_of(ISOLATION_MODES)] = "auto"
    # Step defaults when a DAG does not declare its own: retries, and whether steps may reuse earlier results.
    default_retries: Count = 1
    default_cache: Flag = True
    # Sweeps: the most combinations one grid may expand to (never above Airflow's [core] max_map_length), and how
    # many mapped train tasks of one run may run at once (max_active_tis_per_dagrun, fixed when the DAG is parsed).
    max_combinations: WholeNumber = 256
    parallelism: WholeNumber = 4
    # Where the local runner keeps one lock file per GPU, so concurrent tasks get distinct devices.
    gpu_lock_dir: str = "/tmp/trainyard-gpu-locks"
    # A datum step maps at most this many tasks; more datums are processed in chunks (thousands of datums must not
    # become thousands of Airflow tasks).
    max_datum_tasks: WholeNumber = 32
    # Archives in data bundles are unpacked by the train step within these caps (zip bombs, member floods).
    max_unpacked_size: Memory = "8Gi"
    max_archive_members: WholeNumber = 100000
    max_compression_ratio: Annotated[float, BeforeValidator(_ratio)] = 200.0
    # Scheduled retraining: train_pipeline's cron schedule (a cron expression or a preset such as @daily, in UTC;
    # empty or "none": unscheduled), checked when the DAG is parsed. Scheduled runs have no conf, so they train the
    # Param defaults: retrain_source and retrain_data when set (else the DAG's own, the mnist template's), both at
    # `latest`; a run where neither changed is a cache hit and trains nothing.
    retrain_schedule: str = ""
    retrain_source: str = ""
    retrain_data: str = ""

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings) -> tuple[PydanticBaseSettingsSource, ...]:
        # argument > TRAINYARD_<NAME> > AIRFLOW__TRAINYARD__<NAME> (how Airflow's own env overrides airflow.cfg)
        # > airflow.cfg [trainyard] > default. No dotenv or secrets directory: settings hold no secrets.
        airflow_env = EnvSettingsSource(settings_cls, env_prefix="AIRFLOW__TRAINYARD__", env_ignore_empty=True)
        return init_settings, env_settings, airflow_env, AirflowCfgSource(settings_cls)

    @property
    def combination_cap(self) -> int:
        """max_combinations, clamped to Airflow's max_map_length so a valid grid can always be mapped."""
        return min(self.max_combinations, airflow_option("core", "max_map_length", 1024))

    @property
    def store_is_local(self) -> bool:
        return self.store.startswith("file://") or "://" not in self.store

    @property
    def on_kubernetes(self) -> bool:
        """Whether steps run as Kubernetes pods, else as local subprocesses of the same pod spec: the one place that
        decides, for DAG factories and operators alike."""
        return self.checked().runner == "kubernetes"

    def checked(self) -> Settings:
        """These settings, once the runner and the store are known to work together: pods do not share this
        machine's disk, so the kubernetes runner with a local store is refused."""
        if self.runner == "kubernetes" and self.store_is_local:
            raise ConfigError(
                f"runner 'kubernetes' cannot use the local store {self.store!r}: pods do not share this "
                "machine's disk. Set TRAINYARD_STORE (or [trainyard] store) to an s3:// URI, or use runner 'local'."
            )
        return self

    def text(self, name: str) -> str:
        """A setting as env and airflow.cfg spell it (true/false, comma-separated lists), to hand on as env."""
        value = getattr(self, name)
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, tuple):
            return ",".join(value)
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
        return str(value)

    def step_env(self) -> dict[str, str]:
        """The settings steps read where they run, as env: a pod has neither the server's env nor airflow.cfg."""
        return {f"TRAINYARD_{name.upper()}": self.text(name) for name in STEP_SETTINGS}


def airflow_cfg_path() -> Path | None:
    """Find airflow.cfg the way Airflow does, without importing Airflow."""
    if os.environ.get("AIRFLOW_CONFIG"):
        return Path(os.path.expandvars(os.environ["AIRFLOW_CONFIG"])).expanduser()
    home = os.environ.get("AIRFLOW_HOME", "~/airflow")
    return Path(os.path.expandvars(home)).expanduser() / "airflow.cfg"


def _airflow_cfg_section(section: str = "trainyard") -> dict[str, str]:
    path = airflow_cfg_path()
    if not path or not path.is_file():
        return {}
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(path)
    if not parser.has_section(section):
        return {}
    return {k: os.path.expandvars(v) for k, v in parser.items(section)}


def airflow_option(section: str, key: str, default: int) -> int:
    """An integer Airflow option (env AIRFLOW__SECTION__KEY > airflow.cfg > Airflow's default), read without Airflow."""
    raw = os.environ.get(f"AIRFLOW__{section.upper()}__{key.upper()}") or _airflow_cfg_section(section).get(key)
    try:
        return int(raw) if raw else default
    except ValueError:
        raise ConfigError(f"[{section}] {key} = {raw!r} is not a whole number; fix airflow.cfg or the env var") from None


def _settings_error(exc: ValidationError) -> ConfigError:
    """The first invalid setting as one line: its name, the value given, what it must be and where to set it."""
    error = exc.errors(include_url=False)[0]
    name = str(error["loc"][0]) if error["loc"] else "?"
    if error["type"] == "extra_forbidden":
        unknown = sorted(str(e["loc"][0]) for e in exc.errors() if e["type"] == "extra_forbidden")
        return ConfigError(f"unknown trainyard setting(s): {', '.join(unknown)}")
    problem = error["msg"].removeprefix("Value error, ")
    return ConfigError(f"[trainyard] {name} = {error['input']!r} {problem}; set TRAINYARD_{name.upper()} (or {name} "
                       "in airflow.cfg's [trainyard] section)")


def load(settings_cls: type[Settings] = Settings, **overrides: Any) -> Settings:
    """Resolve settings: keyword argument > TRAINYARD_<NAME> / AIRFLOW__TRAINYARD__<NAME> env > airflow.cfg >
    default; an argument of None counts as not given. Server-side code (operators, DAG files, steps) uses Settings;
    the CLI passes its own subclass, which adds the `trainyard init` profile (trainyard.cli.context.CliSettings)."""
    try:
        return settings_cls(**{name: value for name, value in overrides.items() if value is not None})
    except ValidationError as exc:
        raise _settings_error(exc) from None
