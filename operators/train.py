"""The train task for the configured runner: the built user image on Kubernetes, the cached venv locally."""

from __future__ import annotations

from operators.step import TrainyardStepOperator
from trainyard import config


def train_step(*, source: str, data: str, image: str, hyperparams: str, **kwargs) -> TrainyardStepOperator:
    """A train step whose conf-derived values are separate argv items; on Kubernetes it runs in the built image."""
    arguments = ["--source", source, "--data", data, "--params", hyperparams]
    if config.load().runner == "kubernetes":
        # The image was built from the bundle's Dockerfile with the trainyard runtime layered on (fetch step).
        kwargs.setdefault("image", image)
        kwargs.setdefault("cmds", ["python3", "-m", "training_images.train"])
    return TrainyardStepOperator(step="train", arguments=arguments, **kwargs)
