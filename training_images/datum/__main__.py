"""Datum step: run a transform over each datum of a chunk, skipping datums whose output exists, retrying alone."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from training_images.datum.inputs import add_step_arguments, load_step
from training_images import sandbox
from training_images.usercode import env_bin_for, run_streaming, user_env
from trainyard import config, contract
from trainyard.datums import datum_key, has_record, save_record
from trainyard.records import DatumRecord
from trainyard.store.versioned import Store


def _command(transform: str, code_dir: Path) -> list[str]:
    if transform.startswith("builtin:"):
        # Built-ins are trainyard's own code: they run on the step's Python with the step's settings.
        return [sys.executable, "-m", f"training_images.builtins.{transform.removeprefix('builtin:').replace('-', '_')}"]
    script = code_dir / transform
    script.chmod(0o755)  # manifests carry content only; the contract makes the transform executable
    return [str(script)]


def _process(store: Store, args, datum: str, files: dict, code_dir: Path, env_bin: Path | None, params_file: Path,
             work: Path) -> dict:
    """One datum, up to --attempts times; a failure here never stops the chunk's other datums."""
    started = time.time()
    for attempt in range(1, args.attempts + 1):
        with tempfile.TemporaryDirectory(prefix="datum-", dir=work) as tmp:
            in_dir, out_dir = Path(tmp) / "in", Path(tmp) / "out"
            out_dir.mkdir()
            store.materialize(files, in_dir)
            env = user_env(env_bin, {contract.PARAMS_ENV: str(params_file), "TRAINYARD_DATUM": datum}, home=work)
            log_path = Path(tmp) / "datum.log"
            print(f"datum {datum} (attempt {attempt}/{args.attempts})", flush=True)
            try:
                argv, _ = sandbox.isolate([*_command(args.transform, code_dir), str(in_dir), str(out_dir)],
                                          cwd=code_dir, keep=[work, Path(tmp), *([env_bin.parent] if env_bin else [])])
            except sandbox.SandboxError as exc:
                raise SystemExit(f"error: {exc}") from None
            code, tail = run_streaming(argv, code_dir, env, log_path)
            log_sha = store.put_blob_bytes(log_path.read_bytes())
            if code == 0:
                outputs = {p.relative_to(out_dir).as_posix(): p for p in sorted(out_dir.rglob("*")) if p.is_file()}
                report = store.upload_files(outputs)
                return {"datum": datum, "status": "processed", "attempts": attempt, "log": log_sha,
                        "outputs": report.manifest, "seconds": round(time.time() - started, 3)}
            error = tail[-1] if tail else f"exit code {code}"
            print(f"datum {datum} failed (exit {code}): {error}", file=sys.stderr, flush=True)
    return {"datum": datum, "status": "failed", "attempts": args.attempts, "error": error, "log": log_sha,
            "seconds": round(time.time() - started, 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="training_images.datum")
    add_step_arguments(parser)
    parser.add_argument("--datums", required=True, help="JSON list of the datum paths this task processes")
    parser.add_argument("--attempts", type=int, default=2, help="tries per datum before it counts as failed")
    parser.add_argument("--venv-cache", default=config.load().venv_cache)
    args = parser.parse_args(argv)

    wanted = json.loads(args.datums)
    store = contract.store_from_env()
    step = load_step(store, args)
    units, specs, code, version, params = step.units, step.specs, step.code, step.version, step.params
    unknown = [d for d in wanted if d not in units]
    if unknown:
        raise SystemExit(f"datums {', '.join(unknown[:5])} are not among the step's inputs {args.inputs}")
    results, counts = [], {"processed": 0, "skipped": 0, "failed": 0}
    with tempfile.TemporaryDirectory(prefix="trainyard-datum-") as tmp:
        work = Path(tmp)
        code_dir = work / "code"
        code_dir.mkdir()
        if code:
            store.materialize(code.manifest, code_dir)
        params_file = work / "params.json"
        params_file.write_text(json.dumps(params, sort_keys=True))
        env_bin = env_bin_for(code, args.venv_cache) if code else None
        for datum in wanted:
            key = datum_key(units[datum]["id"], version, params)
            if has_record(store, args.pipeline, args.step, key):
                counts["skipped"] += 1
                results.append({"datum": datum, "status": "skipped", "key": key})
                continue
            outcome = _process(store, args, datum, units[datum]["files"], code_dir, env_bin, params_file, work)
            outcome["key"] = key
            counts[outcome["status"]] += 1
            if outcome["status"] == "processed":
                # Outputs are uploaded; the record is published last and is what later runs skip on.
                save_record(store, args.pipeline, args.step, DatumRecord(
                    **outcome, datum_id=units[datum]["id"], code=version, params=params, inputs=specs))
            results.append({k: v for k, v in outcome.items() if k != "outputs"})
    print(f"step {args.step}: {counts['processed']} processed, {counts['skipped']} skipped, "
          f"{counts['failed']} failed", flush=True)
    # Failures last: the task's error message is the step's last line, so it names the datum and its error.
    for outcome in results:
        if outcome["status"] == "failed":
            print(f"datum {outcome['datum']} failed after {outcome['attempts']} attempt(s): {outcome['error']}",
                  flush=True)
    contract.write_result({**counts, "datums": results})
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
