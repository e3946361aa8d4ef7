"""Build operators: a buildah build pod on Kubernetes (push <registry>/<name>:<src-hash>), a cached venv locally."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

import httpx
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from kubernetes.client import models as k8s

from operators.step import OPTION_FIELDS, PodStepMixin, StepOptionsMixin, TrainyardStepOperator
from operators.step_logs import StoreLogsMixin
from trainyard import config, contract
from trainyard.k8s import InvalidPodSpec

WORKSPACE = "/workspace"
REGISTRY_AUTH_DIR = "/run/trainyard/registry"
MANIFEST_TYPES = ", ".join([
    "application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json"])


def image_exists(reference: str, *, insecure: bool, timeout: float = 10.0) -> bool | None:
    """Whether a registry has `reference` (registry/name:tag), asked anonymously over its HTTP API.

    None when the registry cannot say (it wants credentials, or does not answer): the build pod checks again
    with the registry Secret's credentials before it builds anything.
    """
    registry, _, rest = reference.partition("/")
    name, _, tag = rest.rpartition(":")
    if not registry or not name or not tag:
        return None
    scheme = "http" if insecure else "https"
    try:
        resp = httpx.head(f"{scheme}://{registry}/v2/{name}/manifests/{tag}", headers={"Accept": MANIFEST_TYPES},
                          timeout=timeout, verify=not insecure)
    except httpx.HTTPError:
        return None
    if resp.status_code == 200:
        return True
    return False if resp.status_code == 404 else None


class ImageBuildOperator(PodStepMixin, StepOptionsMixin, StoreLogsMixin, KubernetesPodOperator):
    """
    Build the source bundle's Dockerfile with buildah in a pod, and push it; skip when the tag already exists.

    An init container (the steps image, with the store Secret) writes the source commit into an emptyDir as the
    build context, with the trainyard step runtime layered onto its Dockerfile; the builder container (buildah
    and skopeo, no store credentials) builds it and pushes `destination`. Before any pod is made the registry is
    asked whether `destination` exists; a source commit already built is not built again. Registry credentials
    come from the `trainyard-registry` Secret (a docker config.json, optional for a registry without auth),
    never from params. The build's output is kept in the store under the `build` task while it runs.

    :param source: source commit as repo:id (templated)
    :param destination: image tag to push (templated), usually `<registry>/<name>:<src-hash>`
    Resources, cache (false: build even when the tag exists), timeout and skip_reason are the step options every
    trainyard pod step takes (see StepOptionsMixin).
    """

    template_fields: Sequence[str] = (*KubernetesPodOperator.template_fields, "source", "destination",
                                      *OPTION_FIELDS)

    def __init__(self, *, source: str, destination: str, registry_secret: str = "trainyard-registry",
                 cpu: str | None = None, memory: str | None = None, cpu_limit: str | None = None,
                 memory_limit: str | None = None, cache: bool | str | None = None, timeout: int | str | None = None,
                 skip_reason: str = "", labels: dict[str, str] | None = None, runner: str | None = None,
                 store_uri: str | None = None, **kwargs) -> None:
        self._init_options(cpu=cpu, memory=memory, cpu_limit=cpu_limit, memory_limit=memory_limit, timeout=timeout,
                           skip_reason=skip_reason, cache=cache)
        self.runner = runner
        self.store_uri = store_uri
        self.source = source
        self.destination = destination
        self.registry_secret = registry_secret
        kwargs.setdefault("name", "trainyard-build")
        # What the fetch step says (which Dockerfile, which context) belongs in the build's log too.
        kwargs.setdefault("init_container_logs", True)
        super().__init__(
            cmds=["python3", "-m", "training_images.imagebuild"],
            labels={"trainyard.io/step": "build", **(labels or {})},
            do_xcom_push=False,
            **self.pod_defaults(kwargs),
        )
        self.remember_scheduling()

    def pod_parts(self) -> dict:
        """The pod's image, init container, volumes and security context, from the (lazily read) settings."""
        settings = self.settings
        workspace = k8s.V1VolumeMount(name="workspace", mount_path=WORKSPACE)
        # buildah's storage on an emptyDir: overlay mounts cannot be made on the container's own overlay root.
        storage = k8s.V1VolumeMount(name="containers", mount_path="/var/lib/containers")
        auth = k8s.V1VolumeMount(name="registry-auth", mount_path=REGISTRY_AUTH_DIR, read_only=True)
        fetch = k8s.V1Container(
            name="fetch-source",
            image=settings.step_image,
            command=["python", "-m", "training_images.fetch"],
            args=["--source", self.source, "--dest", WORKSPACE, "--step-image", settings.step_image,
                  "--default-base-image", settings.default_base_image],
            env=[k8s.V1EnvVar(name=contract.STORE_ENV, value=settings.store)],
            env_from=[k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=settings.store_secret))],
            volume_mounts=[workspace],
        )
        volumes = [
            k8s.V1Volume(name="workspace", empty_dir=k8s.V1EmptyDirVolumeSource()),
            k8s.V1Volume(name="containers", empty_dir=k8s.V1EmptyDirVolumeSource()),
            # Optional: a registry without auth (the local cluster's) needs no Secret.
            k8s.V1Volume(name="registry-auth", secret=k8s.V1SecretVolumeSource(
                secret_name=self.registry_secret, optional=True,
                items=[k8s.V1KeyToPath(key=".dockerconfigjson", path="config.json")])),
        ]
        arguments = ["--workspace", WORKSPACE, "--destination", self.destination,
                     "--cache", "true" if self.use_cache() else "false"]
        if settings.registry_insecure:
            arguments.append("--insecure")
        if settings.docker_hub_mirror:
            arguments += ["--docker-hub-mirror", settings.docker_hub_mirror]
        return {"image": settings.builder_image, "init": fetch, "volumes": volumes,
                "mounts": [workspace, storage, auth], "arguments": arguments,
                # buildah mounts overlay filesystems and runs RUN steps in a chroot: that takes a privileged pod.
                "security": k8s.V1SecurityContext(privileged=True),
                "env": [k8s.V1EnvVar(name="TRAINYARD_REGISTRY_AUTH", value=f"{REGISTRY_AUTH_DIR}/config.json")]}

    def build_pod_request_obj(self, context=None, *, dry_run: bool = False) -> k8s.V1Pod:
        parts = self.pod_parts()
        self.apply_pod_settings()
        self.image = parts["image"]
        self.init_containers = [parts["init"]]
        self.volumes = parts["volumes"]
        self.volume_mounts = parts["mounts"]
        self.arguments = parts["arguments"]
        self.container_security_context = parts["security"]
        self.apply_options()
        pod = super().build_pod_request_obj(context, dry_run=dry_run)
        pod.spec.containers[0].env = [*(pod.spec.containers[0].env or []), *parts["env"]]
        return self.checked(pod)

    @cached_property
    def _tag_exists(self) -> bool | None:
        return image_exists(self.destination, insecure=self.settings.registry_insecure)

    def execute(self, context):
        self.check_options()
        if self.use_cache() and self._tag_exists:
            self.log.info("image %s exists: build skipped", self.destination)
            writer = self.store_log_writer(context)
            if writer is not None:
                writer.close(f"image {self.destination} exists: build skipped")
            return None
        return super().execute(context)


def build_step(*, source: str, image: str, **kwargs):
    """The build task for the configured runner: a buildah pod on Kubernetes, a cached virtualenv locally."""
    if config.load().on_kubernetes:
        return ImageBuildOperator(source=source, destination=image, **kwargs)
    return TrainyardStepOperator(step="build", arguments=["--source", source], **kwargs)


__all__ = ["ImageBuildOperator", "InvalidPodSpec", "build_step", "image_exists"]
