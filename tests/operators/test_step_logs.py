"""
Step logs on the kubernetes runner: each line the provider streams from a pod is kept in the store while it runs.

There is no cluster here, so the Kubernetes API is faked at the client boundary only (the CoreV1Api calls that
KubernetesPodOperator and its PodManager make, behind the provider's hook protocol). Everything above it is the
real code path: the operator's execute, PodManager.fetch_container_logs and its progress callbacks, cleanup,
on_kill, and a real store.
"""

from __future__ import annotations

import datetime
import threading
import time

import pendulum
import pytest
from airflow.sdk import DAG
from airflow.sdk.exceptions import AirflowException
from kubernetes.client import ApiClient
from kubernetes.client import models as k8s

from operators import ImageBuildOperator, TrainyardStepOperator
from operators.step_logs import KILLED_LINE, StepKilled, StoreLogWriter
from trainyard.store import keys, open_store

RUN_ID = "manual__2026-11-22T10:00:00+00:00"
PLANTED_SECRET = "planted-secret-must-not-appear"


class FakeCoreV1Api:
    """
    The Kubernetes API for one pod, as far as KubernetesPodOperator uses it: create, find, read, follow the base
    container's log, patch, list events, delete. The container runs while its log stream has lines to give;
    `hold` pauses the stream before line `hold_before` (the pod is then still running).
    """

    def __init__(self, lines: list[str], exit_code: int = 0, hold_before: int | None = None) -> None:
        self.api_client = ApiClient()
        self.lines, self.exit_code, self.hold_before = lines, exit_code, hold_before
        self.hold = threading.Event()
        self.created: dict | None = None
        self.finished = False
        self.deleted: list[str] = []
        self.killed = False

    def create_namespaced_pod(self, body, namespace, **kwargs):
        self.created = body
        return self._pod()

    def list_namespaced_pod(self, namespace, label_selector=None, **kwargs):
        return k8s.V1PodList(items=[self._pod()] if self.created else [])

    def read_namespaced_pod(self, name, namespace, **kwargs):
        return self._pod()

    def read_namespaced_pod_log(self, name, namespace, container, follow=False, _preload_content=True, **kwargs):
        assert container == "base" and not _preload_content
        return _LogResponse(self)

    def patch_namespaced_pod(self, name, namespace, body, **kwargs):
        return self._pod()

    def list_namespaced_event(self, namespace, **kwargs):
        return k8s.V1EventList(items=[], metadata=k8s.V1ListMeta())

    def delete_namespaced_pod(self, name, namespace, body=None, **kwargs):
        self.deleted.append(name)
        if not self.finished:  # deleting a running pod stops its container (SIGTERM: exit 143)
            self.killed, self.exit_code = True, 143
            self.hold.set()

    def _pod(self) -> k8s.V1Pod:
        meta = self.created["metadata"]
        if self.finished:
            state = k8s.V1ContainerState(terminated=k8s.V1ContainerStateTerminated(
                exit_code=self.exit_code, finished_at=datetime.datetime.now(datetime.UTC),
                reason="Completed" if self.exit_code == 0 else "Error"))
            phase = "Succeeded" if self.exit_code == 0 else "Failed"
        else:
            state = k8s.V1ContainerState(running=k8s.V1ContainerStateRunning(
                started_at=datetime.datetime.now(datetime.UTC)))
            phase = "Running"
        status = k8s.V1ContainerStatus(name="base", image="step", image_id="", ready=not self.finished,
                                       restart_count=0, state=state)
        return k8s.V1Pod(
            metadata=k8s.V1ObjectMeta(name=meta["name"], namespace=meta["namespace"], labels=meta["labels"]),
            spec=k8s.V1PodSpec(containers=[k8s.V1Container(name=c["name"]) for c in self.created["spec"]["containers"]]),
            status=k8s.V1PodStatus(phase=phase, container_statuses=[status]))


class _LogResponse:
    """The HTTP response of a followed log read (`_preload_content=False`): kubelet's timestamped lines."""

    def __init__(self, api: FakeCoreV1Api) -> None:
        self.api = api

    def stream(self, amt=None, decode_content=True):
        start = pendulum.datetime(2026, 11, 22, 10)
        for n, line in enumerate(self.api.lines):
            if n == self.api.hold_before:
                assert self.api.hold.wait(30), "the test never let the pod go on"
            if self.api.killed:
                break
            yield f"{start.add(seconds=n).to_rfc3339_string()} {line}\n".encode()
        self.api.finished = True

    def release_conn(self) -> None:
        pass

    def close(self) -> None:
        pass


class FakeKubeHook:
    """The provider's PodOperatorHookProtocol: hands KubernetesPodOperator its (fake) CoreV1Api."""

    def __init__(self, api: FakeCoreV1Api) -> None:
        self.core_v1_client = api
        self.is_in_cluster = False

    def get_pod(self, name, namespace):
        return self.core_v1_client.read_namespaced_pod(name, namespace)

    def get_namespace(self):
        return None

    def get_xcom_sidecar_container_image(self):
        return None

    def get_xcom_sidecar_container_resources(self):
        return None

    def get_xcom_sidecar_container_security_context(self):
        return None


class FakeTaskInstance:
    """What the task SDK puts in the context as `ti`, for the fields KubernetesPodOperator reads and writes."""

    def __init__(self, task, map_index: int = -1, try_number: int = 1) -> None:
        self.dag_id, self.task_id, self.run_id = task.dag_id, task.task_id, RUN_ID
        self.map_index, self.try_number = map_index, try_number
        self.xcom: dict[str, object] = {}

    def xcom_push(self, key, value, **kwargs) -> None:
        self.xcom[key] = value


@pytest.fixture
def k8s_env(monkeypatch):
    monkeypatch.setenv("TRAINYARD_RUNNER", "kubernetes")
    monkeypatch.setenv("TRAINYARD_STORE", "s3://models-bucket/trainyard")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", PLANTED_SECRET)


@pytest.fixture
def store_dir(tmp_path):
    return tmp_path / "store"


def _on_cluster(task, api: FakeCoreV1Api, store_dir):
    """Point a built operator at the fake cluster and at a file:// store.

    The kubernetes runner refuses a file:// store (pods cannot reach it), so the operator reads its settings with an
    s3:// store and is pointed at a local one afterwards.
    """
    task.hook = FakeKubeHook(api)
    assert task.settings.on_kubernetes  # read now, under k8s_env's s3:// store
    task.store_uri = f"file://{store_dir}"
    return task


def _train(api, store_dir, **kwargs):
    with DAG("pods", start_date=pendulum.datetime(2026, 1, 1), schedule=None):
        task = TrainyardStepOperator(task_id="train", step="train", arguments=["--source", "mnist:abc"],
                                     do_xcom_push=False, **kwargs)
    return _on_cluster(task, api, store_dir)


def _start(task, map_index=-1):
    """Run the operator's execute on a thread, as the task process would; the outcome lands in the dict."""
    ti = FakeTaskInstance(task, map_index=map_index)
    context = {"ti": ti, "run_id": RUN_ID, "dag": task.dag, "task": task, "params": {}}
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["result"] = task.execute(context)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def _read(store_dir, key: str) -> str:
    store = open_store(f"file://{store_dir}")
    return store.backend.read(key).decode() if store.backend.exists(key) else ""


def _wait_for(predicate, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_pod_log_lines_are_in_the_store_while_the_pod_runs(k8s_env, store_dir):
    api = FakeCoreV1Api(["epoch 1 loss=0.5", "epoch 2 loss=0.4", "done"], hold_before=2)
    task = _train(api, store_dir)
    key = keys.log("pods", RUN_ID, "train", 3, 1)
    thread, outcome = _start(task, map_index=3)

    # PodManager hands a line on when the next one starts; with the pod paused on its third line, the first is
    # complete and must reach the store within the writer's flush interval, while the pod still runs.
    assert _wait_for(lambda: "epoch 1 loss=0.5\n" in _read(store_dir, key)), _read(store_dir, key)
    assert thread.is_alive() and not api.finished
    api.hold.set()
    thread.join(30)
    assert not thread.is_alive() and "error" not in outcome, outcome
    assert _read(store_dir, key) == "epoch 1 loss=0.5\nepoch 2 loss=0.4\ndone\n"
    # on_finish_action delete_pod: the finished pod is deleted, and its log is still in the store
    assert api.deleted == [api.created["metadata"]["name"]]


def test_a_failing_pod_leaves_its_log_in_the_store(k8s_env, store_dir):
    api = FakeCoreV1Api(["loading data", "Traceback (most recent call last):", "ValueError: bad kernel 'nonsense'"],
                        exit_code=1)
    thread, outcome = _start(_train(api, store_dir))
    thread.join(30)
    assert isinstance(outcome.get("error"), AirflowException) and "returned a failure" in str(outcome["error"])
    log = _read(store_dir, keys.log("pods", RUN_ID, "train", -1, 1))
    assert log.endswith("Traceback (most recent call last):\nValueError: bad kernel 'nonsense'\n")
    assert api.deleted == [api.created["metadata"]["name"]]


def test_the_image_build_logs_under_the_build_step(k8s_env, store_dir):
    api = FakeCoreV1Api(["STEP 1/7: FROM python:3.11-slim",
                         "built and pushed registry.local:5000/mnist:325ad5966d9d"])
    with DAG("train_pipeline", start_date=pendulum.datetime(2026, 1, 1), schedule=None):
        # The fake API serves the base container's log only; the fetch init container's lines reach the same log
        # on a real cluster (tests/k8s/test_bring_your_own.py).
        task = ImageBuildOperator(task_id="build", source="mnist:325ad5966d9d",
                                  destination="registry.local:5000/mnist:325ad5966d9d", init_container_logs=False)
    thread, outcome = _start(_on_cluster(task, api, store_dir))
    thread.join(30)
    assert "error" not in outcome, outcome
    log = _read(store_dir, keys.log("train_pipeline", RUN_ID, "build", -1, 1))
    assert log == ("STEP 1/7: FROM python:3.11-slim\n"
                   "built and pushed registry.local:5000/mnist:325ad5966d9d\n")
    assert api.deleted == [api.created["metadata"]["name"]]


def test_store_credentials_printed_by_a_step_are_redacted(k8s_env, store_dir, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAPLANTEDKEYID0001")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "planted-session-token-0123456789")
    api = FakeCoreV1Api([f"AWS_SECRET_ACCESS_KEY={PLANTED_SECRET}", "AWS_ACCESS_KEY_ID=AKIAPLANTEDKEYID0001",
                         "token planted-session-token-0123456789 in the middle", "AWS_DEFAULT_REGION=us-east-1"])
    thread, outcome = _start(_train(api, store_dir))
    thread.join(30)
    assert "error" not in outcome, outcome
    log = _read(store_dir, keys.log("pods", RUN_ID, "train", -1, 1))
    assert log == ("AWS_SECRET_ACCESS_KEY=***\nAWS_ACCESS_KEY_ID=***\ntoken *** in the middle\n"
                   "AWS_DEFAULT_REGION=us-east-1\n")
    assert not any(s in log for s in (PLANTED_SECRET, "AKIAPLANTEDKEYID0001", "planted-session-token"))


def test_the_credentials_of_an_s3_store_are_redacted_in_its_own_logs(s3_bucket, monkeypatch):
    # A real S3 API (moto): the values redacted are the ones the store hook really signs with.
    monkeypatch.setenv("TRAINYARD_RUNNER", "kubernetes")
    monkeypatch.setenv("TRAINYARD_STORE", f"s3://{s3_bucket}/store")
    api = FakeCoreV1Api(["env: AWS_SECRET_ACCESS_KEY=testing-secret-key AWS_ACCESS_KEY_ID=testing-key-id"])
    with DAG("pods", start_date=pendulum.datetime(2026, 1, 1), schedule=None):
        task = TrainyardStepOperator(task_id="train", step="train", do_xcom_push=False)
    task.hook = FakeKubeHook(api)
    thread, outcome = _start(task)
    thread.join(30)
    assert "error" not in outcome, outcome
    store = open_store(f"s3://{s3_bucket}/store")
    log = store.backend.read(keys.log("pods", RUN_ID, "train", -1, 1)).decode()
    assert log == "env: AWS_SECRET_ACCESS_KEY=*** AWS_ACCESS_KEY_ID=***\n"


def test_on_kill_deletes_the_running_pod_and_the_log_says_it_was_killed(k8s_env, store_dir):
    api = FakeCoreV1Api(["epoch 1", "epoch 2", "epoch 3"], hold_before=2)
    task = _train(api, store_dir)
    assert (task.on_finish_action.value, task.on_kill_action.value) == ("delete_pod", "delete_pod")
    key = keys.log("pods", RUN_ID, "train", -1, 1)
    thread, outcome = _start(task)
    assert _wait_for(lambda: "epoch 1\n" in _read(store_dir, key))
    task.on_kill()  # what the task's SIGTERM handler calls when the run is marked failed (`trainyard kill`)
    assert api.deleted == [api.created["metadata"]["name"]]
    thread.join(30)
    assert not thread.is_alive()
    assert isinstance(outcome.get("error"), StepKilled) and KILLED_LINE in str(outcome["error"])
    log = _read(store_dir, key)
    assert log.startswith("epoch 1\n") and KILLED_LINE + "\n" in log and "epoch 3" not in log
    # cleanup leaves a killed pod to on_kill: it is deleted once, not again by on_finish_action
    assert len(api.deleted) == 1


def test_writer_flushes_a_quiet_step_on_its_own_and_stops_when_closed(store_dir):
    store = open_store(f"file://{store_dir}")
    writer = StoreLogWriter(store, "logs/x/r/t/-1/1.log", interval=0.2, secrets=["short", "s3cr3t-value-42"])
    writer.write("first\n")
    writer.write("the key is s3cr3t-value-42, short is kept\n")
    # no further write: the background flush still brings both lines to the store
    assert _wait_for(lambda: store.backend.exists("logs/x/r/t/-1/1.log")
                     and store.backend.read("logs/x/r/t/-1/1.log").count(b"\n") == 2, 3)
    writer.close("bye")
    assert store.backend.read("logs/x/r/t/-1/1.log") == b"first\nthe key is ***, short is kept\nbye\n"
    assert not writer._flusher.is_alive()
