"""trainyard settings; precedence is argument > env > `trainyard init` profile > airflow.cfg [trainyard] > default."""

from __future__ import annotations

import configparser
import dataclasses
import os
from pathlib import Path

from trainyard.errors import ConfigError

RUNNERS = ("local", "kubernetes")
# Settings a step reads itself (URL policy of fetch steps, archive caps of the train step); none is a secret.
STEP_SETTINGS = ("url_schemes", "url_allowed_hosts", "url_allow_private", "url_allow_loopback", "url_allow_file",
                 "max_unpacked_size", "max_archive_members", "max_compression_ratio")
# Settings a `trainyard init` profile may set for the CLI (the server's own settings live in its airflow.cfg).
PROFILE_SETTINGS = ("store",)


@dataclasses.dataclass(frozen=True)
class Settings:
    """Resolved settings. Field names match env vars (`TRAINYARD_<NAME>`) and airflow.cfg keys."""

    runner: str = "local"
    store: str = "file://~/.trainyard/store"
    # Airflow connection holding S3 credentials (aws type); used by operators, never passed as params.
    store_conn_id: str = "trainyard_store"
    # Kubernetes Secret whose keys become the step container's AWS_* env vars.
    store_secret: str = "trainyard-store"
    namespace: str = "default"
    step_image: str = "trainyard/steps:latest"
    # Where build pods push `<registry>/<source repo>:<source commit>` and train pods pull it from.
    registry: str = "registry.local:5000"
    # The registry speaks plain HTTP or has a self-signed certificate (a registry on the cluster's loopback).
    registry_insecure: str = "false"
    # The image of build pods: buildah and skopeo (training_images/builder/Dockerfile).
    builder_image: str = "trainyard/builder:latest"
    # A registry that serves Docker Hub's names (python:3.11-slim) to builds; empty: Docker Hub itself.
    docker_hub_mirror: str = ""
    # Image of the XCom sidecar KubernetesPodOperator adds to every pod that returns a result; empty: the
    # `kubernetes_default` connection's `xcom_sidecar_container_image`, else the provider's default (alpine).
    xcom_sidecar_image: str = ""
    # Pods use the node's network, to reach a store or registry on the node's loopback (the local cluster).
    pod_host_network: str = "false"
    # Seconds a pod may wait for a node before its step fails with the scheduler's reason (e.g. "0/1 nodes are
    # available: 1 Insufficient nvidia.com/gpu"); the reason is in the step's log from the first poll on.
    schedule_timeout: str = "900"
    # Base of the image built for a source bundle without a Dockerfile (AI Center packages): base + its requirements.
    default_base_image: str = "python:3.11-slim"
    gpu_node_selector: str = "nvidia.com/gpu.present=true"
    gpu_toleration: str = "nvidia.com/gpu"
    venv_cache: str = "~/.cache/trainyard/venvs"
    default_cpu: str = "1"
    default_memory: str = "2Gi"
    max_cpu: str = "64"
    max_memory: str = "512Gi"
    max_gpu: str = "8"
    allow_cpu_fallback: str = "false"
    # Remote data manifests: URL schemes allowed, an optional host allowlist (comma-separated, empty = any public
    # host), and explicit allowances for private/loopback addresses (refused by default, checked after DNS and
    # after each redirect) and for file:// URLs.
    url_schemes: str = "https,http,s3"
    url_allowed_hosts: str = ""
    url_allow_private: str = "false"
    url_allow_loopback: str = "false"
    url_allow_file: str = "false"
    # Whether CLI commits (data put, deploy, data ingest) are announced as Airflow Asset events in the embedded
    # metadata DB, so DAGs scheduled on a repo (caption_pipeline on rawdata) are queued. Off by default because it
    # imports Airflow into every such command.
    announce_commits: str = "false"
    # kaos bundles' /pfs view on the local runner: auto (when the code mentions /pfs/), always, or never.
    pfs: str = "auto"
    # Step defaults when a DAG does not declare its own: retries, and whether steps may reuse earlier results.
    default_retries: str = "1"
    default_cache: str = "true"
    # Sweeps: the most combinations one grid may expand to (never above Airflow's [core] max_map_length), and how
    # many mapped train tasks of one run may run at once (max_active_tis_per_dagrun, fixed when the DAG is parsed).
    max_combinations: str = "256"
    parallelism: str = "4"
    # Where the local runner keeps one lock file per GPU, so concurrent tasks get distinct devices.
    gpu_lock_dir: str = "/tmp/trainyard-gpu-locks"
    # A datum step maps at most this many tasks; more datums are processed in chunks (thousands of datums must not
    # become thousands of Airflow tasks).
    max_datum_tasks: str = "32"
    # Archives in data bundles are unpacked by the train step within these caps (zip bombs, member floods).
    max_unpacked_size: str = "8Gi"
    max_archive_members: str = "100000"
    max_compression_ratio: str = "200"
    # Scheduled retraining: train_pipeline's cron schedule (a cron expression or a preset such as @daily, in UTC;
    # empty or "none": unscheduled), checked when the DAG is parsed. Scheduled runs have no conf, so they train the
    # Param defaults: retrain_source and retrain_data when set (else the DAG's own, the mnist template's), both at
    # `latest`; a run where neither changed is a cache hit and trains nothing.
    retrain_schedule: str = ""
    retrain_source: str = ""
    retrain_data: str = ""

    @property
    def combination_cap(self) -> int:
        """max_combinations, clamped to Airflow's max_map_length so a valid grid can always be mapped."""
        return min(int(self.max_combinations), airflow_option("core", "max_map_length", 1024))

    @property
    def store_is_local(self) -> bool:
        return self.store.startswith("file://") or "://" not in self.store

    def step_env(self) -> dict[str, str]:
        """The settings steps read where they run, as env: a pod has neither the server's env nor airflow.cfg."""
        return {f"TRAINYARD_{name.upper()}": str(getattr(self, name)) for name in STEP_SETTINGS}

    def flag(self, name: str) -> bool:
        return str(getattr(self, name)).strip().lower() in ("1", "true", "yes", "on")

    def validate(self) -> "Settings":
        if self.runner not in RUNNERS:
            raise ConfigError(
                f"unknown runner {self.runner!r}; set TRAINYARD_RUNNER or [trainyard] runner to one of {', '.join(RUNNERS)}"
            )
        if not (self.store.startswith(("file://", "s3://")) or "://" not in self.store):
            raise ConfigError(
                f"unsupported store URI {self.store!r}; use file:///path or s3://bucket/prefix"
            )
        for name in ("max_combinations", "parallelism", "max_archive_members", "max_datum_tasks", "schedule_timeout"):
            value = getattr(self, name)
            if not value.isdigit() or int(value) < 1:
                raise ConfigError(f"[trainyard] {name} = {value!r} must be a whole number >= 1")
        if self.runner == "kubernetes" and self.store_is_local:
            raise ConfigError(
                f"runner 'kubernetes' cannot use the local store {self.store!r}: pods do not share this "
                "machine's disk. Set TRAINYARD_STORE (or [trainyard] store) to an s3:// URI, or use runner 'local'."
            )
        return self


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


def load(**overrides: str | None) -> Settings:
    """Resolve settings: keyword argument > TRAINYARD_<NAME> / AIRFLOW__TRAINYARD__<NAME> env > the store chosen by
    `trainyard init` (the user's server profile) > airflow.cfg > default."""
    from trainyard import userconfig

    cfg = _airflow_cfg_section()
    profile = {k: v for k, v in userconfig.saved().items() if k in PROFILE_SETTINGS}
    values = {}
    for field in dataclasses.fields(Settings):
        name = field.name
        if overrides.get(name) is not None:
            values[name] = str(overrides[name])
        elif os.environ.get(f"TRAINYARD_{name.upper()}"):
            values[name] = os.environ[f"TRAINYARD_{name.upper()}"]
        elif os.environ.get(f"AIRFLOW__TRAINYARD__{name.upper()}"):
            values[name] = os.environ[f"AIRFLOW__TRAINYARD__{name.upper()}"]
        elif name in profile:
            values[name] = profile[name]
        elif name in cfg:
            values[name] = cfg[name]
    unknown = set(overrides) - {f.name for f in dataclasses.fields(Settings)}
    if unknown:
        raise ConfigError(f"unknown trainyard setting(s): {', '.join(sorted(unknown))}")
    return Settings(**values)
