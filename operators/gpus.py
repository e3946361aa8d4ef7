"""Local GPU leases: give each concurrently running local task its own GPUs, found with nvidia-smi."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)


def local_gpus() -> list[str]:
    """Indexes of the GPUs nvidia-smi reports; empty when the tool or a driver is missing."""
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip().isdigit()]


@contextlib.contextmanager
def gpu_lease(count: int, *, lock_dir: str | Path, available: list[str], wait_seconds: float = 3600,
              poll_seconds: float = 1.0) -> Iterator[list[str]]:
    """Hold `count` distinct GPUs from `available` while the block runs; wait while other tasks hold them.

    Each GPU has a lock file; an flock is released by the kernel when its holder exits, so a crashed task never
    leaks a GPU. The caller checks that `count <= len(available)` first.
    """
    lock_dir = Path(lock_dir)
    lock_dir.mkdir(parents=True, exist_ok=True)
    held: list[tuple[str, int]] = []
    deadline = time.monotonic() + wait_seconds
    waited = False
    try:
        while True:
            for index in available:
                if len(held) == count:
                    break
                if any(index == h for h, _ in held):
                    continue
                fd = os.open(lock_dir / f"gpu{index}.lock", os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue
                held.append((index, fd))
            if len(held) == count:
                break
            # Give back what we hold so two tasks each holding half of what they need cannot deadlock.
            for _, fd in held:
                os.close(fd)
            held.clear()
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {wait_seconds:.0f} s for {count} free GPU(s) of {len(available)}")
            if not waited:
                log.info("all %s GPU(s) are leased by other local tasks; waiting for %s", len(available), count)
                waited = True
            time.sleep(poll_seconds)
        yield [index for index, _ in held]
    finally:
        for _, fd in held:
            os.close(fd)
