"""The `trainyard` command line: deploy bundles, run the pipeline, inspect runs, models and data (kaos-like)."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

from trainyard import config, registry, remote, runs, userconfig
from trainyard.bundles import DataBundle, SourceBundle, deploy_bundle
from trainyard.contract import model_key
from trainyard.display import format_metric, format_time
from trainyard.errors import AmbiguousId, ConfigError, NotFound, TrainyardError
from trainyard.grids import validate_grid
from trainyard.metrics import available, default_metric, is_number, parse_spec, rank
from trainyard.resources import Resources
from trainyard.store import open_store, parse_ref
from trainyard.store.versioned import Store

REPO_ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = REPO_ROOT / "templates"

EXIT_CODES = """exit codes:
  0  success
  1  a pipeline step or the run failed
  2  bad input: bundle layout, resources, settings (nothing was stored)
  3  not found or ambiguous: unknown repo, short id, model, DAG or run
  4  server mode: Airflow refused the login (wrong user or password)
  5  server mode: Airflow cannot be reached, or answered with a server error
"""


def _embedded_airflow_env() -> None:
    """Point Airflow at this checkout's airflow.cfg when the user has not chosen one."""
    os.environ.setdefault("TRAINYARD_HOME", str(REPO_ROOT))
    os.environ.setdefault("AIRFLOW_HOME", str(REPO_ROOT / ".airflow"))
    if (REPO_ROOT / "airflow.cfg").is_file():
        os.environ.setdefault("AIRFLOW_CONFIG", str(REPO_ROOT / "airflow.cfg"))


def _open_store(uri: str) -> Store:
    """The store, with the S3 credentials and endpoint `trainyard init` saved (env and ~/.aws still come first)."""
    return open_store(uri, client_kwargs=userconfig.store_client_kwargs() or None)


def _store(args) -> Store:
    return _open_store(config.load(store=getattr(args, "store", None)).store)


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _profile_client(args):
    """A REST client for the server `trainyard init` chose, or None; one per command, so it logs in once."""
    if not hasattr(args, "server_client"):
        profile = userconfig.server_profile()
        args.server_client = profile.client() if profile else None
    return args.server_client


def _server(args):
    """The Airflow server this command talks to, or None to run in-process (`--local`, or no `trainyard init`)."""
    return None if getattr(args, "local", False) else _profile_client(args)


def _print_table(rows: list[dict], columns: list[str]) -> None:
    if not rows:
        print("(none)")
        return
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    print("  ".join(c.upper().ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(str(row.get(c, "")).ljust(widths[c]) for c in columns))


def _json_arg(text: str, what: str) -> dict:
    source = Path(text).read_text() if text and Path(text).is_file() else text
    try:
        value = json.loads(source or "{}")
    except ValueError as exc:
        raise ConfigError(f"{what} is not valid JSON ({exc}); pass a JSON object or a file holding one") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{what} must be a JSON object of lists, e.g. '{{\"C\": [1, 10]}}'")
    return value


def _deploy_conf(args, settings) -> dict:
    """Validate every option before anything is uploaded, and turn them into the run's conf."""
    grid = validate_grid(_json_arg(args.hyperparams, "-h/--hyperparams"), cap=settings.combination_cap)
    if args.cpu or args.memory or args.gpu is not None:
        Resources.parse(args.cpu or settings.default_cpu, args.memory or settings.default_memory, args.gpu or 0,
                        max_cpu=settings.max_cpu, max_memory=settings.max_memory, max_gpu=settings.max_gpu)
    if args.metric:
        parse_spec(args.metric)
    for flag, value in (("--timeout", args.timeout), ("--parallelism", args.parallelism)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} must be at least 1, got {value}")
    return {"hyperparams": grid, "metric": args.metric, "cpu": args.cpu, "memory": args.memory, "gpu": args.gpu,
            "timeout": args.timeout, "no_cache": args.no_cache, "major": args.major,
            "save_training_data": args.save_training_data}


def _announce(commit, settings, args) -> None:
    """Tell Airflow about a new commit (an Asset event): over REST when `trainyard init` chose a server, else in the
    embedded metadata DB when [trainyard] announce_commits is on. DAGs scheduled on the repo (caption_pipeline on
    rawdata) run."""
    client = _profile_client(args)
    if client is not None:
        if client.announce(f"trainyard://repos/{commit.repo}", {"repo": commit.repo, "commit": commit.id}):
            print(f"announced {commit.ref} to {client.endpoint} (asset trainyard://repos/{commit.repo})",
                  file=sys.stderr)
        return
    if not settings.flag("announce_commits"):
        return
    _embedded_airflow_env()
    from operators.assets import announce_commit  # Airflow is imported only when asked for

    if announce_commit(commit.repo, commit.id):
        print(f"announced {commit.ref} to Airflow (asset trainyard://repos/{commit.repo})", file=sys.stderr)


def _load_manifest(path: str, settings) -> list:
    """Parse and policy-check every line of a kaos data manifest before anything is downloaded or stored."""
    from trainyard.manifests import parse_manifest
    from trainyard.urlpolicy import UrlPolicy

    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"manifest {path} not found; give a file of JSON lines {{\"url\": ..., \"path\": ...}}")
    return parse_manifest(file.read_text(encoding="utf-8"), source=str(file), policy=UrlPolicy.from_settings(settings))


def _manifest_repo(path: str) -> str:
    """The data repo a manifest feeds by default: its file name without suffix ('features.mf' -> 'features')."""
    return Path(path).name.split(".")[0].lower() or "data"


def _ingest(store: Store, entries: list, repo: str, args, settings):
    from trainyard.manifests import ingest
    from trainyard.urlpolicy import UrlPolicy

    commit, stats = ingest(entries, store, repo, UrlPolicy.from_settings(settings), quiet=args.json,
                           source=str(args.manifest), message=args.message or f"ingest {args.manifest}")
    if not args.json:
        print(f"ingested {stats['files']} file(s), {stats['bytes']} bytes into {commit.ref} "
              f"({stats['retries']} retr{'y' if stats['retries'] == 1 else 'ies'})")
    return commit, stats


def cmd_deploy(args) -> int:
    settings = config.load(store=args.store, runner="local" if args.local else None,
                           parallelism=args.parallelism).validate()
    options = _deploy_conf(args, settings)
    if args.data and args.manifest or not (args.data or args.manifest or args.upload_only):
        raise ConfigError("give the data as exactly one of -d/--data DIR or -m/--manifest FILE "
                          "(only --upload-only may leave both out, to commit the source alone)")
    # Validate the bundles and the manifest completely before anything is uploaded, so a bad input stores nothing.
    source_bundle = SourceBundle.load(args.source)
    data_bundle = DataBundle.load(args.data) if args.data else None
    manifest = _load_manifest(args.manifest, settings) if args.manifest else None
    server = _server(args)
    if server is not None:  # a wrong password or a server that is down must fail before anything is uploaded
        server.check_dag("train_pipeline")
    store = _open_store(settings.store)
    quiet = args.json
    source, _, source_report = deploy_bundle(store, source_bundle, message=args.message, quiet=quiet)
    data, data_blobs, data_bytes = None, 0, 0
    if data_bundle is not None:
        data, data_created, data_report = deploy_bundle(store, data_bundle, message=args.message, quiet=quiet)
        if data_created:  # an unchanged bundle is the same commit: nothing new to announce
            _announce(data, settings, args)
        data_blobs, data_bytes = data_report.blobs_uploaded, data_report.bytes_uploaded
    elif manifest is not None:
        data, stats = _ingest(store, manifest, args.data_repo or _manifest_repo(args.manifest), args, settings)
        _announce(data, settings, args)
        data_blobs, data_bytes = stats["blobs_uploaded"], stats["bytes_uploaded"]
    uploaded = {"blobs": source_report.blobs_uploaded + data_blobs,
                "bytes": source_report.bytes_uploaded + data_bytes}
    result: dict = {"source": source.id, "source_ref": source.ref, "data": data and data.id,
                    "data_ref": data and data.ref, "uploaded": uploaded, "store": store.uri}
    if not quiet:
        print(f"source {source.ref}  data {data.ref if data else '-'}  uploaded {uploaded['blobs']} blob(s), "
              f"{uploaded['bytes']} bytes")
    if args.upload_only:
        _emit(result, args.json, None)
        return 0
    conf = {"source": source.repo, "source_ref": source.id, "data": data.repo, "data_ref": data.id, **options}
    if server is not None:
        run = _deploy_to_server(server, conf, store, args, result)
        if run is None:
            return 0
    else:
        _embedded_airflow_env()
        from operators.inprocess import run_pipeline  # Airflow is imported only when a run is asked for

        parse_settings = {"parallelism": args.parallelism,
                          "allow_cpu_fallback": "true" if args.allow_cpu_fallback else None}
        with _stdout_to_stderr(enabled=args.json):
            run = run_pipeline("train_pipeline", conf, quiet=quiet, store_uri=settings.store,
                               parse_settings=parse_settings)
    results = run["results"]
    result.update({"run_id": run["run_id"], "airflow_state": run["state"]})
    if results is None:
        result["state"] = "failed"
        _emit(result, args.json, f"run {run['run_id']} failed before it registered anything "
                                  "(see the task log above)")
        return 1
    summary = results["run_summary"]
    best = summary["outputs"]["best"] or {}
    best_model = next((m for m in results["models"] if m["model_id"] == best.get("model_id")), {})
    result.update({"state": summary["state"], "cached": summary["cached"], "metric": summary["metric"],
                   "model_id": best.get("model_id"), "metrics": best_model.get("metrics", {}),
                   "version": summary["outputs"]["registry"], "models": results["models"],
                   "failures": summary["outputs"]["failures"]})
    if not args.json:
        _print_models(results["models"], summary["metric"])
        for failure in summary["outputs"]["failures"]:
            print(f"FAILED {failure['label']}: {failure['error']}")
        version = summary["outputs"]["registry"]
        print(f"run {run['run_id']} {summary['state']}"
              + (f"  best {best.get('model_id')}" if best else "")
              + (f"  registered {version['name']} {version['version']}" if version else "")
              + ("  (cache hit: nothing trained)" if summary["cached"] else ""))
    else:
        _emit(result, True, None)
    return 0 if summary["state"] == "success" else 1


def _deploy_to_server(client, conf: dict, store: Store, args, result: dict) -> dict | None:
    """Trigger train_pipeline on the server; with --wait follow it and return it like an in-process run."""
    for flag, value in (("--parallelism", args.parallelism), ("--allow-cpu-fallback", args.allow_cpu_fallback)):
        if value:
            _say(f"note: {flag} is fixed by the server's [trainyard] settings in server mode; ignored")
    run_id = remote.trigger(client, "train_pipeline", conf, say=_say)
    result.update({"run_id": run_id, "endpoint": client.endpoint, "url": client.run_url("train_pipeline", run_id)})
    if not args.wait:
        result["airflow_state"] = "queued"
        _emit(result, args.json, f"triggered train_pipeline run {run_id}\n  {result['url']}\n"
                                 f"  follow it: trainyard logs --run-id {run_id} --follow   "
                                 f"stop it: trainyard kill --run-id {run_id}")
        return None
    _say(f"triggered train_pipeline run {run_id} ({result['url']}); waiting for it to end")
    state = remote.wait(client, "train_pipeline", run_id, say=_say)
    return {"run_id": run_id, "state": state, "results": runs.read_results(store, "train_pipeline", run_id)}


def _print_models(models: list[dict], spec: str | None) -> None:
    name = spec.split(":")[0] if spec else None
    rows = [{"": "*" if m.get("best") else "", "model_id": m["model_id"], "params": m["label"],
             (name or "metric"): format_metric(m.get("metrics", {}), name), "cached": "yes" if m["cached"] else ""}
            for m in models]
    _print_table(rows, ["", "model_id", "params", name or "metric", "cached"])


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


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _unfinished_runs(args, recorded: list[dict]) -> list[dict]:
    """Server mode: the pipeline's runs on Airflow that have no results yet (queued, running, failed early)."""
    server = _server(args)
    if server is None:
        return []
    known = {r["parameters"]["run_id"] for r in recorded}
    store = _store(args)
    rows = []
    for run in server.runs(args.pipeline):
        if run["dag_run_id"] in known:
            continue
        # A step whose pod no node takes says why (the scheduler's reason), instead of a silent "running".
        waiting = runs.waiting_reasons(store, args.pipeline, run["dag_run_id"]) if run["state"] == "running" else []
        rows.append({"#": "-", "run_id": run["dag_run_id"], "state": run["state"],
                     "started": (run.get("start_date") or run.get("queued_at") or "")[:19].replace("T", " "),
                     "note": "; ".join(f"{w['task_id']} waiting: {w['reason']}" for w in waiting)})
    return rows


def cmd_list(args) -> int:
    results = runs.list_results(_store(args), args.pipeline)[: args.limit or None]
    pending = _unfinished_runs(args, results)
    if args.json:
        print(json.dumps(results + [{"run_id": r["run_id"], "state": r["state"], "pending": True,
                                     "note": r["note"]} for r in pending], indent=2, sort_keys=True))
        return 0
    rows = list(pending)
    for i, r in enumerate(results):
        summary = r["run_summary"]
        best = summary["outputs"]["best"] or {}
        score = f"{summary['metric'].split(':')[0]}={best['value']:.4g}" if is_number(best.get("value")) else ""
        rows.append({"#": i, "run_id": r["parameters"]["run_id"], "state": summary["state"],
                     "started": format_time(summary["start_time"]), "duration": _duration(summary["execution_time"]),
                     "cached": "yes" if summary["cached"] else "", "models": len(r["models"]),
                     "best": best.get("model_id", ""), "score": score})
    columns = ["#", "run_id", "state", "started", "duration", "cached", "models", "best", "score"]
    _print_table(rows, columns + (["note"] if any(r.get("note") for r in rows) else []))
    return 0


def _find_model(store: Store, text: str) -> dict:
    text = text.strip()
    try:
        return store.get_json(model_key(text))
    except NotFound:
        pass
    src_data = text.partition(":")[0]
    keys = [k for k in store.backend.list(f"models/{src_data[:5]}") if k.endswith(".json")]
    matches = [k for k in keys if (k[len("models/"):-len(".json")].replace("/", ":")).startswith(text)]
    if not matches:
        raise NotFound(f"no model id starts with {text!r}; list models with `trainyard list` or `trainyard info -i 0`")
    if len(matches) > 1:
        ids = ", ".join(k[len("models/"):-len(".json")].replace("/", ":") for k in matches)
        raise AmbiguousId(f"model id {text!r} is ambiguous; candidates: {ids}")
    return store.get_json(matches[0])


def _file_info(store: Store, args) -> int:
    """What produced a file of a datum step's output repo: the step, the datum and each input commit."""
    from trainyard.datums import provenance_key, record_key

    repo, _, path = args.file.partition(":")
    if not path:
        raise ConfigError(f"--file takes REPO:PATH, e.g. predictions:image.png.txt; got {args.file!r}")
    commit = store.resolve(repo, args.ref)
    if path not in commit.manifest:
        raise NotFound(f"{path!r} is not in {commit.ref}; list its files with `trainyard data inspect {repo}`")
    try:
        provenance = store.get_json(provenance_key(commit.repo, commit.id))
    except NotFound:
        raise NotFound(f"{commit.ref} was not written by a datum step, so it records no provenance; "
                       f"see `trainyard data inspect {commit.ref}`") from None
    origin = provenance["files"][path]
    record = store.get_json(record_key(provenance["pipeline"], provenance["step"], origin["key"]))
    inputs = [{**spec, "message": store.get_commit(spec["repo"], spec["commit"]).message}
              for spec in record.get("inputs", provenance["inputs"])]
    if args.json:
        print(json.dumps({"file": path, "commit": commit.id, "pipeline": provenance["pipeline"],
                          "step": provenance["step"], "datum": origin["datum"], "inputs": inputs,
                          "seconds": record.get("seconds"), "attempts": record.get("attempts")}, indent=2))
        return 0
    print(f"file      {commit.repo}:{path}  (commit {commit.short})")
    print(f"made by   {provenance['pipeline']}.{provenance['step']}  datum {origin['datum']}  "
          f"{record.get('seconds', 0):.2f} s, {record.get('attempts', 1)} attempt(s)")
    for spec in inputs:
        print(f"input     {spec['name']}: {spec['repo']}:{spec['commit'][:5]}  {spec['message']}")
    return 0


def cmd_info(args) -> int:
    store = _store(args)
    if args.model:
        return _model_info(store, args)
    if args.file:
        return _file_info(store, args)
    if args.index is None:
        raise TrainyardError("give --model ID or -i N (a run number from `trainyard list`, 0 is the newest)")
    run = runs.nth_run(store, args.pipeline, args.index)
    models = run["models"]
    spec = args.sort or run["run_summary"]["metric"] or (default_metric(models[0]["metrics"]) if models else None)
    names = available(models)
    if spec:
        ranked, unranked, name, direction = rank(models, spec)
    else:
        ranked, unranked, name, direction = [], models, None, None
    if args.json:
        print(json.dumps({"run_id": run["parameters"]["run_id"], "state": run["run_summary"]["state"],
                          "metric": name, "direction": direction, "available_metrics": names,
                          "models": ranked + unranked, "failures": run["run_summary"]["outputs"]["failures"]},
                         indent=2, sort_keys=True))
        return 0
    summary = run["run_summary"]
    inputs = run["parameters"]["inputs"]
    print(f"run #{args.index}  {run['parameters']['run_id']}  {summary['state']}  "
          f"{_duration(summary['execution_time'])}  source {_short(inputs['source'])}  data {_short(inputs['data'])}")
    header = f"{name} ({'higher' if direction == 'max' else 'lower'} is better)" if name else "metric"
    rows = [{"": "*" if m.get("best") else "", "model_id": m["model_id"], "params": m["label"],
             header: format_metric(m["metrics"], name), "cached": "yes" if m["cached"] else ""}
            for m in ranked + unranked]
    _print_table(rows, ["", "model_id", "params", header, "cached"])
    for failure in summary["outputs"]["failures"]:
        print(f"FAILED {failure['label']}: {failure['error']}")
    print(f"available metrics: {', '.join(names) or 'none'}")
    return 0


def _short(ref: str) -> str:
    repo, _, cid = ref.partition(":")
    return f"{repo}:{cid[:5]}"


def _model_info(store: Store, args) -> int:
    record = _find_model(store, args.model)
    versions = registry.versions_of_model(store, record["name"], record["model_id"])
    if args.json:
        print(json.dumps(record | {"versions": versions}, indent=2, sort_keys=True))
        return 0
    lin = record["lineage"]
    airflow = lin["airflow"]
    parent = lin.get("parent") or {}
    print(f"model     {record['model_id']}  ({record['name']}"
          f"{', version ' + ', '.join(versions) if versions else ''})")
    print(f"source    {lin['source']['repo']}:{lin['source']['commit'][:5]}  {lin['source']['author']}  "
          f"{format_time(lin['source']['time'])}  {lin['source']['message']}")
    print(f"data      {lin['data']['repo']}:{lin['data']['commit'][:5]}  {lin['data']['author']}  "
          f"{format_time(lin['data']['time'])}  {lin['data']['message']}")
    print(f"params    {json.dumps(record['params'], sort_keys=True)}  (hash {lin['params_hash'][:12]})")
    print(f"env       {record['env']}")
    print(f"airflow   dag {airflow['dag_id']}  run {airflow['run_id']}  task {airflow['task_id']}"
          + (f"  map {airflow.get('map_index')} ({airflow.get('label')})" if airflow.get("map_index") else ""))
    print(f"parent    {parent.get('name', record['name'])} {parent['version']} ({parent['model_id']})"
          if parent else "parent    none (first version of this model)")
    print(f"trained   {record.get('train_seconds', 0):.1f} s")
    print("metrics")
    for name, value in sorted(record["metrics"].items()):
        shown = f"{value:.6g}" if is_number(value) else "(text) " + str(value).strip().splitlines()[0][:60]
        print(f"  {name:<24} {shown}")
    if record.get("artifacts"):
        print("artifacts")
        for rel in record["artifacts"]:
            print(f"  {rel}")
    return 0


def _log_keys(store: Store, pipeline: str, run_id: str, step: str | None, map_index: int | None) -> list[str]:
    """The newest try's log of each (task, map index) of a run, filtered by step and map index."""
    newest: dict[tuple[str, str], tuple[int, str]] = {}
    prefix = runs.log_prefix(pipeline, run_id)
    for key in store.backend.list(prefix):
        task, index, try_file = key[len(prefix):].split("/")
        if step and task != step:
            continue
        if map_index is not None and index != str(map_index):
            continue
        tries = int(try_file.removesuffix(".log"))
        if (task, index) not in newest or tries > newest[(task, index)][0]:
            newest[(task, index)] = (tries, key)
    return [newest[k][1] for k in sorted(newest)]


def cmd_logs(args) -> int:
    store = _store(args)
    run_id = args.run_id or runs.nth_run(store, args.pipeline, args.index or 0)["parameters"]["run_id"]
    shown: dict[str, int] = {}
    quiet_rounds = 0
    while True:
        keys = _log_keys(store, args.pipeline, run_id, args.step, args.map_index)
        if not keys and not args.follow:
            raise NotFound(f"no logs for run {run_id} of {args.pipeline}"
                           + (f" step {args.step}" if args.step else "") + "; see `trainyard list`")
        grew = False
        for key in keys:
            data = store.backend.read(key)
            if len(data) > shown.get(key, 0):
                if key not in shown:
                    task, index, try_file = key.rsplit("/", 3)[-3:]
                    print(f"== {task}" + (f" [{index}]" if index != "-1" else "") + f" try {try_file[:-4]} ==")
                sys.stdout.write(data[shown.get(key, 0):].decode(errors="replace"))
                sys.stdout.flush()
                shown[key] = len(data)
                grew = True
        if not args.follow:
            return 0
        finished = _run_finished(args, store, run_id)
        quiet_rounds = 0 if grew else quiet_rounds + 1
        if finished and quiet_rounds >= 2:
            return 0
        time.sleep(1)


def _run_finished(args, store: Store, run_id: str) -> bool:
    """Whether a followed run has ended: Airflow's state in server mode, else its results in the store."""
    server = _server(args)
    if server is not None:
        return server.run(args.pipeline, run_id)["state"] in remote.TERMINAL_RUN_STATES
    return store.exists(runs.results_key(args.pipeline, run_id))


def cmd_init(args) -> int:
    import getpass

    from trainyard.airflow_api import AirflowClient

    if not args.endpoint.startswith(("http://", "https://")):
        raise ConfigError(f"-e/--endpoint must be Airflow's http(s):// address, got {args.endpoint!r}")
    password = os.environ.get("TRAINYARD_PASSWORD")
    if not password:
        if not sys.stdin.isatty():
            raise ConfigError("no password: set TRAINYARD_PASSWORD, or run `trainyard init` in a terminal to be asked")
        password = getpass.getpass(f"Airflow password for {args.username} at {args.endpoint}: ")
    client = AirflowClient(endpoint=args.endpoint, username=args.username, password=password)
    if not args.no_check:
        client.token  # noqa: B018 - logs in: a wrong password or a server that is down stops here, nothing saved
    store = args.store or config.load().store
    where = userconfig.save(endpoint=args.endpoint, username=args.username, password=password, store=store,
                            store_endpoint=args.store_endpoint or os.environ.get("AWS_ENDPOINT_URL"),
                            aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID"),
                            aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY"))
    print(f"{'logged in to' if not args.no_check else 'saved'} {client.endpoint} as {args.username}; store {store}")
    print(f"profile in {where} (credentials.json is readable by you only)")
    return 0


def cmd_kill(args) -> int:
    server = _server(args)
    if server is None:
        raise ConfigError("kill stops runs on an Airflow server: run `trainyard init -e URL` first "
                          "(an in-process run stops with Ctrl-C)")
    run_id = args.run_id or remote.newest_active_run(server, args.pipeline)
    stopped = remote.kill(server, args.pipeline, run_id, timeout=args.timeout, say=_say)
    print(f"killed run {run_id}" + (f": stopped {', '.join(stopped)}" if stopped else " (no task was running)"))
    return 0


def cmd_trigger(args) -> int:
    server = _server(args)
    if server is None:
        raise ConfigError("trigger runs a DAG on an Airflow server: run `trainyard init -e URL` first "
                          "(locally, use `airflow dags test DAG -c JSON`)")
    conf = _json_arg(args.conf, "-c/--conf")
    run_id = remote.trigger(server, args.dag_id, conf, say=_say)
    result = {"dag_id": args.dag_id, "run_id": run_id, "url": server.run_url(args.dag_id, run_id)}
    if args.wait:
        _say(f"triggered {args.dag_id} run {run_id} ({result['url']}); waiting for it to end")
        result["state"] = remote.wait(server, args.dag_id, run_id, say=_say)
    _emit(result, args.json, f"{args.dag_id} run {run_id} {result.get('state', 'triggered')}\n  {result['url']}")
    return 0 if result.get("state", "success") == "success" else 1


def cmd_models(args) -> int:
    store = _store(args)
    if not args.name:
        names = registry.names_in(store)
        print(json.dumps(names) if args.json else "\n".join(names) or "(none)")
        return 0
    doc = registry.load(store, args.name)
    if args.json:
        print(json.dumps(doc, indent=2, sort_keys=True))
        return 0
    spec = doc.get("metric")
    name = spec.split(":")[0] if spec else None
    aliases: dict[str, list[str]] = {}
    for alias, version in doc["aliases"].items():
        aliases.setdefault(version, []).append(alias)
    rows = [{"version": v["version"], "aliases": ",".join(aliases.get(v["version"], [])), "model_id": v["model_id"],
             (name or "metric"): format_metric(v["metrics"], name), "models": len(v["models"]),
             "run_id": v["run_id"], "registered": format_time(v["registered_at"])}
            for v in reversed(doc["versions"])]
    print(f"{doc['name']}: {len(doc['versions'])} version(s); best by {spec or 'no metric yet'}")
    _print_table(rows, ["version", "aliases", "model_id", name or "metric", "models", "run_id", "registered"])
    return 0


def _dot_id(text: str) -> str:
    return json.dumps(text)


def cmd_lineage(args) -> int:
    store = _store(args)
    record = _find_model(store, args.model)
    lin = record["lineage"]
    nodes = {
        "source": f"source {lin['source']['repo']}:{lin['source']['commit'][:12]}\n{lin['source']['message'][:40]}",
        "data": f"data {lin['data']['repo']}:{lin['data']['commit'][:12]}\n{lin['data']['message'][:40]}",
        "params": "params " + lin["params_hash"][:12] + "\n"
                  + ", ".join(f"{k}={v}" for k, v in sorted(record["params"].items()))[:60],
        "env": f"env {record['env']}",
        "run": f"airflow run {lin['airflow']['run_id']}\ntask {lin['airflow']['task_id']}"
               + (f"[{lin['airflow']['map_index']}]" if lin['airflow'].get('map_index') else ""),
        "model": f"model {record['model_id']}",
    }
    edges = [("source", "model"), ("data", "model"), ("params", "model"), ("env", "model"), ("run", "model")]
    for version in registry.versions_of_model(store, record["name"], record["model_id"]):
        nodes[f"v{version}"] = f"{record['name']} {version}"
        edges.append(("model", f"v{version}"))
    parent = lin.get("parent")
    if parent:
        nodes["parent"] = f"{record['name']} {parent['version']}\n{parent['model_id']}"
        edges.append(("parent", "model"))
    if args.dot:
        print("digraph lineage {\n  rankdir=LR;\n  node [shape=box, fontname=Helvetica];")
        for key, label in nodes.items():
            shape = ", style=bold" if key == "model" else ""
            print(f"  {_dot_id(key)} [label={_dot_id(label)}{shape}];")
        for a, b in edges:
            print(f"  {_dot_id(a)} -> {_dot_id(b)};")
        print("}")
    elif args.json:
        print(json.dumps({"nodes": nodes, "edges": edges}, indent=2))
    else:
        for a, b in edges:
            print(f"{nodes[a].splitlines()[0]}  ->  {nodes[b].splitlines()[0]}")
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
        _print_table([{"commit": c.ref, "author": c.author, "time": format_time(c.time), "files": len(c.manifest),
                       "bytes": c.size, "message": c.message} for c in commits],
                     ["commit", "author", "time", "files", "bytes", "message"])
    elif args.data_cmd == "inspect":
        commit = store.resolve(*parse_ref(args.ref))
        if args.json:
            print(json.dumps(commit.to_json(), indent=2))
            return 0
        print(f"commit {commit.repo}:{commit.id}\nparent {commit.parent}\nauthor {commit.author}\n"
              f"time   {format_time(commit.time)}\n\n    {commit.message}\n")
        _print_table([{"path": p, "size": e["size"], "sha256": e["sha256"][:12]} for p, e in commit.manifest.items()],
                     ["path", "size", "sha256"])
    elif args.data_cmd == "ingest":
        settings = config.load(store=args.store)
        entries = _load_manifest(args.manifest, settings)
        commit, stats = _ingest(store, entries, args.repo, args, settings)
        _announce(commit, settings, args)
        if args.json:
            print(json.dumps({"repo": commit.repo, "commit": commit.id, "ref": commit.ref, **stats}, indent=2))
    elif args.data_cmd == "repos":
        repos = store.repos()
        print(json.dumps(repos) if args.json else "\n".join(repos) or "(none)")
    elif args.data_cmd == "put":
        from trainyard.datums import put_file

        commit, datums = put_file(store, args.repo, Path(args.file), split=args.split,
                                  target_file_datums=args.target_file_datums, header=args.header, path=args.path,
                                  message=args.message)
        _emit({"repo": commit.repo, "commit": commit.id, "ref": commit.ref, "datums": datums,
               "files": len(commit.manifest)}, args.json, f"{commit.ref}  {datums} datum(s)")
        _announce(commit, config.load(store=args.store), args)
        if not args.no_run:
            return _run_pipelines_reading(store, commit, args)
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


def _run_pipelines_reading(store: Store, commit, args) -> int:
    """Embedded default: run the Pachyderm pipelines a commit reaches, in-process and upstream first (a server runs
    them itself on the commit's Asset event)."""
    from trainyard import pps

    records = pps.load_pipelines(store)
    if not pps.readers(records, commit.repo) or _server(args) is not None:
        return 0
    _embedded_airflow_env()
    from operators.pps import run_downstream  # Airflow is imported only when a pipeline reads the repo

    with _stdout_to_stderr(enabled=True):
        runs_ = run_downstream(commit.repo, store_uri=store.uri, quiet=args.json, say=_say)
    for run in runs_:
        _say(f"pipeline {run['pipeline']}: {run['state']}  run {run['run_id']}  "
             + (f"output {run['output'][:len(run['pipeline']) + 6]}" if run["output"] else "no output")
             + ("" if run["changed"] else " (unchanged)"))
    failed = [r for r in runs_ if r["state"] != "success"]
    if failed:
        from trainyard.errors import StepError

        raise StepError(f"pipeline {failed[0]['pipeline']} failed (run {failed[0]['run_id']}); see "
                        f"`trainyard logs --pipeline {failed[0]['dag_id']} --run-id {failed[0]['run_id']}`")
    return 0


def _pipeline_source(store: Store, text: str, quiet: bool):
    """--source: a directory is committed as a source repo named after it (its root is the transform's working
    directory); anything else names a source repo already in the store, REPO or REPO:REF."""
    from trainyard import pps
    from trainyard.bundles import IGNORED_NAMES, scan_tree

    path = Path(text)
    if path.is_dir():
        entries = [p for p in path.iterdir() if p.name not in IGNORED_NAMES]
        root = entries[0] if len(entries) == 1 and entries[0].is_dir() else path  # kaos layout: model-train/<name>/
        files = scan_tree(root)
        if not files:
            raise ConfigError(f"--source {text} is empty; give the folder that holds the transform's code")
        repo = root.resolve().name.lower()
        report = store.upload_files(files, quiet=quiet, desc=repo, repo=repo)
        commit, _ = store.commit(repo, report.manifest, message=f"pipeline source {root}")
    else:
        repo, ref = parse_ref(text)
        try:
            commit = store.resolve(repo, ref)
        except NotFound:
            raise NotFound(f"--source {text}: no such directory, and no source repo {repo!r} in the store; give the "
                           "folder of the transform's code, or a repo deployed with `trainyard deploy --upload-only`") \
                from None
    return pps.SourceRef(repo=commit.repo, commit=commit.id)


def _wait_for_pipeline_dags(client, names: list[str], timeout: float) -> None:
    """Server mode: wait until the dag-processor has parsed each pipeline's DAG, and make sure it is unpaused."""
    from trainyard import pps

    deadline = time.monotonic() + timeout
    for name in names:
        while True:
            try:
                dag = client.dag(pps.dag_id(name))
                break
            except NotFound:
                if time.monotonic() > deadline:
                    _say(f"note: {client.endpoint} has not parsed {pps.dag_id(name)} after {timeout:.0f} s; it "
                         "appears at the dag-processor's next parse of dags/pachyderm_pipelines.py")
                    return
                time.sleep(2)
        if dag.get("is_paused"):
            client.unpause(pps.dag_id(name))
        _say(f"pipeline {name} is live on {client.endpoint} (DAG {pps.dag_id(name)})")


def cmd_pipeline(args) -> int:
    from trainyard import pps

    store = _store(args)
    if args.pipeline_cmd in ("create", "update"):
        settings = config.load(store=args.store)
        specs = pps.load_spec_files(args.file)
        for spec, where in specs:
            pps.check_resources(spec, settings, where)
            if settings.runner == "kubernetes" and not spec.transform.image:
                raise pps.SpecError(f"{where}: transform.image is required on the kubernetes runner")
        pps.check_pipelines(store, [spec for spec, _ in specs], update=args.pipeline_cmd == "update")
        source = _pipeline_source(store, args.source, args.json) if args.source else None
        records = pps.save_pipelines(store, specs, source=source, update=args.pipeline_cmd == "update")
        rows = [_pipeline_row(store, r) for r in records]
        server = _server(args)
        if not args.json:
            verb = "created" if args.pipeline_cmd == "create" else "updated"
            for row in rows:
                print(f"{verb} pipeline {row['name']} (DAG {row['dag']}): {row['input']} -> repo {row['output']}, "
                      f"source {row['source'] or 'none'}")
                if row["note"]:
                    _say(f"note: {row['note']}")
            if server is None:
                _say("a `trainyard data put` into an input repo runs the pipelines here, in-process; "
                     f"`airflow dags test {rows[0]['dag']}` runs one on what its inputs hold now")
        if server is not None and not args.no_wait:
            _wait_for_pipeline_dags(server, [r.name for r in records], args.wait_timeout)
        if args.json:
            print(json.dumps(rows, indent=2, sort_keys=True))
        return 0
    if args.pipeline_cmd == "list":
        rows = [_pipeline_row(store, r) for r in pps.load_pipelines(store).values()]
        if args.json:
            print(json.dumps(rows, indent=2, sort_keys=True))
        else:
            _print_table(rows, ["name", "input", "output", "source", "dag", "updated"])
        return 0
    if args.pipeline_cmd == "delete":
        names = pps.delete_pipelines(store, args.names)
        _emit({"deleted": names}, args.json, "\n".join(f"deleted pipeline {n} (its repo {n} and datum records stay)"
                                                       for n in names))
        return 0
    return _pipeline_datums(store, args)


def _pipeline_row(store: Store, record) -> dict:
    from trainyard import pps

    spec = record.parsed
    note = ""
    provenance_of = store.branch_head(spec.name)
    if provenance_of and not store.exists(f"pps/state/{spec.name}.json"):
        note = (f"repo {spec.name} already has commits that pipeline {spec.name} did not make; its commits will "
                "go on top of them")
    return {"name": spec.name, "dag": spec.dag_id, "input": pps.describe_input(spec.input), "output": spec.name,
            "source": f"{record.source.repo}:{record.source.commit[:5]}" if record.source else "",
            "updated": format_time(record.updated), "file": record.file, "note": note}


def _pipeline_datums(store: Store, args) -> int:
    """`pipeline datums NAME`: each datum of a job with its state and timing (kept when the spec has enable_stats)."""
    from trainyard import pps

    record = pps.get_pipeline(store, args.name)
    job = args.job
    if not job:
        try:
            job = store.get_json(pps.state_key(args.name))["job"]
        except NotFound:
            raise NotFound(f"pipeline {args.name} has not finished a job yet; see `trainyard logs --pipeline "
                           f"{pps.dag_id(args.name)} --run-id ID`") from None
    prefix = f"pps/stats/{args.name}/{job}/"
    stats = [store.get_json(k) for k in sorted(store.backend.list(prefix)) if k.endswith(".json")]
    if not stats and not record.parsed.enable_stats:
        raise NotFound(f"pipeline {args.name} keeps no per-datum stats: set \"enable_stats\": true in its spec and "
                       "`trainyard pipeline update -f SPEC`")
    if args.json:
        print(json.dumps(stats, indent=2, sort_keys=True))
        return 0
    print(f"pipeline {args.name}  job {job}  {len(stats)} datum(s) processed or failed in it")
    _print_table([{"datum": s["datum"][:12], "files": s["label"][:60], "state": s["state"],
                   "attempts": s["attempts"], "total": f"{s['seconds']:.2f}s",
                   "download": f"{s.get('download_seconds', 0):.2f}s", "process": f"{s.get('process_seconds', 0):.2f}s",
                   "upload": f"{s.get('upload_seconds', 0):.2f}s"} for s in stats],
                 ["datum", "files", "state", "attempts", "total", "download", "process", "upload"])
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
    deploy.add_argument("-d", "--data", help="data bundle directory")
    deploy.add_argument("-m", "--manifest", help="remote data manifest: JSON lines {\"url\": ..., \"path\": ...} (kaos)")
    deploy.add_argument("--data-repo", help="repo a manifest is ingested into (default: the manifest's file name)")
    deploy.add_argument("-h", "--hyperparams", default="{}", help="hyperparameters: JSON object or a file")
    deploy.add_argument("--cpu", help="CPU cores per training task, e.g. 0.5, 2, 500m (default: remembered)")
    deploy.add_argument("--memory", help="memory per training task: 512Mi, 2Gi, 1G (default: remembered)")
    deploy.add_argument("--gpu", type=int, help="GPUs per training task (default: remembered, else 0)")
    deploy.add_argument("--timeout", type=int, help="seconds a training task may run (default: remembered)")
    deploy.add_argument("--metric", help="metric that picks the best model: NAME[:max|min], e.g. loss:min")
    deploy.add_argument("--parallelism", type=int, help="training tasks of this run that may run at once")
    deploy.add_argument("--no-cache", action="store_true", help="train again even when the model exists")
    deploy.add_argument("--major", action="store_true", help="register as a new major version (2.0, ...)")
    deploy.add_argument("--save-training-data", action="store_true",
                        help="record the exact input commits with the run (a reference, no copy)")
    deploy.add_argument("--allow-cpu-fallback", action="store_true",
                        help="run on CPU when fewer GPUs exist than asked for (local runner)")
    deploy.add_argument("--local", action="store_true",
                        help="run the pipeline in-process on the local runner, even when `trainyard init` chose a server")
    deploy.add_argument("--wait", action="store_true",
                        help="server mode: follow the run's tasks until it ends, then show its models")
    deploy.add_argument("--upload-only", action="store_true", help="commit the bundles without training")
    deploy.add_argument("--message", default="", help="commit message")
    deploy.add_argument("--json", action="store_true", help="print one JSON object, no progress bars")
    deploy.set_defaults(func=cmd_deploy)

    lst = sub.add_parser("list", help="list runs, newest first")
    lst.add_argument("--pipeline", default="train_pipeline")
    lst.add_argument("--limit", type=int, default=0)
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=cmd_list)

    info = sub.add_parser("info", help="models of run N ranked by a metric, or one model's metrics and lineage")
    which = info.add_mutually_exclusive_group()
    which.add_argument("--model", help="model id or a unique prefix")
    which.add_argument("-i", "--index", type=int, help="run number from `trainyard list` (0 is the newest)")
    which.add_argument("--file", help="REPO:PATH of a datum step's output: which step, datum and inputs made it")
    info.add_argument("--ref", default="latest", help="with --file: the commit (default latest)")
    info.add_argument("-s", "--sort", metavar="METRIC", help="rank by NAME[:max|min] (default: the run's metric)")
    info.add_argument("--pipeline", default="train_pipeline")
    info.add_argument("--json", action="store_true")
    info.set_defaults(func=cmd_info)

    logs = sub.add_parser("logs", help="a run's step logs, kept in the store while they run (also after failures)")
    run_of = logs.add_mutually_exclusive_group()
    run_of.add_argument("-i", "--index", type=int, help="run number from `trainyard list` (default 0, the newest)")
    run_of.add_argument("--run-id", help="an Airflow run id (also for runs that failed before registering)")
    logs.add_argument("--pipeline", default="train_pipeline")
    logs.add_argument("--step", help="only this task, e.g. train or build")
    logs.add_argument("--map-index", type=int, help="only this mapped task (a sweep combination or datum chunk)")
    logs.add_argument("--follow", action="store_true", help="keep printing new lines until the run has finished")
    logs.set_defaults(func=cmd_logs)

    models = sub.add_parser("models", help="registered versions of a model name, with metrics and aliases")
    models.add_argument("name", nargs="?", help="model name (the source bundle's name); omit to list names")
    models.add_argument("--json", action="store_true")
    models.set_defaults(func=cmd_models)

    lineage = sub.add_parser("lineage", help="what produced a model: commits, params, env, run, versions")
    lineage.add_argument("model", help="model id or a unique prefix")
    lineage.add_argument("--dot", action="store_true", help="print a Graphviz graph")
    lineage.add_argument("--json", action="store_true")
    lineage.set_defaults(func=cmd_lineage)

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
    ingest = data_sub.add_parser("ingest", help="download a remote data manifest in parallel and commit it")
    ingest.add_argument("repo")
    ingest.add_argument("manifest", help="JSON lines {\"url\": ..., \"path\": ..., [\"sha256\", \"size\"]}")
    ingest.add_argument("--message", default="")
    ingest.add_argument("--json", action="store_true")
    for p in (log, inspect, data_sub.choices["repos"]):
        p.add_argument("--json", action="store_true")
    put = data_sub.add_parser("put", help="add a file to a repo, whole or split into datums (Pachyderm's put file)")
    put.add_argument("repo")
    put.add_argument("file", help="local file to put")
    put.add_argument("--split", metavar="line|json", help="split into datums of lines or of JSON lines")
    put.add_argument("--target-file-datums", type=int, metavar="N", help="lines (records) per datum (default: 1)")
    put.add_argument("--header", action="store_true", help="repeat the first line atop every datum (--split line)")
    put.add_argument("--path", help="path in the repo (default: the file's name); a split file becomes a directory")
    put.add_argument("-m", "--message", default="", help="commit message")
    put.add_argument("--json", action="store_true")
    put.add_argument("--no-run", action="store_true",
                     help="only commit: do not run the Pachyderm pipelines that read the repo here (embedded default)")
    data.set_defaults(func=cmd_data)

    template = sub.add_parser("template", help="list or copy bundled templates")
    template_sub = template.add_subparsers(dest="template_cmd", required=True)
    tl = template_sub.add_parser("list")
    tl.add_argument("--json", action="store_true")
    tg = template_sub.add_parser("get")
    tg.add_argument("name")
    tg.add_argument("-o", "--output")
    template.set_defaults(func=cmd_template)

    init = sub.add_parser("init", help="server mode: remember an Airflow server (and the store) for this user",
                          epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    init.add_argument("-e", "--endpoint", required=True, help="Airflow's address, e.g. http://127.0.0.1:8080")
    init.add_argument("-u", "--username", default=os.environ.get("TRAINYARD_USERNAME", "admin"),
                      help="Airflow user (default admin); the password comes from TRAINYARD_PASSWORD or a prompt")
    init.add_argument("--store", help="the store the server uses, e.g. s3://bucket/prefix (default: current setting)")
    init.add_argument("--store-endpoint", help="S3 endpoint of the store, e.g. http://127.0.0.1:9000 for MinIO")
    init.add_argument("--no-check", action="store_true", help="save without logging in first")
    init.set_defaults(func=cmd_init)

    kill = sub.add_parser("kill", help="server mode: stop a run (fails its tasks; their pods are deleted)",
                          epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    kill.add_argument("--run-id", help="the run to stop (default: the newest queued or running run)")
    kill.add_argument("--pipeline", default="train_pipeline")
    kill.add_argument("--timeout", type=float, default=60, help="seconds to wait for its tasks to stop")
    kill.set_defaults(func=cmd_kill)

    trigger = sub.add_parser("trigger", help="server mode: start any trainyard DAG with conf (its Params)",
                             epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    trigger.add_argument("dag_id", help="e.g. train_pipeline, caption_pipeline, predict, ingest")
    trigger.add_argument("-c", "--conf", default="{}", help="the run's conf: a JSON object or a file")
    trigger.add_argument("--wait", action="store_true", help="follow the run's tasks until it ends")
    trigger.add_argument("--json", action="store_true")
    trigger.set_defaults(func=cmd_trigger)

    pipeline = sub.add_parser("pipeline", help="Pachyderm pipeline specs: create, update, list, delete, datums",
                              epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    pipeline_sub = pipeline.add_subparsers(dest="pipeline_cmd", required=True)
    for verb, text in (("create", "store Pachyderm specs; each becomes the DAG pps_<name>"),
                       ("update", "replace stored specs (their source stays unless --source is given)")):
        p = pipeline_sub.add_parser(verb, help=text, epilog=EXIT_CODES,
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("-f", "--file", action="append", required=True,
                       help="a spec (JSON or YAML) or a folder of specs; repeatable")
        p.add_argument("--source", help="the transform's code: a directory (committed as a source repo) or REPO[:REF]; "
                                        "locally its root is the cmd's working directory, its requirements installed")
        p.add_argument("--no-wait", action="store_true",
                       help="server mode: do not wait for the server to parse the DAGs")
        p.add_argument("--wait-timeout", type=float, default=180, help="server mode: seconds to wait (default 180)")
        p.add_argument("--json", action="store_true")
    pl = pipeline_sub.add_parser("list", help="stored pipelines")
    pl.add_argument("--json", action="store_true")
    pd = pipeline_sub.add_parser("delete", help="remove pipelines (their output repos and datum records stay)")
    pd.add_argument("names", nargs="+")
    pd.add_argument("--json", action="store_true")
    pdat = pipeline_sub.add_parser("datums", help="each datum of a job: state, attempts and timing (enable_stats)")
    pdat.add_argument("name")
    pdat.add_argument("--job", help="an Airflow run id of the pipeline's DAG (default: its last finished job)")
    pdat.add_argument("--json", action="store_true")
    pipeline.set_defaults(func=cmd_pipeline)

    cfg = sub.add_parser("config", help="show resolved settings (argument > env > init profile > airflow.cfg > default)")
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


def entrypoint() -> None:
    """The console script. After an in-process pipeline run, exit without tearing down Airflow's objects.

    Interpreter teardown after `dag.test()` takes about 1.5 s of garbage collection and finalizers; everything the
    run wrote is already closed and committed, so the process flushes its output and ends at once.
    """
    code = main()
    if "airflow" in sys.modules:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entrypoint()
