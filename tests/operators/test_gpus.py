"""Local GPU leases: concurrently running tasks get distinct GPUs from what nvidia-smi reports."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

from operators.gpus import gpu_lease, local_gpus

# nvidia-smi is an external tool; this stand-in prints what a 4-GPU machine prints for the same query.
FAKE_NVIDIA_SMI = """#!/bin/sh
[ "$1" = "--query-gpu=index" ] && printf '0\\n1\\n2\\n3\\n' && exit 0
exit 9
"""


@pytest.fixture
def four_gpus(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text(FAKE_NVIDIA_SMI)
    (bin_dir / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return local_gpus()


def test_gpus_are_read_from_nvidia_smi(four_gpus):
    assert four_gpus == ["0", "1", "2", "3"]


def test_concurrent_processes_get_distinct_gpus(four_gpus, tmp_path):
    """Two tasks of 2 GPUs each run side by side on distinct devices; a third waits for one to finish."""
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(os.getcwd())!r})
        from operators.gpus import gpu_lease
        with gpu_lease(2, lock_dir={str(tmp_path / 'locks')!r}, available=["0", "1", "2", "3"], poll_seconds=0.1) as g:
            print("LEASE", ",".join(g), time.time(), flush=True)
            time.sleep(1.5)
        print("LEASE released", time.time(), flush=True)
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [[line.split()[1:] for line in p.communicate(timeout=60)[0].splitlines() if line.startswith("LEASE ")]
            for p in procs]
    leases = [(set(o[0][0].split(",")), float(o[0][1]), float(o[1][1])) for o in outs]
    for i, (gpus_i, start_i, end_i) in enumerate(leases):
        assert len(gpus_i) == 2
        for gpus_j, start_j, end_j in leases[i + 1:]:
            overlapping = start_i < end_j and start_j < end_i
            assert not (overlapping and gpus_i & gpus_j), "two running tasks shared a GPU"
    starts = sorted(start for _, start, _ in leases)
    assert starts[2] - starts[0] >= 1.0  # the third waited for a pair to be released


def test_a_lease_is_released_when_the_block_ends(tmp_path):
    with gpu_lease(1, lock_dir=tmp_path, available=["0"]) as first:
        assert first == ["0"]
    started = time.monotonic()
    with gpu_lease(1, lock_dir=tmp_path, available=["0"], wait_seconds=2) as again:
        assert again == ["0"] and time.monotonic() - started < 1


def test_waiting_too_long_is_a_clear_error(tmp_path):
    with gpu_lease(1, lock_dir=tmp_path, available=["0"]):
        script = (f"import sys; sys.path.insert(0, {os.getcwd()!r}); from operators.gpus import gpu_lease\n"
                  f"with gpu_lease(1, lock_dir={str(tmp_path)!r}, available=['0'], wait_seconds=0.5, "
                  "poll_seconds=0.1): pass")
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "waited 0 s for 1 free GPU(s) of 1" in proc.stderr
