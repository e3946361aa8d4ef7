"""kaos's /pfs view for local runs: a bubblewrap mount namespace that shows /pfs/{data,hyper,out} to user code."""

from __future__ import annotations

import functools
import logging
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

from trainyard import config
from trainyard.config import PFS_MODES

log = logging.getLogger(__name__)

PFS_ENV = "TRAINYARD_PFS"
PFS_ROOT = "/pfs"

# Host entries the sandbox provides itself: fresh /proc and /dev mounts, and our own /pfs on top of the new root.
_OWN_ENTRIES = {"proc", "dev", "pfs"}
# kaos code spells its paths as "/pfs/data/...", os.path.join("/pfs", "data") or Path("/pfs") / "hyper".
_PFS_REFERENCE = re.compile(rb"/pfs(?:/|[\"'])")
_SKIP_DIRS = {".git", "__pycache__", ".venv", "venv", "node_modules", ".ipynb_checkpoints"}
# Bounds keep detection cheap on bundles that carry large data or weights next to the code.
_SCAN_MAX_FILE_BYTES = 1 << 20
_SCAN_MAX_FILES = 5000
_SCAN_MAX_TOTAL_BYTES = 32 << 20
_PROBE_TIMEOUT_S = 30
_INSTALL_HINT = "run `make setup` (scripts/install-system-deps.sh installs bubblewrap from Debian)"


class SandboxError(Exception):
    """The /pfs sandbox was asked for but cannot be used (or TRAINYARD_PFS holds an unknown value)."""


def pfs_mode(environ: Mapping[str, str] | None = None) -> str:
    """TRAINYARD_PFS: `auto` (default: sandbox bundles whose code mentions /pfs/), `always` or `never`."""
    if environ is None:
        return config.load().pfs  # TRAINYARD_PFS env > airflow.cfg [trainyard] pfs, checked there
    value = environ.get(PFS_ENV, "").strip().lower() or "auto"
    if value not in PFS_MODES:
        raise SandboxError(f"{PFS_ENV}={value!r} is not one of {', '.join(PFS_MODES)}; unset it to use auto")
    return value


def wants_pfs(source_dir: Path) -> bool:
    """Whether any text file of the bundle mentions /pfs paths (scan bounded in files and bytes)."""
    files = total = 0
    for dirpath, dirnames, filenames in os.walk(source_dir):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if not path.is_file():
                continue
            try:
                with open(path, "rb") as fh:
                    head = fh.read(_SCAN_MAX_FILE_BYTES)
            except OSError:
                continue
            files, total = files + 1, total + len(head)
            if b"\0" not in head[:8192] and _PFS_REFERENCE.search(head):
                return True
            if files >= _SCAN_MAX_FILES or total >= _SCAN_MAX_TOTAL_BYTES:
                log.info("stopped scanning %s for /pfs references after %s files, %s bytes", source_dir, files, total)
                return False
    return False


def _root_binds() -> list[str]:
    """Re-create the host's / inside bwrap's tmpfs root entry by entry, so /pfs can exist there and only there."""
    args: list[str] = []
    with os.scandir("/") as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if entry.name in _OWN_ENTRIES:
                continue
            path = f"/{entry.name}"
            if entry.is_symlink():
                # usrmerge roots (/bin -> usr/bin) must stay links, or paths resolved through them would differ.
                args += ["--symlink", os.readlink(path), path]
            elif entry.is_dir(follow_symlinks=False) or entry.is_file(follow_symlinks=False):
                args += ["--bind", path, path]
    return args


def bwrap_argv(cmd: list[str], *, data_dir: Path, hyper: Path, out_dir: Path, cwd: Path,
               bwrap: str = "bwrap") -> list[str]:
    """The argv that runs cmd with /pfs/data (ro), /pfs/hyper (ro) and /pfs/out (rw) mounted; nothing else changes.

    This is a view, not a security boundary: the host tree stays writable at its own paths, so caches, /tmp and
    the output dir behave exactly as without the sandbox. /dev is bound from the host so GPUs stay visible.
    A `hyper` file is shown alone as /pfs/hyper/<name> (kaos code reads the first *.json there); a dir as a whole.
    """
    # bwrap resolves relative sources against its own cwd, which --chdir changes; absolute paths avoid the question.
    data_dir, hyper, out_dir, cwd = (Path(p).resolve() for p in (data_dir, hyper, out_dir, cwd))
    if hyper.is_dir():
        hyper_args = ["--ro-bind", str(hyper), f"{PFS_ROOT}/hyper"]
    else:
        # A read-only tmpfs holding just that file, so /pfs/hyper is as read-only as a bound directory would be.
        hyper_args = ["--tmpfs", f"{PFS_ROOT}/hyper", "--ro-bind", str(hyper), f"{PFS_ROOT}/hyper/{hyper.name}",
                      "--remount-ro", f"{PFS_ROOT}/hyper"]
    return [
        bwrap, "--die-with-parent", *_root_binds(),
        "--dev-bind", "/dev", "/dev", "--proc", "/proc",
        "--dir", PFS_ROOT,
        "--ro-bind", str(data_dir), f"{PFS_ROOT}/data",
        *hyper_args,
        "--bind", str(out_dir), f"{PFS_ROOT}/out",
        "--chdir", str(cwd),
        "--", *cmd,
    ]


@functools.cache
def _probe(bwrap: str | None) -> tuple[bool, str]:
    if bwrap is None:
        return False, f"bwrap not installed: {_INSTALL_HINT}"
    with tempfile.TemporaryDirectory(prefix="trainyard-pfs-probe-") as tmp:
        data, out, hyper = Path(tmp) / "data", Path(tmp) / "out", Path(tmp) / "hyperparams.json"
        data.mkdir()
        out.mkdir()
        hyper.write_text("{}")  # a file, as the train step passes: it takes the most mount steps
        argv = bwrap_argv(["true"], data_dir=data, hyper=hyper, out_dir=out, cwd=Path(tmp), bwrap=bwrap)
        try:
            proc = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=_PROBE_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return False, f"bwrap cannot run here: {exc}"
    if proc.returncode != 0:
        detail = proc.stderr.strip() or f"exit code {proc.returncode}"
        return False, (f"bwrap cannot create namespaces here: {detail} (containers need unprivileged user "
                       "namespaces, e.g. docker run --security-opt seccomp=unconfined, or sysctl "
                       "kernel.apparmor_restrict_unprivileged_userns=0)")
    return True, f"bubblewrap {bwrap} works"


def pfs_support() -> tuple[bool, str]:
    """(ok, reason): whether bwrap can build the /pfs view here, decided once by really running `bwrap ... true`."""
    return _probe(shutil.which("bwrap"))


def pfs_command(cmd: list[str], *, source_dir: Path, data_dir: Path, hyper: Path, out_dir: Path, cwd: Path,
                environ: Mapping[str, str] | None = None) -> tuple[list[str], str | None]:
    """Wrap cmd in the /pfs sandbox when the bundle needs it; returns (argv to run, a line to log or None).

    auto: only bundles whose code mentions /pfs paths; always: every bundle, and an error if bwrap cannot run;
    never: no sandbox. Inputs already materialized at /pfs/data (Kubernetes pods) need none either.
    When the sandbox is wanted but unavailable in auto mode, cmd runs as is and the line says
    why, so a later "No such file: /pfs/..." in the user's log has its explanation right above it.
    """
    mode = pfs_mode(environ)
    if mode == "never" or (mode == "auto" and not wants_pfs(source_dir)):
        return cmd, None
    if Path(data_dir).resolve() == Path(PFS_ROOT, "data"):
        return cmd, None  # pods materialize inputs into a real /pfs (an emptyDir); there is nothing to map
    ok, reason = pfs_support()
    if not ok:
        if mode == "always":
            raise SandboxError(f"{PFS_ENV}=always but the /pfs sandbox is unavailable: {reason}")
        return cmd, (f"warning: the bundle's code mentions /pfs/ paths, but they are not available locally: {reason}. "
                     f"Running without /pfs: hard-coded /pfs/ paths will fail; read ${{TRAINYARD_DATA_DIR}} and "
                     f"${{TRAINYARD_HYPERPARAMS}} instead, or set {PFS_ENV}=never to silence this")
    wrapped = bwrap_argv(cmd, data_dir=data_dir, hyper=hyper, out_dir=out_dir, cwd=cwd, bwrap=shutil.which("bwrap"))
    hyper_view = f"{PFS_ROOT}/hyper" if Path(hyper).is_dir() else f"{PFS_ROOT}/hyper/{Path(hyper).name}"
    return wrapped, (f"kaos /pfs view (bubblewrap): {PFS_ROOT}/data -> {data_dir}, {hyper_view} -> {hyper}, "
                     f"{PFS_ROOT}/out -> {out_dir}")
