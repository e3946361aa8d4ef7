"""Datum step: run a transform over each datum of a chunk, skipping datums whose output exists, retrying alone.

Like the train step it runs in three phases: `prepare` (store credentials) lays out each pending datum's inputs and
the code, `run` (no credentials) runs the transform on each, `finish` (store credentials) uploads the outputs and
publishes the records. Locally one process runs all three, the transform in the sandbox; in a Kubernetes pod each
is its own container, so the one running user code holds no store Secret.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from pydantic import BaseModel

from training_images import phases, sandbox
from training_images.datum.inputs import StepInputs, add_step_arguments, load_step
from training_images.usercode import env_bin_for, run_streaming, user_env
from trainyard import config, contract
from trainyard.datums import RecordWriter, datum_key, datum_records
from trainyard.records import DatumRecord
from trainyard.store.versioned import Store


class PlannedDatum(BaseModel):
    """One pending datum of the chunk, laid out under `folder` (in/, and after `run`: out/, log, exit, attempts)."""

    datum: str
    datum_id: str
    key: str
    folder: str


class DatumPlan(BaseModel):
    """What `prepare` hands to `run` and `finish` through the work dir."""

    schema_version: int = 1
    cmd: list[str]
    code_dir: str
    env_bin: str | None = None
    params_file: str
    attempts: int
    pending: list[PlannedDatum]
    skipped: list[dict]


def _command(transform: str, code_dir: Path) -> list[str]:
    if transform.startswith("builtin:"):
        # Built-ins are trainyard's own code: they run on the step's Python with the step's settings.
        return [sys.executable, "-m", f"training_images.builtins.{transform.removeprefix('builtin:').replace('-', '_')}"]
    script = code_dir / transform
    script.chmod(0o755)  # manifests carry content only; the contract makes the transform executable
    return [str(script)]


def _wanted(store: Store, args) -> list[str]:
    """The chunk's datums: listed in argv, or a slice of the plan's pending list (a blob) for a large chunk."""
    if args.datums_from:
        sha, start, stop = args.datums_from.split(":")
        return json.loads(store.get_blob_bytes(sha))[int(start):int(stop)]
    return json.loads(args.datums)


def prepare(args, work: Path, *, shared: bool = False) -> DatumPlan:
    """Lay out the code and each pending datum's inputs under `work`; needs the store."""
    store = contract.store_from_env()
    wanted = _wanted(store, args)
    step = load_step(store, args)
    units, code, version, params = step.units, step.code, step.version, step.params
    unknown = [d for d in wanted if d not in units]
    if unknown:
        raise SystemExit(f"datums {', '.join(unknown[:5])} are not among the step's inputs {args.inputs}")
    code_dir = work / "code"
    code_dir.mkdir(parents=True, exist_ok=True)
    if code:
        store.materialize(code.manifest, code_dir)
    params_file = work / "params.json"
    params_file.write_text(json.dumps(params, sort_keys=True))
    env_bin = env_bin_for(code, args.venv_cache) if code else None
    pending, skipped = [], []
    done = datum_records(store, args.pipeline, args.step).keys()  # a retried task skips what it already recorded
    for n, datum in enumerate(wanted):
        key = datum_key(units[datum]["id"], version, params)
        if key in done:
            skipped.append({"datum": datum, "status": "skipped", "key": key})
            continue
        folder = work / "datums" / f"{n:06d}"
        store.materialize(units[datum]["files"], folder / "in")
        (folder / "out").mkdir(parents=True)
        pending.append(PlannedDatum(datum=datum, datum_id=units[datum]["id"], key=key, folder=str(folder)))
    plan = DatumPlan(cmd=_command(args.transform, code_dir), code_dir=str(code_dir),
                     env_bin=str(env_bin) if env_bin else None, params_file=str(params_file),
                     attempts=args.attempts, pending=pending, skipped=skipped)
    if shared:  # the user's image may run as another user: it writes outputs and logs next to the inputs
        for path in (work, *(p for p in work.rglob("*") if p.is_dir())):
            path.chmod(0o777)
    (work / phases.PLAN_FILE).write_text(plan.model_dump_json())
    return plan


def run(work: Path) -> None:
    """Run the transform on each pending datum, up to `attempts` times each; holds no store credentials."""
    plan = DatumPlan.model_validate_json((work / phases.PLAN_FILE).read_text())
    env_bin = Path(plan.env_bin) if plan.env_bin else None
    try:
        for item in plan.pending:
            folder = Path(item.folder)
            started = time.time()
            for attempt in range(1, plan.attempts + 1):
                out_dir = folder / "out"
                shutil.rmtree(out_dir, ignore_errors=True)
                out_dir.mkdir()
                env = user_env(env_bin, {contract.PARAMS_ENV: plan.params_file, "TRAINYARD_DATUM": item.datum},
                               home=work)
                print(f"datum {item.datum} (attempt {attempt}/{plan.attempts})", flush=True)
                try:
                    argv, _ = sandbox.isolate([*plan.cmd, str(folder / "in"), str(out_dir)], cwd=Path(plan.code_dir),
                                              keep=[work, *([env_bin.parent] if env_bin else [])])
                except sandbox.SandboxError as exc:
                    (folder / "log").write_text(f"error: {exc}\n")
                    code = 2
                else:
                    code, tail = run_streaming(argv, Path(plan.code_dir), env, folder / "log")
                (folder / "exit").write_text(f"{code} {attempt} {time.time() - started:.3f}")
                if code == 0:
                    break
                lines = (folder / "log").read_text(errors="replace").splitlines()
                print(f"datum {item.datum} failed (exit {code}): {lines[-1] if lines else ''}", file=sys.stderr,
                      flush=True)
    finally:
        (work / phases.DONE_FILE).touch()


def _finish_datum(store: Store, step: StepInputs, records: RecordWriter, item: PlannedDatum, counts: dict) -> dict:
    """Upload one datum's log and outputs and add its record to the batch; returns its outcome for the result."""
    folder = Path(item.folder)
    log = folder / "log"
    log_sha = store.put_blob_bytes(log.read_bytes() if log.exists() else b"")
    parts = (folder / "exit").read_text().split() if (folder / "exit").exists() else []
    code = int(parts[0]) if parts else -1
    attempts = int(parts[1]) if len(parts) > 1 else 0
    seconds = round(float(parts[2]), 3) if len(parts) > 2 else 0.0
    outcome = {"datum": item.datum, "key": item.key, "log": log_sha, "attempts": attempts, "seconds": seconds}
    if code == 0:
        out_dir = folder / "out"
        outputs = {p.relative_to(out_dir).as_posix(): p for p in sorted(out_dir.rglob("*")) if p.is_file()}
        report = store.upload_files(outputs)
        outcome.update(status="processed", outputs=report.manifest)
        # Outputs are uploaded; the record is published after them and is what later runs skip on.
        records.add(DatumRecord(**outcome, datum_id=item.datum_id, code=step.version, params=step.params,
                                inputs=step.specs))
    else:
        lines = log.read_text(errors="replace").strip().splitlines() if log.exists() else []
        error = (lines[-1] if lines else "") or ("the transform's container ended before this datum ran"
                                                 if code == -1 else f"exit code {code}")
        outcome.update(status="failed", error=error)
    counts[outcome["status"]] += 1
    return {k: v for k, v in outcome.items() if k != "outputs"}


# The result is the task's XCom and must stay small: a chunk of thousands of datums lists this many, failures first.
RESULT_DATUMS = 50


def _listed(results: list[dict]) -> dict:
    if len(results) <= RESULT_DATUMS:
        return {"datums": results}
    shown = sorted(results, key=lambda r: r["status"] != "failed")[:RESULT_DATUMS]
    return {"datums": shown, "datums_left_out": len(results) - len(shown)}


def finish(args, work: Path, *, follow: bool = False) -> int:
    """Upload each datum's log and outputs, publish its record, report the chunk; needs the store."""
    if follow:
        phases.follow(work)  # the transforms' output is the run container's own log
    store = contract.store_from_env()
    plan = DatumPlan.model_validate_json((work / phases.PLAN_FILE).read_text())
    step = load_step(store, args)
    results = list(plan.skipped)
    counts = {"processed": 0, "skipped": len(plan.skipped), "failed": 0}
    # Records go out in batches, each after its datums' outputs are uploaded; what was added is published even
    # when a later datum's upload fails.
    with RecordWriter(store, args.pipeline, args.step) as records:
        for item in plan.pending:
            results.append(_finish_datum(store, step, records, item, counts))
    print(f"step {args.step}: {counts['processed']} processed, {counts['skipped']} skipped, "
          f"{counts['failed']} failed", flush=True)
    # Failures last: the task's error message is the step's last line, so it names the datum and its error.
    for outcome in results:
        if outcome["status"] == "failed":
            print(f"datum {outcome['datum']} failed after {outcome['attempts']} attempt(s): {outcome['error']}",
                  flush=True)
    contract.write_result({**counts, **_listed(results)})
    return 1 if counts["failed"] else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="training_images.datum")
    add_step_arguments(parser)
    chunk = parser.add_mutually_exclusive_group(required=True)
    chunk.add_argument("--datums", help="JSON list of the datum paths this task processes")
    chunk.add_argument("--datums-from", help="SHA:START:STOP, a slice of the plan's pending list stored as blob SHA")
    parser.add_argument("--attempts", type=int, default=2, help="tries per datum before it counts as failed")
    parser.add_argument("--venv-cache", default=os.environ.get("TRAINYARD_VENV_CACHE"))
    phases.add_phase_arguments(parser)
    args = parser.parse_args(argv)
    args.venv_cache = args.venv_cache or config.load().venv_cache
    if args.phase != "all":
        if not args.work:
            parser.error(f"--phase {args.phase} needs --work")
        work = Path(args.work)
        if args.phase == "prepare":
            phases.install_busybox(args.runtime_dir)
            prepare(args, work, shared=True)
            return 0
        if args.phase == "run":
            run(work)
            return 0
        return finish(args, work, follow=True)
    with tempfile.TemporaryDirectory(prefix="trainyard-datum-") as tmp:
        work = Path(tmp)
        prepare(args, work)
        run(work)
        return finish(args, work)


if __name__ == "__main__":
    sys.exit(main())
