"""Pachyderm pipeline steps: run a spec's transform on each datum with /pfs/<input> and /pfs/out, then collect.

    python -m training_images.datum.pps process --pipeline NAME --spec SHA --inputs JSON [--code REPO:ID]
        --version V (--datums JSON | --datums-from SHA:START:STOP)
    python -m training_images.datum.pps collect --pipeline NAME --spec SHA --inputs JSON [--code REPO:ID] --version V

`process` runs transform.cmd once per datum of the chunk (transform.stdin on its stdin, transform.env and the
secrets in its env), with the datum's files at /pfs/<input name>/<path> and an empty /pfs/out; what it writes
there is uploaded and recorded, so a later run skips the datum. Locally /pfs is a bubblewrap mount namespace over
temporary directories; where TRAINYARD_PFS_ROOT names a real directory (a pod's volume), the datum is laid out
there instead. `collect` merges every datum's output into one commit of the output repo (named after the
pipeline) and records the job, which downstream pipelines wait for.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import posixpath
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path

from training_images import sandbox
from training_images.environments import ensure_venv
from training_images.usercode import user_env
from trainyard import config, contract, pps
from trainyard.datums import (
    Datum,
    RecordWriter,
    compact_records,
    datum_files,
    datum_key,
    datum_label,
    datum_records,
    has_provenance,
    input_datums,
    merge_records,
    pfs_datum_id,
    save_provenance,
)
from trainyard.records import DatumRecord, DatumStats, PpsJob, Provenance, ProvenanceFile
from trainyard.store import parse_ref
from trainyard.store.versioned import Commit, Store

PFS_ROOT_ENV = "TRAINYARD_PFS_ROOT"
# Secrets the operator resolved (Airflow connections locally) reach this process only through this variable; it
# is removed before user code starts and its values are masked in every log line.
SECRETS_ENV = "TRAINYARD_PPS_SECRETS"
REDACTED = "***"
MIN_SECRET_LENGTH = 4
RESULT_FAILURES = 20


class DatumFailed(Exception):
    """A datum's transform could not run or exited non-zero; the message is the line the task reports."""


@dataclasses.dataclass
class Job:
    """What a step of a pipeline run works on: the spec, the resolved inputs, every datum, the code and version."""

    name: str
    dag_id: str
    job_id: str
    spec: pps.PipelineSpec
    inputs: list[dict]
    datums: dict[str, Datum]
    code: Commit | None
    version: str


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pipeline", required=True, help="the pipeline's name (its output repo)")
    parser.add_argument("--spec", required=True, help="sha256 of the stored spec (a blob)")
    parser.add_argument("--inputs", required=True,
                        help='JSON list, one per pfs input depth first: [{"name", "repo", "ref", "commit"}]')
    parser.add_argument("--code", default="", help="the source commit the transform runs in, as repo:id")
    parser.add_argument("--version", required=True, help="the transform version the plan computed (keys outputs)")


def load_job(store: Store, args: argparse.Namespace) -> Job:
    spec = pps.parse_spec(json.loads(store.get_blob_bytes(args.spec)), f"pipeline {args.pipeline}")
    resolved = json.loads(args.inputs)
    manifests = [store.get_commit(r["repo"], r["commit"]).manifest if r.get("commit") else {} for r in resolved]
    datums = {pfs_datum_id(d): d for d in input_datums(pps.datum_tree(spec.input, resolved, manifests))}
    code = store.resolve(*parse_ref(args.code)) if args.code else None
    return Job(name=args.pipeline, dag_id=os.environ.get("TRAINYARD_DAG_ID") or pps.dag_id(args.pipeline),
               job_id=os.environ.get("TRAINYARD_RUN_ID") or "manual", spec=spec, inputs=resolved, datums=datums,
               code=code, version=args.version)


# -- secrets and logs --------------------------------------------------------------------------------------------------
def take_secrets() -> dict:
    """The secrets the operator passed ({"env": {VAR: value}, "files": {mount_path: {key: value}}}), removed from
    this process's environment so that nothing else inherits them."""
    raw = os.environ.pop(SECRETS_ENV, "")
    secrets = json.loads(raw) if raw else {}
    return {"env": dict(secrets.get("env", {})), "files": dict(secrets.get("files", {}))}


def redactor(secrets: dict):
    values = sorted({v for v in [*secrets["env"].values(), *(x for f in secrets["files"].values() for x in f.values())]
                     if isinstance(v, str) and len(v) >= MIN_SECRET_LENGTH}, key=len, reverse=True)

    def redact(text: str) -> str:
        for value in values:
            text = text.replace(value, REDACTED)
        return text

    return redact


def run_transform(argv: list[str], cwd: Path, env: dict[str, str], stdin: str | None, timeout: float | None,
                  log_path: Path, redact) -> tuple[int, list[str], bool]:
    """Run user code in its own process group, streaming (redacted) output to this step's log and to log_path;
    stop the whole group at the timeout. Returns (exit code, last lines, timed out)."""
    tail: deque[str] = deque(maxlen=20)
    expired = threading.Event()
    with open(log_path, "w") as log, subprocess.Popen(
            argv, cwd=cwd, env=env, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1,
            start_new_session=True) as proc:
        if stdin is not None:
            threading.Thread(target=_feed, args=(proc.stdin, stdin), daemon=True).start()

        def expire() -> None:
            expired.set()
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

        timer = threading.Timer(timeout, expire) if timeout else None
        if timer:
            timer.start()
        try:
            for line in proc.stdout:
                line = redact(line)
                sys.stdout.write(line)
                sys.stdout.flush()
                log.write(line)
                tail.append(line.rstrip())
        finally:
            if timer:
                timer.cancel()
    return proc.returncode, list(tail), expired.is_set()


def _feed(stream, text: str) -> None:
    try:
        stream.write(text)
        stream.close()
    except (BrokenPipeError, OSError):
        pass  # the transform exited without reading all of its stdin


# -- /pfs --------------------------------------------------------------------------------------------------------------
class LazyInputs:
    """Pachyderm's `lazy`: each file is a named pipe, and its bytes are fetched only when the transform opens it."""

    def __init__(self, store: Store, files: dict[str, dict], root: Path) -> None:
        self.store, self.files, self.root = store, files, root
        self.bytes_read = 0
        self._stopping = False
        self._lock = threading.Lock()
        self._threads: list[tuple[threading.Thread, Path]] = []

    def start(self) -> None:
        for rel, entry in sorted(self.files.items()):
            path = self.root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            os.mkfifo(path, 0o644)
            thread = threading.Thread(target=self._serve, args=(path, entry), daemon=True, name=f"lazy {rel}")
            thread.start()
            self._threads.append((thread, path))

    def _serve(self, path: Path, entry: dict) -> None:
        try:
            fd = os.open(path, os.O_WRONLY)  # blocks until the transform opens the pipe
        except OSError:
            return
        try:
            if self._stopping:
                return
            data = self.store.read_entry(entry)
            with self._lock:
                self.bytes_read += len(data)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        except (BrokenPipeError, OSError):
            pass  # the reader closed the pipe early
        finally:
            os.close(fd)

    def stop(self) -> None:
        """Release the writers of pipes nobody opened (opening the read end unblocks them), then wait for all."""
        self._stopping = True
        for thread, path in self._threads:
            if thread.is_alive():
                try:
                    os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
                except OSError:
                    pass
        for thread, _ in self._threads:
            thread.join(timeout=10)


def pfs_argv(cmd: list[str], *, pfs_dir: Path, names: list[str], out_dir: Path, cwd: Path,
             mounts: dict[str, Path]) -> list[str]:
    """bubblewrap argv showing /pfs/<name> (read-only) for each input, /pfs/out (writable) and each secret mount;
    the rest of the machine is seen as it is, as in the kaos /pfs view (training_images/sandbox.py)."""
    ok, reason = sandbox.pfs_support()
    if not ok:
        raise DatumFailed(f"the /pfs view of a Pachyderm transform needs bubblewrap locally: {reason}")
    args = ["--dir", sandbox.PFS_ROOT]
    for name in sorted(set(names)):
        args += ["--ro-bind", str(pfs_dir / name), f"{sandbox.PFS_ROOT}/{name}"]
    args += ["--bind", str(out_dir), f"{sandbox.PFS_ROOT}/out"]
    for mount_path, host in sorted(mounts.items()):
        top = "/" + mount_path.strip("/").split("/")[0]
        if os.path.lexists(top):
            raise DatumFailed(f"secret mount_path {mount_path} is under {top}, which exists on this machine; locally "
                              "a secret can be mounted only under a new top-level folder, e.g. /secrets/<name>")
        args += ["--ro-bind", str(host), mount_path]
    # The same sandbox as every user code's: its own PID namespace, the store's credential files hidden.
    try:
        argv, _ = sandbox.isolate(cmd, cwd=cwd, view=args, keep=[pfs_dir, out_dir, *mounts.values()])
    except sandbox.SandboxError as exc:
        raise DatumFailed(str(exc)) from None
    return argv


def _clear(directory: Path) -> None:
    for child in directory.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def collect_outputs(out_dir: Path, files: dict[str, dict]) -> tuple[dict[str, Path], dict[str, dict]]:
    """What the transform wrote to /pfs/out: (files to upload, entries of links into the datum's own inputs).

    A symlink to /pfs/<input>/... (Pachyderm's shuffle pipelines) becomes that input file's entry, uploading
    nothing; a link anywhere else is refused, since it would not exist outside this run.
    """
    uploads: dict[str, Path] = {}
    linked: dict[str, dict] = {}
    for dirpath, dirnames, filenames in os.walk(out_dir, followlinks=False):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            rel = path.relative_to(out_dir).as_posix()
            if path.is_symlink():
                target = posixpath.normpath(posixpath.join("/pfs/out", posixpath.dirname(rel), os.readlink(path)))
                inner = target.removeprefix("/pfs/")
                found = {k: e for k, e in files.items() if k == inner or k.startswith(inner + "/")}
                if not target.startswith("/pfs/") or inner.startswith("out/") or not found:
                    raise DatumFailed(f"/pfs/out/{rel} is a link to {os.readlink(path)}, which is not an input file of "
                                      "this datum; write a regular file instead")
                for key, entry in found.items():
                    linked[rel + key[len(inner):]] = entry
            elif name in filenames and path.is_file():
                uploads[rel] = path
    return uploads, linked


# -- process -----------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Context:
    """What every datum of a chunk shares."""

    store: Store
    job: Job
    code_dir: Path
    env_bin: Path | None
    work: Path
    secrets: dict
    redact: object
    pfs_root: Path | None


def _environment(store: Store, code: Commit, cache: str) -> Path:
    """The source bundle's virtualenv (its requirements.txt over this runner's packages), built once per hash."""
    entry = code.manifest.get(contract.REQUIREMENTS_FILE)
    requirements = store.read_entry(entry) if entry else None
    target, _ = ensure_venv(cache, contract.requirements_sha(code.manifest), requirements, log=print)
    return target / "bin"


def _secret_files(secrets: dict, work: Path) -> dict[str, Path]:
    mounts = {}
    for i, (mount_path, values) in enumerate(sorted(secrets["files"].items())):
        folder = work / f"secret-{i}"
        folder.mkdir(mode=0o700)
        for key, value in values.items():
            (folder / key).write_text(value)
            (folder / key).chmod(0o400)
        mounts[mount_path] = folder
    return mounts


def process_datum(ctx: Context, datum_id: str, datum: Datum, mounts: dict[str, Path]) -> dict:
    """One datum, up to datum_tries times; returns its outcome (with per-phase timing for enable_stats)."""
    spec = ctx.job.spec
    files = datum_files(datum)
    lazy_names = {p.name for p in datum if p.lazy}
    datum_timeout, _ = pps.timeouts(spec)
    started = time.monotonic()
    stats: dict = {}
    error = ""
    for attempt in range(1, spec.datum_tries + 1):
        with tempfile.TemporaryDirectory(prefix="datum-", dir=ctx.work) as tmp:
            root = Path(tmp)
            pfs_dir = ctx.pfs_root or root / "pfs"
            if ctx.pfs_root:
                _clear(pfs_dir)
            out_dir = pfs_dir / "out"
            out_dir.mkdir(parents=True)
            for part in datum:
                (pfs_dir / part.name).mkdir(parents=True, exist_ok=True)
            log_path = root / "datum.log"
            print(f"datum {datum_label(datum)} (attempt {attempt}/{spec.datum_tries})", flush=True)
            t0 = time.monotonic()
            lazy = LazyInputs(ctx.store, {k: e for k, e in files.items() if k.split("/", 1)[0] in lazy_names}, pfs_dir)
            eager = {k: e for k, e in files.items() if k.split("/", 1)[0] not in lazy_names}
            try:
                ctx.store.materialize(eager, pfs_dir)
                lazy.start()
                t1 = time.monotonic()
                env = user_env(ctx.env_bin, {
                    **spec.transform.env, "PACH_JOB_ID": ctx.job.job_id, "PACH_DATUM_ID": datum_id,
                    "PACH_PIPELINE_NAME": ctx.job.name,
                    **{f"{p.name}_COMMIT": p.commit or "" for p in datum}}, home=ctx.work)
                env.update(ctx.secrets["env"])
                argv = list(spec.transform.cmd)
                if ctx.pfs_root is None:
                    argv = pfs_argv(argv, pfs_dir=pfs_dir, names=[p.name for p in datum], out_dir=out_dir,
                                    cwd=ctx.code_dir, mounts=mounts)
                stdin = "\n".join(spec.transform.stdin) + "\n" if spec.transform.stdin else None
                code, tail, timed_out = run_transform(argv, ctx.code_dir, env, stdin, datum_timeout, log_path,
                                                      ctx.redact)
            except DatumFailed as exc:
                code, tail, timed_out, t1 = -1, [str(exc)], False, time.monotonic()
                log_path.write_text(str(exc) + "\n")
            finally:
                lazy.stop()
            t2 = time.monotonic()
            stats = {"download_seconds": round(t1 - t0, 3), "process_seconds": round(t2 - t1, 3),
                     "download_bytes": sum(e["size"] for e in eager.values()) + lazy.bytes_read}
            log_sha = ctx.store.put_blob_bytes(log_path.read_bytes())
            if code == 0 and not timed_out:
                try:
                    uploads, linked = collect_outputs(out_dir, files)
                    report = ctx.store.upload_files(uploads)
                except DatumFailed as exc:
                    error = str(exc)
                else:
                    outputs = dict(sorted({**report.manifest, **linked}.items()))
                    stats.update(upload_seconds=round(time.monotonic() - t2, 3), upload_bytes=report.bytes_uploaded)
                    return {"status": "processed", "attempts": attempt, "log": log_sha, "outputs": outputs,
                            "seconds": round(time.monotonic() - started, 3), **stats}
            elif timed_out:
                error = f"ran past datum_timeout {spec.datum_timeout} and was stopped"
            else:
                error = (tail[-1] if tail else "") or f"exit code {code}"
            print(f"datum {datum_label(datum)} failed: {error}", file=sys.stderr, flush=True)
    return {"status": "failed", "attempts": spec.datum_tries, "error": error, "log": log_sha,
            "seconds": round(time.monotonic() - started, 3), **stats}


def _parts(datum: Datum) -> list[dict]:
    return [{"name": p.name, "repo": p.repo, "commit": p.commit, "path": p.path} for p in datum]


def process(args: argparse.Namespace) -> int:
    secrets = take_secrets()
    store = contract.store_from_env()
    job = load_job(store, args)
    wanted = _chunk(store, args)
    unknown = [d for d in wanted if d not in job.datums]
    if unknown:
        raise SystemExit(f"datums {', '.join(u[:12] for u in unknown[:5])} are not among pipeline {job.name}'s "
                         "datums; the inputs changed since the plan, run it again")
    counts = {"processed": 0, "skipped": 0, "failed": 0}
    failures = []
    pfs_root = Path(os.environ[PFS_ROOT_ENV]) if os.environ.get(PFS_ROOT_ENV) else None
    with tempfile.TemporaryDirectory(prefix="trainyard-pps-") as tmp:
        work = Path(tmp)
        code_dir = work / "code"
        code_dir.mkdir()
        env_bin = None
        if job.code is not None:
            store.materialize(job.code.manifest, code_dir)
            env_bin = _environment(store, job.code, os.environ.get("TRAINYARD_VENV_CACHE") or config.load().venv_cache)
        else:
            image = f" (transform.image {job.spec.transform.image} runs only on the kubernetes runner)" \
                if job.spec.transform.image else ""
            print(f"note: pipeline {job.name} has no source bundle, so locally transform.cmd runs with this machine's "
                  f"tools in an empty working directory{image}; give one with `trainyard pipeline update -f SPEC "
                  "--source DIR_OR_REPO`", flush=True)
        ctx = Context(store=store, job=job, code_dir=code_dir, env_bin=env_bin, work=work, secrets=secrets,
                      redact=redactor(secrets), pfs_root=pfs_root)
        mounts = _secret_files(secrets, work)
        done = _processed(store, job)
        with RecordWriter(store, job.dag_id, pps.TRANSFORM_STEP) as records:
            for datum_id in wanted:
                datum = job.datums[datum_id]
                if datum_key(datum_id, job.version, {}) in done:
                    counts["skipped"] += 1
                    continue
                outcome = process_datum(ctx, datum_id, datum, mounts)
                record_outcome(store, records, job, datum_id, datum, outcome, counts, failures)
    return _report(job, counts, failures)


def _processed(store: Store, job: Job) -> set[str]:
    """The keys of the datums this pipeline has processed (a retried task skips them), in a few reads."""
    return datum_records(store, job.dag_id, pps.TRANSFORM_STEP).keys()


def record_outcome(store: Store, records: RecordWriter, job: Job, datum_id: str, datum: Datum, outcome: dict,
                   counts: dict, failures: list) -> None:
    """Add a processed datum's record to the task's batch (published after its outputs: later runs skip on it) or
    note its failure; keep its stats."""
    counts[outcome["status"]] += 1
    if outcome["status"] == "processed":
        records.add(DatumRecord(
            datum=datum_label(datum), datum_id=datum_id, key=datum_key(datum_id, job.version, {}), code=job.version,
            inputs=_parts(datum), **{k: outcome[k] for k in ("outputs", "attempts", "seconds", "log")}))
    else:
        failures.append({"datum": datum_label(datum), "error": outcome["error"], "attempts": outcome["attempts"]})
    if job.spec.enable_stats:
        timing = {k: v for k, v in outcome.items() if k not in ("status", "outputs")}
        pps.save_datum_stats(store, DatumStats(
            pipeline=job.name, job=job.job_id, datum=datum_id, label=datum_label(datum),
            state="success" if outcome["status"] == "processed" else "failed", inputs=_parts(datum), time=time.time(),
            files=len(outcome.get("outputs", {})), **timing))


def _report(job: Job, counts: dict, failures: list) -> int:
    print(f"pipeline {job.name}: {counts['processed']} processed, {counts['skipped']} skipped, {counts['failed']} "
          "failed", flush=True)
    # Failures last: the task's error message is the step's last line, so it names the datum and its error.
    for failure in failures:
        print(f"datum {failure['datum']} failed after {failure['attempts']} attempt(s): {failure['error']}",
              flush=True)
    contract.write_result({**counts, "failures": failures[:RESULT_FAILURES]})
    return 1 if failures else 0


# -- on Kubernetes: prepare (trainyard's init container), the transform's image (pfs-driver.sh), finish -------------
# The transform runs in transform.image, which holds no store credentials: trainyard's own containers fetch each
# datum before it starts and upload what it wrote after it ends, through volumes the pod shares.
DATA_DIR = Path("/data")
RUNTIME_DIR = Path("/trainyard")
DRIVER = Path(__file__).with_name("pfs-driver.sh")
# busybox `timeout` ends a command with SIGTERM: the shell reports 143 (124 for GNU timeout).
TIMEOUT_CODES = (124, 143)


def _datum_dirs(data: Path) -> list[Path]:
    return sorted(p for p in (data / "datums").iterdir() if p.is_dir()) if (data / "datums").is_dir() else []


def prepare(args: argparse.Namespace) -> int:
    """Lay out each pending datum of the chunk for pfs-driver.sh, and put the driver and a static shell beside it."""
    import shlex

    store = contract.store_from_env()
    job = load_job(store, args)
    data, runtime = Path(args.data_dir), Path(args.runtime_dir)
    busybox = shutil.which("busybox") or "/bin/busybox"
    runtime.mkdir(parents=True, exist_ok=True)
    shutil.copy(busybox, runtime / "busybox")
    shutil.copy(DRIVER, runtime / "pfs-driver.sh")
    (runtime / "busybox").chmod(0o755)
    spec = job.spec
    datum_timeout, _ = pps.timeouts(spec)
    (data / "stdin").write_text("\n".join(spec.transform.stdin) + "\n" if spec.transform.stdin else "")
    (data / "tries").write_text(str(spec.datum_tries))
    (data / "timeout").write_text(str(int(datum_timeout or 0)))
    prepared = skipped = 0
    done = _processed(store, job)
    for n, datum_id in enumerate(_chunk(store, args)):
        datum = job.datums.get(datum_id)
        if datum is None:
            raise SystemExit(f"datum {datum_id[:12]} is not among pipeline {job.name}'s datums; the inputs changed "
                             "since the plan, run it again")
        if datum_key(datum_id, job.version, {}) in done:
            skipped += 1
            continue
        folder = data / "datums" / f"{n:06d}"
        for part in datum:
            (folder / "in" / part.name).mkdir(parents=True, exist_ok=True)
        store.materialize(datum_files(datum), folder / "in")
        env = {"PACH_JOB_ID": job.job_id, "PACH_DATUM_ID": datum_id, "PACH_PIPELINE_NAME": job.name,
               **{f"{p.name}_COMMIT": p.commit or "" for p in datum}}
        (folder / "env").write_text("".join(f"{k}={shlex.quote(v)}\n" for k, v in env.items()))
        (folder / "id").write_text(datum_id)
        (folder / "label").write_text(datum_label(datum).replace("\n", " ")[:200])
        prepared += 1
    print(f"pipeline {job.name}: {prepared} datum(s) laid out for {spec.transform.image}, {skipped} already "
          "processed", flush=True)
    return 0


def finish(args: argparse.Namespace) -> int:
    """Wait for the transform's container to be done, then upload and record each datum it processed."""
    store = contract.store_from_env()
    job = load_job(store, args)
    data = Path(args.data_dir)
    while not (data / "done").exists():
        time.sleep(0.5)
    counts = {"processed": 0, "skipped": 0, "failed": 0}
    failures: list = []
    datum_timeout, _ = pps.timeouts(job.spec)
    prepared = {(folder / "id").read_text(): folder for folder in _datum_dirs(data)}
    counts["skipped"] = len(_chunk(store, args)) - len(prepared)
    with RecordWriter(store, job.dag_id, pps.TRANSFORM_STEP) as records:
        for datum_id, folder in prepared.items():
            _finish_datum(store, records, job, datum_id, folder, datum_timeout, counts, failures)
    return _report(job, counts, failures)


def _finish_datum(store: Store, records: RecordWriter, job: Job, datum_id: str, folder: Path, datum_timeout,
                  counts: dict, failures: list) -> None:
    """Upload one datum's log and what the transform wrote, and add its record to the task's batch."""
    datum = job.datums[datum_id]
    log = folder / "log"
    log_sha = store.put_blob_bytes(log.read_bytes() if log.exists() else b"")
    code = int((folder / "exit").read_text()) if (folder / "exit").exists() else -1
    attempts = int((folder / "attempts").read_text()) if (folder / "attempts").exists() else 0
    seconds = float((folder / "seconds").read_text()) if (folder / "seconds").exists() else 0.0
    outcome = {"status": "failed", "attempts": attempts, "log": log_sha, "seconds": seconds}
    if code == 0:
        try:
            uploads, linked = collect_outputs(folder / "out", datum_files(datum))
            report = store.upload_files(uploads)
        except DatumFailed as exc:
            outcome["error"] = str(exc)
        else:
            outcome.update(status="processed", outputs=dict(sorted({**report.manifest, **linked}.items())),
                           upload_bytes=report.bytes_uploaded)
    elif code == -1:
        outcome["error"] = "the transform's container ended before this datum ran (see its log)"
    elif datum_timeout and code in TIMEOUT_CODES:
        outcome["error"] = f"ran past datum_timeout {job.spec.datum_timeout} and was stopped"
    else:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
        outcome["error"] = (tail[0] if tail else "") or f"exit code {code}"
    record_outcome(store, records, job, datum_id, datum, outcome, counts, failures)


# -- collect -----------------------------------------------------------------------------------------------------------
def collect(args: argparse.Namespace) -> int:
    store = contract.store_from_env()
    job = load_job(store, args)
    labels: dict[str, list[str]] = {}  # datum key -> the labels of the datums with that key
    for datum_id, datum in job.datums.items():
        labels.setdefault(datum_key(datum_id, job.version, {}), []).append(datum_label(datum))
    recorded = datum_records(store, job.dag_id, pps.TRANSFORM_STEP)
    located = recorded.locate(labels)
    missing = sorted(label for key, named in labels.items() if key not in located for label in named)
    merged, origin, migrated = merge_records(
        store, recorded, located, labels, path_of=lambda label, rel: rel,
        conflict=lambda first, second, rel: f"datums {first} and {second} both wrote /pfs/out/{rel} with different "
                                            "content; each datum must write its own paths (e.g. name outputs after "
                                            "the input file)")
    if missing:
        print(f"{len(missing)} datum(s) have no output record: {'; '.join(missing[:5])}"
              f"{' ...' if len(missing) > 5 else ''}", file=sys.stderr)
        return 1
    before = store.branch_head(job.name)
    over = ", ".join(f"{i['repo']}:{(i.get('commit') or 'empty')[:5]}" for i in job.inputs)
    commit = None
    if merged:
        commit, created = store.commit(job.name, merged, message=f"pipeline {job.name} job {job.job_id} over "
                                                                 f"{over} ({len(job.datums)} datums)")
        if created or not has_provenance(store, commit):  # the same commit already has it
            save_provenance(store, commit, Provenance(
                pipeline=job.dag_id, step=pps.TRANSFORM_STEP, inputs=[i for i in job.inputs if i.get("commit")],
                files={path: ProvenanceFile(datum=origin[path][0], key=origin[path][1]) for path in sorted(merged)}))
        print(f"{job.name}: {commit.ref} ({len(merged)} file(s) from {len(job.datums)} datum(s)"
              f"{'' if commit.id != before else ', unchanged'})", flush=True)
    else:
        print(f"{job.name}: {len(job.datums)} datum(s) wrote nothing to /pfs/out; no commit", flush=True)
    changed = commit is not None and commit.id != before
    if merged:
        compact_records(store, recorded, migrated)
    pps.save_job(store, PpsJob(pipeline=job.name, job=job.job_id, inputs=job.inputs,
                               output=commit.id if commit else None, changed=changed, datums=len(job.datums),
                               files=len(merged), version=job.version, time=time.time()))
    contract.write_result({"output": f"{commit.repo}:{commit.id}" if commit else "", "changed": changed,
                           "files": len(merged), "datums": len(job.datums)})
    return 0


def _chunk_arguments(parser: argparse.ArgumentParser) -> None:
    chunk = parser.add_mutually_exclusive_group(required=True)
    chunk.add_argument("--datums", help="JSON list of the datum ids this task processes")
    chunk.add_argument("--datums-from", help="SHA:START:STOP, a slice of the plan's pending list stored as blob SHA")


def _chunk(store: Store, args: argparse.Namespace) -> list[str]:
    """The task's datum ids: listed in argv, or a slice of the plan's pending list (a blob) for a large chunk."""
    if args.datums_from:
        sha, start, stop = args.datums_from.split(":")
        return json.loads(store.get_blob_bytes(sha))[int(start):int(stop)]
    return json.loads(args.datums)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="training_images.datum.pps")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("process", help="run the transform on a chunk of datums")
    _arguments(run)
    _chunk_arguments(run)
    _arguments(sub.add_parser("collect", help="merge the datums' outputs into one commit of the output repo"))
    for name, what in (("prepare", "lay out a chunk's datums for the transform's own image (Kubernetes)"),
                       ("finish", "upload and record what the transform's image wrote (Kubernetes)")):
        step = sub.add_parser(name, help=what)
        _arguments(step)
        _chunk_arguments(step)
        step.add_argument("--data-dir", default=str(DATA_DIR), help="the pod volume the datums are laid out in")
        step.add_argument("--runtime-dir", default=str(RUNTIME_DIR), help="where the driver and busybox go")
    args = parser.parse_args(argv)
    return {"process": process, "collect": collect, "prepare": prepare, "finish": finish}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
