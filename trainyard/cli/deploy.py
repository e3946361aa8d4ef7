"""`trainyard deploy`: validate and upload a source and a data bundle (or a kaos manifest), then train (kaos's
`train deploy -s -d -m -h`), in-process on the local runner or on the Airflow server `trainyard init` chose."""

import functools
import inspect
import typing
from collections.abc import Callable
from typing import Annotated, Any

import typer

from trainyard import register, remote, runs
from trainyard.bundles import DataBundle, SourceBundle, deploy_bundle
from trainyard.cli.context import Session, embedded_airflow_env, json_object_arg
from trainyard.cli.data import ingest_manifest, load_manifest, manifest_repo
from trainyard.cli.options import EXIT_CODES_EPILOG, App, MessageOption, WaitOption
from trainyard.cli.output import emit, print_table, say, stdout_to_stderr
from trainyard.display import format_metric
from trainyard.errors import ConfigError
from trainyard.options import MAX_PARALLELISM, RunInputs, RunOptions
from trainyard.plan import plan_run
from trainyard.records import RunModel, RunRecord
from trainyard.store.versioned import Store

app = App()
PIPELINE = "train_pipeline"


def _flag_parameter(name: str) -> inspect.Parameter:
    """A typer option for one run option, from its RunOptions field: flags, metavar, help, type and default. An
    object-valued option (the grid) is given as JSON text or a file holding it."""
    field, flag = RunOptions.model_fields[name], RunOptions.flag(name)
    kind = next((t for t in typing.get_args(field.annotation) if t is not type(None)), field.annotation)
    if typing.get_origin(kind) is Annotated:  # a constrained type, e.g. an int >= 0
        kind = typing.get_args(kind)[0]
    if kind is bool:
        return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=False, annotation=Annotated[
            bool, typer.Option(*flag.names, help=field.description)])
    if kind not in (str, int):
        kind = str
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
        kind | None, typer.Option(*flag.names, metavar=flag.metavar, show_default=False, help=field.description)])


def with_run_options(func: Callable) -> Callable:
    """func(..., run_options: dict, ...) as a command with one option per RunOptions field, where `run_options`
    stands in its signature; func gets what was given as one dict."""
    signature = inspect.signature(func, eval_str=True)
    names = RunOptions.names()
    parameters = []
    for parameter in signature.parameters.values():
        if parameter.name == "run_options":
            parameters += [_flag_parameter(name) for name in names]
        else:
            parameters.append(parameter if parameter.kind is inspect.Parameter.POSITIONAL_ONLY or not parameters
                              else parameter.replace(kind=inspect.Parameter.KEYWORD_ONLY))

    @functools.wraps(func)
    def command(*args: Any, **kwargs: Any) -> Any:
        return func(*args, run_options={name: kwargs.pop(name) for name in names}, **kwargs)

    command.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    return command


def _run_options(settings, given: dict[str, Any]) -> RunOptions:
    """Check every run option before anything is uploaded; errors name the deploy flag."""
    hyperparams = json_object_arg(given.get("hyperparams") or "{}", "-h/--hyperparams")
    return RunOptions.parse({**given, "hyperparams": hyperparams}, settings,
                            spell=lambda name: RunOptions.flag(name).long)


@app.command(epilog=EXIT_CODES_EPILOG)
@with_run_options
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
    run_options: dict[str, Any] | None = None,
    parallelism: Annotated[int | None, typer.Option(
        "--parallelism", metavar="N", show_default=False,
        help="training tasks of this run that may run at once (default: [trainyard] parallelism)")] = None,
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
    if parallelism is not None and not 1 <= parallelism <= MAX_PARALLELISM:
        raise ConfigError(f"--parallelism must be between 1 and {MAX_PARALLELISM} (no run maps more training tasks), "
                          f"got {parallelism}")
    settings = session.settings(runner="local" if local else None, parallelism=parallelism).checked()
    options = _run_options(settings, run_options or {})
    if data and manifest or not (data or manifest or upload_only):
        raise ConfigError("give the data as exactly one of -d/--data DIR or -m/--manifest FILE "
                          "(only --upload-only may leave both out, to commit the source alone)")
    # Validate the bundles and the manifest completely before anything is uploaded, so a bad input stores nothing.
    source_bundle = SourceBundle.load(source)
    data_bundle = DataBundle.load(data) if data else None
    entries = load_manifest(manifest, settings) if manifest else None
    server = session.server(local=local)
    if server is not None:  # a wrong password or a server that is down must fail before anything is uploaded
        server.check_dag(PIPELINE)
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
    inputs = RunInputs(source=source_commit.repo, source_ref=source_commit.id, data=data_commit.repo,
                       data_ref=data_commit.id)
    conf = {**inputs.model_dump(), **options.conf()}
    if server is not None:
        for flag, value in (("--parallelism", parallelism), ("--allow-cpu-fallback", allow_cpu_fallback)):
            if value:
                say(f"note: {flag} is fixed by the server's [trainyard] settings in server mode; ignored")
        run = _deploy_to_server(server, conf, store, wait, session.json, result)
        if run is None:
            return 0
    else:
        # A cache hit costs no pipeline: when every combination's model exists the run is recorded here, and
        # Airflow (seconds of start-up) is not started at all.
        run = _cached_run(store, settings, inputs, options)
        if run is None:
            embedded_airflow_env()
            from operators.inprocess import run_pipeline  # Airflow is imported only when a run is asked for

            parse_settings = {"parallelism": parallelism,
                              "allow_cpu_fallback": "true" if allow_cpu_fallback else None}
            with stdout_to_stderr(enabled=session.json):
                run = run_pipeline(PIPELINE, conf, quiet=quiet, store_uri=settings.store,
                                   parse_settings=parse_settings)
    return _report_run(run, result, session.json)


def _cached_run(store: Store, settings, inputs: RunInputs, options: RunOptions) -> dict | None:
    """Plan the run as train_pipeline's resolve step would (trainyard.plan, the same function); when every
    combination's model is already in the store, record the run (plan, register step, `_results.json`) without
    starting Airflow and return it like an in-process run. None: something must train (or --no-cache)."""
    if options.no_cache:
        return None
    warnings: list[str] = []  # said only when this is the run: otherwise the resolve step says them in its log
    planned = plan_run(store, settings, pipeline=PIPELINE, run_id=register.cached_run_id(), source=inputs.source,
                       source_ref=inputs.source_ref, data=inputs.data, data_ref=inputs.data_ref, options=options,
                       warn=warnings.append)
    if not planned.all_cached:
        return None
    for line in warnings:
        say(line)
    planned.remember(store)
    results = register.record_cached_run(store, planned.plan)
    say(f"every model is already trained ({planned.cached} cache hit(s)): recorded run {planned.plan.run_id} "
        "without starting a pipeline")
    return {"run_id": planned.plan.run_id, "state": None, "results": results}  # no Airflow run: no Airflow state


def _deploy_to_server(client, conf: dict, store: Store, wait: bool, as_json: bool, result: dict) -> dict | None:
    """Trigger train_pipeline on the server; with --wait follow it and return it like an in-process run."""
    run_id = remote.trigger(client, PIPELINE, conf, say=say)
    result.update({"run_id": run_id, "endpoint": client.endpoint, "url": client.run_url(PIPELINE, run_id)})
    if not wait:
        result["airflow_state"] = "queued"
        emit(result, as_json, f"triggered train_pipeline run {run_id}\n  {result['url']}\n"
                              f"  follow it: trainyard logs --run-id {run_id} --follow   "
                              f"stop it: trainyard kill --run-id {run_id}")
        return None
    say(f"triggered train_pipeline run {run_id} ({result['url']}); waiting for it to end")
    state = remote.wait(client, PIPELINE, run_id, say=say)
    return {"run_id": run_id, "state": state, "results": runs.read_results(store, PIPELINE, run_id)}


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
