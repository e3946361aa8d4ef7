"""docker-compose.yaml is well formed: the official Airflow 3 services, Postgres, MinIO and no credentials as params."""

from __future__ import annotations

import yaml

from tests.conftest import REPO

COMPOSE = yaml.safe_load((REPO / "docker-compose.yaml").read_text())
AIRFLOW_SERVICES = ["airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer",
                    "airflow-init"]


def test_services_and_dependencies():
    services = COMPOSE["services"]
    assert {*AIRFLOW_SERVICES, "postgres", "minio", "minio-init"} <= set(services)
    for name in AIRFLOW_SERVICES:
        service = services[name]
        assert service["build"] == "."
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert service["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
        env = service["environment"]
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
        assert env["AIRFLOW__TRAINYARD__STORE"].startswith("s3://")
        assert "AWS_SECRET_ACCESS_KEY" not in env
        assert "_PIP_ADDITIONAL_REQUIREMENTS" not in env
    assert "version enable local/trainyard" in " ".join(services["minio-init"]["command"])


def test_airflow_image_installs_requirements():
    dockerfile = (REPO / "Dockerfile").read_text()
    assert dockerfile.startswith("#") and "FROM apache/airflow:3.3.2" in dockerfile
    assert "pip install --no-cache-dir -r /opt/trainyard/requirements.txt" in dockerfile


def test_kubernetes_profile_mounts_a_kubeconfig_and_uses_s3():
    k8s = COMPOSE["services"]["airflow-scheduler-k8s"]
    assert k8s["profiles"] == ["kubernetes"]
    assert k8s["environment"]["AIRFLOW__TRAINYARD__RUNNER"] == "kubernetes"
    assert any(v.endswith(":/opt/airflow/.kube/config:ro") for v in k8s["volumes"])
