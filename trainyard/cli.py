"""The `trainyard` command line: deploy bundles, run the pipeline, inspect runs, models and data (kaos-like)."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shutil
import sys
from pathlib import Path

from trainyard import config
from trainyard.bundles import DataBundle, SourceBundle, deploy_bundle
from trainyard.contract import model_key
from trainyard.errors import NotFound, TrainyardError
from trainyard.resources import Resources
from trainyard.store import open_store, parse_ref
from trainyard.store.versioned import Store

REPO_ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = REPO_ROOT / "templates"

EXIT_CODES = """exit codes:
  0  success
  1  a pipeline step or the run failed
  2  bad input: bundle layout, resources, settings (nothing was stored)
  3  not found or ambiguous: unknown repo, short id or model
"""


def _embedded_airflow_env() -> None:
    """Point Airflow at this checkout's airflow.cfg when the user has not chosen one."""
    os.environ.setdefault("TRAINYARD_HOME", str(REPO_ROOT))
    os.environ.setdefault("AIRFLOW_HOME", str(REPO_ROOT / ".airflow"))
    if (REPO_ROOT / "airflow.cfg").is_file():
        os.environ.setdefault("AIRFLOW_CONFIG", str(REPO_ROOT / "airflow.cfg"))


def _store(args) -> Store:
    return open_store(config.load(store=getattr(args, "store", None)).store)


def _print_table(rows: list[dict], columns: list[str]) -> None:
    if not rows:
        print("(none)")
        return
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    print("  ".join(c.upper().ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(str(row.get(c, "")).ljust(widths[c]) for c in columns))


def _when(ts: float | None) -> str:
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else ""


def _json_arg(text: str, what: str) -> dict:
    source = Path(text).read_text() if text and Path(text).is_file() else text
    try:
        value = json.loads(source or "{}")
    except ValueError as exc:
        raise TrainyardError(f"{what} is not valid JSON ({exc}); pass a JSON object or a file holding one") from None
    if not isinstance(value, dict):
        raise TrainyardError(f"{what} must be a JSON object, e.g. '{{\"C\": 10}}'")
    return value


def cmd_deploy(args) -> int:
    settings = config.load(store=args.store, runner="local" if args.local else None).validate()
    resources = Resources.parse(args.cpu or settings.default_cpu, args.memory or settings.default_memory, args.gpu,
                                max_cpu=settings.max_cpu, max_memory=settings.max_memory, max_gpu=settings.max_gpu)
    hyper = _json_arg(args.hyperparams, "-h/--hyperparams")
    # Validate both bundles completely before anything is uploaded, so a bad input stores nothing.
    source_bundle = SourceBundle.load(args.source)
    data_bundle = DataBundle.load(args.data)
    store = open_store(settings.store)
    quiet = args.json
    source, _, source_report = deploy_bundle(store, source_bundle, message=args.message, quiet=quiet)
    data, _, data_report = deploy_bundle(store, data_bundle, message=args.message, quiet=quiet)
    uploaded = {"blobs": source_report.blobs_uploaded + data_report.blobs_uploaded,
                "bytes": source_report.bytes_uploaded + data_report.bytes_uploaded}
    result: dict = {"source": source.id, "source_ref": source.ref, "data": data.id, "data_ref": data.ref,
                    "uploaded": uploaded, "store": store.uri}
    if not quiet:
        print(f"source {source.ref}  data {data.ref}  uploaded {uploaded['blobs']} blob(s), {uploaded['bytes']} bytes")
    if not args.upload_only:
        conf = {"source": source.repo, "source_ref": source.id, "data": data.repo, "data_ref": data.id,
                "hyperparams": hyper, "cpu": resources.cpu, "memory": resources.memory, "gpu": resources.gpu}
        _embedded_airflow_env()
        from operators.inprocess import run_pipeline  # Airflow is imported only when a run is asked for

        with _stdout_to_stderr(enabled=args.json):
            run = run_pipeline("train_pipeline", conf, quiet=quiet, store_uri=settings.store)
        result.update({"run_id": run["run_id"], "state": run["state"], "model_id": run.get("model_id"),
                       "metrics": run.get("metrics", {})})
        if run["state"] != "success":
            _emit(result, args.json, f"run {run['run_id']} {run['state']}")
            return 1
    _emit(result, args.json, None if args.upload_only else
          f"model {result['model_id']}  metrics {json.dumps(result['metrics'], sort_keys=True)}")
    return 0


@contextlib.contextmanager
def _stdout_to_stderr(enabled: bool):
    """Send everything written to fd 1 (Airflow's task logs included) to stderr, so stdout stays pure JSON."""
    if not enabled:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _emit(result: dict, as_json: bool, line: str | None) -> None:
    if as_json:
        print(json.dumps(result, indent=2, sort_keys=True))
    elif line:
        print(line)


def _runs(store: Store, pipeline: str) -> list[dict]:
    runs = []
    for key in store.backend.list(f"runs/{pipeline}/"):
        if key.endswith(".json"):
            runs.append(store.get_json(key))
    return sorted(runs, key=lambda r: r.get("finished_at", 0), reverse=True)


def cmd_list(args) -> int:
    runs = _runs(_store(args), args.pipeline)[: args.limit or None]
    if args.json:
        print(json.dumps(runs, indent=2, sort_keys=True))
        return 0
    rows = [{"#": i, "run_id": r["run_id"], "finished": _when(r.get("finished_at")), "model_id": r["model_id"],
             "source": r["source"], "data": r["data"],
             "metrics": ", ".join(f"{k}={v:.4g}" for k, v in sorted(r.get("metrics", {}).items()))}
            for i, r in enumerate(runs)]
    _print_table(rows, ["#", "run_id", "finished", "model_id", "source", "data", "metrics"])
    return 0


def _find_model(store: Store, text: str) -> dict:
    text = text.strip()
    try:
        return store.get_json(model_key(text))
    except NotFound:
        pass
    src_data, _, params = text.partition(":")
    keys = [k for k in store.backend.list(f"models/{src_data[:5]}") if k.endswith(".json")]
    matches = [k for k in keys if (k[len("models/"):-len(".json")].replace("/", ":")).startswith(text)]
    if not matches:
        raise NotFound(f"no model id starts with {text!r}; list models with `trainyard list`")
    if len(matches) > 1:
        ids = ", ".join(k[len("models/"):-len(".json")].replace("/", ":") for k in matches)
        raise TrainyardError(f"model id {text!r} is ambiguous; candidates: {ids}")
    return store.get_json(matches[0])


def cmd_info(args) -> int:
    record = _find_model(_store(args), args.model)
    if args.json:
        print(json.dumps(record, indent=2, sort_keys=True))
        return 0
    lin = record["lineage"]
    print(f"model     {record['model_id']}  ({record['name']})")
    print(f"source    {lin['source']['repo']}:{lin['source']['commit'][:5]}  {lin['source']['author']}  "
          f"{_when(lin['source']['time'])}  {lin['source']['message']}")
    print(f"data      {lin['data']['repo']}:{lin['data']['commit'][:5]}  {lin['data']['author']}  "
          f"{_when(lin['data']['time'])}  {lin['data']['message']}")
    print(f"params    {json.dumps(record['params'], sort_keys=True)}")
    print(f"env       {record['env']}")
    print(f"airflow   dag {lin['airflow']['dag_id']}  run {lin['airflow']['run_id']}  task {lin['airflow']['task_id']}")
    print("metrics")
    for name, value in sorted(record["metrics"].items()):
        print(f"  {name:<24} {value:.6g}")
    return 0


def cmd_get(args) -> int:
    store = _store(args)
    record = _find_model(store, args.model)
    manifest = json.loads(store.get_blob_bytes(record["outputs"]))
    out = Path(args.output)
    store.materialize(manifest, out, quiet=args.json)
    (out / "lineage.json").write_text(json.dumps(record, indent=2, sort_keys=True))
    (out / "train.log").write_bytes(store.get_blob_bytes(record["log"]))
    _emit({"model_id": record["model_id"], "path": str(out), "files": sorted(manifest)}, args.json,
          f"model {record['model_id']} written to {out}")
    return 0


def cmd_data(args) -> int:
    store = _store(args)
    if args.data_cmd == "log":
        commits = store.log(args.repo)
        if args.json:
            print(json.dumps([{k: v for k, v in c.to_json().items() if k != "manifest"} | {"files": len(c.manifest)}
                              for c in commits], indent=2))
            return 0
        _print_table([{"commit": c.ref, "author": c.author, "time": _when(c.time), "files": len(c.manifest),
                       "bytes": c.size, "message": c.message} for c in commits],
                     ["commit", "author", "time", "files", "bytes", "message"])
    elif args.data_cmd == "inspect":
        commit = store.resolve(*parse_ref(args.ref))
        if args.json:
            print(json.dumps(commit.to_json(), indent=2))
            return 0
        print(f"commit {commit.repo}:{commit.id}\nparent {commit.parent}\nauthor {commit.author}\n"
              f"time   {_when(commit.time)}\n\n    {commit.message}\n")
        _print_table([{"path": p, "size": e["size"], "sha256": e["sha256"][:12]} for p, e in commit.manifest.items()],
                     ["path", "size", "sha256"])
    elif args.data_cmd == "repos":
        repos = store.repos()
        print(json.dumps(repos) if args.json else "\n".join(repos) or "(none)")
    return 0


def cmd_template(args) -> int:
    names = sorted(p.name for p in TEMPLATES.iterdir() if p.is_dir()) if TEMPLATES.is_dir() else []
    if args.template_cmd == "list":
        print(json.dumps(names) if args.json else "\n".join(names))
        return 0
    if args.name not in names:
        raise NotFound(f"unknown template {args.name!r}; available: {', '.join(names)}")
    dest = Path(args.output or args.name)
    if dest.exists():
        raise TrainyardError(f"{dest} already exists; pass -o to choose another directory")
    shutil.copytree(TEMPLATES / args.name, dest, ignore=shutil.ignore_patterns("__pycache__"))
    print(f"template {args.name} written to {dest}")
    return 0


def cmd_config(args) -> int:
    settings = config.load()
    if args.key:
        if not hasattr(settings, args.key):
            raise TrainyardError(f"unknown setting {args.key!r}")
        print(getattr(settings, args.key))
    else:
        print(json.dumps({k: v for k, v in vars(settings).items()}, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trainyard", description=__doc__, epilog=EXIT_CODES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", help="store URI (default: TRAINYARD_STORE, then airflow.cfg [trainyard] store)")
    sub = parser.add_subparsers(dest="command", required=True)

    deploy = sub.add_parser("deploy", add_help=False, help="upload source and data bundles and train",
                            epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    deploy.add_argument("--help", action="help", help="show this help and exit")
    deploy.add_argument("-s", "--source", required=True, help="source bundle directory (kaos layout)")
    deploy.add_argument("-d", "--data", required=True, help="data bundle directory")
    deploy.add_argument("-h", "--hyperparams", default="{}", help="hyperparameters: JSON object or a file")
    deploy.add_argument("--cpu", help="CPU cores for training, e.g. 0.5, 2, 500m")
    deploy.add_argument("--memory", help="memory for training: Kubernetes quantity, e.g. 512Mi, 2Gi, 1G")
    deploy.add_argument("--gpu", type=int, default=0, help="GPUs for training")
    deploy.add_argument("--local", action="store_true", help="run the pipeline in-process on the local runner")
    deploy.add_argument("--upload-only", action="store_true", help="commit the bundles without training")
    deploy.add_argument("-m", "--message", default="", help="commit message")
    deploy.add_argument("--json", action="store_true", help="print one JSON object, no progress bars")
    deploy.set_defaults(func=cmd_deploy)

    lst = sub.add_parser("list", help="list runs, newest first")
    lst.add_argument("--pipeline", default="train_pipeline")
    lst.add_argument("--limit", type=int, default=0)
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=cmd_list)

    info = sub.add_parser("info", help="show a model's metrics and lineage")
    info.add_argument("--model", required=True, help="model id or a unique prefix")
    info.add_argument("--json", action="store_true")
    info.set_defaults(func=cmd_info)

    get = sub.add_parser("get", help="download a model with its metrics, log and lineage")
    get.add_argument("--model", required=True)
    get.add_argument("-o", "--output", required=True)
    get.add_argument("--json", action="store_true")
    get.set_defaults(func=cmd_get)

    data = sub.add_parser("data", help="inspect data and source repos")
    data_sub = data.add_subparsers(dest="data_cmd", required=True)
    log = data_sub.add_parser("log", help="commits of a repo, newest first")
    log.add_argument("repo")
    inspect = data_sub.add_parser("inspect", help="files of one commit (repo:ref, ref is latest or a short id)")
    inspect.add_argument("ref")
    data_sub.add_parser("repos", help="list repos")
    for p in (log, inspect, data_sub.choices["repos"]):
        p.add_argument("--json", action="store_true")
    data.set_defaults(func=cmd_data)

    template = sub.add_parser("template", help="list or copy bundled templates")
    template_sub = template.add_subparsers(dest="template_cmd", required=True)
    tl = template_sub.add_parser("list")
    tl.add_argument("--json", action="store_true")
    tg = template_sub.add_parser("get")
    tg.add_argument("name")
    tg.add_argument("-o", "--output")
    template.set_defaults(func=cmd_template)

    cfg = sub.add_parser("config", help="show resolved settings (argument > env > airflow.cfg > default)")
    cfg.add_argument("key", nargs="?")
    cfg.set_defaults(func=cmd_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    _embedded_airflow_env()
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except TrainyardError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
