"""Airflow operators and runners for trainyard steps; DAG files import from here."""

from operators.build import KanikoBuildOperator, build_step
from operators.hooks import StoreHook
from operators.resolve import ResolveInputsOperator
from operators.step import StepFailed, TrainyardStepOperator

__all__ = ["KanikoBuildOperator", "ResolveInputsOperator", "StepFailed", "StoreHook", "TrainyardStepOperator", "build_step"]
