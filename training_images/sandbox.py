"""User code's sandbox on the local runner (bubblewrap): its own PID namespace, no credential files, kaos's /pfs view."""

from __future__ import annotations

import functools
import logging
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from trainyard import config
from trainyard.config import PFS_MODES

log = logging.getLogger(__name__)

PFS_ENV = "TRAINYARD_PFS"
ISOLATION_ENV = "TRAINYARD_ISOLATION"
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
    """The sandbox or the /pfs view was asked for but cannot be used (or a mode holds an unknown value)."""


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


def secret_paths(environ: Mapping[str, str]) -> list[Path]:
    """Where this machine keeps credentials user code must not read: AWS and kube config, the `trainyard init`
    profile, Airflow's home (its metadata DB holds connections), and a file:// store itself (written only by steps)."""
    home = Path(environ.get("HOME") or Path.home())
    found = [home / ".aws", home / ".kube", Path(environ.get("XDG_CONFIG_HOME") or home / ".config") / "trainyard"]
    found += [Path(environ[name]) for name in ("AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE", "TRAINYARD_CONFIG_DIR",
                                               "AIRFLOW_HOME") if environ.get(name)]
    found += [Path(p) for p in environ.get("KUBECONFIG", "").split(os.pathsep) if p]
    store = environ.get("TRAINYARD_STORE", "")
    if store.startswith("file://"):
        found.append(Path(store.removeprefix("file://")))
    unique: dict[str, Path] = {}
    for path in found:
        try:
            real = path.expanduser().resolve()
        except OSError:
            continue
        if real.exists() and real != Path("/") and real.parts[1:2] not in (("proc",), ("dev",)):
            unique[str(real)] = real
    return [unique[k] for k in sorted(unique)]


def _hide(paths: Sequence[Path], keep: Sequence[Path]) -> list[str]:
    """bwrap args that cover each path (an empty tmpfs, /dev/null for a file), then bind back what the step needs
    that lies under one of them (say, a venv cache inside Airflow's home)."""
    kept = [Path(k).resolve() for k in keep]
    args: list[str] = []
    hidden: list[Path] = []
    for path in paths:
        if path.is_dir():
            args += ["--tmpfs", str(path)]
        elif path not in kept:
            args += ["--ro-bind", "/dev/null", str(path)]
        else:
            continue
        hidden.append(path)
    for k in kept:
        if k.exists() and any(h == k or h in k.parents for h in hidden):
            args += ["--bind", str(k), str(k)]
    return args


def _head(bwrap: str) -> list[str]:
    """What every sandbox has: its own PID namespace with a fresh /proc, so no other process (the step, Airflow,
    the CLI, with the store's credentials in their environment) can be seen; a new session (no terminal input
    injection); no capabilities, so root inside cannot unmount what hides the credentials; death with its parent."""
    caps = ["--cap-drop", "ALL"] if os.geteuid() == 0 else []
    return [bwrap, "--die-with-parent", "--unshare-pid", "--new-session", *caps, *_root_binds(),
            "--dev-bind", "/dev", "/dev", "--proc", "/proc"]


def isolated_argv(cmd: list[str], *, cwd: Path, view: Sequence[str] = (), keep: Sequence[Path] = (),
                  environ: Mapping[str, str] | None = None, bwrap: str = "bwrap") -> list[str]:
    """The argv that runs cmd in the sandbox (_head), with the credential paths hidden (secret_paths), the paths in
    `keep` visible even under one of them, and `view`'s extra bwrap mount args (the /pfs view) on top."""
    environ = os.environ if environ is None else environ
    return [*_head(bwrap), *_hide(secret_paths(environ), [Path(cwd), *keep]), *view, "--chdir", str(Path(cwd).resolve()),
            "--", *cmd]


def _pfs_view(*, data_dir: Path, hyper: Path, out_dir: Path) -> list[str]:
    """bwrap mount args for kaos's /pfs: /pfs/data (ro), /pfs/hyper (ro), /pfs/out (rw)."""
    data_dir, hyper, out_dir = (Path(p).resolve() for p in (data_dir, hyper, out_dir))
    if hyper.is_dir():
        hyper_args = ["--ro-bind", str(hyper), f"{PFS_ROOT}/hyper"]
    else:
        # A read-only tmpfs holding just that file, so /pfs/hyper is as read-only as a bound directory would be.
        hyper_args = ["--tmpfs", f"{PFS_ROOT}/hyper", "--ro-bind", str(hyper), f"{PFS_ROOT}/hyper/{hyper.name}",
                      "--remount-ro", f"{PFS_ROOT}/hyper"]
    return ["--dir", PFS_ROOT, "--ro-bind", str(data_dir), f"{PFS_ROOT}/data", *hyper_args,
            "--bind", str(out_dir), f"{PFS_ROOT}/out"]


def bwrap_argv(cmd: list[str], *, data_dir: Path, hyper: Path, out_dir: Path, cwd: Path,
               bwrap: str = "bwrap", environ: Mapping[str, str] | None = None) -> list[str]:
    """The argv that runs cmd in the sandbox with /pfs/data (ro), /pfs/hyper (ro) and /pfs/out (rw) mounted.

    Apart from the hidden credential paths, the host tree stays as it is at its own paths, so caches, /tmp and the
    output dir behave exactly as without the sandbox. /dev is bound from the host so GPUs stay visible.
    A `hyper` file is shown alone as /pfs/hyper/<name> (kaos code reads the first *.json there); a dir as a whole.
    """
    # bwrap resolves relative sources against its own cwd, which --chdir changes; absolute paths avoid the question.
    view = _pfs_view(data_dir=data_dir, hyper=hyper, out_dir=out_dir)
    return isolated_argv(cmd, cwd=cwd, view=view, keep=[Path(data_dir), Path(hyper), Path(out_dir)], environ=environ,
                         bwrap=bwrap)


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


def _wants_view(source_dir: Path, data_dir: Path, environ: Mapping[str, str] | None) -> tuple[bool, str]:
    """Whether the bundle gets kaos's /pfs view (TRAINYARD_PFS), and the mode that decided it."""
    mode = pfs_mode(environ)
    if mode == "never" or (mode == "auto" and not wants_pfs(source_dir)):
        return False, mode
    # Pods materialize inputs into a real /pfs (an emptyDir); there is nothing to map.
    return Path(data_dir).resolve() != Path(PFS_ROOT, "data"), mode


def pfs_command(cmd: list[str], *, source_dir: Path, data_dir: Path, hyper: Path, out_dir: Path, cwd: Path,
                environ: Mapping[str, str] | None = None) -> tuple[list[str], str | None]:
    """Wrap cmd in the /pfs sandbox when the bundle needs it; returns (argv to run, a line to log or None).

    auto: only bundles whose code mentions /pfs paths; always: every bundle, and an error if bwrap cannot run;
    never: no sandbox. Inputs already materialized at /pfs/data (Kubernetes pods) need none either.
    When the sandbox is wanted but unavailable in auto mode, cmd runs as is and the line says
    why, so a later "No such file: /pfs/..." in the user's log has its explanation right above it.
    """
    wanted, mode = _wants_view(source_dir, data_dir, environ)
    if not wanted:
        return cmd, None
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


def isolation_mode(environ: Mapping[str, str] | None = None) -> str:
    """TRAINYARD_ISOLATION / [trainyard] isolation: auto (default), sandbox, none, or pod (trainyard's pods)."""
    if environ is None:
        return config.load().isolation
    value = environ.get(ISOLATION_ENV, "").strip().lower() or "auto"
    if value not in config.ISOLATION_MODES:
        raise SandboxError(f"{ISOLATION_ENV}={value!r} is not one of {', '.join(config.ISOLATION_MODES)}")
    return value


def holds_credentials(environ: Mapping[str, str]) -> bool:
    """Whether this step has store credentials user code could steal (an S3 store, or AWS keys in its env)."""
    return (environ.get("TRAINYARD_STORE", "").startswith("s3://") or bool(environ.get("AWS_SECRET_ACCESS_KEY"))
            or any(k.startswith("AIRFLOW_CONN_") for k in environ))


def _refusal(reason: str) -> SandboxError:
    return SandboxError(f"user code cannot be kept from the store's credentials: {reason}; or set "
                        f"{ISOLATION_ENV}=none to run it unisolated (it can then read them)")


def _unisolated(mode: str, ok: bool, reason: str, environ: Mapping[str, str]) -> str | None:
    """The policy of every launch of user code: None to use the sandbox, else the line to log when user code runs
    unisolated (`none`, or no bubblewrap and no store credentials to leak); raises where it must not run at all."""
    if mode == "none":
        return (f"warning: {ISOLATION_ENV}=none: user code runs unisolated and can read the store's credentials "
                "from other processes and files")
    if ok:
        return None
    if mode == "sandbox" or holds_credentials(environ):
        raise _refusal(reason)
    return f"note: user code runs unisolated ({reason}); this step holds no store credentials"


SANDBOX_NOTE = "sandbox (bubblewrap): own PID namespace, store credentials out of reach"


def isolate(cmd: list[str], *, cwd: Path, keep: Sequence[Path] = (), view: Sequence[str] = (),
            environ: Mapping[str, str] | None = None) -> tuple[list[str], list[str]]:
    """The argv user code runs with, and lines to log, by the isolation mode (see user_command); `view` adds
    bwrap mounts (a /pfs view) and then needs bubblewrap whatever the mode."""
    env = os.environ if environ is None else environ
    mode = isolation_mode(environ)
    if mode == "pod":
        return cmd, []
    ok, reason = pfs_support()
    # A view needs the sandbox: only a missing bubblewrap stops it (with the policy's own error or note).
    note = _unisolated(mode, ok, reason, env) if not (view and ok) else None
    if note and view:
        raise _refusal(reason)
    if note:
        return cmd, [note]
    return isolated_argv(cmd, cwd=cwd, view=view, keep=keep, environ=env, bwrap=shutil.which("bwrap")), [SANDBOX_NOTE]


def user_command(cmd: list[str], *, source_dir: Path, data_dir: Path, hyper: Path, out_dir: Path, cwd: Path,
                 keep: Sequence[Path] = (), environ: Mapping[str, str] | None = None) -> tuple[list[str], list[str]]:
    """The argv user code runs with, and lines to log: in the sandbox (its own PID namespace, credential files
    hidden) with kaos's /pfs view when the bundle needs it. The one place that decides how user code is launched.

    Without a working bubblewrap, `auto` runs user code as is only when this step holds no store credentials;
    `sandbox` always refuses, `none` never isolates, `pod` means the Kubernetes pod already keeps them away.
    """
    env = os.environ if environ is None else environ
    mode = isolation_mode(environ)
    if mode == "pod":
        return cmd, []
    ok, reason = pfs_support()
    note = _unisolated(mode, ok, reason, env)
    if note:  # unisolated: the /pfs view alone, where bubblewrap can give it (pfs_command decides and says)
        argv, pfs_note = pfs_command(cmd, source_dir=source_dir, data_dir=data_dir, hyper=hyper, out_dir=out_dir,
                                     cwd=cwd, environ=environ)
        return argv, [note, *([pfs_note] if pfs_note else [])]
    wanted, _ = _wants_view(source_dir, data_dir, environ)
    view = _pfs_view(data_dir=data_dir, hyper=hyper, out_dir=out_dir) if wanted else []
    keep = [*keep, Path(source_dir), Path(data_dir), Path(hyper), Path(out_dir)]
    argv = isolated_argv(cmd, cwd=cwd, view=view, keep=keep, environ=env, bwrap=shutil.which("bwrap"))
    notes = [SANDBOX_NOTE]
    if wanted:
        hyper_view = f"{PFS_ROOT}/hyper" if Path(hyper).is_dir() else f"{PFS_ROOT}/hyper/{Path(hyper).name}"
        notes.append(f"kaos /pfs view (bubblewrap): {PFS_ROOT}/data -> {data_dir}, {hyper_view} -> {hyper}, "
                     f"{PFS_ROOT}/out -> {out_dir}")
    return argv, notes
