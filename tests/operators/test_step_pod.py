"""Rendered pod specs: resources, GPU scheduling, labels, secrets and argv, for both runners' shared pod."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pendulum
import pytest
from airflow.sdk import DAG

from operators import ImageBuildOperator, TrainyardStepOperator
from operators.step import StepConfigError, StepOptionError

HOSTILE = '{"C": 1, "note": "x; rm -rf / $(reboot) `id`"}'


@pytest.fixture
def k8s_env(monkeypatch):
    monkeypatch.setenv("TRAINYARD_RUNNER", "kubernetes")
    monkeypatch.setenv("TRAINYARD_STORE", "s3://models-bucket/trainyard")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "planted-secret-must-not-appear")


def _context(task, run_id="manual__2026-11-22T10:00:00+00:00", map_index=-1):
    ti = SimpleNamespace(dag_id=task.dag_id, task_id=task.task_id, map_index=map_index, try_number=1)
    return {"ti": ti, "run_id": run_id, "dag": task.dag}


def _train_task(**kwargs):
    with DAG("pods", start_date=pendulum.datetime(2026, 1, 1), schedule=None):
        return TrainyardStepOperator(task_id="train", step="train",
                                     arguments=["--source", "mnist:abc", "--params", HOSTILE], **kwargs)


def test_gpu_training_pod(k8s_env):
    task = _train_task(cpu="4", memory="16Gi", gpu=2)
    pod = task.build_pod_request_obj(_context(task, map_index=3), dry_run=True)
    base = pod.spec.containers[0]
    assert base.resources.requests == {"cpu": "4", "memory": "16Gi"}
    assert base.resources.limits == {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "2"}
    assert pod.spec.node_selector == {"nvidia.com/gpu.present": "true"}
    assert [(t.key, t.operator, t.effect) for t in pod.spec.tolerations] == [("nvidia.com/gpu", "Exists", "NoSchedule")]
    labels = pod.metadata.labels
    assert labels["trainyard.io/step"] == "train"
    assert labels["map_index"] == "3"
    assert "manual__2026-11-22T10" in labels["run_id"]
    # the xcom sidecar reads the step's result and must not hold a GPU
    sidecar = next(c for c in pod.spec.containers if c.name == "airflow-xcom-sidecar")
    assert "nvidia.com/gpu" not in ((sidecar.resources.limits if sidecar.resources else None) or {})


def test_conf_values_are_separate_argv_items_never_a_shell_string(k8s_env):
    task = _train_task()
    container = task.build_pod_request_obj(_context(task), dry_run=True).spec.containers[0]
    assert container.command == ["python", "-m", "training_images.train"]
    assert container.args == ["--source", "mnist:abc", "--params", HOSTILE]
    assert not any(c in ("sh", "bash", "/bin/sh", "-c") for c in container.command)


def test_store_credentials_come_from_a_secret_never_plain_env(k8s_env):
    task = _train_task()
    pod = task.build_pod_request_obj(_context(task), dry_run=True)
    container = pod.spec.containers[0]
    values = {e.name: e.value for e in container.env}
    assert values["TRAINYARD_STORE"] == "s3://models-bucket/trainyard"
    assert "AWS_SECRET_ACCESS_KEY" not in values and "AWS_ACCESS_KEY_ID" not in values
    assert "planted-secret-must-not-appear" not in str(pod.to_dict())
    assert [e.secret_ref.name for e in container.env_from if e.secret_ref] == ["trainyard-store"]


def test_cpu_only_pod_has_no_gpu_scheduling(k8s_env):
    task = _train_task(cpu="500m", memory="512Mi")
    pod = task.build_pod_request_obj(_context(task), dry_run=True)
    assert pod.spec.containers[0].resources.limits == {"cpu": "500m", "memory": "512Mi"}
    assert not pod.spec.node_selector and not pod.spec.tolerations


def test_bad_memory_is_rejected_after_templating(k8s_env):
    task = _train_task(memory="2GB")
    with pytest.raises(StepOptionError, match="^step 'train': invalid memory '2GB'.*2Gi"):
        task.build_pod_request_obj(_context(task), dry_run=True)


def test_settings_are_read_when_the_pod_is_built_not_when_the_dag_is_parsed(k8s_env, monkeypatch):
    task = _train_task()
    monkeypatch.setenv("TRAINYARD_NAMESPACE", "team-a")
    monkeypatch.setenv("TRAINYARD_STEP_IMAGE", "registry.local:5000/steps:v2")
    pod = task.build_pod_request_obj(_context(task), dry_run=True)
    assert pod.metadata.namespace == "team-a" and pod.spec.containers[0].image == "registry.local:5000/steps:v2"


def test_kubernetes_runner_with_file_store_is_refused_before_any_pod(monkeypatch):
    monkeypatch.setenv("TRAINYARD_RUNNER", "kubernetes")
    monkeypatch.setenv("TRAINYARD_STORE", "file:///tmp/store")
    task = _train_task()  # DAG factories refuse this when the DAG is parsed (tests/dags/test_dag_integrity.py)
    task.client = api = _RecordingCoreV1Api()
    with pytest.raises(StepConfigError, match="^step 'train': runner 'kubernetes' cannot use the local store"):
        task.execute(_context(task))
    with pytest.raises(StepConfigError, match="cannot use the local store"):
        task.build_pod_request_obj(_context(task), dry_run=True)
    assert api.created == []


def test_build_pod_builds_the_bundle_dockerfile_with_buildah_and_pushes_the_source_tag(k8s_env):
    with DAG("builds", start_date=pendulum.datetime(2026, 1, 1), schedule=None):
        task = ImageBuildOperator(task_id="build", source="mnist:325ad5966d9d",
                                  destination="registry.local:5000/mnist:325ad5966d9d")
    task.render_template_fields({"task": task, "params": {}, "ti": None})
    pod = task.build_pod_request_obj(_context(task), dry_run=True)
    builder = pod.spec.containers[0]
    assert builder.image == "trainyard/builder:latest"
    assert builder.command == ["python3", "-m", "training_images.imagebuild"]
    assert builder.args[:4] == ["--workspace", "/workspace", "--destination", "registry.local:5000/mnist:325ad5966d9d"]
    # buildah needs a privileged container; the builder holds no store credentials, only the registry's.
    assert builder.security_context.privileged is True
    assert not builder.env_from and "AWS_SECRET_ACCESS_KEY" not in str(builder.env)
    fetch = pod.spec.init_containers[0]
    assert fetch.command == ["python", "-m", "training_images.fetch"]
    assert fetch.args[:2] == ["--source", "mnist:325ad5966d9d"]
    assert [e.secret_ref.name for e in fetch.env_from] == ["trainyard-store"]
    volumes = {v.name: v for v in pod.spec.volumes}
    assert volumes["registry-auth"].secret.secret_name == "trainyard-registry"
    assert volumes["registry-auth"].secret.optional is True
    assert volumes["workspace"].empty_dir is not None and volumes["containers"].empty_dir is not None
    assert pod.metadata.labels["trainyard.io/step"] == "build"


def _mapped_train(combination, **kwargs):
    from operators.train import TrainStepOperator

    with DAG("sweep", start_date=pendulum.datetime(2026, 1, 1), schedule=None):
        return TrainStepOperator(task_id="train", source="mnist:325ad5966d9d", data="features:f3eec",
                                 pipeline="train_pipeline", combination=combination, **kwargs)


def test_sweep_train_pod_for_gpu_2_cpu_4_memory_16gi(k8s_env):
    task = _mapped_train({"label": "kernel=poly,degree=3", "hyper": {"kernel": "poly", "degree": 3},
                          "model_id": "325ad5966d9d_f3eecf11db7d:79b897106fa4"},
                         cpu="4", memory="16Gi", gpu="2", timeout="3600")
    pod = task.build_pod_request_obj(_context(task, map_index=7), dry_run=True)
    base, user = pod.spec.containers[0], pod.spec.containers[1]
    # The user's code has the resources and GPUs, in a container without the store Secret; trainyard's finish
    # (base) and prepare (init) containers have the Secret and small requests.
    assert user.name == "train" and not user.env_from
    assert user.resources.requests == {"cpu": "4", "memory": "16Gi"}
    assert user.resources.limits == {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "2"}
    assert "nvidia.com/gpu" not in base.resources.limits and base.env_from[0].secret_ref.name == "trainyard-store"
    assert ("pfs", "/pfs") in [(m.name, m.mount_path) for m in user.volume_mounts]
    assert pod.spec.node_selector == {"nvidia.com/gpu.present": "true"}
    assert [(t.key, t.effect) for t in pod.spec.tolerations] == [("nvidia.com/gpu", "NoSchedule")]
    assert pod.spec.active_deadline_seconds == 3600
    assert task.startup_timeout_seconds >= 600  # time for a GPU node to be autoscaled in
    labels = pod.metadata.labels
    assert (labels["map_index"], labels["trainyard.io/step"]) == ("7", "train")
    assert "manual__2026-11-22T10" in labels["run_id"]
    sidecar = next(c for c in pod.spec.containers if c.name == "airflow-xcom-sidecar")
    assert "nvidia.com/gpu" not in ((sidecar.resources.limits if sidecar.resources else None) or {})
    # kaos bundles read /pfs/data and /pfs/hyper: the pod mounts /pfs and the step materializes inputs there
    assert ("pfs", "/pfs") in [(m.name, m.mount_path) for m in base.volume_mounts]
    assert {e.name: e.value for e in base.env}["TRAINYARD_PFS_ROOT"] == "/pfs"
    assert base.args[base.args.index("--params") + 1] == '{"degree": 3, "kernel": "poly"}'
    assert base.args[base.args.index("--label") + 1] == "kernel=poly,degree=3"


def test_conf_values_in_a_combination_are_never_rendered_as_templates(k8s_env):
    hostile = "{{ conn.trainyard_store.password }}"
    task = _mapped_train({"label": f"note={hostile}", "hyper": {"note": hostile}, "model_id": "a_b:c"})
    context = _context(task)
    task.render_template_fields({**context, "task": task, "params": {}})
    container = task.build_pod_request_obj(_context(task), dry_run=True).spec.containers[0]
    assert container.args[container.args.index("--params") + 1] == json.dumps({"note": hostile})
    assert container.args[container.args.index("--label") + 1] == f"note={hostile}"


def test_a_bad_timeout_is_rejected_after_templating(k8s_env):
    task = _train_task(timeout="ten minutes")
    with pytest.raises(StepOptionError, match="^step 'train': invalid timeout 'ten minutes'; give whole seconds"):
        task.build_pod_request_obj(_context(task), dry_run=True)


class _RecordingCoreV1Api:
    """The Kubernetes API calls that make and delete a pod, recorded instead of sent."""

    def __init__(self) -> None:
        self.deleted: list[tuple[str, str]] = []
        self.created: list = []

    def create_namespaced_pod(self, body, namespace, **kwargs):
        self.created.append(body)

    def delete_namespaced_pod(self, name, namespace, body=None, **kwargs):
        self.deleted.append((namespace, name))


@pytest.mark.parametrize("kind", ["train", "build"])
def test_pods_are_deleted_when_they_finish_and_when_the_task_is_killed(k8s_env, kind):
    if kind == "build":
        with DAG("builds", start_date=pendulum.datetime(2026, 1, 1), schedule=None):
            task = ImageBuildOperator(task_id="build", source="mnist:325ad", destination="registry.local/mnist:325ad")
    else:
        task = _train_task()
    assert (task.on_finish_action.value, task.on_kill_action.value) == ("delete_pod", "delete_pod")
    task.client = api = _RecordingCoreV1Api()
    task.pod = task.build_pod_request_obj(_context(task), dry_run=True)
    where = (task.pod.metadata.namespace, task.pod.metadata.name)
    # `trainyard kill` fails the run; the task's SIGTERM handler calls on_kill, which deletes the running pod
    task.on_kill()
    assert api.deleted == [where]
    # a pod that finished (or failed) is deleted by cleanup, per on_finish_action
    assert task.process_pod_deletion(task.pod) is True
    assert api.deleted == [where, where]
