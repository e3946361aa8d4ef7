"""Hyperparameter grids: validate a JSON object of lists and expand it to its cartesian product."""

from __future__ import annotations

import itertools
import json
import math
from typing import Any

from trainyard.errors import TrainyardError

DEFAULT_MAX_COMBINATIONS = 256
SCALARS = (str, int, float, bool, type(None))


class GridError(TrainyardError):
    """A hyperparameter grid is not a JSON object of non-empty lists of scalars, or is too large."""

    exit_code = 2


def validate_grid(grid: Any, *, cap: int = DEFAULT_MAX_COMBINATIONS, ceiling: int | None = None) -> dict[str, list]:
    """Check the grid's shape and size before anything is expanded or stored; return it unchanged.

    `ceiling` is Airflow's [core] max_map_length when known, so a too-large grid's suggested fix is one that works.
    """
    example = '{"kernel": ["linear", "poly"], "C": [1, 10]}'
    if not isinstance(grid, dict):
        raise GridError(f"the hyperparameter grid must be a JSON object of lists, e.g. {example}; "
                        f"got {type(grid).__name__}")
    for name, values in grid.items():
        if not isinstance(values, list):
            raise GridError(f"hyperparameter {name!r} must be a list of values, e.g. "
                            f"{json.dumps({name: _suggested_values(values)})}; got {_show(values)}")
        if not values:
            raise GridError(f"hyperparameter {name!r} has an empty list; give at least one value or drop it")
        for value in values:
            if not _is_scalar(value):
                raise GridError(f"hyperparameter {name!r} has a non-scalar value {_show(value)}; values must be "
                                "strings, finite numbers, booleans or null, e.g. "
                                f"{json.dumps({name: _suggested_values(values)})}")
    count = grid_size(grid)
    if count > cap:
        sizes = " x ".join(f"{len(v)} {k}" for k, v in grid.items())
        if ceiling is not None and count > ceiling:  # raising max_combinations alone would not be enough
            fix = (f"split the sweep into grids of at most {min(cap, ceiling)} combinations (Airflow's [core] "
                   f"max_map_length is {ceiling})")
        elif ceiling is not None:
            fix = f"split the sweep or raise [trainyard] max_combinations to {count} or more"
        else:
            fix = "split the sweep or raise [trainyard] max_combinations (never above Airflow's [core] max_map_length)"
        raise GridError(f"the grid expands to {count} combinations ({sizes}), above the cap of {cap}; {fix}")
    return grid


def _is_scalar(value: Any) -> bool:
    return isinstance(value, SCALARS) and not (isinstance(value, float) and not math.isfinite(value))


def _show(value: Any) -> str:
    """A value as the user wrote it (JSON; NaN and Infinity as Python's json writes them)."""
    return json.dumps(value)


def _suggested_values(value: Any) -> list:
    """A valid list of values for a suggested fix: the scalars the user gave (a list's, a dict's values), else an
    example; every suggestion an error makes must itself pass validate_grid."""
    def members(v: Any) -> list:
        return v if isinstance(v, list) else list(v.values()) if isinstance(v, dict) else [v]

    scalars = [leaf for item in members(value) for leaf in members(item) if _is_scalar(leaf)]
    return scalars or [1, 10]


def grid_size(grid: dict[str, list]) -> int:
    return math.prod(len(v) for v in grid.values()) if grid else 1


def expand_grid(grid: dict[str, list], *, cap: int = DEFAULT_MAX_COMBINATIONS) -> list[dict[str, Any]]:
    """The cartesian product of the grid in a stable order; an empty grid is one empty combination."""
    validate_grid(grid, cap=cap)
    names = list(grid)
    return [dict(zip(names, values)) for values in itertools.product(*(grid[n] for n in names))]


def combination_label(combination: dict[str, Any]) -> str:
    """A readable map label such as 'kernel=poly,degree=3' (the bundle's defaults when empty)."""
    if not combination:
        return "defaults"
    return ",".join(f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in combination.items())
