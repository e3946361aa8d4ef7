"""How the CLI and the Airflow models page show a metric value and a time, so both read the same."""

from __future__ import annotations

import datetime as dt

from trainyard.metrics import is_number


def format_time(ts: float | None) -> str:
    """A Unix time as local 'YYYY-MM-DD HH:MM:SS'; empty when unknown."""
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else ""


def format_metric(metrics: dict, name: str | None) -> str:
    """A numeric metric with four decimals; empty for a missing or text metric."""
    value = metrics.get(name) if name else None
    return f"{value:.4f}" if is_number(value) else ""
