"""Fixtures for tests on a real Kubernetes: the local cluster (or yours), an S3 store its pods reach, and Airflow.

By default the session starts the project's local cluster (trainyard/localk8s: etcd, kube-apiserver,
kube-controller-manager, kube-scheduler, containerd and a kubelet built from Debian's packages), whose pods reach
the moto S3 server on 127.0.0.1 through the node's network. Where the machine cannot run it (not root, no cgroups,
no overlayfs) every test here skips and prints why.

Against your own cluster (kind, k3s, a cloud cluster), set TRAINYARD_E2E_KUBECONFIG and the images and store
its pods can reach; see README "Tests on Kubernetes".
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import REPO

MNIST = REPO / "templates" / "mnist"
STORE_SECRET = "trainyard-store"
# The local cluster has no GPU; the GPU tests patch the node's capacity, as a device plugin would.
GPU_RESOURCE = "nvidia.com/gpu"


def pytest_collection_modifyitems(config, items):
    # The lifecycle test starts and stops a cluster of its own; only one kubelet may run on a machine, so it goes
    # before anything starts the shared session cluster.
    first = [i for i in items if "test_cluster_lifecycle" in i.nodeid]
    rest = [i for i in items if "test_cluster_lifecycle" not in i.nodeid]
    items[:] = first + rest


def _say(message: str) -> None:
    print(f"\n[k8s] {message}", file=sys.__stderr__, flush=True)


class ExternalCluster:
    """A user's cluster from TRAINYARD_E2E_KUBECONFIG: nothing is started or stopped, the env names its images."""

    def __init__(self, kubeconfig: str) -> None:
        self.kubeconfig = Path(kubeconfig)
        self.registry = os.environ.get("TRAINYARD_REGISTRY", "")

    def env(self) -> dict[str, str]:
        keys = ("TRAINYARD_REGISTRY", "TRAINYARD_REGISTRY_INSECURE", "TRAINYARD_STEP_IMAGE", "TRAINYARD_BUILDER_IMAGE",
                "TRAINYARD_XCOM_SIDECAR_IMAGE", "TRAINYARD_DOCKER_HUB_MIRROR", "TRAINYARD_POD_HOST_NETWORK",
                "TRAINYARD_NAMESPACE")
        env = {k: os.environ[k] for k in keys if os.environ.get(k)}
        conn = {"conn_type": "kubernetes", "extra": {"kube_config_path": str(self.kubeconfig), "in_cluster": False}}
        return {"KUBECONFIG": str(self.kubeconfig), "AIRFLOW_CONN_KUBERNETES_DEFAULT": json.dumps(conn),
                "TRAINYARD_RUNNER": "kubernetes", **env}

    def add_images(self, names) -> None:
        """Your registry must already hold the base images your bundles name."""


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    """The local single-node cluster, started once per session and stopped at its end, leaving nothing behind."""
    external = os.environ.get("TRAINYARD_E2E_KUBECONFIG")
    if external:
        yield ExternalCluster(external)
        return
    from trainyard.localk8s.cluster import ClusterUnavailable, LocalCluster, leftovers, unavailable

    reason = unavailable()
    if reason:
        pytest.skip(f"no local Kubernetes on this machine: {reason}")
    state = Path(f"/tmp/trainyard-k8s-{uuid.uuid4().hex[:8]}")
    local = LocalCluster(state)
    _say(f"starting the local cluster in {state} (first time on a machine: builds Kubernetes and images, "
         "5-15 minutes)")
    t0 = time.monotonic()
    try:
        local.start()
    except ClusterUnavailable as exc:
        pytest.skip(f"no local Kubernetes on this machine: {exc}")
    _say(f"cluster ready in {time.monotonic() - t0:.0f} s: {local.api_url}, registry {local.registry}")
    try:
        yield local
    finally:
        local.stop(cleanup=True)
        left = {k: v for k, v in leftovers(state).items() if v}
        assert not left, f"the stopped cluster left things behind: {left}"


@pytest.fixture(scope="session")
def kube(cluster):
    """A CoreV1Api on the cluster."""
    from kubernetes import client, config

    return client.CoreV1Api(api_client=config.new_client_from_config(str(cluster.kubeconfig)))


@pytest.fixture(scope="session")
def k8s_store(cluster, kube, moto_endpoint):
    """An s3:// store on the moto server, and the Kubernetes Secret that is the only way pods get its keys."""
    import boto3
    from kubernetes import client

    external = os.environ.get("TRAINYARD_E2E_STORE")
    creds = {"AWS_ACCESS_KEY_ID": "k8s-store-key-id", "AWS_SECRET_ACCESS_KEY": "k8s-store-secret-FAKE-0123456789",
             "AWS_ENDPOINT_URL": moto_endpoint, "AWS_DEFAULT_REGION": "us-east-1"}
    if external:
        creds = {k: os.environ[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL",
                                            "AWS_DEFAULT_REGION") if os.environ.get(k)}
        uri = external
    else:
        bucket = f"k8s-{uuid.uuid4().hex[:10]}"
        boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1",
                     aws_access_key_id=creds["AWS_ACCESS_KEY_ID"],
                     aws_secret_access_key=creds["AWS_SECRET_ACCESS_KEY"]).create_bucket(Bucket=bucket)
        uri = f"s3://{bucket}/store"
    secret = client.V1Secret(metadata=client.V1ObjectMeta(name=STORE_SECRET), string_data=creds)
    try:
        kube.create_namespaced_secret("default", secret)
    except client.ApiException as exc:
        if exc.status != 409:
            raise
        kube.replace_namespaced_secret(STORE_SECRET, "default", secret)
    return {"uri": uri, "credentials": creds}


@pytest.fixture(scope="session")
def store(k8s_store):
    """The store the cluster's pods write, opened with its keys (as the test's own view of what is in it)."""
    from trainyard.store import open_store

    creds = k8s_store["credentials"]
    return open_store(k8s_store["uri"], client_kwargs={
        "aws_access_key_id": creds["AWS_ACCESS_KEY_ID"], "aws_secret_access_key": creds["AWS_SECRET_ACCESS_KEY"],
        "endpoint_url": creds.get("AWS_ENDPOINT_URL"), "region_name": creds.get("AWS_DEFAULT_REGION", "us-east-1")})


@pytest.fixture(scope="session")
def k8s_env(cluster, k8s_store):
    """The environment of a user whose trainyard runs steps as pods on the cluster (CLI and Airflow alike)."""
    return {**cluster.env(), "TRAINYARD_STORE": k8s_store["uri"], **k8s_store["credentials"]}


@pytest.fixture(scope="session")
def k8s_airflow(cluster, k8s_store, tmp_path_factory):
    """A real Airflow (LocalExecutor) on 127.0.0.1 whose steps run as pods on the cluster; 2 trainings at once,
    a pod that no node takes fails after 20 s with the scheduler's reason, and datum steps map at most 4 tasks."""
    from trainyard.local_airflow import LocalAirflow

    creds = k8s_store["credentials"]
    connection = {"conn_type": "aws", "login": creds["AWS_ACCESS_KEY_ID"], "password": creds["AWS_SECRET_ACCESS_KEY"],
                  "extra": {"endpoint_url": creds["AWS_ENDPOINT_URL"], "region_name": "us-east-1"}}
    env = {**cluster.env(), "TRAINYARD_STORE": k8s_store["uri"], "TRAINYARD_PARALLELISM": "2",
           "TRAINYARD_SCHEDULE_TIMEOUT": "20", "TRAINYARD_VENV_CACHE": os.environ["TRAINYARD_VENV_CACHE"],
           # captioning's image server runs on the test machine's loopback; 20 datums go in 4 tasks per step
           "TRAINYARD_URL_ALLOW_LOOPBACK": "true", "TRAINYARD_MAX_DATUM_TASKS": "4",
           # two steps side by side on the 2-CPU node (each pod also has an XCom sidecar)
           "TRAINYARD_DEFAULT_CPU": "0.5", "TRAINYARD_DEFAULT_MEMORY": "1Gi",
           "AIRFLOW_CONN_TRAINYARD_STORE": json.dumps(connection), "AWS_DEFAULT_REGION": "us-east-1"}
    server = LocalAirflow(tmp_path_factory.mktemp("k8s-airflow"), env=env)
    _say(f"starting Airflow for the kubernetes runner at {server.url}")
    server.start()
    try:
        server.wait_for_dags(["train_pipeline", "caption_pipeline", "predict"])
        server.store_uri = k8s_store["uri"]
        yield server
    finally:
        server.stop()


@pytest.fixture
def k8s_profile(k8s_airflow, k8s_store, tmp_path, monkeypatch):
    """A user who ran `trainyard init` against that Airflow, with the store's keys in their env at the time."""
    from trainyard.cli import main

    creds = k8s_store["credentials"]
    monkeypatch.setenv("TRAINYARD_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("TRAINYARD_PASSWORD", k8s_airflow.password)
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, creds[key])
    assert main(["init", "-e", k8s_airflow.url, "-u", k8s_airflow.username, "--store", k8s_store["uri"],
                 "--store-endpoint", creds["AWS_ENDPOINT_URL"]]) == 0
    for var in ("TRAINYARD_PASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path / "config"


def trainyard_pods(kube, **labels) -> list:
    """trainyard's pods on the cluster now, optionally filtered by labels."""
    selector = ",".join(f"{k}={v}" for k, v in labels.items()) or "trainyard.io/step"
    return kube.list_namespaced_pod("default", label_selector=selector).items
