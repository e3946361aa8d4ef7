"""TrainyardStepOperator: one step contract, two runners (a real Kubernetes pod, or the same pod as a subprocess)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import deque
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.providers.cncf.kubernetes.secret import Secret
from airflow.sdk.exceptions import AirflowException
from kubernetes.client import models as k8s

from operators.hooks import StoreHook
from trainyard import config, contract
from trainyard.errors import ConfigError, ResourceError
from trainyard.resources import Resources

GPU_RESOURCE = "nvidia.com/gpu"


class StepFailed(AirflowException):
    """A step's container exited with a non-zero status."""


class StepConfigError(AirflowException):
    """A step was declared with settings that cannot work; raised at DAG parse time."""


class GpuUnavailable(AirflowException):
    """More GPUs were requested than this machine has, and CPU fallback is not allowed."""


def local_gpu_count() -> int:
    """GPUs visible through nvidia-smi; 0 when the tool or a driver is missing."""
    if not shutil.which("nvidia-smi"):
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


class TrainyardStepOperator(KubernetesPodOperator):
    """
    Run `python -m training_images.<step>` with the step contract's env.

    On the `kubernetes` runner this is the real KubernetesPodOperator. On the `local` runner the same pod is
    rendered (dry run, no cluster) and its container command and env run as a subprocess with streamed logs.

    :param step: name of the entrypoint under training_images/
    :param arguments: argv items (templated); each stays one argv item, never a shell string
    :param cpu: cores (templated), e.g. "0.5" or "500m"
    :param memory: Kubernetes quantity (templated), e.g. "2Gi"
    :param gpu: number of GPUs (templated)
    """

    template_fields: Sequence[str] = (*KubernetesPodOperator.template_fields, "cpu", "memory", "gpu")

    def __init__(self, *, step: str, arguments: Sequence[str] = (), cpu: str | None = None,
                 memory: str | None = None, gpu: int | str = 0, runner: str | None = None,
                 store_uri: str | None = None, labels: dict[str, str] | None = None,
                 env_vars: dict[str, str] | None = None, **kwargs) -> None:
        settings = config.load(runner=runner, store=store_uri)
        try:
            settings.validate()
        except ConfigError as exc:
            raise StepConfigError(f"step {kwargs.get('task_id', step)!r}: {exc}") from None
        self.settings = settings
        self.step = step
        self.runner = settings.runner
        self.store_uri = settings.store
        self.cpu = cpu or settings.default_cpu
        self.memory = memory or settings.default_memory
        self.gpu = gpu
        env = {
            contract.STORE_ENV: settings.store,
            "TRAINYARD_VENV_CACHE": settings.venv_cache,
            "TRAINYARD_RUN_ID": "{{ run_id }}",
            "TRAINYARD_DAG_ID": "{{ dag.dag_id }}",
            "TRAINYARD_TASK_ID": "{{ task.task_id }}",
            "TRAINYARD_MAP_INDEX": "{{ ti.map_index }}",
            **(env_vars or {}),
        }
        endpoint = os.environ.get("AWS_ENDPOINT_URL")
        if settings.store.startswith("s3://") and endpoint:
            env.setdefault("AWS_ENDPOINT_URL", endpoint)
        # Store credentials reach pods only through a Kubernetes Secret (env_from), never as plain values.
        secrets = [Secret("env", None, settings.store_secret)] if settings.store.startswith("s3://") else []
        kwargs.setdefault("image", settings.step_image)
        kwargs.setdefault("cmds", ["python", "-m", f"training_images.{step}"])
        kwargs.setdefault("namespace", settings.namespace)
        kwargs.setdefault("name", f"trainyard-{step}")
        kwargs.setdefault("do_xcom_push", True)
        kwargs.setdefault("get_logs", True)
        kwargs.setdefault("on_finish_action", "delete_pod")
        # GPU nodes often come from an autoscaler; give them time to appear before calling the pod failed.
        kwargs.setdefault("startup_timeout_seconds", 900)
        super().__init__(arguments=list(arguments), labels={"trainyard.io/step": step, **(labels or {})},
                         env_vars=env, secrets=[*secrets, *kwargs.pop("secrets", [])], **kwargs)
        self._base_node_selector = dict(self.node_selector or {})
        self._base_tolerations = list(self.tolerations or [])

    def resource_request(self) -> Resources:
        """Validate the (rendered) cpu/memory/gpu request against the configured maxima."""
        try:
            return Resources.parse(self.cpu, self.memory, self.gpu, max_cpu=self.settings.max_cpu,
                                   max_memory=self.settings.max_memory, max_gpu=self.settings.max_gpu)
        except ResourceError as exc:
            raise AirflowException(f"step {self.task_id!r}: {exc}") from None

    def build_pod_request_obj(self, context=None, *, dry_run: bool = False) -> k8s.V1Pod:
        res = self.resource_request()
        limits = {"cpu": res.cpu, "memory": res.memory}
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
        return super().build_pod_request_obj(context, dry_run=dry_run)

    @cached_property
    def store_hook(self) -> StoreHook:
        return StoreHook(store_uri=self.store_uri)

    def execute(self, context):
        self.resource_request()
        if self.runner == "kubernetes":
            return super().execute(context)
        return self._execute_locally(context)

    def _local_env(self, container: k8s.V1Container, result_path: Path, gpus: int) -> dict[str, str]:
        env = dict(os.environ)
        for var in container.env or []:
            if var.value is not None:
                env[var.name] = var.value
        env.update(self.store_hook.credentials)
        env[contract.RESULT_PATH_ENV] = str(result_path)
        env["PYTHONUNBUFFERED"] = "1"
        if gpus:
            available = local_gpu_count()
            if available < gpus:
                if not self.settings.flag("allow_cpu_fallback"):
                    raise GpuUnavailable(
                        f"step {self.task_id!r} asks for {gpus} GPU(s) but this machine has {available}; "
                        "lower --gpu, run on the kubernetes runner, or set TRAINYARD_ALLOW_CPU_FALLBACK=true"
                    )
                self.log.warning("no GPU available for %s; falling back to CPU as allowed", self.task_id)
                env["CUDA_VISIBLE_DEVICES"] = ""
            else:
                env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(gpus))
        else:
            env.setdefault("CUDA_VISIBLE_DEVICES", "")
        return env

    def _execute_locally(self, context):
        pod = self.build_pod_request_obj(context, dry_run=True)
        container = pod.spec.containers[0]
        argv = [*container.command, *(container.args or [])]
        if argv[0] == "python":
            argv[0] = sys.executable
        with tempfile.TemporaryDirectory(prefix=f"trainyard-{self.step}-") as tmp:
            result_path = Path(tmp) / "return.json"
            gpus = int((container.resources.limits or {}).get(GPU_RESOURCE, 0))
            env = self._local_env(container, result_path, gpus)
            self.log.info("running step %s locally: %s", self.step, " ".join(argv[1:4]))
            tail: deque[str] = deque(maxlen=30)
            with subprocess.Popen(argv, cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, bufsize=1) as proc:
                for line in proc.stdout:
                    self.log.info("%s", line.rstrip())
                    tail.append(line.rstrip())
            if proc.returncode != 0:
                raise StepFailed(f"step {self.task_id!r} exited with code {proc.returncode}: "
                                 f"{tail[-1] if tail else 'no output'}")
            if not self.do_xcom_push:
                return None
            if not result_path.exists():
                raise StepFailed(f"step {self.task_id!r} wrote no result to ${contract.RESULT_PATH_ENV}")
            return json.loads(result_path.read_text())
