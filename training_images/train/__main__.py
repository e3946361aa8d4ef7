"""Train step: fetch source and data commits, run the bundle's training code, upload the model; in three phases.

`prepare` (store credentials) materializes the inputs and writes the plan; `run` (no credentials) runs the user's
code; `finish` (store credentials) uploads what it wrote and records the outcome. Locally one process does all three
with user code in the sandbox; in a Kubernetes pod each is its own container (operators/train.py), so the user's
container never holds the store's Secret. The step body is the same everywhere; only how it is launched differs.
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

from training_images import aicenter, phases, sandbox
from training_images.usercode import env_bin_for, run_streaming, user_env
from trainyard import config, contract, runs
from trainyard.archives import ArchiveError, ArchiveLimits, unpack_archives
from trainyard.bundles import PARAMS_FILES, static_params
from trainyard.errors import TrainyardError
from trainyard.records import TrainedModel, TrainFailure
from trainyard.store import parse_ref

LOG_FILE, EXIT_FILE = "train.log", "exit"


class TrainPlan(BaseModel):
    """What `prepare` hands to `run` and `finish` through the work dir: paths, the user's command and its env."""

    schema_version: int = 1
    model_id: str
    label: str = ""
    source: str
    source_id: str
    data: str
    data_id: str
    params: dict
    cmd: list[str]
    cwd: str
    env: dict[str, str]
    source_dir: str
    data_dir: str
    hyper_file: str
    out_dir: str
    env_bin: str | None = None
    env_parameters: dict[str, str] = {}


def _params(source_dir: Path, hyper: dict) -> dict:
    files = {name: source_dir / name for name in PARAMS_FILES}
    return {**static_params(lambda name: files[name].read_bytes() if files[name].is_file() else None), **hyper}


def _train_command(source_dir: Path, data_dir: Path, out_dir: Path) -> tuple[list[str], Path]:
    script = source_dir / "model" / "train"
    if script.is_file():
        script.chmod(0o755)  # manifests carry content only; the contract makes model/train executable
        return [str(script), str(out_dir)], source_dir / "model"
    # "python" resolves on the user env's PATH, so the bundle's virtualenv runs the AI Center contract runner; it
    # is standard library only and run by path, because the user's environment need not have trainyard installed.
    # In a pod it is copied into the work dir, since the user's image may keep Python packages elsewhere.
    return ["python", str(source_dir.parent / "aicenter.py"), "--source", str(source_dir), "--data", str(data_dir),
            "--out", str(out_dir)], out_dir / "model"


def _saves_training_data(store, pipeline: str) -> bool:
    """Whether this run keeps its training data (`--save-training-data`), as its plan recorded it."""
    run_id = os.environ.get("TRAINYARD_RUN_ID")
    if not run_id or not runs.has_plan(store, pipeline, run_id):
        return False  # the step run by hand, outside a pipeline run
    return runs.load_plan(store, pipeline, run_id).save_training_data


def _aicenter_env(source_dir: Path, params: dict) -> dict[str, str]:
    """AI Center's pipeline parameters are environment variables: export the params to a train.py package."""
    if (source_dir / "model" / "train").is_file():
        return {}  # kaos code reads params.json and /pfs/hyper; its environment stays as it was
    variables, skipped = contract.env_parameters(params)
    if skipped:
        print(f"params not exported as environment variables (reserved or not a valid name): {', '.join(skipped)}; "
              f"train.py reads them from ${contract.PARAMS_ENV}", flush=True)
    return variables


def prepare(args, work: Path, *, shared: bool = False) -> TrainPlan:
    """Materialize the inputs under `work` (or /pfs in pods) and write the plan; needs the store. `shared`: the
    work dir is a pod volume that another container (maybe another user) writes to."""
    hyper = json.loads(args.params)
    if not isinstance(hyper, dict):
        raise SystemExit(f"--params must be a JSON object of hyperparameters, got {args.params!r}")
    store = contract.store_from_env()
    source = store.resolve(*parse_ref(args.source))
    data = store.resolve(*parse_ref(args.data))
    source_dir, data_dir, out_dir, hyper_dir = (work / n for n in ("src", "data", "out", "hyper"))
    if os.environ.get("TRAINYARD_PFS_ROOT"):
        # In pods /pfs is an emptyDir: inputs go exactly where kaos code looks for them.
        pfs = Path(os.environ["TRAINYARD_PFS_ROOT"])
        data_dir, hyper_dir = pfs / "data", pfs / "hyper"
    store.materialize(source.manifest, source_dir, where=f"source commit {source.ref}")
    store.materialize(data.manifest, data_dir, where=f"data commit {data.ref}")
    try:
        # Zip and tar archives in the data bundle are unpacked next to themselves, within the configured caps.
        unpack_archives(data_dir, ArchiveLimits.from_settings(config.load()), log=lambda m: print(m, flush=True))
    except ArchiveError as exc:
        raise SystemExit(f"error: {exc}") from None
    for sub in ("model", "metrics", "artifacts"):
        (out_dir / sub).mkdir(parents=True)
    hyper_dir.mkdir(exist_ok=True)
    shutil.copy(aicenter.__file__, work / "aicenter.py")
    params = _params(source_dir, hyper)
    # The hyperparameters are alone in their dir: kaos code reads "the first *.json" there.
    params_file, hyper_file = work / "params.json", hyper_dir / "hyperparams.json"
    params_file.write_text(json.dumps(params, indent=2, sort_keys=True))
    hyper_file.write_text(json.dumps(hyper, indent=2, sort_keys=True))
    mid = contract.model_id(source.id, data.id, params)
    if args.expect_model_id and mid != args.expect_model_id:
        raise SystemExit(f"planned model {args.expect_model_id} but these inputs give {mid}; "
                         "the source's params.json changed between resolve and train")
    cmd, cwd = _train_command(source_dir, data_dir, out_dir)
    env_bin = env_bin_for(source, args.venv_cache)
    env_parameters = _aicenter_env(source_dir, params)
    saves_data = "true" if _saves_training_data(store, args.pipeline) else "false"
    env = {
        **env_parameters,  # first, so no parameter can replace what the contract sets
        contract.SAVE_TRAINING_DATA_ENV: saves_data,
        contract.DATA_DIR_ENV: str(data_dir),
        contract.PARAMS_ENV: str(params_file),
        contract.HYPERPARAMS_ENV: str(hyper_file),
        contract.SOURCE_DIR_ENV: str(source_dir),
        contract.ARTIFACTS_ENV: str(out_dir / "artifacts"),
        contract.MODEL_ID_ENV: mid,
    }
    plan = TrainPlan(model_id=mid, label=args.label, source=source.ref, source_id=source.id, data=data.ref,
                     data_id=data.id, params=params, cmd=cmd, cwd=str(cwd), env=env, source_dir=str(source_dir),
                     data_dir=str(data_dir), hyper_file=str(hyper_file), out_dir=str(out_dir),
                     env_bin=str(env_bin) if env_bin else None, env_parameters=env_parameters)
    if shared:
        # The user's image may run as another user: it must be able to write its outputs and its log.
        for path in (work, out_dir, *(p for p in out_dir.rglob("*") if p.is_dir())):
            path.chmod(0o777)
    (work / phases.PLAN_FILE).write_text(plan.model_dump_json())
    print(f"training model {mid}: source {source.ref} data {data.ref} params {json.dumps(params, sort_keys=True)}",
          flush=True)
    return plan


def _deadline() -> float | None:
    """The step's deadline (TRAINYARD_DEADLINE, epoch seconds), set by the runner from the step's --timeout."""
    value = os.environ.get("TRAINYARD_DEADLINE", "")
    try:
        return float(value) if value else None
    except ValueError:
        return None


def run(work: Path) -> int:
    """Run the user's code as the plan says, in the sandbox; holds no store credentials (and needs none)."""
    plan = TrainPlan.model_validate_json((work / phases.PLAN_FILE).read_text())
    env_bin = Path(plan.env_bin) if plan.env_bin else None
    env = user_env(env_bin, plan.env, home=work)
    started = time.time()
    code = 1
    try:
        try:
            cmd, notes = sandbox.user_command(
                plan.cmd, source_dir=Path(plan.source_dir), data_dir=Path(plan.data_dir), hyper=Path(plan.hyper_file),
                out_dir=Path(plan.out_dir), cwd=Path(plan.cwd), keep=[work, *([env_bin.parent] if env_bin else [])])
        except sandbox.SandboxError as exc:
            print(f"error: {exc}", flush=True)
            (work / LOG_FILE).write_text(f"error: {exc}\n")
            code = 2
            return code
        for note in notes:
            print(note, flush=True)
        code, _ = run_streaming(cmd, Path(plan.cwd), env, work / LOG_FILE, deadline=_deadline())
        return code
    finally:
        (work / EXIT_FILE).write_text(f"{code} {time.time() - started:.3f}")
        (work / phases.DONE_FILE).touch()


def finish(args, work: Path, *, follow: bool = False) -> int:
    """Upload the log and outputs, record the outcome, write the step's result; needs the store."""
    if follow:
        phases.follow(work, work / LOG_FILE)
    store = contract.store_from_env()
    plan = TrainPlan.model_validate_json((work / phases.PLAN_FILE).read_text())
    log_path = work / LOG_FILE
    exit_text = (work / EXIT_FILE).read_text().split() if (work / EXIT_FILE).exists() else []
    code = int(exit_text[0]) if exit_text else -1
    duration = float(exit_text[1]) if len(exit_text) > 1 else 0.0
    log_bytes = log_path.read_bytes() if log_path.exists() else b""
    log_sha = store.put_blob_bytes(log_bytes)
    tail = log_bytes.decode(errors="replace").splitlines()[-20:]
    if code != 0:
        error = (tail[-1] if tail else "") or ("the training container ended before the user's code ran"
                                               if code == -1 else f"exit code {code}")
        print(f"training failed with exit code {code}; last lines:\n" + "\n".join(tail), file=sys.stderr)
        _record(store, args, TrainFailure(model_id=plan.model_id, label=plan.label, exit_code=code, log=log_sha,
                                          error=error, tail=tail))
        return code if code > 0 else 1
    out_dir = Path(plan.out_dir)
    try:
        metrics = contract.read_metrics(out_dir / "metrics")
    except ValueError as exc:
        _record(store, args, TrainFailure(model_id=plan.model_id, label=plan.label, log=log_sha, error=str(exc)))
        raise SystemExit(str(exc)) from None
    outputs = {p.relative_to(out_dir).as_posix(): p for p in sorted(out_dir.rglob("*")) if p.is_file()}
    if not any(rel.startswith("model/") for rel in outputs):
        print(f"warning: training wrote nothing under {out_dir / 'model'}", flush=True)
    report = store.upload_files(outputs)
    outputs_sha = store.put_blob_bytes(json.dumps(report.manifest, sort_keys=True).encode())
    print(f"metrics: {json.dumps(metrics, sort_keys=True)}", flush=True)
    artifacts = sorted(rel for rel in report.manifest if rel.startswith("artifacts/"))
    env_bin = Path(plan.env_bin) if plan.env_bin else None
    trained = TrainedModel(
        model_id=plan.model_id, label=plan.label, source=plan.source, source_id=plan.source_id, data=plan.data,
        data_id=plan.data_id, params=plan.params, params_hash=contract.params_hash(plan.params), metrics=metrics,
        outputs=outputs_sha, log=log_sha, train_seconds=round(duration, 3), artifacts=artifacts,
        env=f"venv:{env_bin.parent.name}" if env_bin else "image", env_parameters=plan.env_parameters,
        task_id=os.environ.get("TRAINYARD_TASK_ID", "train"),
        map_index=os.environ.get("TRAINYARD_MAP_INDEX"),
    )
    # Outputs are uploaded; this record lets the register step publish the model even if XComs are lost.
    _record(store, args, trained)
    contract.write_result(trained.to_json())
    return 0


def _record(store, args, outcome: TrainedModel | TrainFailure) -> None:
    """The combination's outcome, for the register step (a step run by hand, outside a run, records nothing)."""
    run_id = os.environ.get("TRAINYARD_RUN_ID")
    if run_id:
        save = runs.save_trained if isinstance(outcome, TrainedModel) else runs.save_failure
        save(store, args.pipeline, run_id, outcome)


def _record_prepare_failure(args, exc: BaseException) -> None:
    """The combination's failure record when its inputs could not be prepared (the store may be what failed)."""
    if not args.expect_model_id:
        return
    if isinstance(exc, SystemExit):
        message, code = (exc.code if isinstance(exc.code, str) else f"exit {exc.code}"), 1
    else:
        message, code = f"{type(exc).__name__}: {exc}", getattr(exc, "exit_code", 1)
    try:
        _record(contract.store_from_env(), args, TrainFailure(model_id=args.expect_model_id, label=args.label,
                                                              exit_code=code, error=message))
    except Exception:  # noqa: BLE001 - the store may be what failed; the step's own error says why
        pass


def _prepare_or_record(args, work: Path, *, shared: bool = False) -> TrainPlan:
    """prepare(), and when it fails (a corrupt blob, a bad archive) the combination's failure record says why, so
    the run reports the real cause rather than "did not run"."""
    try:
        return prepare(args, work, shared=shared)
    except TrainyardError as exc:
        _record_prepare_failure(args, exc)
        # One line, and the error's own exit code (7 for a corrupt blob, 5 for a store that stopped answering).
        print(f"error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(exc.exit_code) from None
    except (Exception, SystemExit) as exc:
        _record_prepare_failure(args, exc)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="training_images.train")
    phases.add_phase_arguments(parser)
    parser.add_argument("--source", help="source commit as repo:id")
    parser.add_argument("--data", help="data commit as repo:id")
    parser.add_argument("--params", default="{}", help="hyperparameters as a JSON object")
    parser.add_argument("--venv-cache", default=os.environ.get("TRAINYARD_VENV_CACHE"))
    parser.add_argument("--workdir", default=os.environ.get("TRAINYARD_WORKDIR"))
    parser.add_argument("--pipeline", default=os.environ.get("TRAINYARD_DAG_ID", "train_pipeline"))
    parser.add_argument("--label", default="", help="the combination's readable label, e.g. kernel=poly,degree=3")
    parser.add_argument("--expect-model-id", help="the model id the resolve step planned for these inputs")
    args = parser.parse_args(argv)
    if args.phase in ("all", "prepare") and not (args.source and args.data):
        parser.error("--source and --data are required")
    if args.phase != "all":
        if not args.work:
            parser.error(f"--phase {args.phase} needs --work")
        work = Path(args.work)
        if args.phase == "prepare":
            args.venv_cache = args.venv_cache or config.load().venv_cache
            phases.install_busybox(args.runtime_dir)
            _prepare_or_record(args, work, shared=True)
            return 0
        if args.phase == "run":
            run(work)
            return 0  # the outcome is in the work dir; `finish` reports it and fails the task
        return finish(args, work, follow=True)
    args.venv_cache = args.venv_cache or config.load().venv_cache
    with tempfile.TemporaryDirectory(prefix="trainyard-train-", dir=args.workdir) as tmp:
        work = Path(tmp)
        _prepare_or_record(args, work)
        run(work)
        return finish(args, work)


if __name__ == "__main__":
    sys.exit(main())
