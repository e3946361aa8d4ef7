"""Build operators: Kaniko on Kubernetes (push <registry>/<name>:<src-hash>), a cached virtualenv locally."""

from __future__ import annotations

from collections.abc import Sequence

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.sdk.exceptions import AirflowSkipException
from kubernetes.client import models as k8s

from operators.step import TrainyardStepOperator
from trainyard import config, contract

WORKSPACE = "/workspace"


class KanikoBuildOperator(KubernetesPodOperator):
    """
    Build the source bundle's Dockerfile with Kaniko and push it.

    An init container (the steps image) materializes the source commit into an emptyDir, then Kaniko builds it.
    Registry credentials come from the `trainyard-registry` Secret (a docker config.json), never from params.

    :param source: source commit as repo:id (templated)
    :param destination: image tag to push (templated), usually `<registry>/<name>:<src-hash>`
    :param skip_reason: when it renders non-empty, the build is skipped with that reason (templated)
    """

    template_fields: Sequence[str] = (*KubernetesPodOperator.template_fields, "source", "destination", "skip_reason")
    # KubernetesPodOperator does not template init containers; these are rendered in render_template_fields.
    init_container_template_fields: Sequence[str] = ("args",)

    def __init__(self, *, source: str, destination: str, registry_secret: str = "trainyard-registry",
                 skip_reason: str = "", **kwargs) -> None:
        settings = config.load().validate()
        self.source = source
        self.destination = destination
        self.skip_reason = skip_reason
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
        super().__init__(
            image=settings.kaniko_image,
            cmds=["/kaniko/executor"],
            arguments=[f"--context=dir://{WORKSPACE}", f"--dockerfile={WORKSPACE}/Dockerfile",
                       f"--destination={destination}", "--cache=true", "--skip-unused-stages"],
            init_containers=[fetch],
            volumes=[k8s.V1Volume(name="workspace", empty_dir=k8s.V1EmptyDirVolumeSource()),
                     k8s.V1Volume(name="docker-config", secret=k8s.V1SecretVolumeSource(
                         secret_name=registry_secret, items=[k8s.V1KeyToPath(key=".dockerconfigjson",
                                                                             path="config.json")]))],
            volume_mounts=[workspace, docker_config],
            labels={"trainyard.io/step": "build"},
            do_xcom_push=False,
            **kwargs,
        )

    def execute(self, context):
        if str(self.skip_reason or "").strip():
            raise AirflowSkipException(str(self.skip_reason).strip())
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
