"""CPU, memory and GPU requests: parse Kubernetes quantities and check them against configured maxima."""

from __future__ import annotations

import dataclasses
import re
from decimal import Decimal, InvalidOperation

from trainyard.errors import ResourceError

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}
_MEMORY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")
_CPU = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(m)?$")
MEMORY_PATTERN = _MEMORY.pattern
CPU_PATTERN = _CPU.pattern


def memory_bytes(text: str) -> int:
    """Parse a Kubernetes memory quantity ('512Mi', '2Gi', '1G'); anything else is rejected."""
    match = _MEMORY.match(str(text).strip())
    if not match:
        raise ResourceError(
            f"invalid memory {text!r}: use a Kubernetes quantity such as 512Mi, 2Gi (binary) or 1G (decimal); "
            "suffixes like GB or gb are not accepted"
        )
    number, suffix = match.groups()
    factor = _BINARY.get(suffix or "", None) or _DECIMAL[suffix or ""]
    return int(Decimal(number) * factor)


def cpu_cores(text: str | float) -> Decimal:
    """Parse a CPU quantity: cores as a number ('0.5', '2') or millicores ('500m')."""
    match = _CPU.match(str(text).strip())
    if not match:
        raise ResourceError(f"invalid cpu {text!r}: give cores as a number (0.5, 2) or millicores (500m)")
    try:
        value = Decimal(match.group(1))
    except InvalidOperation:
        raise ResourceError(f"invalid cpu {text!r}") from None
    return value / 1000 if match.group(2) else value


@dataclasses.dataclass(frozen=True)
class Resources:
    """A validated resource request for one step's container."""

    cpu: str
    memory: str
    gpu: int = 0

    @classmethod
    def parse(cls, cpu: str | float, memory: str, gpu: int | str = 0, *, max_cpu: str = "64",
              max_memory: str = "512Gi", max_gpu: int | str = 8) -> "Resources":
        cores = cpu_cores(cpu)
        if cores <= 0:
            raise ResourceError(f"invalid cpu {cpu!r}: it must be greater than 0")
        if cores > cpu_cores(max_cpu):
            raise ResourceError(f"cpu {cpu} is above the maximum {max_cpu}; lower it or raise [trainyard] max_cpu")
        if memory_bytes(memory) <= 0:
            raise ResourceError(f"invalid memory {memory!r}: it must be greater than 0")
        if memory_bytes(memory) > memory_bytes(max_memory):
            raise ResourceError(
                f"memory {memory} is above the maximum {max_memory}; lower it or raise [trainyard] max_memory"
            )
        try:
            gpus = int(str(gpu))
        except ValueError:
            raise ResourceError(f"invalid gpu {gpu!r}: give a whole number of GPUs (0, 1, 2 ...)") from None
        if gpus < 0:
            raise ResourceError(f"invalid gpu {gpu!r}: it cannot be negative; use 0 for CPU-only training")
        if gpus > int(max_gpu):
            raise ResourceError(f"gpu {gpus} is above the maximum {max_gpu}; lower it or raise [trainyard] max_gpu")
        return cls(cpu=str(cpu).strip(), memory=str(memory).strip(), gpu=gpus)
