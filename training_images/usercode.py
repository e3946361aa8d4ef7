"""Running user code from a step: its environment (never the store's credentials), its venv, streamed logs."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import deque
from pathlib import Path

from training_images.environments import READY_MARKER, venv_dir
from trainyard import contract
from trainyard.store.versioned import Commit

# Env vars the user's code never needs; keeping store credentials out of its reach keeps them out of its logs.
PRIVATE_ENV_PREFIXES = ("AWS_", "TRAINYARD_STORE", "AIRFLOW_CONN_", "AIRFLOW__")


def user_env(env_bin: Path | None, values: dict[str, str], home: Path) -> dict[str, str]:
    """This process's env minus private entries, with the bundle's venv first on PATH and the contract's values."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(PRIVATE_ENV_PREFIXES)}
    if env_bin is not None:
        env["PATH"] = f"{env_bin}{os.pathsep}{env.get('PATH', '')}"
        env["VIRTUAL_ENV"] = str(env_bin.parent)
    env.update(values)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("HOME", str(home))
    return env


def run_streaming(cmd: list[str], cwd: Path, env: dict[str, str], log_path: Path) -> tuple[int, list[str]]:
    """Run user code, echoing each line to the step's log as it comes and keeping a copy; returns (code, tail)."""
    tail: deque[str] = deque(maxlen=20)
    with open(log_path, "w") as log, subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                                      stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            log.write(line)
            tail.append(line.rstrip())
    return proc.returncode, list(tail)


def env_bin_for(commit: Commit, cache: str) -> Path | None:
    """The bin dir of the venv the build step made for this source commit, if it exists (else the image's)."""
    target = venv_dir(cache, contract.requirements_sha(commit.manifest))
    return target / "bin" if (target / READY_MARKER).exists() else None
