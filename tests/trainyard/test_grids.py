"""Hyperparameter grids: shape and size are checked before anything expands; the product is stable."""

from __future__ import annotations

import pytest

from trainyard.grids import GridError, combination_label, expand_grid, grid_size


def test_the_kaos_grid_expands_to_its_cartesian_product_in_a_stable_order():
    grid = {"degree": [3, 5], "kernel": ["linear", "poly"], "gamma": [10, 0.1, 0.01]}
    combos = expand_grid(grid)
    assert len(combos) == grid_size(grid) == 12
    assert combos[0] == {"degree": 3, "kernel": "linear", "gamma": 10}
    assert combos[-1] == {"degree": 5, "kernel": "poly", "gamma": 0.01}
    assert len({tuple(c.items()) for c in combos}) == 12
    assert expand_grid(grid) == combos


def test_labels_are_readable_map_index_names():
    assert combination_label({"kernel": "poly", "degree": 3}) == "kernel=poly,degree=3"
    assert combination_label({"flag": True, "gamma": None}) == "flag=true,gamma=null"
    assert combination_label({}) == "defaults"


def test_an_empty_grid_is_one_run_with_the_bundle_defaults():
    assert expand_grid({}) == [{}]


@pytest.mark.parametrize(("grid", "message"), [
    ([1, 2], "must be a JSON object of lists"),
    ({"C": 10}, r"'C' must be a list of values, e.g. \{\"C\": \[10\]\}"),
    ({"C": []}, "'C' has an empty list"),
    ({"C": [{"nested": 1}]}, "'C' has a non-scalar value"),
    ({"C": [[1, 2]]}, "'C' has a non-scalar value"),
    ({"C": [float("nan")]}, "non-scalar value"),
])
def test_bad_grids_are_clear_errors(grid, message):
    with pytest.raises(GridError, match=message):
        expand_grid(grid)


def test_a_grid_above_the_cap_is_refused_before_expanding():
    grid = {f"p{i}": list(range(10)) for i in range(4)}  # 10,000 combinations
    with pytest.raises(GridError, match=r"10000 combinations .* above the cap of 256.*max_map_length"):
        expand_grid(grid)
    assert GridError.exit_code == 2


def test_combinations_that_merge_to_the_same_params_are_one_model():
    from trainyard.contract import model_id

    base = {"kernel": "rbf", "C": 10.0}
    ids = {model_id("a" * 64, "b" * 64, {**base, **combo}) for combo in expand_grid({"C": [10.0, 10.0, 1.0]})}
    assert len(ids) == 2


@pytest.mark.parametrize("grid", [
    {"C": {"a": 1}}, {"C": float("nan")}, {"C": float("inf")}, {"C": "abc"}, {"C": 10}, {"C": None},
    {"C": [[1, 2]]}, {"C": [{"x": 2}]}, {"C": [float("nan"), 3]}, {"C": [[float("nan")]]},
])
def test_every_fix_a_grid_error_suggests_is_itself_accepted(grid):
    import json
    import re

    from trainyard.grids import validate_grid

    with pytest.raises(GridError) as raised:
        validate_grid(grid)
    suggested = re.search(r"e\.g\. (\{.*?\})(?:; |$)", str(raised.value))
    assert suggested, str(raised.value)
    fixed = json.loads(suggested.group(1))
    assert validate_grid(fixed) == fixed and list(fixed) == ["C"]


@pytest.mark.parametrize(("size", "fix"), [
    (300, "raise [trainyard] max_combinations to 300 or more"),
    (2000, "split the sweep into grids of at most 256 combinations"),
])
def test_a_too_large_grid_suggests_a_cap_that_would_work(size, fix):
    from trainyard.grids import validate_grid

    with pytest.raises(GridError) as raised:
        validate_grid({"seed": list(range(size))}, ceiling=1024)
    assert fix in str(raised.value)
    if size <= 1024:  # the suggested cap is accepted
        validate_grid({"seed": list(range(size))}, cap=size, ceiling=1024)
