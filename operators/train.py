"""The train task: one mapped task per hyperparameter combination, in the built image or the cached venv."""

from __future__ import annotations

import json
from collections.abc import Sequence

from kubernetes.client import models as k8s

from operators.step import PodNotScheduled, TrainyardStepOperator, env_list, user_code_pod
from trainyard import config, runs
from trainyard.records import TrainFailure

# kaos bundles hard-code /pfs/data/<repo> and /pfs/hyper; in pods the train step materializes inputs there.
PFS_ROOT = "/pfs"


class TrainStepOperator(TrainyardStepOperator):
    """
    Train one combination of the sweep the resolve step planned.

    :param source: source commit as repo:id (templated)
    :param data: data commit as repo:id (templated)
    :param combination: one planned combination: {"label", "hyper", "model_id"}; usually mapped from the resolve
        step's `to_train` XCom. Its values come from conf, so they are passed as literal argv, never rendered.
    On Kubernetes the pod has an emptyDir at /pfs, where the step materializes kaos bundles' inputs.
    """

    def __init__(self, *, source: str, data: str, combination: dict, pipeline: str = "{{ dag.dag_id }}",
                 **kwargs) -> None:
        self.combination = combination
        arguments: Sequence[str] = ["--source", source, "--data", data, "--pipeline", pipeline]
        literal = ["--params", json.dumps(combination.get("hyper", {}), sort_keys=True),
                   "--label", str(combination.get("label", ""))]
        if combination.get("model_id"):
            literal += ["--expect-model-id", combination["model_id"]]
        super().__init__(step="train", arguments=arguments, literal_arguments=literal, **kwargs)

    def build_pod_request_obj(self, context=None, *, dry_run: bool = False):
        if self.on_kubernetes and not any(getattr(v, "name", None) == "pfs" for v in self.volumes):
            self.volumes = [*self.volumes, k8s.V1Volume(name="pfs", empty_dir=k8s.V1EmptyDirVolumeSource())]
            self.volume_mounts = [*self.volume_mounts, k8s.V1VolumeMount(name="pfs", mount_path=PFS_ROOT)]
            self.env_vars = [k8s.V1EnvVar(name="TRAINYARD_PFS_ROOT", value=PFS_ROOT), *env_list(self.env_vars)]
        pod = super().build_pod_request_obj(context, dry_run=dry_run)
        return self.checked(user_code_pod(pod, self.settings.step_image, "training_images.train")) \
            if self.on_kubernetes else pod

    def execute(self, context):
        try:
            return super().execute(context)
        except PodNotScheduled as exc:
            # The pod never ran, so the train step could not record why; register reports this combination
            # with the scheduler's reason instead of "did not run".
            mid = self.combination.get("model_id")
            ti = context["ti"]
            if mid:
                runs.save_failure(self.store_hook.get_conn(), ti.dag_id, ti.run_id,
                                  TrainFailure(model_id=mid, label=self.combination.get("label", ""), error=str(exc)))
            raise


def train_step(*, task_id: str, source: str, data: str, image: str, combinations, **partial_kwargs):
    """Map the train step over the planned combinations; on Kubernetes it runs in the image the build pushed."""
    settings = config.load()
    if settings.on_kubernetes:
        # The image was built from the bundle's Dockerfile with the trainyard runtime layered on (fetch step).
        partial_kwargs.setdefault("image", image)
        partial_kwargs.setdefault("cmds", ["python3", "-m", "training_images.train"])
    partial_kwargs.setdefault("max_active_tis_per_dagrun", settings.parallelism)
    return TrainStepOperator.partial(
        task_id=task_id, source=source, data=data,
        map_index_template="{{ task.combination['label'] }}", **partial_kwargs,
    ).expand(combination=combinations)
