"""Every pod of every DAG, rendered as a run would render it, goes through the real API server with dry_run=All.

The API server applies its defaults, admission and validation and then stores nothing. The pods cover each DAG's
steps (resolve's plan as the XCom they read), GPU and CPU trainings, the build pod, the /pfs mounts, the store
Secret and the labels; mapped tasks are unmapped with a sample of what they map over. Our own validation
(trainyard.k8s) must pass every pod the server accepts and refuse what it refuses, with one line each.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from kubernetes.client import ApiClient, ApiException

from trainyard.k8s import InvalidPodSpec, check_pod

SOURCE_ID = "325ad5966d9d0123456789abcdef0123456789abcdef0123456789abcdef0123"
DATA_ID = "f3eecf11db7d0123456789abcdef0123456789abcdef0123456789abcdef0123"
RUN_ID = "manual__2026-11-30T10:00:00.123456+00:00"


def _train_plan(registry: str, gpu: int, defaults: dict | None = None) -> dict:
    """What resolve hands on: a DAG's declared cpu/memory (lstm's 0.5 CPU, 4000Mi) else the run's choice."""
    resources = {"cpu": "1", "memory": "1Gi", **(defaults or {}), "gpu": gpu}
    return {"source": f"mnist:{SOURCE_ID}", "data": f"features:{DATA_ID}", "name": "mnist",
            "image": f"{registry}/mnist:{SOURCE_ID[:12]}", "resources": resources, "timeout": 600,
            "metric": "accuracy_test:max", "to_train": 2, "cached": 0}


def _datum_plan(registry: str) -> dict:
    return {"inputs": [{"name": "rawdata", "repo": "rawdata", "commit": DATA_ID, "glob": "/captions.tsv/*",
                        "join_on": None}],
            "code": f"captioning:{SOURCE_ID}", "code_version": "abc123", "image": f"{registry}/captioning:x",
            "datums": 4, "pending": 4, "skipped": 0, "tasks": 2}


class _TI(SimpleNamespace):
    def xcom_pull(self, task_ids=None, key="return_value", **_):
        return self.xcoms.get((task_ids, key))


def _context(dag, task, plans: dict, map_index: int = -1) -> dict:
    xcoms = {}
    for upstream in dag.tasks:
        if upstream.task_id == "resolve" or upstream.task_id.endswith("_plan"):
            xcoms[(upstream.task_id, "plan")] = plans["train" if upstream.task_id == "resolve" else "datum"]
    ti = _TI(dag_id=dag.dag_id, task_id=task.task_id, run_id=RUN_ID, map_index=map_index, try_number=1,
             xcoms=xcoms)
    params = {k: (v.value if hasattr(v, "value") else v) for k, v in dag.params.items()}
    return {"ti": ti, "task_instance": ti, "run_id": RUN_ID, "dag": dag, "task": task, "params": params,
            "dag_run": SimpleNamespace(conf={}, run_id=RUN_ID), "triggering_asset_events": {},
            "ds": "2026-11-30", "ts": "2026-11-30T10:00:00+00:00", "logical_date": None}


MAPPED_SAMPLES = {
    "combination": {"label": "kernel=poly,degree=3", "hyper": {"kernel": "poly", "degree": 3},
                    "model_id": f"{SOURCE_ID[:12]}_{DATA_ID[:12]}:79b897106fa4"},
    "chunk": {"datums": ["/captions.tsv/0000000000000000", "/captions.tsv/0000000000000001"],
              "label": "/captions.tsv/0000000000000000 .. /captions.tsv/0000000000000001 (2)"},
}


def _pods(dag, plans: dict) -> list[tuple[str, object]]:
    """(task id, V1Pod) for every pod task of the DAG, rendered with a run's context."""
    from airflow.sdk.definitions.mappedoperator import MappedOperator

    pods = []
    for task in dag.tasks:
        map_index = -1
        op = task
        if isinstance(task, MappedOperator):
            expand = task._get_specified_expand_input().value
            op = task.unmap({key: MAPPED_SAMPLES[key] for key in expand})
            op.dag = dag
            map_index = 0
        if not isinstance(op, KubernetesPodOperator):
            continue
        op = copy.copy(op)
        context = _context(dag, op, plans, map_index)
        op.render_template_fields(context)
        pods.append((task.task_id, op.build_pod_request_obj(context)))
    return pods


@pytest.fixture
def dags(cluster, k8s_env, monkeypatch):
    """The project's DAGs parsed for the kubernetes runner, as the dag-processor parses them."""
    from airflow.dag_processing.dagbag import DagBag

    from tests.conftest import REPO

    for key, value in k8s_env.items():
        monkeypatch.setenv(key, value)
    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert not bag.import_errors, bag.import_errors
    return bag.dags


@pytest.mark.parametrize("gpu", [0, 1], ids=["cpu", "gpu"])
def test_every_pod_of_every_dag_is_accepted_by_the_api_server(dags, kube, cluster, gpu):
    seen = {}
    for dag_id in ("train_pipeline", "lstm_pipeline", "caption_pipeline", "predict", "ingest"):
        dag = dags[dag_id]
        defaults = dag.get_task("resolve").default_resources if "resolve" in dag.task_dict else {}
        plans = {"train": _train_plan(cluster.registry, gpu, defaults), "datum": _datum_plan(cluster.registry)}
        for task_id, pod in _pods(dag, plans):
            body = ApiClient().sanitize_for_serialization(pod)
            check_pod(body, what=f"{dag_id}.{task_id}")  # ours accepts it ...
            try:  # ... and so does the API server, with its defaulting, admission and validation
                accepted = kube.create_namespaced_pod("default", body, dry_run="All")
            except ApiException as exc:
                pytest.fail(f"{dag_id}.{task_id}: the API server refused the pod ({exc.status}): {exc.body}")
            seen[f"{dag_id}.{task_id}"] = accepted
    # Every kind of pod was there: build, train (mapped), register, datum steps (mapped), collect.
    assert {"train_pipeline.build", "train_pipeline.train", "train_pipeline.register", "lstm_pipeline.train",
            "caption_pipeline.images", "caption_pipeline.features_build", "caption_pipeline.features",
            "caption_pipeline.consolidate_collect", "predict.predict", "ingest.fetch"} <= set(seen)
    train = seen["train_pipeline.train"]
    base, user = train.spec.containers[0], train.spec.containers[1]
    (prepare,) = train.spec.init_containers
    # The user's code runs in the built image, in a container of its own that holds no store Secret; trainyard's
    # prepare (init) and finish (base) containers hold it and move the inputs and outputs.
    assert user.name == "train" and user.image == f"{cluster.registry}/mnist:{SOURCE_ID[:12]}"
    assert not user.env_from and not any(e.name.startswith("AWS_SECRET") for e in user.env or [])
    assert {e.name: e.value for e in user.env}["TRAINYARD_ISOLATION"] == "pod"
    assert any(m.mount_path == "/pfs" for m in user.volume_mounts)
    for container in (prepare, base):
        assert [e.secret_ref.name for e in container.env_from if e.secret_ref] == ["trainyard-store"]
        assert container.image.startswith(f"{cluster.registry}/trainyard/steps:")
    assert prepare.args[-5:] == ["--phase", "prepare", "--work", "/trainyard/work", "--runtime-dir",
                                 "/trainyard/bin"][-5:]
    assert base.args[-4:] == ["--phase", "finish", "--work", "/trainyard/work"]
    assert train.metadata.labels["trainyard.io/step"] == "train" and train.metadata.labels["map_index"] == "0"
    if gpu:
        assert user.resources.limits["nvidia.com/gpu"] == "1"
        # The server defaults the request of an extended resource to its limit.
        assert user.resources.requests["nvidia.com/gpu"] == "1"
        assert "nvidia.com/gpu" not in (base.resources.limits or {})
        assert train.spec.node_selector == {"nvidia.com/gpu.present": "true"}
        assert [t.key for t in train.spec.tolerations if t.key == "nvidia.com/gpu"] == ["nvidia.com/gpu"]
    else:
        assert "nvidia.com/gpu" not in (user.resources.limits or {})
    build = seen["train_pipeline.build"]
    assert build.spec.init_containers[0].name == "fetch-source"
    assert build.spec.containers[0].security_context.privileged is True
    lstm = seen["lstm_pipeline.train"].spec.containers[1]
    assert lstm.resources.limits["memory"] == "4000Mi"
    assert seen["lstm_pipeline.train"].metadata.labels["trainyard.io/task-id"] == "train"


def _pod(labels=None, requests=None, limits=None) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "trainyard-validation-probe",
                                                            "labels": labels or {"app": "trainyard"}},
            "spec": {"restartPolicy": "Never", "containers": [
                {"name": "base", "image": "python:3.11-slim", "command": ["true"],
                 "resources": {"requests": requests or {"cpu": "100m"}, "limits": limits or {"cpu": "100m"}}}]}}


BAD_PODS = {
    "a label value over 63 characters": (_pod(labels={"trainyard.io/run": "r" * 64}), 422, "over the limit of 63"),
    "a GPU request different from its limit": (
        _pod(requests={"cpu": "1", "nvidia.com/gpu": "1"}, limits={"cpu": "1", "nvidia.com/gpu": "2"}), 422,
        "must equal its limit"),
    "a malformed quantity": (_pod(requests={"memory": "2GB "}, limits={"memory": "2GB "}), 400,
                             "is not a Kubernetes quantity"),
}


@pytest.mark.parametrize("case", list(BAD_PODS))
def test_what_the_api_server_refuses_trainyard_refuses_first(kube, cluster, case):
    body, status, message = BAD_PODS[case]
    with pytest.raises(ApiException) as refused:
        kube.create_namespaced_pod("default", body, dry_run="All")
    assert refused.value.status == status, refused.value.body
    with pytest.raises(InvalidPodSpec, match=message) as ours:
        check_pod(body)
    assert "\n" not in str(ours.value)


def test_a_good_pod_passes_both(kube, cluster):
    body = _pod(labels={"trainyard.io/run": "r" * 63}, requests={"cpu": "500m", "memory": "1Gi", "nvidia.com/gpu": "1"},
                limits={"cpu": "1", "memory": "1Gi", "nvidia.com/gpu": "1"})
    check_pod(body)
    kube.create_namespaced_pod("default", body, dry_run="All")
