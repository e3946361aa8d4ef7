"""TrainyardStepOperator: one step contract, two runners (a real Kubernetes pod, or the same pod as a subprocess)."""

from __future__ import annotations

import ctypes
import functools
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

from airflow.providers.cncf.kubernetes.backcompat.backwards_compat_converters import convert_env_vars
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.providers.cncf.kubernetes.secret import Secret
from airflow.providers.cncf.kubernetes.utils.pod_manager import PodLaunchTimeoutException
from airflow.providers.cncf.kubernetes.utils.xcom_sidecar import PodDefaults
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException, AirflowTaskTimeout
from kubernetes.client import ApiClient
from kubernetes.client import models as k8s

from operators.gpus import gpu_lease, local_gpus
from operators.step_logs import KILLED_LINE, StepKilled, StoreLogsMixin, StoreLogWriter
from trainyard import config, contract
from trainyard.errors import ConfigError, ResourceError
from trainyard.k8s import InvalidPodSpec, check_pod
from trainyard.resources import Resources, cpu_cores, memory_bytes
from trainyard.store import keys

GPU_RESOURCE = "nvidia.com/gpu"
# How long a stopped step gets to exit after SIGTERM before SIGKILL; below the 5 s the Airflow supervisor gives the
# task itself, so the task can still record the failure and close the step's store log.
KILL_GRACE_SECONDS = 3.0
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class StepFailed(AirflowException):
    """A step's container exited with a non-zero status."""


class StepConfigError(AirflowException):
    """A step's settings cannot work (say, the kubernetes runner with a local store); raised before it runs. DAG
    factories refuse the same settings when the DAG is parsed."""


class StepOptionError(AirflowException):
    """A step option (resources, limits, timeout, cache) is invalid once templated; the step does not run."""


class PodRefused(AirflowException):
    """A pod would be refused by the Kubernetes API server (a label, a quantity, a GPU request); nothing was made."""


class PodNotScheduled(AirflowFailException):
    """No node took a step's pod within `[trainyard] schedule_timeout`; the message carries the scheduler's reason.

    It fails the task without retries: another try would wait as long for the same reason (give a cluster whose
    nodes scale up a longer schedule_timeout instead).
    """


class GpuUnavailable(AirflowException):
    """More GPUs were requested than this machine has, and CPU fallback is not allowed."""


class StepTimedOut(AirflowException):
    """A step ran past its --timeout and was stopped."""


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _await_group_exit(pgid: int, grace: float) -> None:
    """Wait up to `grace` seconds for every process of the group to exit, then SIGKILL whatever is left."""
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    _signal_group(pgid, signal.SIGKILL)


def die_with_parent(parent: int) -> None:
    """In a child (a step before exec, or a forked task process): SIGKILL it when the thread that started it dies,
    so a killed `trainyard deploy` (SIGKILL, no handler runs) takes its training with it instead of leaving it to
    run unsupervised; and leave at once if `parent` is already gone (it died before prctl took effect)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(137)


def local_gpu_count() -> int:
    """GPUs visible through nvidia-smi; 0 when the tool or a driver is missing."""
    return len(local_gpus())


# The run's ids in every step's env (templated), for labels and the step's own records.
RUN_ENV = {"TRAINYARD_RUN_ID": "{{ run_id }}", "TRAINYARD_DAG_ID": "{{ dag.dag_id }}",
           "TRAINYARD_TASK_ID": "{{ task.task_id }}", "TRAINYARD_MAP_INDEX": "{{ ti.map_index }}"}


def env_list(env: dict[str, str] | list[k8s.V1EnvVar] | None) -> list[k8s.V1EnvVar]:
    """A pod operator's env_vars as V1EnvVar objects: a dict before templating, a list after it."""
    return convert_env_vars(env) if isinstance(env, dict) else list(env or [])


def _env_vars(values: dict[str, str]) -> dict[str, k8s.V1EnvVar]:
    return {name: k8s.V1EnvVar(name=name, value=value) for name, value in values.items()}


OPTION_FIELDS: tuple[str, ...] = ("cpu", "memory", "cpu_limit", "memory_limit", "gpu", "timeout", "skip_reason",
                                   "cache")


class StepOptionsMixin:
    """
    Per-step options every trainyard pod step accepts, with defaults from `[trainyard]` settings.

    Values may be templates (run params, XCom), so they are validated again after templating, when the pod is
    built, and applied to the pod there. Settings are read then too (`settings`), never when the DAG is parsed.
    """

    task_id: str
    runner: str | None = None
    store_uri: str | None = None

    def _init_options(self, *, cpu=None, memory=None, cpu_limit=None, memory_limit=None, gpu: int | str = 0,
                      timeout=None, skip_reason: str = "", cache: bool | str | None = None) -> None:
        self.cpu = cpu
        self.memory = memory
        self.cpu_limit = cpu_limit
        self.memory_limit = memory_limit
        self.gpu = gpu
        self.timeout = timeout
        self.skip_reason = skip_reason
        self.cache = cache

    @cached_property
    def settings(self) -> config.Settings:
        """`[trainyard]` settings (the step's own runner and store arguments first), read when first used: when the
        step runs or its pod is built, never when the DAG is parsed. A runner and store that cannot work together
        are refused here."""
        try:
            return config.load(runner=self.runner, store=self.store_uri).checked()
        except ConfigError as exc:
            raise StepConfigError(f"step {self.task_id!r}: {exc}") from None

    @property
    def on_kubernetes(self) -> bool:
        """Whether this step runs as a Kubernetes pod, else as a local subprocess (config.Settings.on_kubernetes)."""
        return self.settings.on_kubernetes

    def resource_request(self) -> Resources:
        """Validate the (rendered) cpu/memory/gpu request against the configured maxima (and their defaults)."""
        return self._resources(self.cpu or self.settings.default_cpu, self.memory or self.settings.default_memory)

    def resource_limit(self) -> Resources:
        """The limits: the request unless declared; a limit below the request is a clear error."""
        request = self.resource_request()
        limit = self._resources(self.cpu_limit or request.cpu, self.memory_limit or request.memory)
        if cpu_cores(limit.cpu) < cpu_cores(request.cpu) or memory_bytes(limit.memory) < memory_bytes(request.memory):
            raise StepOptionError(
                f"step {self.task_id!r}: the request (cpu {request.cpu}, memory {request.memory}) is above its limit "
                f"(cpu {limit.cpu}, memory {limit.memory}); raise the step's limit or ask for less")
        return limit

    def _resources(self, cpu, memory) -> Resources:
        try:
            return Resources.parse(cpu, memory, self.gpu, max_cpu=self.settings.max_cpu,
                                   max_memory=self.settings.max_memory, max_gpu=self.settings.max_gpu)
        except ResourceError as exc:
            raise StepOptionError(f"step {self.task_id!r}: {exc}") from None

    def use_cache(self) -> bool:
        value = str(self.settings.default_cache if self.cache is None else self.cache).strip().lower()
        if value not in ("true", "false", "1", "0", "yes", "no"):
            raise StepOptionError(f"step {self.task_id!r}: cache must be true or false, got {self.cache!r}")
        return value in ("true", "1", "yes")

    def timeout_seconds(self) -> int | None:
        text = str(self.timeout if self.timeout is not None else "").strip()
        if text in ("", "None", "0"):
            return None
        if not text.isdigit():
            raise StepOptionError(f"step {self.task_id!r}: invalid timeout {self.timeout!r}; give whole seconds")
        return int(text)

    def check_options(self) -> None:
        """Validate every option after templating; raise AirflowSkipException if the step should not run."""
        if str(self.skip_reason or "").strip():
            raise AirflowSkipException(str(self.skip_reason).strip())
        self.resource_limit()
        self.timeout_seconds()
        self.use_cache()

    def apply_options(self) -> None:
        """Set resources, GPU scheduling and the deadline on this operator before its pod is built."""
        res, limit = self.resource_request(), self.resource_limit()
        self.active_deadline_seconds = self.timeout_seconds()
        limits = {"cpu": limit.cpu, "memory": limit.memory}
        if res.gpu:
            limits[GPU_RESOURCE] = str(res.gpu)
        self.container_resources = k8s.V1ResourceRequirements(
            requests={"cpu": res.cpu, "memory": res.memory}, limits=limits)
        self.node_selector = dict(self._base_node_selector)
        self.tolerations = list(self._base_tolerations)
        if res.gpu:
            key, _, value = self.settings.gpu_node_selector.partition("=")
            self.node_selector[key] = value
            self.tolerations.append(k8s.V1Toleration(key=self.settings.gpu_toleration, operator="Exists",
                                                     effect="NoSchedule"))

    def remember_scheduling(self) -> None:
        """Keep the declared selector and tolerations; GPU scheduling is added per pod on top of them."""
        self._base_node_selector = dict(self.node_selector or {})
        self._base_tolerations = list(self.tolerations or [])


def waiting_reason(pod: k8s.V1Pod) -> str | None:
    """Why a Pending pod is not running yet, as the scheduler or kubelet says it; None when nothing is wrong."""
    status = pod.status
    if status is None or status.phase not in (None, "Pending"):
        return None
    for condition in status.conditions or []:
        if condition.type == "PodScheduled" and condition.status == "False" and condition.message:
            return condition.message.strip()
    for container in [*(status.init_container_statuses or []), *(status.container_statuses or [])]:
        waiting = container.state.waiting if container.state else None
        if waiting and waiting.reason not in (None, "ContainerCreating", "PodInitializing"):
            return f"{waiting.reason}: {waiting.message or ''}".strip(": ")
    return None


class PendingWatcher(threading.Thread):
    """Poll a Pending pod and report each new reason it waits (unschedulable, image pull errors) as it changes."""

    def __init__(self, read_pod, report, interval: float = 2.0) -> None:
        super().__init__(name="trainyard-pending-watcher", daemon=True)
        self.read_pod, self.report, self.interval = read_pod, report, interval
        self.reason: str | None = None
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                reason = waiting_reason(self.read_pod())
            except Exception:  # noqa: BLE001 - a failed poll is retried; the launch wait itself decides the outcome
                reason = self.reason
            if reason and reason != self.reason:
                self.reason = reason
                self.report(reason)
            self._stop_event.wait(self.interval)

    def stop(self) -> str | None:
        self._stop_event.set()
        if self.is_alive() and self is not threading.current_thread():
            self.join(timeout=self.interval + 5)
        return self.reason


class PodStepMixin:
    """
    What every trainyard pod has on Kubernetes, set in one place: the node's network when the store is on the
    node's loopback (`[trainyard] pod_host_network`), no service-account token (steps never call the API), the
    configured XCom sidecar image, Kubernetes' own validation before the pod is sent, and a Pending pod that
    says why it waits: the scheduler's reason goes to the task log, the step's store log and the run's waiting
    record (`trainyard list`), and the step fails with it after `[trainyard] schedule_timeout` seconds.
    """

    settings: config.Settings
    task_id: str
    _store_log: StoreLogWriter | None = None
    _launch_error: AirflowException | None = None
    _declared_pod_args: dict = {}

    def pod_defaults(self, kwargs: dict) -> dict:
        """KubernetesPodOperator arguments every trainyard pod has, under whatever the DAG declared itself. Those
        whose default is a setting are applied when the pod is built (apply_pod_settings), not here."""
        self._declared_pod_args = {arg: kwargs.pop(arg) for arg in ("hostnetwork", "schedule_timeout_seconds")
                                   if kwargs.get(arg) is not None}
        kwargs.setdefault("on_finish_action", "delete_pod")
        kwargs.setdefault("get_logs", True)
        kwargs.setdefault("automount_service_account_token", False)
        # The provider polls a starting pod every 5 s; a step pod often starts in about one.
        kwargs.setdefault("startup_check_interval_seconds", 1)
        # Once scheduled, an image pull may take long (a GPU image is several GB).
        kwargs.setdefault("startup_timeout_seconds", 900)
        return kwargs

    def apply_pod_settings(self) -> None:
        """The pod arguments whose default is a `[trainyard]` setting (namespace, pod_host_network,
        schedule_timeout), read when the pod is built; what the DAG declared wins."""
        declared = self._declared_pod_args
        self.namespace = self.namespace or self.settings.namespace
        self.hostnetwork = declared.get("hostnetwork", self.settings.pod_host_network)
        self.schedule_timeout_seconds = declared.get("schedule_timeout_seconds", self.settings.schedule_timeout)

    def checked(self, pod: k8s.V1Pod) -> k8s.V1Pod:
        """Set the sidecar image and refuse, in one line, anything the API server would refuse."""
        if self.settings.xcom_sidecar_image:
            for container in pod.spec.containers:
                if container.name == PodDefaults.SIDECAR_CONTAINER_NAME:
                    container.image = self.settings.xcom_sidecar_image
        try:
            check_pod(ApiClient().sanitize_for_serialization(pod), what=f"step {self.task_id!r}")
        except InvalidPodSpec as exc:
            raise PodRefused(str(exc)) from None
        return pod

    def _waiting_key(self) -> str | None:
        ti = getattr(self, "_ti_for_waiting", None)
        if ti is None:
            return None
        return keys.run_waiting(ti.dag_id, ti.run_id, ti.task_id, getattr(ti, "map_index", -1))

    def _report_waiting(self, reason: str) -> None:
        self.log.warning("pod of %s is waiting: %s", self.task_id, reason)
        if self._store_log is not None:
            self._store_log.write(f"waiting: {reason}\n")
        key = self._waiting_key()
        if key:
            try:
                self.store_hook.get_conn().put_json(key, {"task_id": self.task_id, "reason": reason,
                                                          "since": time.time()})
            except Exception:  # noqa: BLE001 - the note is for `trainyard list`; the wait goes on without it
                self.log.warning("could not record the waiting reason in the store", exc_info=True)

    def await_pod_start(self, pod: k8s.V1Pod) -> None:
        watcher = PendingWatcher(lambda: self.pod_manager.read_pod(pod), self._report_waiting)
        watcher.start()
        try:
            super().await_pod_start(pod)
        except PodLaunchTimeoutException as exc:
            reason = watcher.stop() or str(exc)
            message = (f"step {self.task_id!r}: no node took its pod within {self.schedule_timeout_seconds} s: "
                       f"{reason}")
            if self._store_log is not None:
                self._store_log.write(f"failed: {message}\n")
            self._launch_error = PodNotScheduled(message)
            raise self._launch_error from None
        finally:
            watcher.stop()
            key = self._waiting_key()
            if key and watcher.reason:
                try:  # the pod runs (or failed): it waits no more
                    self.store_hook.get_conn().put_json(key, {"task_id": self.task_id, "reason": "",
                                                              "since": time.time()})
                except Exception:  # noqa: BLE001 - a stale note is overwritten by the next one
                    pass

    def cleanup(self, *args, **kwargs):
        # KubernetesPodOperator's cleanup (in a finally) reports a pod that never ran as "returned a failure",
        # which would hide the scheduler's reason this step failed with.
        try:
            return super().cleanup(*args, **kwargs)
        except AirflowException:
            if self._launch_error is not None:
                raise self._launch_error from None
            raise

    def execute(self, context):
        self._ti_for_waiting = context.get("ti") if context else None
        self._launch_error = None
        return super().execute(context)


WORK_DIR = "/trainyard/work"
RUNTIME_DIR = "/trainyard/bin"
USER_CONTAINER = "train"
# The user's container runs the `run` phase under a static busybox shell that `prepare` copied in, so that even an
# image that cannot start the step's module (or a run phase killed midway) leaves an exit code and `done` for
# `finish` to report.
# A shell as PID 1 ignores SIGTERM, so it passes a pod deletion's SIGTERM on to the run phase itself.
_RUN_WRAPPER = ('trap \'kill -TERM $child 2>/dev/null\' TERM; "$@" & child=$!; wait $child; code=$?; [ -e {work}/done ] || {{ echo "the step\'s run phase ($1 $2 $3) ended with exit code '
                '$code before it finished; see the {user} container\'s log" >> {work}/train.log; '
                'echo "$code 0" > {work}/exit; {bin}/busybox touch {work}/done; }}; '
                # `exited` tells finish this container is ending, so the pod is not deleted while it still runs.
                '{bin}/busybox touch {work}/exited; exit 0')


def user_code_pod(pod: k8s.V1Pod, step_image: str, module: str) -> k8s.V1Pod:
    """A step pod that runs user code, in three containers so the user's never holds the store's Secret:
    `prepare` (an init container: steps image, Secret) fetches the inputs into shared volumes; `train` (the built
    image, no Secret, the step's resources and GPUs) runs the user's code; `finish` (the base container: steps
    image, Secret) waits for it, then uploads and records what it wrote and returns the step's XCom. The step's
    module runs the same phases in one process on the local runner (`--phase all`)."""
    base = pod.spec.containers[0]
    mounts = [k8s.V1VolumeMount(name="work", mount_path=WORK_DIR),
              k8s.V1VolumeMount(name="runtime", mount_path=RUNTIME_DIR)]
    pfs = [m for m in base.volume_mounts or [] if m.name == "pfs"]
    small = k8s.V1ResourceRequirements(requests={"cpu": "100m", "memory": "256Mi"},
                                       limits={"cpu": "1", "memory": "1Gi"})
    steps_cmd = ["python", "-m", module]
    prepare = k8s.V1Container(name="prepare", image=step_image, command=steps_cmd,
                              args=[*base.args, "--phase", "prepare", "--work", WORK_DIR, "--runtime-dir", RUNTIME_DIR],
                              env=base.env, env_from=base.env_from, volume_mounts=[*pfs, *mounts], resources=small)
    user_env = [v for v in base.env or [] if not v.name.startswith("AWS_") and v.name != "TRAINYARD_ISOLATION"]
    wrapper = _RUN_WRAPPER.format(work=WORK_DIR, bin=RUNTIME_DIR, user=USER_CONTAINER)
    user = k8s.V1Container(
        name=USER_CONTAINER, image=base.image,
        command=[f"{RUNTIME_DIR}/busybox", "sh", "-c", wrapper, "sh", *base.command, *base.args, "--phase", "run",
                 "--work", WORK_DIR],
        env=[*user_env, k8s.V1EnvVar(name="TRAINYARD_ISOLATION", value="pod")],
        resources=base.resources, volume_mounts=[*pfs, *mounts])
    base.image, base.command, base.resources = step_image, steps_cmd, small
    base.args = [*base.args, "--phase", "finish", "--work", WORK_DIR]
    base.volume_mounts = [*(base.volume_mounts or []), mounts[0]]
    pod.spec.init_containers = [*(pod.spec.init_containers or []), prepare]
    pod.spec.containers = [base, user, *pod.spec.containers[1:]]
    pod.spec.volumes = [*(pod.spec.volumes or []),
                        *(k8s.V1Volume(name=m.name, empty_dir=k8s.V1EmptyDirVolumeSource()) for m in mounts)]
    return pod


class TrainyardStepOperator(PodStepMixin, StepOptionsMixin, StoreLogsMixin, KubernetesPodOperator):
    """
    Run `python -m training_images.<step>` with the step contract's env.

    On the `kubernetes` runner this is the real KubernetesPodOperator. On the `local` runner the same pod is
    rendered (dry run, no cluster) and its container command and env run as a subprocess with streamed logs.
    Either way each try's output is kept in the store while it runs (StoreLogsMixin), and `on_kill` stops the
    step: it deletes the pod, or stops the subprocess's whole process group.

    :param step: name of the entrypoint under training_images/
    :param arguments: argv items (templated); each stays one argv item, never a shell string
    :param cpu: cores requested (templated), e.g. "0.5" or "500m"; default `[trainyard] default_cpu`
    :param memory: memory requested (templated), a Kubernetes quantity such as "2Gi"; default `default_memory`
    :param cpu_limit: cores limit (templated); default the request
    :param memory_limit: memory limit (templated); default the request
    :param gpu: number of GPUs (templated), set as the `nvidia.com/gpu` limit
    :param cache: whether the step may reuse earlier results (templated; the build reuses its environment, the
        planner reuses trained models); default `[trainyard] default_cache`
    :param timeout: seconds the step may run (templated; empty for none): the pod's active_deadline_seconds on
        Kubernetes, a kill of the process locally
    :param skip_reason: when it renders non-empty, the step is skipped with that reason (templated)
    :param literal_arguments: argv items appended after templating, for values that come from conf or XCom and so
        must never be rendered as Jinja
    """

    template_fields: Sequence[str] = (*KubernetesPodOperator.template_fields, *OPTION_FIELDS)
    # Local runner: the step's process while it runs, and whether on_kill asked to stop it. Plain attributes, not
    # an Event: operators get deep-copied, and on_kill may run in a signal handler.
    _proc: subprocess.Popen | None = None
    _kill_requested: bool = False

    def __init__(self, *, step: str, arguments: Sequence[str] = (), cpu: str | None = None,
                 memory: str | None = None, cpu_limit: str | None = None, memory_limit: str | None = None,
                 gpu: int | str = 0, cache: bool | str | None = None, timeout: int | str | None = None,
                 skip_reason: str = "", literal_arguments: Sequence[str] = (), runner: str | None = None,
                 store_uri: str | None = None, labels: dict[str, str] | None = None,
                 env_vars: dict[str, str] | None = None, **kwargs) -> None:
        self._init_options(cpu=cpu, memory=memory, cpu_limit=cpu_limit, memory_limit=memory_limit, gpu=gpu,
                           timeout=timeout, skip_reason=skip_reason, cache=cache)
        self.step = step
        self.runner = runner
        self.store_uri = store_uri
        self.literal_arguments = list(literal_arguments)
        self._declared_secrets = list(kwargs.pop("secrets", []))
        kwargs.setdefault("cmds", ["python", "-m", f"training_images.{step}"])
        kwargs.setdefault("name", f"trainyard-{step}")
        kwargs.setdefault("do_xcom_push", True)
        super().__init__(arguments=list(arguments), labels={"trainyard.io/step": step, **(labels or {})},
                         env_vars={**RUN_ENV, **(env_vars or {})}, **self.pod_defaults(kwargs))
        self.remember_scheduling()

    def _pod_env(self) -> list[k8s.V1EnvVar]:
        """The step contract's env: the store and settings, then the run's ids and what the DAG declared (both
        templated, so already rendered here); a declared name wins. Building it again gives the same list."""
        settings = self.settings
        rest = {var.name: var for var in env_list(self.env_vars)}
        env = {**_env_vars({contract.STORE_ENV: settings.store, "TRAINYARD_VENV_CACHE": settings.venv_cache}),
               **{name: rest.pop(name) for name in RUN_ENV if name in rest}, **_env_vars(settings.step_env()), **rest}
        endpoint = os.environ.get("AWS_ENDPOINT_URL")
        if settings.store.startswith("s3://") and endpoint:
            env.setdefault("AWS_ENDPOINT_URL", k8s.V1EnvVar(name="AWS_ENDPOINT_URL", value=endpoint))
        return list(env.values())

    def build_pod_request_obj(self, context=None, *, dry_run: bool = False) -> k8s.V1Pod:
        settings = self.settings
        self.apply_pod_settings()
        self.apply_options()
        self.image = self.image or settings.step_image
        self.env_vars = self._pod_env()
        # Store credentials reach pods only through a Kubernetes Secret (env_from), never as plain values.
        store_secret = [Secret("env", None, settings.store_secret)] if settings.store.startswith("s3://") else []
        self.secrets = [*store_secret, *self._declared_secrets]
        pod = super().build_pod_request_obj(context, dry_run=dry_run)
        container = pod.spec.containers[0]
        # Set after templating: `cache` may itself be a template (a run param).
        container.env = [*(container.env or []),
                         k8s.V1EnvVar(name="TRAINYARD_CACHE", value="true" if self.use_cache() else "false")]
        if self.literal_arguments:
            container.args = [*(container.args or []), *self.literal_arguments]
        return self.checked(pod)

    def execute(self, context):
        self.check_options()
        if self.on_kubernetes:
            return super().execute(context)
        return self._execute_locally(context)

    def _local_env(self, container: k8s.V1Container, result_path: Path) -> dict[str, str]:
        env = dict(os.environ)
        for var in container.env or []:
            if var.value is not None:
                env[var.name] = var.value
        env.update(self.store_hook.credentials)
        env[contract.RESULT_PATH_ENV] = str(result_path)
        env["PYTHONUNBUFFERED"] = "1"
        env["CUDA_VISIBLE_DEVICES"] = ""
        return env

    def _local_gpus(self, wanted: int) -> tuple[int, list[str]]:
        """How many GPUs to lease from which; a request above what the machine has is refused or falls back."""
        if not wanted:
            return 0, []
        available = local_gpus()
        if len(available) >= wanted:
            return wanted, available
        if not self.settings.allow_cpu_fallback:
            raise GpuUnavailable(
                f"step {self.task_id!r} asks for {wanted} GPU(s) but this machine has {len(available)}; "
                "lower --gpu, run on the kubernetes runner, or set TRAINYARD_ALLOW_CPU_FALLBACK=true"
            )
        self.log.warning("%s asks for %s GPU(s), this machine has %s; falling back to CPU as allowed",
                         self.task_id, wanted, len(available))
        return 0, []

    def _execute_locally(self, context):
        pod = self.build_pod_request_obj(context, dry_run=True)
        container = pod.spec.containers[0]
        argv = [*container.command, *(container.args or [])]
        if argv[0] == "python":
            argv[0] = sys.executable
        wanted, available = self._local_gpus(int((container.resources.limits or {}).get(GPU_RESOURCE, 0)))
        with tempfile.TemporaryDirectory(prefix=f"trainyard-{self.step}-") as tmp, \
                gpu_lease(wanted, lock_dir=self.settings.gpu_lock_dir, available=available) as gpus:
            result_path = Path(tmp) / "return.json"
            env = self._local_env(container, result_path)
            env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
            if gpus:
                self.log.info("GPUs leased for %s: CUDA_VISIBLE_DEVICES=%s", self.task_id, env["CUDA_VISIBLE_DEVICES"])
            self.log.info("running step %s locally: %s", self.step, " ".join(argv[1:4]))
            code, tail, timed_out = self._run(argv, tmp, env, self.timeout_seconds(), self.store_log_writer(context))
            if timed_out:
                raise StepTimedOut(f"step {self.task_id!r} ran past its timeout of {timed_out} s and was stopped")
            if code != 0:
                raise StepFailed(f"step {self.task_id!r} exited with code {code}: {tail[-1] if tail else 'no output'}")
            if not self.do_xcom_push:
                return None
            if not result_path.exists():
                raise StepFailed(f"step {self.task_id!r} wrote no result to ${contract.RESULT_PATH_ENV}")
            return json.loads(result_path.read_text())

    def on_kill(self) -> None:
        if not self.on_kubernetes:
            self._kill_requested = True
            proc = self._proc
            if proc is not None:
                self.log.info("stopping step %s (process group %s): the task was killed", self.task_id, proc.pid)
                self._terminate(proc)
        # On the kubernetes runner KubernetesPodOperator deletes the pod; StoreLogsMixin records the kill.
        super().on_kill()

    @staticmethod
    def _terminate(proc: subprocess.Popen) -> None:
        """SIGTERM the step's process group now and SIGKILL it after a grace, without blocking the caller."""
        # The step runs in its own session (start_new_session=True): signals to the task never reach it, so the
        # whole group is signalled here. This may run in the task's SIGTERM handler: it must return at once.
        _signal_group(proc.pid, signal.SIGTERM)
        timer = threading.Timer(KILL_GRACE_SECONDS, _signal_group, (proc.pid, signal.SIGKILL))
        timer.daemon = True
        timer.start()

    def _run(self, argv: list[str], cwd: str, env: dict[str, str], timeout: int | None,
             keep: StoreLogWriter | None = None):
        """
        Stream the process's output into the task log (and the store); stop it and its children at the timeout.

        When the task is killed (on_kill) the step's process group is stopped and StepKilled is raised; the store
        log then ends with a line saying so.
        """
        tail: deque[str] = deque(maxlen=30)
        final: str | None = None
        expired = threading.Event()
        try:
            if self._kill_requested:
                final = KILLED_LINE
                raise StepKilled(f"step {self.task_id!r} {KILLED_LINE} before it started")
            if timeout:
                # The step enforces its deadline itself too (training_images.usercode), where it runs.
                env = {**env, "TRAINYARD_DEADLINE": str(time.time() + timeout)}
            with subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, bufsize=1, start_new_session=True,
                                  preexec_fn=functools.partial(die_with_parent, os.getpid())) as proc:
                self._proc = proc

                def expire() -> None:
                    expired.set()
                    self._terminate(proc)

                timer = threading.Timer(timeout, expire) if timeout else None
                if timer:
                    timer.start()
                if self._kill_requested:  # on_kill came while the process was being started
                    self._terminate(proc)
                try:
                    for line in proc.stdout:
                        self.log.info("%s", line.rstrip())
                        tail.append(line.rstrip())
                        if keep:
                            keep.write(line)
                except AirflowTaskTimeout:
                    final = "stopped: the task ran past its execution_timeout"
                    self._terminate(proc)
                    raise
                except BaseException:
                    # Leaving early (a store error, an interrupt): the step must not outlive its task.
                    self._terminate(proc)
                    raise
                finally:
                    if timer:
                        timer.cancel()
            # The step's own process has exited; its children may still be running, e.g. ignoring SIGTERM.
            if self._kill_requested or expired.is_set():
                _await_group_exit(proc.pid, KILL_GRACE_SECONDS)
            if self._kill_requested:
                final = KILLED_LINE
                raise StepKilled(f"step {self.task_id!r} {KILLED_LINE}: its process group was stopped")
            if expired.is_set():
                final = f"stopped: the step ran past its timeout of {timeout} s"
        finally:
            self._proc = None
            if keep:
                keep.close(final)
        return proc.returncode, list(tail), timeout if expired.is_set() else None
