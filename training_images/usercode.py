"""Running user code from a step: its environment (never the store's credentials), its venv, streamed logs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

from training_images.environments import READY_MARKER, venv_dir
from trainyard import contract
from trainyard.store.versioned import Commit

# Env vars the user's code never needs; keeping store credentials out of its reach keeps them out of its logs.
PRIVATE_ENV_PREFIXES = ("AWS_", "TRAINYARD_STORE", "TRAINYARD_PASSWORD", "TRAINYARD_USERNAME", "TRAINYARD_ENDPOINT",
                        "AIRFLOW_CONN_", "AIRFLOW__", "AIRFLOW_VAR_", "KUBECONFIG", "TRAINYARD_DEADLINE")
TIMEOUT_EXIT = 124


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


def _stop(proc: subprocess.Popen, expired: threading.Event) -> None:
    expired.set()
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_streaming(cmd: list[str], cwd: Path, env: dict[str, str], log_path: Path, *,
                  deadline: float | None = None) -> tuple[int, list[str]]:
    """Run user code, echoing each line to the step's log as it comes and keeping a copy; returns (code, tail).

    The step enforces its own deadline (epoch seconds) where it runs, not only its parent: past it, user code's
    whole process group is killed, the log says so, and the code is 124 (as GNU timeout's)."""
    tail: deque[str] = deque(maxlen=20)
    expired = threading.Event()
    with open(log_path, "w") as log, subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                                      stderr=subprocess.STDOUT, text=True, errors="replace",
                                                      bufsize=1, start_new_session=True) as proc:
        timer = threading.Timer(max(0.0, deadline - time.time()), _stop, (proc, expired)) if deadline else None
        if timer:
            timer.daemon = True
            timer.start()
        try:
            for line in proc.stdout:
                sys.stdout.write(line)
                sys.stdout.flush()
                log.write(line)
                log.flush()  # in a pod, the finish container follows this file as the step's log
                tail.append(line.rstrip())
        except BaseException:
            _stop(proc, threading.Event())  # the step itself is stopping: its user code must not outlive it
            raise
        finally:
            if timer:
                timer.cancel()
        if expired.is_set():
            line = "stopped: the step ran past its timeout and user code was killed"
            log.write(line + "\n")
            print(line, flush=True)
            tail.append(line)
    return (TIMEOUT_EXIT if expired.is_set() else proc.returncode), list(tail)


def env_bin_for(commit: Commit, cache: str) -> Path | None:
    """The bin dir of the venv the build step made for this source commit, if it exists (else the image's)."""
    target = venv_dir(cache, contract.requirements_sha(commit.manifest))
    return target / "bin" if (target / READY_MARKER).exists() else None
