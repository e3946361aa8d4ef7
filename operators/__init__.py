"""Airflow operators and runners for trainyard steps; DAG files import from here."""

from operators.build import ImageBuildOperator, build_step
from operators.hooks import StoreHook
from operators.resolve import ResolveInputsOperator
from operators.step import StepFailed, TrainyardStepOperator

__all__ = ["ImageBuildOperator", "ResolveInputsOperator", "StepFailed", "StoreHook", "TrainyardStepOperator", "build_step"]
