"""Per-bundle Python environments for the local runner: one virtualenv per requirements.txt hash."""

from __future__ import annotations

import fcntl
import os
import site
import subprocess
import sys
from pathlib import Path

READY_MARKER = ".trainyard-ready"


def venv_dir(cache: str | Path, req_sha: str) -> Path:
    return Path(os.path.expanduser(str(cache))) / req_sha[:16]


def _inherit_runner_packages(target: Path) -> None:
    """When the runner itself lives in a virtualenv, layer the bundle's venv over it rather than over bare Python.

    `--system-site-packages` only reaches the base interpreter; a .pth file adds the runner's site-packages,
    so requirements the runner already satisfies are not downloaded again.
    """
    if sys.prefix == sys.base_prefix:
        return
    inner = next((target / "lib").glob("python*/site-packages"))
    (inner / "_trainyard_runner.pth").write_text("\n".join(site.getsitepackages()) + "\n")


def _install(target: Path, requirements: bytes | None) -> None:
    if requirements and requirements.strip():
        req_file = target / "requirements.txt"
        req_file.write_bytes(requirements)
        # pip runs code from the requirements (a local package's setup.py): it gets user code's sandbox and env.
        from training_images import sandbox
        from training_images.usercode import user_env

        argv, _ = sandbox.isolate([sys.executable, "-m", "pip", "--python", str(target / "bin" / "python"), "install",
                                   "--disable-pip-version-check", "-r", str(req_file)], cwd=target, keep=[target])
        subprocess.run(argv, check=True, env=user_env(None, {}, home=target))


def ensure_venv(cache: str | Path, req_sha: str, requirements: bytes | None, log=print,
                reuse: bool = True) -> tuple[Path, bool]:
    """Return (venv dir, reused); builds once per requirements hash, safely across concurrent builds.

    With reuse=False an existing environment is not trusted blindly: its requirements are installed again (pip
    re-checks each one). It is not deleted, because a concurrent training may be running in it.
    """
    target = venv_dir(cache, req_sha)
    if reuse and (target / READY_MARKER).exists():
        return target, True
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(str(target) + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / READY_MARKER).exists():
            if reuse:
                return target, True
            log(f"cache off: reinstalling the requirements of {target}")
            _install(target, requirements)
            return target, False
        log(f"building virtualenv {target} (requirements sha256 {req_sha[:12]})")
        # --system-site-packages lets bundles reuse what the runner already has instead of downloading it again.
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(target)],
                       check=True)
        _inherit_runner_packages(target)
        _install(target, requirements)
        (target / READY_MARKER).write_text(req_sha)
        return target, False
