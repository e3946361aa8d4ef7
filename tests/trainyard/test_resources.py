"""Resource requests: Kubernetes quantities only, with maxima from config."""

from __future__ import annotations

import pytest

from trainyard.errors import ResourceError
from trainyard.resources import Resources, cpu_cores, memory_bytes


@pytest.mark.parametrize(("text", "expected"), [("512Mi", 512 * 2**20), ("2Gi", 2 * 2**30), ("1G", 10**9),
                                                ("1.5Gi", int(1.5 * 2**30)), ("1000", 1000)])
def test_memory_quantities(text, expected):
    assert memory_bytes(text) == expected


@pytest.mark.parametrize("text", ["2GB", "2gb", "2 Gi", "-1Gi", "lots", ""])
def test_bad_memory_is_rejected_with_the_accepted_forms(text):
    with pytest.raises(ResourceError, match="512Mi, 2Gi .*1G"):
        memory_bytes(text)


def test_cpu_accepts_cores_and_millicores():
    assert cpu_cores("500m") == cpu_cores("0.5") == cpu_cores(0.5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"gpu": -1}, "cannot be negative"), ({"gpu": 9}, "above the maximum 8"), ({"cpu": "100"}, "above the maximum 64"),
     ({"memory": "1Ti"}, "above the maximum 512Gi"), ({"cpu": "0"}, "greater than 0"), ({"gpu": "two"}, "whole number")],
)
def test_limits(kwargs, message):
    args = {"cpu": "1", "memory": "1Gi", "gpu": 0, **kwargs}
    with pytest.raises(ResourceError, match=message):
        Resources.parse(**args)
