"""Metrics: which direction is better for a name, and numeric, direction-aware ranking of models."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any, TypeVar

from trainyard.errors import TrainyardError

DIRECTIONS = ("max", "min")
# Names that are better when lower; everything else (accuracy, f1, auc, r2, score ...) is better when higher.
_LOWER_IS_BETTER = re.compile(r"(loss|error|err$|mse|rmse|mae|mape|perplexity|seconds|latency|time$|distance)",
                              re.IGNORECASE)
SPEC_PATTERN = r"^[A-Za-z0-9_.\-]+(:(max|min))?$"
T = TypeVar("T")


class MetricError(TrainyardError):
    """A metric name or direction is unknown for the models it should rank."""

    exit_code = 2


def default_direction(name: str) -> str:
    return "min" if _LOWER_IS_BETTER.search(name) else "max"


def parse_spec(spec: str) -> tuple[str, str]:
    """'accuracy_test:max' -> ('accuracy_test', 'max'); without ':dir' the name's default direction."""
    name, _, direction = spec.strip().partition(":")
    if not name or not re.match(SPEC_PATTERN, spec.strip()):
        raise MetricError(f"invalid metric {spec!r}: use NAME or NAME:max / NAME:min, e.g. accuracy_test:max")
    return name, direction or default_direction(name)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def numeric_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Only the rankable metrics; kaos-style text reports are kept elsewhere but never ranked."""
    return {k: float(v) for k, v in metrics.items() if is_number(v)}


def metrics_of(model: Any) -> dict[str, Any]:
    """A model's (or registry version's) metrics, from a typed record or a plain dict."""
    return model.get("metrics", {}) if isinstance(model, dict) else model.metrics


def available(models: Iterable[Any]) -> list[str]:
    names: set[str] = set()
    for model in models:
        names.update(numeric_metrics(metrics_of(model)))
    return sorted(names)


# Words that mark a metric as a model score, so counts and timings (val_images, train_seconds) are not picked.
_SCORE_WORDS = ("accuracy", "acc", "f1", "auc", "r2", "bleu", "exact_match", "precision", "recall", "score",
                "loss", "error", "mse", "mae", "rmse")


def default_metric(metrics: dict[str, Any]) -> str | None:
    """Pick a metric when none was named: a test score, then a validation score, then any score, then any name."""
    names = sorted(numeric_metrics(metrics))
    scores = [n for n in names if any(word in n.lower() for word in _SCORE_WORDS)] or names
    for hint in ("test", "val"):
        for name in scores:
            if hint in name.lower():
                return name
    return scores[0] if scores else None


def rank(models: list[T], spec: str) -> tuple[list[T], list[T], str, str]:
    """Sort models (typed records or dicts, each with metrics) by a metric, best first, as numbers; returns
    (ranked, unranked, name, direction).

    Models without a numeric value for the metric are returned separately rather than sorted as text.
    """
    name, direction = parse_spec(spec)
    names = available(models)
    if models and name not in names:
        raise MetricError(f"unknown metric {name!r}; available: {', '.join(names) or 'none (no numeric metrics)'}")
    scored = [m for m in models if is_number(metrics_of(m).get(name))]
    unscored = [m for m in models if not is_number(metrics_of(m).get(name))]
    scored.sort(key=lambda m: float(metrics_of(m)[name]), reverse=direction == "max")
    return scored, unscored, name, direction


def best(models: list[T], spec: str) -> T | None:
    ranked, _, _, _ = rank(models, spec)
    return ranked[0] if ranked else None
