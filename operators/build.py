"""Build operators: Kaniko on Kubernetes (push <registry>/<name>:<src-hash>), a cached virtualenv locally."""

from __future__ import annotations

from collections.abc import Sequence

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from kubernetes.client import models as k8s

from operators.step import OPTION_FIELDS, StepOptionsMixin, TrainyardStepOperator
from operators.step_logs import StoreLogsMixin
from trainyard import config, contract

WORKSPACE = "/workspace"


class KanikoBuildOperator(StepOptionsMixin, StoreLogsMixin, KubernetesPodOperator):
    """
    Build the source bundle's Dockerfile with Kaniko and push it.

    An init container (the steps image) materializes the source commit into an emptyDir, then Kaniko builds it.
    Registry credentials come from the `trainyard-registry` Secret (a docker config.json), never from params.
    Kaniko's output is kept in the store under the `build` task while it runs (StoreLogsMixin), like every step's.

    :param source: source commit as repo:id (templated)
    :param destination: image tag to push (templated), usually `<registry>/<name>:<src-hash>`
    Resources, cache (Kaniko's layer cache), timeout and skip_reason are the step options every trainyard pod step
    takes (see StepOptionsMixin).
    """

    template_fields: Sequence[str] = (*KubernetesPodOperator.template_fields, "source", "destination",
                                      *OPTION_FIELDS)
    # KubernetesPodOperator does not template init containers; these are rendered in render_template_fields.
    init_container_template_fields: Sequence[str] = ("args",)

    def __init__(self, *, source: str, destination: str, registry_secret: str = "trainyard-registry",
                 cpu: str | None = None, memory: str | None = None, cpu_limit: str | None = None,
                 memory_limit: str | None = None, cache: bool | str | None = None, timeout: int | str | None = None,
                 skip_reason: str = "", labels: dict[str, str] | None = None, **kwargs) -> None:
        settings = config.load().validate()
        self._init_options(settings, cpu=cpu, memory=memory, cpu_limit=cpu_limit, memory_limit=memory_limit,
                           timeout=timeout, skip_reason=skip_reason, cache=cache)
        self.source = source
        self.destination = destination
        self.store_uri = settings.store
        workspace = k8s.V1VolumeMount(name="workspace", mount_path=WORKSPACE)
        docker_config = k8s.V1VolumeMount(name="docker-config", mount_path="/kaniko/.docker", read_only=True)
        fetch = k8s.V1Container(
            name="fetch-source",
            image=settings.step_image,
            command=["python", "-m", "training_images.fetch"],
            args=["--source", source, "--dest", WORKSPACE, "--step-image", settings.step_image],
            env=[k8s.V1EnvVar(name=contract.STORE_ENV, value=settings.store)],
            env_from=[k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=settings.store_secret))],
            volume_mounts=[workspace],
        )
        kwargs.setdefault("name", "trainyard-build")
        kwargs.setdefault("namespace", settings.namespace)
        kwargs.setdefault("on_finish_action", "delete_pod")
        kwargs.setdefault("get_logs", True)
        kwargs.setdefault("retries", int(settings.default_retries))
        super().__init__(
            image=settings.kaniko_image,
            cmds=["/kaniko/executor"],
            arguments=[f"--context=dir://{WORKSPACE}", f"--dockerfile={WORKSPACE}/Dockerfile",
                       f"--destination={destination}", "--skip-unused-stages"],
            init_containers=[fetch],
            volumes=[k8s.V1Volume(name="workspace", empty_dir=k8s.V1EmptyDirVolumeSource()),
                     k8s.V1Volume(name="docker-config", secret=k8s.V1SecretVolumeSource(
                         secret_name=registry_secret, items=[k8s.V1KeyToPath(key=".dockerconfigjson",
                                                                             path="config.json")]))],
            volume_mounts=[workspace, docker_config],
            labels={"trainyard.io/step": "build", **(labels or {})},
            do_xcom_push=False,
            **kwargs,
        )
        self.remember_scheduling()

    def build_pod_request_obj(self, context=None, *, dry_run: bool = False) -> k8s.V1Pod:
        self.apply_options()
        pod = super().build_pod_request_obj(context, dry_run=dry_run)
        # After templating, because `cache` may be a run param.
        pod.spec.containers[0].args = [*pod.spec.containers[0].args, f"--cache={str(self.use_cache()).lower()}"]
        return pod

    def execute(self, context):
        self.check_options()
        return super().execute(context)

    def render_template_fields(self, context, jinja_env=None) -> None:
        super().render_template_fields(context, jinja_env)
        for init in self.init_containers:
            for field in self.init_container_template_fields:
                setattr(init, field, self.render_template(getattr(init, field), context, jinja_env))


def build_step(*, source: str, image: str, **kwargs):
    """The build task for the configured runner: Kaniko on Kubernetes, a cached virtualenv locally."""
    if config.load().runner == "kubernetes":
        return KanikoBuildOperator(source=source, destination=image, **kwargs)
    return TrainyardStepOperator(step="build", arguments=["--source", source], **kwargs)


__all__ = ["KanikoBuildOperator", "build_step"]
