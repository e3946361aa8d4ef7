"""`trainyard deploy`: validate and upload a source and a data bundle (or a kaos manifest), then train (kaos's
`train deploy -s -d -m -h`), in-process on the local runner or on the Airflow server `trainyard init` chose."""

from typing import Annotated

import typer

from trainyard import remote, runs
from trainyard.bundles import DataBundle, SourceBundle, deploy_bundle
from trainyard.cli.context import Session, embedded_airflow_env, json_object_arg
from trainyard.cli.data import ingest_manifest, load_manifest, manifest_repo
from trainyard.cli.options import EXIT_CODES_EPILOG, App, MessageOption, WaitOption
from trainyard.cli.output import emit, print_table, say, stdout_to_stderr
from trainyard.display import format_metric
from trainyard.errors import ConfigError
from trainyard.grids import validate_grid
from trainyard.metrics import parse_spec
from trainyard.records import RunModel, RunRecord
from trainyard.resources import Resources
from trainyard.store.versioned import Store

app = App()

def _run_options(settings, hyperparams: str, cpu: str | None, memory: str | None, gpu: int | None,
                 timeout: int | None, metric: str | None, parallelism: int | None, no_cache: bool, major: bool,
                 save_training_data: bool) -> dict:
    """Validate every run option before anything is uploaded, and turn them into the run's conf."""
    grid = validate_grid(json_object_arg(hyperparams, "-h/--hyperparams"), cap=settings.combination_cap)
    if cpu or memory or gpu is not None:
        Resources.parse(cpu or settings.default_cpu, memory or settings.default_memory, gpu or 0,
                        max_cpu=settings.max_cpu, max_memory=settings.max_memory, max_gpu=settings.max_gpu)
    if metric:
        parse_spec(metric)
    for flag, value in (("--timeout", timeout), ("--parallelism", parallelism)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} must be at least 1, got {value}")
    return {"hyperparams": grid, "metric": metric, "cpu": cpu, "memory": memory, "gpu": gpu, "timeout": timeout,
            "no_cache": no_cache, "major": major, "save_training_data": save_training_data}


@app.command(epilog=EXIT_CODES_EPILOG)
def deploy(
    session: Session,
    source: Annotated[str, typer.Option("-s", "--source", metavar="DIR",
                                        help="source bundle directory (kaos layout or an AI Center package)")],
    data: Annotated[str | None, typer.Option("-d", "--data", metavar="DIR", show_default=False,
                                             help="data bundle directory")] = None,
    manifest: Annotated[str | None, typer.Option(
        "-m", "--manifest", metavar="FILE", show_default=False,
        help="remote data manifest instead of -d: JSON lines {\"url\": ..., \"path\": ...} (kaos)")] = None,
    data_repo: Annotated[str | None, typer.Option(
        "--data-repo", metavar="NAME", show_default=False,
        help="repo a manifest is ingested into (default: the manifest's file name)")] = None,
    hyperparams: Annotated[str, typer.Option(
        "-h", "--hyperparams", metavar="JSON|FILE",
        help="hyperparameter grid: a JSON object of lists, or a file holding one; one model per combination")] = "{}",
    cpu: Annotated[str | None, typer.Option("--cpu", metavar="CORES", show_default=False,
                                            help="CPU per training task: 0.5, 2, 500m (default: remembered)")] = None,
    memory: Annotated[str | None, typer.Option(
        "--memory", metavar="QUANTITY", show_default=False,
        help="memory per training task: 512Mi, 2Gi, 1G (default: remembered)")] = None,
    gpu: Annotated[int | None, typer.Option("--gpu", metavar="N", show_default=False,
                                            help="GPUs per training task (default: remembered, else 0)")] = None,
    timeout: Annotated[int | None, typer.Option(
        "--timeout", metavar="SECONDS", show_default=False,
        help="seconds a training task may run (default: remembered)")] = None,
    metric: Annotated[str | None, typer.Option(
        "--metric", metavar="NAME[:max|min]", show_default=False,
        help="metric that picks the best model, e.g. loss:min (default: remembered, else a *test* metric)")] = None,
    parallelism: Annotated[int | None, typer.Option(
        "--parallelism", metavar="N", show_default=False,
        help="training tasks of this run that may run at once (default: [trainyard] parallelism)")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="train again even when the model exists")] = False,
    major: Annotated[bool, typer.Option("--major", help="register as a new major version (2.0, ...)")] = False,
    save_training_data: Annotated[bool, typer.Option(
        "--save-training-data", help="record the exact input commits with the run (a reference, no copy)")] = False,
    allow_cpu_fallback: Annotated[bool, typer.Option(
        "--allow-cpu-fallback", help="run on CPU when fewer GPUs exist than asked for (local runner)")] = False,
    local: Annotated[bool, typer.Option(
        "--local", help="run the pipeline in-process on the local runner, even when `trainyard init` chose a "
                        "server")] = False,
    wait: WaitOption = False,
    upload_only: Annotated[bool, typer.Option("--upload-only", help="commit the bundles without training")] = False,
    message: MessageOption = "",
) -> int:
    """Upload source and data bundles and train.

    One model per hyperparameter combination: in-process on the local runner, or on the Airflow server that
    `trainyard init` chose. Every option is checked before anything is uploaded."""
    settings = session.settings(runner="local" if local else None, parallelism=parallelism).checked()
    options = _run_options(settings, hyperparams, cpu, memory, gpu, timeout, metric, parallelism, no_cache, major,
                           save_training_data)
    if data and manifest or not (data or manifest or upload_only):
        raise ConfigError("give the data as exactly one of -d/--data DIR or -m/--manifest FILE "
                          "(only --upload-only may leave both out, to commit the source alone)")
    # Validate the bundles and the manifest completely before anything is uploaded, so a bad input stores nothing.
    source_bundle = SourceBundle.load(source)
    data_bundle = DataBundle.load(data) if data else None
    entries = load_manifest(manifest, settings) if manifest else None
    server = session.server(local=local)
    if server is not None:  # a wrong password or a server that is down must fail before anything is uploaded
        server.check_dag("train_pipeline")
    store = session.store
    quiet = session.json
    source_commit, _, source_report = deploy_bundle(store, source_bundle, message=message, quiet=quiet)
    data_commit, data_blobs, data_bytes = None, 0, 0
    if data_bundle is not None:
        data_commit, data_created, data_report = deploy_bundle(store, data_bundle, message=message, quiet=quiet)
        if data_created:  # an unchanged bundle is the same commit: nothing new to announce
            session.announce(data_commit, settings)
        data_blobs, data_bytes = data_report.blobs_uploaded, data_report.bytes_uploaded
    elif entries is not None:
        data_commit, stats = ingest_manifest(session, entries, data_repo or manifest_repo(manifest), manifest,
                                             message, settings)
        session.announce(data_commit, settings)
        data_blobs, data_bytes = stats["blobs_uploaded"], stats["bytes_uploaded"]
    uploaded = {"blobs": source_report.blobs_uploaded + data_blobs,
                "bytes": source_report.bytes_uploaded + data_bytes}
    result: dict = {"source": source_commit.id, "source_ref": source_commit.ref, "data": data_commit and data_commit.id,
                    "data_ref": data_commit and data_commit.ref, "uploaded": uploaded, "store": store.uri}
    if not quiet:
        print(f"source {source_commit.ref}  data {data_commit.ref if data_commit else '-'}  uploaded "
              f"{uploaded['blobs']} blob(s), {uploaded['bytes']} bytes")
    if upload_only:
        emit(result, session.json, None)
        return 0
    conf = {"source": source_commit.repo, "source_ref": source_commit.id, "data": data_commit.repo,
            "data_ref": data_commit.id, **options}
    if server is not None:
        for flag, value in (("--parallelism", parallelism), ("--allow-cpu-fallback", allow_cpu_fallback)):
            if value:
                say(f"note: {flag} is fixed by the server's [trainyard] settings in server mode; ignored")
        run = _deploy_to_server(server, conf, store, wait, session.json, result)
        if run is None:
            return 0
    else:
        embedded_airflow_env()
        from operators.inprocess import run_pipeline  # Airflow is imported only when a run is asked for

        parse_settings = {"parallelism": parallelism, "allow_cpu_fallback": "true" if allow_cpu_fallback else None}
        with stdout_to_stderr(enabled=session.json):
            run = run_pipeline("train_pipeline", conf, quiet=quiet, store_uri=settings.store,
                               parse_settings=parse_settings)
    return _report_run(run, result, session.json)


def _deploy_to_server(client, conf: dict, store: Store, wait: bool, as_json: bool, result: dict) -> dict | None:
    """Trigger train_pipeline on the server; with --wait follow it and return it like an in-process run."""
    run_id = remote.trigger(client, "train_pipeline", conf, say=say)
    result.update({"run_id": run_id, "endpoint": client.endpoint, "url": client.run_url("train_pipeline", run_id)})
    if not wait:
        result["airflow_state"] = "queued"
        emit(result, as_json, f"triggered train_pipeline run {run_id}\n  {result['url']}\n"
                              f"  follow it: trainyard logs --run-id {run_id} --follow   "
                              f"stop it: trainyard kill --run-id {run_id}")
        return None
    say(f"triggered train_pipeline run {run_id} ({result['url']}); waiting for it to end")
    state = remote.wait(client, "train_pipeline", run_id, say=say)
    return {"run_id": run_id, "state": state, "results": runs.read_results(store, "train_pipeline", run_id)}


def _report_run(run: dict, result: dict, as_json: bool) -> int:
    """The run's models, failures and registered version; exit 1 unless every combination trained."""
    results: RunRecord | None = run["results"]
    result.update({"run_id": run["run_id"], "airflow_state": run["state"]})
    if results is None:
        result["state"] = "failed"
        emit(result, as_json, f"run {run['run_id']} failed before it registered anything (see the task log above)")
        return 1
    summary = results.run_summary
    best, version = results.best, summary.outputs.registry
    result.update({"state": summary.state, "cached": summary.cached, "metric": summary.metric,
                   "model_id": best and best.model_id, "metrics": best.metrics if best else {},
                   "version": version and version.model_dump(mode="json"),
                   "models": [m.model_dump(mode="json") for m in results.models],
                   "failures": [f.model_dump(mode="json") for f in results.failures]})
    if as_json:
        emit(result, True, None)
    else:
        print_models(results.models, summary.metric)
        for failure in results.failures:
            print(f"FAILED {failure.label}: {failure.error}")
        print(f"run {run['run_id']} {summary.state}"
              + (f"  best {best.model_id}" if best else "")
              + (f"  registered {version.name} {version.version}" if version else "")
              + ("  (cache hit: nothing trained)" if summary.cached else ""))
    return 0 if summary.state == "success" else 1


def print_models(models: list[RunModel], spec: str | None) -> None:
    name = spec.split(":")[0] if spec else None
    rows = [{"": "*" if m.best else "", "model_id": m.model_id, "params": m.label,
             (name or "metric"): format_metric(m.metrics, name), "cached": "yes" if m.cached else ""}
            for m in models]
    print_table(rows, ["", "model_id", "params", name or "metric", "cached"])
