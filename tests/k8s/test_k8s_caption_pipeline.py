"""caption_pipeline on the kubernetes runner: its datum steps run as pods, and a new datum is all a rerun processes.

Pachyderm's captioning tutorial as trainyard runs it: 100 TSV lines put as 20 datums into rawdata, then images
(the steps image downloads each datum's URLs from the template's own image server), features and consolidate
(the captioning image, built from the template's Dockerfile on the TensorFlow stand-in) and the Keras model, each
task a pod. Appending 5 lines adds one datum: every datum step then processes exactly that one.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.k8s.podwatch import PodWatcher
from trainyard.bundles import SourceBundle, deploy_bundle
from trainyard.datums import put_file
from trainyard import runs

CAPTIONING = REPO / "templates" / "captioning"
pytestmark = pytest.mark.e2e
STEPS = ("images", "features", "consolidate")



def _plans(client, run_id: str) -> dict[str, dict]:
    return {step: client.call("GET", f"/api/v2/dags/caption_pipeline/dagRuns/{run_id}/taskInstances/{step}_plan"
                                     "/xcomEntries/plan?deserialize=true")["value"] for step in STEPS}


def test_datum_steps_run_as_pods_and_a_new_datum_is_all_a_rerun_processes(cluster, k8s_airflow, store, kube,
                                                                          image_server, tmp_path):
    cluster.add_images(["tensorflow"])  # the captioning Dockerfile's base, a local stand-in
    tsv = subprocess.run([sys.executable, str(CAPTIONING / "generate_data.py"), "--tsv", "training",
                          "--base-url", image_server], capture_output=True, text=True, check=True).stdout.splitlines()
    deploy_bundle(store, SourceBundle.load(CAPTIONING / "model-train"))
    captions = tmp_path / "captions.tsv"
    captions.write_text("\n".join(tsv[:100]) + "\n")
    put_file(store, "rawdata", captions, split="line", target_file_datums=5)
    client = k8s_airflow.client()
    conf = {"hyperparams": {"epochs": [20]}}

    with PodWatcher(kube) as watcher:
        first = _run(k8s_airflow, conf)
    plans = _plans(client, first)
    for step in STEPS:
        assert (plans[step]["datums"], plans[step]["pending"], plans[step]["tasks"]) == (20, 20, 4), step
    datum_pods = watcher.of_run(first, "datum")
    assert len(datum_pods) == 12 and {p.status.phase for p in datum_pods} == {"Succeeded"}
    # images runs builtin code in the steps image; features and consolidate in the captioning image.
    # The transform runs in a container of its own (`train`), which holds no store Secret; trainyard's own
    # containers (prepare, finish) do.
    images = {p.metadata.labels["task_id"]: p.spec.containers[1].image for p in datum_pods}
    assert "/trainyard/steps:" in images["images"] and "/captioning:" in images["features"]
    for pod in datum_pods:
        user = pod.spec.containers[1]
        assert user.name == "train" and not user.env_from, pod.metadata.name
        assert [c.env_from[0].secret_ref.name for c in (pod.spec.init_containers[0], pod.spec.containers[0])] == \
            ["trainyard-store", "trainyard-store"]
    assert len(store.resolve("consolidated").manifest) == 20
    results = runs.read_results(store, "caption_pipeline", first)
    (model,) = results.models
    assert model.metrics["exact_match"] > model.metrics["chance_exact_match"] + 0.3

    captions.write_text("\n".join(tsv[:105]) + "\n")  # 5 more lines: one new datum
    put_file(store, "rawdata", captions, split="line", target_file_datums=5)
    with PodWatcher(kube) as watcher:
        second = _run(k8s_airflow, conf)
    plans = _plans(client, second)
    for step in STEPS:
        assert (plans[step]["datums"], plans[step]["pending"], plans[step]["skipped"]) == (21, 1, 20), step
    assert sorted(p.metadata.labels["task_id"] for p in watcher.of_run(second, "datum")) == sorted(STEPS)
    assert len(store.resolve("consolidated").manifest) == 21


def _run(server, conf: dict) -> str:
    from trainyard import remote

    client = server.client()
    run_id = remote.trigger(client, "caption_pipeline", conf, say=lambda m: None)
    state = remote.wait(client, "caption_pipeline", run_id, say=lambda m: None)
    assert state == "success", server.log_tails()
    return run_id
