"""Runs of a pipeline: `list`, `info` (a run's models ranked, one model, or where an output file came from),
`logs`, and in server mode `kill` and `trigger` (kaos's train list/info/logs/kill)."""

import json
import sys
import time
from typing import Annotated

import typer

from trainyard import remote, runs
from trainyard.cli.context import Session, json_object_arg
from trainyard.cli.models import model_info
from trainyard.cli.options import EXIT_CODES_EPILOG, App, IndexOption, PipelineOption, RunIdOption, WaitOption
from trainyard.cli.output import duration, emit, print_json, print_table, say
from trainyard.display import format_metric, format_time
from trainyard.errors import ConfigError, NotFound
from trainyard.metrics import available, default_metric, is_number, rank
from trainyard.records import RunRecord
from trainyard.store.versioned import Store

app = App()


def _one_of(**given) -> None:
    """Options that select the same thing: at most one may be given (exit 2 otherwise)."""
    named = [flag for flag, value in given.items() if value is not None]
    if len(named) > 1:
        raise ConfigError(f"give only one of {', '.join(given)}; got {' and '.join(named)}")


def _unfinished_runs(session: Session, pipeline: str, recorded: list[RunRecord]) -> list[dict]:
    """Server mode: the pipeline's runs on Airflow that have no results yet (queued, running, failed early)."""
    server = session.server()
    if server is None:
        return []
    known = {r.run_id for r in recorded}
    rows = []
    for run in server.runs(pipeline):
        if run["dag_run_id"] in known:
            continue
        # A step whose pod no node takes says why (the scheduler's reason), instead of a silent "running".
        waiting = runs.waiting_reasons(session.store, pipeline, run["dag_run_id"]) if run["state"] == "running" else []
        rows.append({"#": "-", "run_id": run["dag_run_id"], "state": run["state"],
                     "started": (run.get("start_date") or run.get("queued_at") or "")[:19].replace("T", " "),
                     "note": "; ".join(f"{w['task_id']} waiting: {w['reason']}" for w in waiting)})
    return rows


@app.command("list")
def list_runs(session: Session, pipeline: PipelineOption = "train_pipeline",
              limit: Annotated[int, typer.Option("--limit", metavar="N", help="at most N runs (0: all)")] = 0) -> int:
    """List runs, newest first: state, duration, best score."""
    results = runs.list_results(session.store, pipeline)[: limit or None]
    pending = _unfinished_runs(session, pipeline, results)
    if session.json:
        print_json([r.to_json() for r in results]
                   + [{"run_id": r["run_id"], "state": r["state"], "pending": True, "note": r["note"]} for r in pending])
        return 0
    rows = list(pending)
    for i, r in enumerate(results):
        summary = r.run_summary
        best = summary.outputs.best
        score = f"{summary.metric.split(':')[0]}={best.value:.4g}" if best and is_number(best.value) else ""
        rows.append({"#": i, "run_id": r.run_id, "state": summary.state, "started": format_time(summary.start_time),
                     "duration": duration(summary.execution_time), "cached": "yes" if summary.cached else "",
                     "models": len(r.models), "best": best.model_id if best else "", "score": score})
    columns = ["#", "run_id", "state", "started", "duration", "cached", "models", "best", "score"]
    print_table(rows, columns + (["note"] if any(r.get("note") for r in rows) else []))
    return 0


@app.command("info")
def info(
    session: Session,
    model: Annotated[str | None, typer.Option("--model", metavar="ID", show_default=False,
                                              help="one model: metrics, lineage, artifacts (an id or a unique "
                                                   "prefix)")] = None,
    index: IndexOption = None,
    file: Annotated[str | None, typer.Option(
        "--file", metavar="REPO:PATH", show_default=False,
        help="a file of a datum step's output: which step, datum and inputs made it")] = None,
    ref: Annotated[str, typer.Option("--ref", metavar="REF", help="with --file: the commit")] = "latest",
    sort: Annotated[str | None, typer.Option(
        "--sort", metavar="NAME[:max|min]", show_default=False,
        help="with -i: rank by this metric (default: the run's metric); numbers, lower first for losses")] = None,
    pipeline: PipelineOption = "train_pipeline",
) -> int:
    """Rank run N's models, or show one model or output file.

    -i N: the models of run N ranked by a metric (numbers; lower first for losses). --model: one model's metrics,
    lineage and artifacts. --file: which step, datum and input commits made a file of a datum step's output."""
    _one_of(**{"--model": model, "-i/--index": index, "--file": file})
    store = session.store
    if model:
        return model_info(session, model)
    if file:
        return _file_info(session, file, ref)
    if index is None:
        raise ConfigError("give --model ID, -i N (a run number from `trainyard list`, 0 is the newest) or "
                          "--file REPO:PATH")
    run = runs.nth_run(store, pipeline, index)
    models = run.models
    spec = sort or run.run_summary.metric or (default_metric(models[0].metrics) if models else None)
    names = available(models)
    if spec:
        ranked, unranked, name, direction = rank(models, spec)
    else:
        ranked, unranked, name, direction = [], models, None, None
    if session.json:
        print_json({"run_id": run.run_id, "state": run.state, "metric": name, "direction": direction,
                    "available_metrics": names, "models": [m.model_dump(mode="json") for m in ranked + unranked],
                    "failures": [f.model_dump(mode="json") for f in run.failures]})
        return 0
    inputs = run.parameters.inputs
    print(f"run #{index}  {run.run_id}  {run.state}  {duration(run.run_summary.execution_time)}  "
          f"source {_short(inputs.source)}  data {_short(inputs.data)}")
    header = f"{name} ({'higher' if direction == 'max' else 'lower'} is better)" if name else "metric"
    rows = [{"": "*" if m.best else "", "model_id": m.model_id, "params": m.label,
             header: format_metric(m.metrics, name), "cached": "yes" if m.cached else ""}
            for m in ranked + unranked]
    print_table(rows, ["", "model_id", "params", header, "cached"])
    for failure in run.failures:
        print(f"FAILED {failure.label}: {failure.error}")
    print(f"available metrics: {', '.join(names) or 'none'}")
    return 0


def _short(ref: str) -> str:
    repo, _, cid = ref.partition(":")
    return f"{repo}:{cid[:5]}"


def _file_info(session: Session, file: str, ref: str) -> int:
    """What produced a file of a datum step's output repo: the step, the datum and each input commit."""
    from trainyard.datums import load_provenance, load_record

    store = session.store
    repo, _, path = file.partition(":")
    if not path:
        raise ConfigError(f"--file takes REPO:PATH, e.g. predictions:image.png.txt; got {file!r}")
    commit = store.resolve(repo, ref)
    if path not in commit.manifest:
        raise NotFound(f"{path!r} is not in {commit.ref}; list its files with `trainyard data inspect {repo}`")
    try:
        provenance = load_provenance(store, commit)
    except NotFound:
        raise NotFound(f"{commit.ref} was not written by a datum step, so it records no provenance; "
                       f"see `trainyard data inspect {commit.ref}`") from None
    origin = provenance.files[path]
    record = load_record(store, provenance.pipeline, provenance.step, origin.key)
    inputs = [{**spec.model_dump(mode="json"), "message": store.get_commit(spec.repo, spec.commit).message}
              for spec in (record.inputs if record.inputs is not None else provenance.inputs)]
    if session.json:
        print_json({"file": path, "commit": commit.id, "pipeline": provenance.pipeline, "step": provenance.step,
                    "datum": origin.datum, "inputs": inputs, "seconds": record.seconds, "attempts": record.attempts})
        return 0
    print(f"file      {commit.repo}:{path}  (commit {commit.short})")
    print(f"made by   {provenance.pipeline}.{provenance.step}  datum {origin.datum}  "
          f"{record.seconds or 0:.2f} s, {record.attempts} attempt(s)")
    for spec in inputs:
        print(f"input     {spec['name']}: {spec['repo']}:{spec['commit'][:5]}  {spec['message']}")
    return 0


@app.command("logs")
def logs(
    session: Session,
    index: IndexOption = None,
    run_id: RunIdOption = None,
    pipeline: PipelineOption = "train_pipeline",
    step: Annotated[str | None, typer.Option("--step", metavar="TASK", show_default=False,
                                             help="only this task, e.g. train or build")] = None,
    map_index: Annotated[int | None, typer.Option(
        "--map-index", metavar="N", show_default=False,
        help="only this mapped task (a sweep combination or a datum chunk)")] = None,
    follow: Annotated[bool, typer.Option("--follow", help="keep printing new lines until the run has ended")] = False,
) -> int:
    """A run's step logs, kept in the store (failed runs too).

    Default: every step of the newest run. The logs are written while the steps run, so they outlive pods."""
    _one_of(**{"-i/--index": index, "--run-id": run_id})
    store = session.store
    run_id = run_id or runs.nth_run(store, pipeline, index or 0).run_id
    shown: dict[str, int] = {}
    chunks: list[dict] = []
    quiet_rounds = 0
    while True:
        found = runs.newest_logs(store, pipeline, run_id, step, map_index)
        if not found and not follow:
            raise NotFound(f"no logs for run {run_id} of {pipeline}" + (f" step {step}" if step else "")
                           + "; see `trainyard list`")
        grew = False
        for task, map_at, tries, key in found:
            data = runs.read_log(store, key)
            if len(data) <= shown.get(key, 0):
                continue
            text = data[shown.get(key, 0):].decode(errors="replace")
            chunk = {"task": task, "map_index": int(map_at), "try": tries, "text": text}
            if session.json and follow:  # one JSON document per line, as the logs grow
                print(json.dumps(chunk, sort_keys=True), flush=True)
            elif session.json:
                chunks.append(chunk)
            else:
                if key not in shown:
                    print(f"== {task}" + (f" [{map_at}]" if map_at != "-1" else "") + f" try {tries} ==")
                sys.stdout.write(text)
                sys.stdout.flush()
            shown[key] = len(data)
            grew = True
        if not follow:
            if session.json:
                print_json(chunks)
            return 0
        quiet_rounds = 0 if grew else quiet_rounds + 1
        if _run_finished(session, store, pipeline, run_id) and quiet_rounds >= 2:
            return 0
        time.sleep(1)


def _run_finished(session: Session, store: Store, pipeline: str, run_id: str) -> bool:
    """Whether a followed run has ended: Airflow's state in server mode, else its results in the store."""
    server = session.server()
    if server is not None:
        return server.run(pipeline, run_id)["state"] in remote.TERMINAL_RUN_STATES
    return runs.has_results(store, pipeline, run_id)


def _server_or_refuse(session: Session, what: str, locally: str):
    server = session.server()
    if server is None:
        raise ConfigError(f"{what} on an Airflow server: run `trainyard init -e URL` first ({locally})")
    return server


@app.command("kill", epilog=EXIT_CODES_EPILOG)
def kill(
    session: Session,
    run_id: Annotated[str | None, typer.Option("--run-id", metavar="ID", show_default=False,
                                               help="the run to stop (default: the newest queued or running run)")]
    = None,
    pipeline: PipelineOption = "train_pipeline",
    timeout: Annotated[float, typer.Option("--timeout", metavar="SECONDS",
                                           help="seconds to wait for its tasks to stop")] = 60.0,
) -> int:
    """Server mode: stop a run; its running pods are deleted.

    The run is marked failed; kill waits until none of its tasks runs."""
    server = _server_or_refuse(session, "kill stops runs", "an in-process run stops with Ctrl-C")
    run_id = run_id or remote.newest_active_run(server, pipeline)
    stopped = remote.kill(server, pipeline, run_id, timeout=timeout, say=say)
    emit({"pipeline": pipeline, "run_id": run_id, "stopped": stopped}, session.json,
         f"killed run {run_id}" + (f": stopped {', '.join(stopped)}" if stopped else " (no task was running)"))
    return 0


@app.command("trigger", epilog=EXIT_CODES_EPILOG)
def trigger(
    session: Session,
    dag_id: Annotated[str, typer.Argument(metavar="DAG_ID", show_default=False,
                                          help="e.g. train_pipeline, caption_pipeline, predict, ingest")],
    conf: Annotated[str, typer.Option("-c", "--conf", metavar="JSON|FILE",
                                      help="the run's conf (its Params): a JSON object or a file")] = "{}",
    wait: WaitOption = False,
) -> int:
    """Server mode: start any trainyard DAG with conf.

    The conf is checked by the DAG's Params on the server."""
    server = _server_or_refuse(session, "trigger runs a DAG", "locally, use `airflow dags test DAG -c JSON`")
    run_id = remote.trigger(server, dag_id, json_object_arg(conf, "-c/--conf"), say=say)
    result = {"dag_id": dag_id, "run_id": run_id, "url": server.run_url(dag_id, run_id)}
    if wait:
        say(f"triggered {dag_id} run {run_id} ({result['url']}); waiting for it to end")
        result["state"] = remote.wait(server, dag_id, run_id, say=say)
    emit(result, session.json, f"{dag_id} run {run_id} {result.get('state', 'triggered')}\n  {result['url']}")
    return 0 if result.get("state", "success") == "success" else 1
