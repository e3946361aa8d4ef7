"""Train step: materialize source and data commits, run the bundle's training code, upload the model."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from training_images import aicenter, sandbox
from training_images.usercode import env_bin_for, run_streaming, user_env
from trainyard import config, contract, runs
from trainyard.archives import ArchiveError, ArchiveLimits, unpack_archives
from trainyard.bundles import PARAMS_FILES, static_params
from trainyard.records import TrainedModel, TrainFailure
from trainyard.store import parse_ref


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
    return ["python", aicenter.__file__, "--source", str(source_dir), "--data", str(data_dir),
            "--out", str(out_dir)], out_dir / "model"


def _user_env(work: Path, source_dir: Path, data_dir: Path, out_dir: Path, params_file: Path,
              hyper_file: Path, model_id: str, env_bin: Path | None, extra: dict[str, str]) -> dict[str, str]:
    return user_env(env_bin, {
        **extra,  # first, so no parameter can replace what the contract sets
        contract.DATA_DIR_ENV: str(data_dir),
        contract.PARAMS_ENV: str(params_file),
        contract.HYPERPARAMS_ENV: str(hyper_file),
        contract.SOURCE_DIR_ENV: str(source_dir),
        contract.ARTIFACTS_ENV: str(out_dir / "artifacts"),
        contract.MODEL_ID_ENV: model_id,
    }, home=work)


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="training_images.train")
    parser.add_argument("--source", required=True, help="source commit as repo:id")
    parser.add_argument("--data", required=True, help="data commit as repo:id")
    parser.add_argument("--params", default="{}", help="hyperparameters as a JSON object")
    parser.add_argument("--venv-cache", default=config.load().venv_cache)
    parser.add_argument("--workdir", default=os.environ.get("TRAINYARD_WORKDIR"))
    parser.add_argument("--pipeline", default=os.environ.get("TRAINYARD_DAG_ID", "train_pipeline"))
    parser.add_argument("--label", default="", help="the combination's readable label, e.g. kernel=poly,degree=3")
    parser.add_argument("--expect-model-id", help="the model id the resolve step planned for these inputs")
    args = parser.parse_args(argv)

    hyper = json.loads(args.params)
    if not isinstance(hyper, dict):
        raise SystemExit(f"--params must be a JSON object of hyperparameters, got {args.params!r}")
    store = contract.store_from_env()
    source = store.resolve(*parse_ref(args.source))
    data = store.resolve(*parse_ref(args.data))

    with tempfile.TemporaryDirectory(prefix="trainyard-train-", dir=args.workdir) as tmp:
        work = Path(tmp)
        source_dir, data_dir, out_dir, hyper_dir = (work / n for n in ("src", "data", "out", "hyper"))
        if os.environ.get("TRAINYARD_PFS_ROOT"):
            # In pods /pfs is an emptyDir: inputs go exactly where kaos code looks for them.
            pfs = Path(os.environ["TRAINYARD_PFS_ROOT"])
            data_dir, hyper_dir = pfs / "data", pfs / "hyper"
        store.materialize(source.manifest, source_dir)
        store.materialize(data.manifest, data_dir)
        try:
            # Zip and tar archives in the data bundle are unpacked next to themselves, within the configured caps.
            unpack_archives(data_dir, ArchiveLimits.from_settings(config.load()), log=lambda m: print(m, flush=True))
        except ArchiveError as exc:
            raise SystemExit(f"error: {exc}") from None
        for sub in ("model", "metrics", "artifacts"):
            (out_dir / sub).mkdir(parents=True)
        hyper_dir.mkdir(exist_ok=True)
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
        env = _user_env(work, source_dir, data_dir, out_dir, params_file, hyper_file, mid, env_bin,
                        {**env_parameters, contract.SAVE_TRAINING_DATA_ENV: saves_data})
        print(f"training model {mid}: source {source.ref} data {data.ref} params {json.dumps(params, sort_keys=True)}",
              flush=True)
        try:
            cmd, pfs_note = sandbox.pfs_command(cmd, source_dir=source_dir, data_dir=data_dir, hyper=hyper_file,
                                                out_dir=out_dir, cwd=cwd)
        except sandbox.SandboxError as exc:
            raise SystemExit(f"error: {exc}") from None
        if pfs_note:
            print(pfs_note, flush=True)
        log_path = work / "train.log"
        started = time.time()
        code, tail = run_streaming(cmd, cwd, env, log_path)
        duration = time.time() - started
        log_sha = store.put_blob_bytes(log_path.read_bytes())
        if code != 0:
            print(f"training failed with exit code {code}; last lines:\n" + "\n".join(tail), file=sys.stderr)
            _record(store, args, TrainFailure(model_id=mid, label=args.label, exit_code=code, log=log_sha,
                                              error=tail[-1] if tail else f"exit code {code}", tail=tail))
            return code or 1
        try:
            metrics = contract.read_metrics(out_dir / "metrics")
        except ValueError as exc:
            _record(store, args, TrainFailure(model_id=mid, label=args.label, log=log_sha, error=str(exc)))
            raise SystemExit(str(exc)) from None
        outputs = {p.relative_to(out_dir).as_posix(): p for p in sorted(out_dir.rglob("*")) if p.is_file()}
        if not any(rel.startswith("model/") for rel in outputs):
            print(f"warning: training wrote nothing under {out_dir / 'model'}", flush=True)
        report = store.upload_files(outputs)
        outputs_sha = store.put_blob_bytes(json.dumps(report.manifest, sort_keys=True).encode())

    print(f"metrics: {json.dumps(metrics, sort_keys=True)}", flush=True)
    artifacts = sorted(rel for rel in report.manifest if rel.startswith("artifacts/"))
    trained = TrainedModel(
        model_id=mid, label=args.label, source=source.ref, source_id=source.id, data=data.ref, data_id=data.id,
        params=params, params_hash=contract.params_hash(params), metrics=metrics, outputs=outputs_sha, log=log_sha,
        train_seconds=round(duration, 3), artifacts=artifacts,
        env=f"venv:{env_bin.parent.name}" if env_bin else "image", env_parameters=env_parameters,
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


if __name__ == "__main__":
    sys.exit(main())
