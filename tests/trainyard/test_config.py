"""Settings precedence (argument > env > airflow.cfg > default) and impossible combinations."""

from __future__ import annotations

import pytest

from trainyard import config
from trainyard.errors import ConfigError


@pytest.fixture
def cfg(tmp_path, monkeypatch):
    path = tmp_path / "airflow.cfg"
    path.write_text("[core]\nload_examples = False\n[trainyard]\nrunner = local\nstore = file:///from/cfg\n"
                    "namespace = from-cfg\n")
    monkeypatch.setenv("AIRFLOW_CONFIG", str(path))
    monkeypatch.delenv("TRAINYARD_STORE", raising=False)
    monkeypatch.delenv("TRAINYARD_NAMESPACE", raising=False)
    return path


def test_precedence(cfg, monkeypatch):
    assert config.load().store == "file:///from/cfg"
    assert config.load().max_gpu == "8"  # default
    monkeypatch.setenv("TRAINYARD_STORE", "s3://from-env/x")
    assert config.load().store == "s3://from-env/x"
    assert config.load(store="s3://from-arg/y").store == "s3://from-arg/y"
    monkeypatch.setenv("AIRFLOW__TRAINYARD__NAMESPACE", "from-airflow-env")
    assert config.load().namespace == "from-airflow-env"


def test_kubernetes_runner_with_a_local_store_is_rejected(cfg):
    with pytest.raises(ConfigError, match="runner 'kubernetes' cannot use the local store.*s3://"):
        config.load(runner="kubernetes").validate()
    assert config.load(runner="kubernetes", store="s3://bucket/p").validate().runner == "kubernetes"


def test_unknown_runner_names_the_choices(cfg):
    with pytest.raises(ConfigError, match="local, kubernetes"):
        config.load(runner="docker").validate()


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
    assert config.load(retrain_schedule="none").validate().retrain_schedule == "none"  # checked when parsed
