"""The local cluster's own life: it starts, runs pods with real volumes on the pod network, and leaves nothing.

This test starts and stops a cluster of its own, before the session's shared one exists (tests/k8s/conftest.py
orders it first): only one kubelet can run on a machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from trainyard.localk8s.cluster import BRIDGE, LocalCluster, leftovers, unavailable

pytestmark = pytest.mark.e2e


def _iptables() -> str | None:
    """The machine's iptables rules, or None where iptables is not installed (nothing can add rules then)."""
    if not shutil.which("iptables-save"):
        return None
    return subprocess.run(["iptables-save"], capture_output=True, text=True, check=False).stdout


def _netns() -> set[str]:
    return set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()


def _wait_phase(kube, name: str, phases: set[str], timeout: float = 120) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pod = kube.read_namespaced_pod(name, "default")
        if pod.status.phase in phases:
            return pod
        time.sleep(0.5)
    raise AssertionError(f"pod {name} not {phases} within {timeout} s: {pod.status}")


def test_a_cluster_runs_pods_and_stops_leaving_nothing_behind():
    if os.environ.get("TRAINYARD_E2E_KUBECONFIG"):
        pytest.skip("this test starts the project's own local cluster; TRAINYARD_E2E_KUBECONFIG names another")
    reason = unavailable()
    if reason:
        pytest.skip(f"no local Kubernetes on this machine: {reason}")
    from kubernetes import client, config

    state = Path(f"/tmp/trainyard-k8s-life-{uuid.uuid4().hex[:8]}")
    rules, netns = _iptables(), _netns()
    cluster = LocalCluster(state)
    started = time.monotonic()
    cluster.start()
    try:
        print(f"cluster ready in {time.monotonic() - started:.1f} s")
        kube = client.CoreV1Api(api_client=config.new_client_from_config(str(cluster.kubeconfig)))
        node = kube.read_node("trainyard-node")
        assert {c.type: c.status for c in node.status.conditions}["Ready"] == "True"
        assert node.status.node_info.kubelet_version.startswith("v1.20")
        kube.create_namespaced_secret("default", client.V1Secret(
            metadata=client.V1ObjectMeta(name="probe"), string_data={"word": "mounted-secret"}))
        # On the pod network (its own network namespace and a veth on the bridge), with a Secret volume (a tmpfs
        # the kubelet mounts) and an emptyDir; it exits 3.
        kube.create_namespaced_pod("default", client.V1Pod(
            metadata=client.V1ObjectMeta(name="probe-exit"),
            spec=client.V1PodSpec(restart_policy="Never", containers=[client.V1Container(
                name="main", image="python:3.11-slim",
                command=["python3", "-c", "import sys; print(open('/s/word').read()); sys.exit(3)"],
                volume_mounts=[client.V1VolumeMount(name="s", mount_path="/s"),
                               client.V1VolumeMount(name="scratch", mount_path="/scratch")])],
                volumes=[client.V1Volume(name="s", secret=client.V1SecretVolumeSource(secret_name="probe")),
                         client.V1Volume(name="scratch", empty_dir=client.V1EmptyDirVolumeSource())])))
        # Still running when the cluster stops: one on the pod network (a network namespace the cluster must
        # remove), one on the node's network.
        for name, host_network in (("probe-running", False), ("probe-host", True)):
            kube.create_namespaced_pod("default", client.V1Pod(
                metadata=client.V1ObjectMeta(name=name),
                spec=client.V1PodSpec(restart_policy="Never", host_network=host_network, containers=[
                    client.V1Container(name="main", image="python:3.11-slim", command=["sleep", "600"])])))
        failed = _wait_phase(kube, "probe-exit", {"Failed", "Succeeded"})
        assert failed.status.phase == "Failed"
        assert failed.status.container_statuses[0].state.terminated.exit_code == 3
        assert kube.read_namespaced_pod_log("probe-exit", "default", _preload_content=False).data == \
            b"mounted-secret\n"
        assert failed.status.pod_ip.startswith("10.244.77.")
        _wait_phase(kube, "probe-running", {"Running"})
        _wait_phase(kube, "probe-host", {"Running"})
        # There is something to clean up: mounts under the state dir, a network namespace, the bridge.
        assert leftovers(state)["mounts"] and Path(f"/sys/class/net/{BRIDGE}").exists()
        assert _netns() - netns
    finally:
        cluster.stop(cleanup=True)
    left = leftovers(state)
    assert left == {"processes": [], "mounts": [], "bridge": [], "cgroups": []}
    assert _netns() == netns
    assert _iptables() == rules
    assert not state.exists()
