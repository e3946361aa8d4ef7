"""The three phases of a step that runs user code: prepare (store), run (user code, no store), finish (store).

Locally one process runs them in turn (`--phase all`); in a Kubernetes pod each is a container of its own
(operators.step.user_code_pod), sharing a work volume, so the container running user code holds no store Secret.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

PHASES = ("all", "prepare", "run", "finish")
PLAN_FILE, DONE_FILE, EXITED_FILE = "plan.json", "done", "exited"
# How long finish waits, once the run phase is done, for the `run` container's wrapper to end (it says so).
EXIT_WAIT = 15.0
# How long `finish` waits between looks at the work volume while the `run` container works.
FOLLOW_INTERVAL = 0.5


def add_phase_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--phase", choices=PHASES, default="all",
                        help="all (one process, locally) or one container's part of the pod")
    parser.add_argument("--work", help="the work dir the phases share (a pod volume); default a temporary dir")
    parser.add_argument("--runtime-dir", help="prepare: where to put the static busybox the `run` container uses")


def install_busybox(runtime_dir: str | None) -> None:
    """prepare, in a pod: copy the steps image's static busybox where the `run` container's wrapper finds it."""
    if not runtime_dir:
        return
    target = Path(runtime_dir) / "busybox"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(shutil.which("busybox") or "/bin/busybox", target)
    target.chmod(0o755)


def follow(work: Path, log: Path | None = None) -> None:
    """finish, in a pod: echo `log` as the `run` container writes it (if given), until that container is done."""
    position = 0
    while True:
        done = (work / DONE_FILE).exists()
        if log is not None and log.exists():
            with open(log, "rb") as fh:
                fh.seek(position)
                chunk = fh.read()
            position += len(chunk)
            if chunk:
                sys.stdout.write(chunk.decode(errors="replace"))
                sys.stdout.flush()
        if done:
            break
        time.sleep(FOLLOW_INTERVAL)
    # The pod is deleted once this container ends; the `run` container should have ended by then.
    deadline = time.monotonic() + EXIT_WAIT
    while not (work / EXITED_FILE).exists() and time.monotonic() < deadline:
        time.sleep(0.1)
