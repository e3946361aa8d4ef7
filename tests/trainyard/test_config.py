"""Settings: one precedence (argument > env > airflow.cfg > default), typed values parsed once, one-line errors that
name the setting, the runner and store that cannot work together, and a CLI profile only the CLI reads."""

from __future__ import annotations

import json

import pytest

from trainyard import config
from trainyard.cli.context import CliSettings, cli_settings
from trainyard.errors import ConfigError

NAMES = ("STORE", "NAMESPACE", "PARALLELISM", "RUNNER", "REGISTRY_INSECURE", "URL_SCHEMES", "MAX_COMPRESSION_RATIO")


@pytest.fixture
def cfg(tmp_path, monkeypatch):
    path = tmp_path / "airflow.cfg"
    path.write_text("[core]\nload_examples = False\n[trainyard]\nrunner = local\nstore = file:///from/cfg\n"
                    "namespace = from-cfg\nparallelism = 6\nregistry_insecure = yes\n")
    monkeypatch.setenv("AIRFLOW_CONFIG", str(path))
    for name in NAMES:
        monkeypatch.delenv(f"TRAINYARD_{name}", raising=False)
        monkeypatch.delenv(f"AIRFLOW__TRAINYARD__{name}", raising=False)
    return path


def test_precedence(cfg, monkeypatch):
    assert config.load().store == "file:///from/cfg"
    assert config.load().max_gpu == 8  # default
    monkeypatch.setenv("AIRFLOW__TRAINYARD__STORE", "s3://from-airflow-env/x")  # how docker-compose.yaml sets it
    assert config.load().store == "s3://from-airflow-env/x"
    monkeypatch.setenv("TRAINYARD_STORE", "s3://from-env/x")
    assert config.load().store == "s3://from-env/x"
    assert config.load(store="s3://from-arg/y").store == "s3://from-arg/y"
    assert config.load(store=None).store == "s3://from-env/x"  # None is "not given"
    monkeypatch.setenv("TRAINYARD_NAMESPACE", "")  # empty env is unset, as in Airflow
    assert config.load().namespace == "from-cfg"


def test_values_are_typed_once_and_handed_on_as_env_spells_them(cfg, monkeypatch):
    settings = config.load()
    assert (settings.parallelism, settings.registry_insecure, settings.pod_host_network) == (6, True, False)
    monkeypatch.setenv("TRAINYARD_URL_SCHEMES", " HTTPS, s3 ,")
    monkeypatch.setenv("TRAINYARD_MAX_COMPRESSION_RATIO", "1000.5")
    settings = config.load(parallelism="7", registry_insecure="off")
    assert (settings.parallelism, settings.registry_insecure) == (7, False)
    assert settings.url_schemes == ("https", "s3") and settings.max_compression_ratio == 1000.5
    env = settings.step_env()
    assert (env["TRAINYARD_URL_SCHEMES"], env["TRAINYARD_URL_ALLOW_FILE"]) == ("https,s3", "false")
    assert env["TRAINYARD_MAX_COMPRESSION_RATIO"] == "1000.5" and config.load().step_env()[
        "TRAINYARD_MAX_ARCHIVE_MEMBERS"] == "100000"
    # what a step reads back from that env is what the server had
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    again = config.load()
    assert (again.url_schemes, again.max_compression_ratio, again.url_allow_file) == (("https", "s3"), 1000.5, False)


@pytest.mark.parametrize(("setting", "value", "problem"), [
    ("parallelism", "four", "must be a whole number >= 1"),
    ("parallelism", "0", "must be a whole number >= 1"),
    ("max_gpu", "-1", "must be a whole number >= 0"),
    ("registry_insecure", "maybe", "must be true or false (1, true, yes, on / 0, false, no, off)"),
    ("default_memory", "2GB", "must be a positive Kubernetes quantity such as 8Gi or 500M"),
    ("max_cpu", "0", "must be a positive Kubernetes quantity such as 0.5, 2 or 500m"),
    ("max_compression_ratio", "0.5", "must be a number >= 1"),
    ("runner", "docker", "is not one of local, kubernetes"),
    ("pfs", "sometimes", "is not one of auto, always, never"),
    ("store", "http://bucket/x", "is not a store URI (use file:///path or s3://bucket/prefix)"),
])
def test_a_bad_value_is_one_line_naming_the_setting_and_where_to_set_it(cfg, monkeypatch, setting, value, problem):
    expected = (f"[trainyard] {setting} = {value!r} {problem}; set TRAINYARD_{setting.upper()} (or {setting} in "
                "airflow.cfg's [trainyard] section)")
    with pytest.raises(ConfigError) as by_argument:
        config.load(**{setting: value})
    assert str(by_argument.value) == expected
    monkeypatch.setenv(f"TRAINYARD_{setting.upper()}", value)
    with pytest.raises(ConfigError) as by_env:
        config.load()
    assert str(by_env.value) == expected


def test_unknown_settings_are_refused(cfg):
    with pytest.raises(ConfigError, match="^unknown trainyard setting\\(s\\): paralelism$"):
        config.load(paralelism=2)


def test_kubernetes_runner_with_a_local_store_is_rejected(cfg):
    settings = config.load(runner="kubernetes")  # loading is fine: `trainyard list` works with any runner
    with pytest.raises(ConfigError, match="runner 'kubernetes' cannot use the local store.*s3://"):
        settings.checked()
    with pytest.raises(ConfigError, match="cannot use the local store"):
        assert settings.on_kubernetes
    remote = config.load(runner="kubernetes", store="s3://bucket/p")
    assert remote.checked() is remote and remote.on_kubernetes
    assert not config.load(store="s3://bucket/p").on_kubernetes


def test_server_settings_never_read_the_cli_profile(cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("TRAINYARD_CONFIG_DIR", str(tmp_path / "profile"))
    (tmp_path / "profile").mkdir()
    (tmp_path / "profile" / "config.json").write_text(json.dumps({"store": "s3://from-profile/p",
                                                                   "endpoint": "http://127.0.0.1:1"}))
    assert config.load().store == "file:///from/cfg"  # operators, DAG files and steps: airflow.cfg
    assert isinstance(cli_settings(), CliSettings) and cli_settings().store == "s3://from-profile/p"
    monkeypatch.setenv("TRAINYARD_STORE", "s3://from-env/x")  # the CLI: argument > env > profile > airflow.cfg
    assert cli_settings().store == "s3://from-env/x"
    assert cli_settings(store="s3://from-arg/y").store == "s3://from-arg/y"


def test_scheduled_retraining_is_off_unless_configured(cfg, monkeypatch):
    for name in ("TRAINYARD_RETRAIN_SCHEDULE", "AIRFLOW__TRAINYARD__RETRAIN_SCHEDULE"):
        monkeypatch.delenv(name, raising=False)
    settings = config.load()
    assert (settings.retrain_schedule, settings.retrain_source, settings.retrain_data) == ("", "", "")
    cfg.write_text(cfg.read_text() + "retrain_schedule = 0 3 * * *\nretrain_source = churn\n")
    assert (config.load().retrain_schedule, config.load().retrain_source) == ("0 3 * * *", "churn")
    monkeypatch.setenv("AIRFLOW__TRAINYARD__RETRAIN_SCHEDULE", "@daily")  # how docker-compose.yaml sets it
    assert config.load().retrain_schedule == "@daily"
    monkeypatch.setenv("TRAINYARD_RETRAIN_SCHEDULE", "@hourly")
    assert config.load().retrain_schedule == "@hourly"
    assert config.load(retrain_schedule="none").retrain_schedule == "none"  # checked when the DAG is parsed
