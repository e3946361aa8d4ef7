"""`trainyard pipeline`: Pachyderm pipeline specs stored in the store, each the DAG pps_<name>; and the in-process
run of the pipelines a new commit reaches (the embedded default's stand-in for Asset events).

trainyard.pps (pydantic) is imported inside the commands: it triples the start-up time of every other command."""

import time
from pathlib import Path
from typing import Annotated

import typer

from trainyard.cli.context import Session, embedded_airflow_env
from trainyard.cli.options import EXIT_CODES_EPILOG, App, keep_global_options
from trainyard.cli.output import emit, print_json, print_table, say, stdout_to_stderr
from trainyard.display import format_time
from trainyard.errors import ConfigError, NotFound, StepError
from trainyard.store import parse_ref
from trainyard.store.versioned import Commit, Store

app = App(epilog=EXIT_CODES_EPILOG)
app.callback(help="Pachyderm pipeline specs: create, update, list, delete, datums.")(keep_global_options)

SpecFiles = Annotated[list[str], typer.Option(
    "-f", "--file", metavar="FILE|DIR", show_default=False,
    help="a spec (JSON or YAML, one or more pipelines) or a folder of specs; repeatable")]
SpecSource = Annotated[str | None, typer.Option(
    "-s", "--source", metavar="DIR|REPO[:REF]", show_default=False,
    help="the transform's code: a directory (committed as a source repo) or a source repo; locally its root is the "
         "cmd's working directory, its requirements installed")]
NoWait = Annotated[bool, typer.Option("--no-wait", help="server mode: do not wait for the server to parse the DAGs")]
WaitTimeout = Annotated[float, typer.Option("--wait-timeout", metavar="SECONDS",
                                            help="server mode: seconds to wait for the DAGs")]


@app.command("create", epilog=EXIT_CODES_EPILOG)
def create(session: Session, file: SpecFiles, source: SpecSource = None, no_wait: NoWait = False,
           wait_timeout: WaitTimeout = 180.0) -> int:
    """Store Pachyderm specs; each becomes a DAG, pps_NAME."""
    return _save(session, file, source, no_wait, wait_timeout, update=False)


@app.command("update", epilog=EXIT_CODES_EPILOG)
def update(session: Session, file: SpecFiles, source: SpecSource = None, no_wait: NoWait = False,
           wait_timeout: WaitTimeout = 180.0) -> int:
    """Replace stored specs (their source stays unless -s/--source is given)."""
    return _save(session, file, source, no_wait, wait_timeout, update=True)


def _save(session: Session, files: list[str], source: str | None, no_wait: bool, wait_timeout: float, *,
          update: bool) -> int:
    from trainyard import pps

    store = session.store
    settings = session.settings()
    specs = pps.load_spec_files(files)
    for spec, where in specs:
        pps.check_resources(spec, settings, where)
        if settings.on_kubernetes and not spec.transform.image:
            raise pps.SpecError(f"{where}: transform.image is required on the kubernetes runner")
    pps.check_pipelines(store, [spec for spec, _ in specs], update=update)
    source_ref = _pipeline_source(store, source, session.json) if source else None
    records = pps.save_pipelines(store, specs, source=source_ref, update=update)
    rows = [_pipeline_row(store, r) for r in records]
    server = session.server()
    if not session.json:
        for row in rows:
            print(f"{'updated' if update else 'created'} pipeline {row['name']} (DAG {row['dag']}): {row['input']} "
                  f"-> repo {row['output']}, source {row['source'] or 'none'}")
            if row["note"]:
                say(f"note: {row['note']}")
        if server is None:
            say("a `trainyard data put` into an input repo runs the pipelines here, in-process; "
                f"`airflow dags test {rows[0]['dag']}` runs one on what its inputs hold now")
    if server is not None and not no_wait:
        _wait_for_pipeline_dags(server, [r.name for r in records], wait_timeout)
    if session.json:
        print_json(rows)
    return 0


@app.command("list")
def list_pipelines(session: Session) -> int:
    """Stored pipelines: name, input, output repo, source, DAG."""
    from trainyard import pps

    rows = [_pipeline_row(session.store, r) for r in pps.load_pipelines(session.store).values()]
    if session.json:
        print_json(rows)
    else:
        print_table(rows, ["name", "input", "output", "source", "dag", "updated"])
    return 0


@app.command("delete")
def delete(session: Session, names: Annotated[list[str], typer.Argument(
        metavar="NAME", help="pipelines to delete", show_default=False)]) -> int:
    """Remove pipelines (their output repos and datum records stay)."""
    from trainyard import pps

    deleted = pps.delete_pipelines(session.store, names)
    emit({"deleted": deleted}, session.json,
         "\n".join(f"deleted pipeline {n} (its repo {n} and datum records stay)" for n in deleted))
    return 0


@app.command("datums")
def datums(session: Session, name: Annotated[str, typer.Argument(metavar="NAME", help="the pipeline",
                                                                 show_default=False)],
           job: Annotated[str | None, typer.Option(
               "--job", metavar="RUN_ID", show_default=False,
               help="an Airflow run id of the pipeline's DAG (default: its last finished job)")] = None) -> int:
    """Each datum of a job: state, attempts and timing (enable_stats)."""
    from trainyard import pps

    store = session.store
    record = pps.get_pipeline(store, name)
    if not job:
        last = pps.last_job(store, name)
        if last is None:
            raise NotFound(f"pipeline {name} has not finished a job yet; see `trainyard logs --pipeline "
                           f"{pps.dag_id(name)} --run-id ID`")
        job = last.job
    stats = pps.datum_stats(store, name, job)
    if not stats and not record.parsed.enable_stats:
        raise NotFound(f"pipeline {name} keeps no per-datum stats: set \"enable_stats\": true in its spec and "
                       "`trainyard pipeline update -f SPEC`")
    if session.json:
        print_json([s.to_json() for s in stats])
        return 0
    print(f"pipeline {name}  job {job}  {len(stats)} datum(s) processed or failed in it")
    print_table([{"datum": s.datum[:12], "files": s.label[:60], "state": s.state, "attempts": s.attempts,
                  "total": f"{s.seconds:.2f}s", "download": f"{s.download_seconds or 0:.2f}s",
                  "process": f"{s.process_seconds or 0:.2f}s", "upload": f"{s.upload_seconds or 0:.2f}s"}
                 for s in stats],
                ["datum", "files", "state", "attempts", "total", "download", "process", "upload"])
    return 0


def run_pipelines_reading(session: Session, commit: Commit) -> None:
    """Embedded default: run the Pachyderm pipelines a commit reaches, in-process and upstream first (a server runs
    them itself on the commit's Asset event)."""
    from trainyard import pps

    records = pps.load_pipelines(session.store)
    if not pps.readers(records, commit.repo) or session.server() is not None:
        return
    embedded_airflow_env()
    from operators.pps import run_downstream  # Airflow is imported only when a pipeline reads the repo

    with stdout_to_stderr(enabled=True):
        done = run_downstream(commit.repo, store_uri=session.store.uri, quiet=session.json, say=say)
    for run in done:
        say(f"pipeline {run['pipeline']}: {run['state']}  run {run['run_id']}  "
            + (f"output {run['output'][:len(run['pipeline']) + 6]}" if run["output"] else "no output")
            + ("" if run["changed"] else " (unchanged)"))
    failed = [r for r in done if r["state"] != "success"]
    if failed:
        raise StepError(f"pipeline {failed[0]['pipeline']} failed (run {failed[0]['run_id']}); see "
                        f"`trainyard logs --pipeline {failed[0]['dag_id']} --run-id {failed[0]['run_id']}`")


def _pipeline_source(store: Store, text: str, quiet: bool) -> "pps.SourceRef":
    """-s/--source: a directory is committed as a source repo named after it (its root is the transform's working
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
                    say(f"note: {client.endpoint} has not parsed {pps.dag_id(name)} after {timeout:.0f} s; it "
                        "appears at the dag-processor's next parse of dags/pachyderm_pipelines.py")
                    return
                time.sleep(2)
        if dag.get("is_paused"):
            client.unpause(pps.dag_id(name))
        say(f"pipeline {name} is live on {client.endpoint} (DAG {pps.dag_id(name)})")


def _pipeline_row(store: Store, record) -> dict:
    from trainyard import pps

    spec = record.parsed
    note = ""
    if store.branch_head(spec.name) and pps.last_job(store, spec.name) is None:
        note = (f"repo {spec.name} already has commits that pipeline {spec.name} did not make; its commits will "
                "go on top of them")
    return {"name": spec.name, "dag": spec.dag_id, "input": pps.describe_input(spec.input), "output": spec.name,
            "source": f"{record.source.repo}:{record.source.commit[:5]}" if record.source else "",
            "updated": format_time(record.updated), "file": record.file, "note": note}
