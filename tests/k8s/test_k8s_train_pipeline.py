"""train_pipeline on the kubernetes runner: every step a real pod on the cluster, driven by a real Airflow.

A user who ran `trainyard init` deploys the mnist template with `--wait`; Airflow (LocalExecutor) runs resolve,
then the build pod (buildah), one train pod per combination (2 at once) and the register pod. A watcher records
every trainyard pod it sees, so the test knows what really ran, when, and in which image.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid

import pytest

from tests.k8s.conftest import MNIST
from tests.k8s.podwatch import PodWatcher
from trainyard.cli import main
from trainyard.k8s import built_image

pytestmark = pytest.mark.e2e
SWEEP = '{"kernel": ["linear", "rbf", "poly"]}'
# The node has 2 CPUs: two trainings side by side fit at half a core each (the default of 1 core fits one).
SMALL = ("--cpu", "0.5", "--memory", "512Mi")


def _describe(pods) -> str:
    """One line per pod: name, phase, map index, try, and how its main container ended."""
    lines = []
    for pod in pods:
        status = next((s for s in pod.status.container_statuses or [] if s.name == "base"), None)
        ended = status.state.terminated if status and status.state else None
        lines.append(f"{pod.metadata.name} {pod.status.phase} map={pod.metadata.labels.get('map_index')} "
                     f"try={pod.metadata.labels.get('try_number')} "
                     f"exit={ended.exit_code if ended else None} {ended.reason if ended else ''}")
    return "\n".join(lines)


def _intervals(pods) -> list[tuple[float, float]]:
    """(start, end) of each pod's main container, from the kubelet's own timestamps."""
    out = []
    for pod in pods:
        status = next(s for s in pod.status.container_statuses if s.name == "base")
        state = status.state.terminated
        assert state is not None, f"{pod.metadata.name} was not seen finished"
        out.append((state.started_at.timestamp(), state.finished_at.timestamp()))
    return out


def _max_overlap(intervals) -> int:
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda x: (x[0], x[1]))
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    return peak


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("mnist")
    shutil.copytree(MNIST / "model-train", root / "src")
    shutil.copytree(MNIST / "data", root / "data")
    # A source commit of its own, so this session's registry has no image for it yet and the build pod builds.
    (root / "src" / "mnist" / "model" / "session.txt").write_text(f"{uuid.uuid4()}\n")
    return root


def _deploy(capsys, *args) -> tuple[int, dict, str]:
    code = main(["deploy", *args, "--json"])
    out = capsys.readouterr()
    return code, (json.loads(out.out) if out.out.strip() else {}), out.err


def test_a_sweep_runs_as_pods_and_registers_the_best(k8s_profile, k8s_airflow, kube, bundles, capsys, tmp_path):
    with PodWatcher(kube) as watcher:
        code, result, err = _deploy(capsys, "-s", str(bundles / "src"), "-d", str(bundles / "data"), "--wait",
                                    "-h", SWEEP, "--metric", "accuracy_test:max", *SMALL)
        time.sleep(1)
    assert code == 0, err[-3000:]
    run_id = result["run_id"]
    assert result["state"] == "success" and len(result["models"]) == 3

    # build, train and register ran as real pods, and the trainings in the image the build pushed.
    builds, trains, registers = (watcher.of_run(run_id, s) for s in ("build", "train", "register"))
    assert len(builds) == 1 and len(registers) == 1, _describe(builds + registers)
    assert len(trains) == 3, _describe(trains)
    assert {p.status.phase for p in trains + registers} == {"Succeeded"}
    image = built_image(k8s_airflow.env["TRAINYARD_REGISTRY"], "mnist", result["source"],
                        k8s_airflow.env["TRAINYARD_STEP_IMAGE"])
    assert {p.spec.containers[1].image for p in trains} == {image}  # the user's container
    # At most --parallelism (2) trainings at once, and the cluster did run two side by side.
    assert _max_overlap(_intervals(trains)) == 2

    # The same accuracy as the local runner gives for the same source, data and params.
    # (a user without a server profile: a fresh config dir, the embedded file:// store)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRAINYARD_", "AWS_"))}
    env.update(TRAINYARD_STORE=f"file://{tmp_path / 'local-store'}", TRAINYARD_CONFIG_DIR=str(tmp_path / "cfg"),
               TRAINYARD_VENV_CACHE=os.environ["TRAINYARD_VENV_CACHE"])
    proc = subprocess.run([sys.executable, "-m", "trainyard.cli", "deploy", "-s", str(bundles / "src"), "-d",
                           str(bundles / "data"), "--local", "-h", SWEEP, "--metric", "accuracy_test:max", "--json"],
                          capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    local = json.loads(proc.stdout)
    on_k8s = {m["model_id"]: m["metrics"]["accuracy_test"] for m in result["models"]}
    on_local = {m["model_id"]: m["metrics"]["accuracy_test"] for m in local["models"]}
    assert on_k8s == on_local
    assert result["model_id"] == local["model_id"] and result["version"]["name"] == "mnist"

    # The pods are gone (a deleted pod's object goes once its containers have stopped), and their output is still
    # there: it was kept in the store while they ran.
    def left() -> list[str]:
        return [p.metadata.name for p in kube.list_namespaced_pod("default").items
                if p.metadata.labels.get("run_id") == trains[0].metadata.labels["run_id"]]

    deadline = time.monotonic() + 20
    while left() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert left() == []
    for index in range(3):
        assert main(["logs", "--run-id", run_id, "--step", "train", "--map-index", str(index)]) == 0
        logs = capsys.readouterr().out
        assert f"== train [{index}] try 1 ==" in logs and "metrics:" in logs
    assert main(["logs", "--run-id", run_id, "--step", "build"]) == 0
    build_log = capsys.readouterr().out
    # Built here, or by an earlier session into the same registry (then skipped before any pod was made).
    assert f"built and pushed {image}" in build_log or f"image {image} exists: build skipped" in build_log


def test_an_unchanged_deploy_builds_and_trains_nothing(k8s_profile, kube, bundles, capsys):
    code, first, err = _deploy(capsys, "-s", str(bundles / "src"), "-d", str(bundles / "data"), "--wait",
                               "-h", SWEEP, "--metric", "accuracy_test:max")
    assert code == 0, err[-2000:]
    with PodWatcher(kube) as watcher:
        code, again, err = _deploy(capsys, "-s", str(bundles / "src"), "-d", str(bundles / "data"), "--wait",
                                   "-h", SWEEP, "--metric", "accuracy_test:max")
        time.sleep(1)
    assert code == 0, err[-2000:]
    assert again["cached"] is True and again["model_id"] == first["model_id"]
    # Only the register pod ran: no build pod, no train pod.
    assert {p.metadata.labels["trainyard.io/step"] for p in watcher.of_run(again["run_id"])} == {"register"}


def test_a_failing_combination_leaves_the_others_registered(k8s_profile, kube, bundles, capsys):
    code, result, err = _deploy(capsys, "-s", str(bundles / "src"), "-d", str(bundles / "data"), "--wait",
                                "-h", '{"C": [3, -1]}', "--metric", "accuracy_test:max")
    assert code == 1
    assert result["state"] == "partial"
    assert [m["params"]["C"] for m in result["models"]] == [3]
    [failure] = result["failures"]
    assert failure["label"] == "C=-1" and "C" in failure["error"]


SLEEPY_TRAIN = """#!/usr/bin/env python3
import time
for i in range(600):
    print("sleepy: epoch", i, flush=True)
    time.sleep(1)
"""


def test_kill_deletes_the_training_pod_and_fails_the_run(k8s_profile, k8s_airflow, kube, tmp_path, capsys):
    bundle = tmp_path / "sleepy-src" / "sleepy"
    (bundle / "model").mkdir(parents=True)
    (bundle / "Dockerfile").write_text("FROM python:3.11-slim\nWORKDIR /model\n")
    (bundle / "model" / "train").write_text(SLEEPY_TRAIN)
    (bundle / "model" / "params.json").write_text("{}")
    data = tmp_path / "sleepy-data"
    data.mkdir()
    (data / "rows.csv").write_text("1,2\n")
    code, result, err = _deploy(capsys, "-s", str(bundle.parent), "-d", str(data))
    assert code == 0, err[-2000:]
    run_id = result["run_id"]
    with PodWatcher(kube) as watcher:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not [p for p in watcher.of_run(run_id, "train")
                                                    if p.status.phase == "Running"]:
            time.sleep(1)
        [pod] = [p for p in watcher.of_run(run_id, "train") if p.status.phase == "Running"]
        time.sleep(4)  # a few epochs, and one flush of the store log
        assert main(["kill", "--run-id", run_id]) == 0
        assert f"killed run {run_id}: stopped train[0]" in capsys.readouterr().out
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and [p for p in kube.list_namespaced_pod("default").items
                                               if p.metadata.name == pod.metadata.name]:
            time.sleep(0.5)
    assert not [p for p in kube.list_namespaced_pod("default").items if p.metadata.name == pod.metadata.name], \
        "the training pod survived the kill"
    assert k8s_airflow.client().run("train_pipeline", run_id)["state"] == "failed"
    assert main(["logs", "--run-id", run_id, "--step", "train"]) == 0
    logs = capsys.readouterr().out
    assert "sleepy: epoch 1" in logs and "stopped: the task was killed" in logs


def _forget_the_gpu(store) -> None:
    """The pipeline remembers --gpu per source repo; later deploys of mnist in this session ask for none."""
    from trainyard import runs

    runs.remember_settings(store, "train_pipeline", "mnist", {"gpu": 0})


def _gpu_node(kube, gpus: int | None) -> None:
    """Advertise `gpus` GPUs on the node and label it a GPU node, as NVIDIA's device plugin and feature discovery
    would; None: no GPU node at all."""
    from trainyard.localk8s.cluster import NODE_NAME

    kube.patch_node_status(NODE_NAME, {"status": {"capacity": {"nvidia.com/gpu": str(gpus or 0)},
                                                  "allocatable": {"nvidia.com/gpu": str(gpus or 0)}}})
    kube.patch_node(NODE_NAME, {"metadata": {"labels": {"nvidia.com/gpu.present": None if gpus is None
                                                        else "true"}}})


def test_a_gpu_pod_no_node_can_take_fails_with_the_schedulers_reason(k8s_profile, kube, store, bundles, capsys):
    _gpu_node(kube, None)
    started = time.monotonic()
    try:
        code = main(["deploy", "-s", str(bundles / "src"), "-d", str(bundles / "data"), "--gpu", "1", "--no-cache",
                     "--json"])
    finally:
        _forget_the_gpu(store)
    run_id = json.loads(capsys.readouterr().out)["run_id"]
    assert code == 0
    # While it waits, `trainyard list` says why.
    # No node carries the GPU label the pod selects, so the scheduler's filter says so.
    reason = "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity."
    seen_in_list = ""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and reason not in seen_in_list:
        main(["list"])
        seen_in_list = capsys.readouterr().out
        time.sleep(1)
    assert f"train waiting: {reason}" in seen_in_list
    # It fails after [trainyard] schedule_timeout (20 s here) with that reason, not after 15 minutes of silence.
    with PodWatcher(kube) as watcher:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not _finished(store, run_id):
            time.sleep(2)
    assert _finished(store, run_id), "the run did not end"
    assert time.monotonic() - started < 150
    # One pod, one wait: no retry waits another schedule_timeout for the same reason.
    assert len(watcher.of_run(run_id, "train")) == 1, _describe(watcher.of_run(run_id))
    assert main(["list", "--json"]) == 0
    record = next(r for r in json.loads(capsys.readouterr().out) if r.get("parameters", {}).get("run_id") == run_id)
    [failure] = record["run_summary"]["outputs"]["failures"]
    assert failure["error"] == f"step 'train': no node took its pod within 20 s: {reason}"
    assert main(["logs", "--run-id", run_id, "--step", "train"]) == 0
    logs = capsys.readouterr().out
    assert f"waiting: {reason}" in logs and "failed: step 'train': no node took its pod within 20 s" in logs


def test_a_gpu_pod_waits_with_insufficient_gpus_while_the_gpu_node_is_full(k8s_profile, kube, store, bundles,
                                                                            capsys):
    _gpu_node(kube, 0)  # a GPU node whose GPUs are all taken
    try:
        code = main(["deploy", "-s", str(bundles / "src"), "-d", str(bundles / "data"), "--gpu", "1", "--no-cache",
                     "--wait", "--json"])
    finally:
        _gpu_node(kube, None)
        _forget_the_gpu(store)
    result = json.loads(capsys.readouterr().out)
    assert code == 1 and result["state"] == "failed"
    [failure] = result["failures"]
    assert failure["error"] == ("step 'train': no node took its pod within 20 s: 0/1 nodes are available: "
                                "1 Insufficient nvidia.com/gpu.")


def _finished(store, run_id: str) -> bool:
    from trainyard import runs

    return runs.read_results(store, "train_pipeline", run_id) is not None


def test_a_node_that_advertises_a_gpu_takes_the_gpu_pod(k8s_profile, kube, store, bundles, capsys):
    _gpu_node(kube, 1)
    try:
        with PodWatcher(kube) as watcher:
            code, result, err = _deploy(capsys, "-s", str(bundles / "src"), "-d", str(bundles / "data"), "--wait",
                                        "--gpu", "1", "--no-cache")
            time.sleep(1)
    finally:
        _gpu_node(kube, None)
        _forget_the_gpu(store)
    assert code == 0, err[-2000:]
    [pod] = watcher.of_run(result["run_id"], "train")
    assert pod.status.phase == "Succeeded"
    user = pod.spec.containers[1]  # the user's container has the GPU; trainyard's own have none
    assert user.name == "train" and user.resources.limits["nvidia.com/gpu"] == "1"
    assert "nvidia.com/gpu" not in (pod.spec.containers[0].resources.limits or {})
    assert pod.spec.node_selector == {"nvidia.com/gpu.present": "true"}
    assert [(t.key, t.operator, t.effect) for t in pod.spec.tolerations if t.key == "nvidia.com/gpu"] == \
        [("nvidia.com/gpu", "Exists", "NoSchedule")]
    # The XCom sidecar holds no GPU.
    sidecar = next(c for c in pod.spec.containers if c.name == "airflow-xcom-sidecar")
    assert "nvidia.com/gpu" not in ((sidecar.resources.limits if sidecar.resources else None) or {})
