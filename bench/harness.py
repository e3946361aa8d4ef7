"""Shared benchmark plumbing: an isolated Airflow home and store per bench, and timed commands that must succeed."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def venv_bin() -> Path:
    bin_dir = REPO / ".venv" / "bin"
    return bin_dir if (bin_dir / "python").exists() else Path(sys.executable).parent


def base_env(work: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "TRAINYARD_"))}
    env.update({
        "TRAINYARD_HOME": str(REPO),
        "AIRFLOW_HOME": str(work / "airflow"),
        "AIRFLOW_CONFIG": str(REPO / "airflow.cfg"),
        "TRAINYARD_STORE": f"file://{work / 'store'}",
        "TRAINYARD_VENV_CACHE": str(work / "venvs"),
        "TRAINYARD_RUNNER": "local",
        "PATH": f"{venv_bin()}{os.pathsep}{os.environ.get('PATH', '')}",
    })
    return env


def run(cmd: list[str], env: dict[str, str], log: Path, cwd: Path = REPO, what: str = "") -> tuple[float, float]:
    """Run cmd with output to log; return (wall seconds, start epoch). Exits the bench if cmd fails."""
    started = time.time()
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-40:]
        print("\n".join(tail), file=sys.stderr)
        sys.exit(f"bench: {what or cmd[0]} exited {proc.returncode}; full log: {log}")
    return wall, started
