"""The templates' own Dockerfiles build unchanged on the local stand-ins, and their images run on the node.

No public registry is reachable, so `FROM python:3.11-slim` and `FROM tensorflow/tensorflow:2.21.0-gpu` resolve to
the stand-ins the cluster built under those names. Each template's image is built with buildah on the node, pushed
to the cluster's registry, pulled by the kubelet and run: the packages its requirements.txt asks for import.
"""

from __future__ import annotations

import time

import pytest
from kubernetes import client

pytestmark = pytest.mark.e2e
CHECKS = {
    "mnist": "import numpy, sklearn; print('sklearn', sklearn.__version__)",
    "aicenter-sample": "import sklearn; print('sklearn', sklearn.__version__)",
    "lstm": "import tensorflow as tf; print('tensorflow', tf.__version__)",
    "captioning": "import numpy, tensorflow as tf; print('tensorflow', tf.__version__)",
}


@pytest.mark.parametrize("template", list(CHECKS))
def test_a_templates_dockerfile_builds_unchanged_and_its_image_runs(cluster, kube, template):
    if not hasattr(cluster, "state"):
        pytest.skip("builds on the local cluster's node; with TRAINYARD_E2E_KUBECONFIG, push your own images")
    from trainyard.localk8s.images import ImageSet

    if template in ("lstm", "captioning"):
        cluster.add_images(["tensorflow"])
    image = ImageSet(cluster.registry, cluster.state / "run", log=print).template(template)
    name = f"template-{template}"
    kube.create_namespaced_pod("default", client.V1Pod(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1PodSpec(restart_policy="Never", containers=[client.V1Container(
            name="main", image=image, command=["python", "-c", CHECKS[template]])])))
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            pod = kube.read_namespaced_pod(name, "default")
            if pod.status.phase in ("Succeeded", "Failed"):
                break
            time.sleep(1)
        log = kube.read_namespaced_pod_log(name, "default", _preload_content=False).data.decode()
        assert pod.status.phase == "Succeeded", log
        # (TensorFlow logs its start-up to stderr first; the check's own line is the last one)
        assert log.strip().splitlines()[-1].startswith(("sklearn ", "tensorflow 2.21.0")), log
    finally:
        kube.delete_namespaced_pod(name, "default", grace_period_seconds=0)
