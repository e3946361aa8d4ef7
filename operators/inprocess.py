"""Run a trainyard DAG from this process (the embedded default: SQLite, no server), as `dag.test()` does, with
the mapped task instances of a task that allows it (max_active_tis_per_dagrun, `--parallelism`) run at once.

`dag.test()` runs one task instance at a time, so a sweep's trainings ran one after another. Here the run is
driven by the same loop `dag.test()` runs (Airflow 3.3's: the DAG synced to the metadata DB, a dag run created,
DagRun.update_state deciding what is schedulable, each task instance run through Airflow's in-process execution
API) except that each task instance of a capped mapped task runs in a forked child process, up to its cap at once.
A child dies with this process (PR_SET_PDEATHSIG), so a killed `trainyard deploy` takes its trainings with it, and
their steps die with the children. Task states, start and end dates and XComs land in the metadata DB as with
`dag.test()`; `airflow dags test` itself is untouched.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

from operators import drivers
from operators.hooks import StoreHook
from operators.step import die_with_parent
from trainyard import runs
from trainyard.errors import StepError
from trainyard.store import check_store

DAGS_DIR = Path(__file__).resolve().parents[1] / "dags"
log = logging.getLogger(__name__)
# How often the driver looks at its running children, and at a run that waits (a retry delay, say).
POLL_SECONDS = 0.05
IDLE_SECONDS = 0.5
# How long children get to record a kill (SIGTERM: their task's on_kill stops its step) before SIGKILL.
CHILD_KILL_GRACE = 5.0
# Execution API versions the in-process API is built with (see lean_execution_api): the newest, which this
# process's client speaks, and the two before it that Cadwyn needs to place routes kept for older clients.
LEAN_API_VERSIONS = 3


def ensure_metadata_db() -> None:
    """Create Airflow's SQLite metadata database on first use (what `airflow db migrate` does)."""
    from airflow import settings
    from airflow.utils import db

    url = settings.SQL_ALCHEMY_CONN or ""
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        if path.exists() and path.stat().st_size > 0:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
    log.info("initialising the Airflow metadata database at %s", url)
    db.initdb()


def _dags_bundle():
    """The configured DAG bundle whose folder is dags/ (Airflow's dags-folder bundle), or None."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager

    for bundle in DagBundlesManager().get_all_dag_bundles():
        with contextlib.suppress(OSError, TypeError, ValueError):
            if Path(bundle.path).resolve() == DAGS_DIR.resolve():
                return bundle
    return None


def parse_dag(dag_id: str):
    """Parse one DAG file from dags/: (the DAG, the bag it was parsed into, the bag's DAG bundle or None), raising
    the parse error if there is one. When dags/ is a configured bundle the bag is that bundle's, so the run can
    write this one DAG to the metadata DB instead of parsing every DAG file again as dag.test() does."""
    from airflow.dag_processing.dagbag import BundleDagBag, DagBag

    path = str(DAGS_DIR / f"{dag_id}.py")
    bundle = _dags_bundle()
    bag = BundleDagBag(dag_folder=path, bundle_path=bundle.path, bundle_name=bundle.name) if bundle is not None \
        else DagBag(dag_folder=path)
    if bag.import_errors:
        raise StepError(f"{dag_id} failed to parse: {next(iter(bag.import_errors.values())).strip().splitlines()[-1]}")
    return bag.dags[dag_id], bag, bundle


def load_dag(dag_id: str):
    """Parse one DAG file from dags/ and return the DAG, raising the parse error if there is one."""
    return parse_dag(dag_id)[0]


def run_pipeline(dag_id: str, conf: dict, *, quiet: bool = False, store_uri: str | None = None,
                 parse_settings: dict[str, str] | None = None) -> dict:
    """Run the DAG once with conf; return its run id, Airflow state and run record (`results`, a RunRecord; None
    when the run wrote no `_results.json`).

    parse_settings are trainyard settings the DAG file reads when it is parsed (e.g. parallelism, which becomes
    max_active_tis_per_dagrun); they are set as TRAINYARD_<NAME> for this run only.
    """
    # Quiet: Airflow's own logging at WARNING, for this run only (the CLI's process may start others after it).
    quiet_env = {"AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING"} \
        if quiet and "AIRFLOW__LOGGING__LOGGING_LEVEL" not in os.environ else {}
    os.environ.update(quiet_env)
    try:
        return _run_pipeline(dag_id, conf, store_uri=store_uri, parse_settings=parse_settings)
    finally:
        for name in quiet_env:
            os.environ.pop(name, None)


def _run_pipeline(dag_id: str, conf: dict, *, store_uri: str | None, parse_settings: dict[str, str] | None) -> dict:
    ensure_metadata_db()
    # The same credentials the steps use: the Airflow connection, else the environment. A store that is down,
    # missing, refusing or read-only fails here in one line with its exit code, before Airflow runs a task.
    store = StoreHook(store_uri=store_uri).get_conn()
    check_store(store)
    # Operators read settings when the DAG is parsed; the caller's store argument must win over airflow.cfg.
    overrides = {"TRAINYARD_STORE": store_uri} if store_uri else {}
    overrides.update({f"TRAINYARD_{k.upper()}": str(v) for k, v in (parse_settings or {}).items() if v is not None})
    previous = {name: os.environ.get(name) for name in overrides}
    os.environ.update(overrides)
    try:
        dag, bag, bundle = parse_dag(dag_id)
        for run_id in drivers.reap():
            print(f"note: run {run_id} was left running by a trainyard that was killed; marked failed", file=sys.stderr)
        lean_execution_api()
        with drivers.lease(dag_id):
            dag_run = test_dag(dag, conf, parsed=(bag, bundle) if bundle is not None else None)
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    state = str(getattr(dag_run.state, "value", dag_run.state))
    if state != "success":
        check_store(store)  # a store that went away during the run is the cause to report, with its exit code
    return {"run_id": dag_run.run_id, "state": state, "results": runs.read_results(store, dag_id, dag_run.run_id)}


# -- dag.test(), with the task instances of a capped mapped task run at once ----------------------------------------
def concurrency(task) -> int:
    """How many task instances of task may run at once here: its max_active_tis_per_dagrun when it is mapped (a
    sweep's train step: `--parallelism`), else 1."""
    cap = getattr(task, "max_active_tis_per_dagrun", None)
    mapped = type(task).__name__ == "MappedOperator" or getattr(task, "is_mapped", False)
    return max(1, int(cap)) if cap and mapped else 1


def _create_run(dag, conf: dict | None, session, parsed=None):
    """What dag.test() (Airflow 3.3) does before its loop: validate and sync the DAG to the metadata DB, create a
    manual dag run triggered as a test. parsed: (bag, bundle) the DAG was parsed into (parse_dag); that bag is what
    is synced when the DAG belongs to that bundle (dag.test() parses the whole bundle again)."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import BundleDagBag, sync_bag_to_db
    from airflow.models.dag import DagModel
    from airflow.models.dag_version import DagVersion
    from airflow.models.dagrun import DagRun, get_or_create_dagrun
    from airflow.sdk import timezone
    from airflow.serialization.definitions.dag import SerializedDAG
    from airflow.serialization.encoders import coerce_to_core_timetable
    from airflow.serialization.serialized_objects import DagSerialization
    from airflow.utils.types import DagRunTriggeredByType, DagRunType

    dag.validate()
    scheduler_dag = DagSerialization.deserialize_dag(DagSerialization.serialize_dag(dag))
    logical_date = timezone.coerce_datetime(timezone.utcnow())
    run_after = logical_date
    SerializedDAG.clear_dags(dags=[scheduler_dag], start_date=logical_date, end_date=logical_date,
                             dag_run_state=False)
    data_interval = coerce_to_core_timetable(dag.timetable).infer_manual_data_interval(run_after=logical_date)
    manager = DagBundlesManager()
    manager.sync_bundles_to_db(session=session)
    session.commit()
    bundles = list(manager.get_all_dag_bundles())
    existing = DagModel.get_current(dag.dag_id, session=session)
    owning = [b for b in bundles if existing is not None and b.name == existing.bundle_name]
    if parsed is not None and (existing is None or existing.bundle_name == parsed[1].name):
        bag, bundle = parsed
        if not bundle.is_initialized:
            bundle.initialize()
        sync_bag_to_db(bag, bundle.name, bundle.version)
        if DagVersion.get_version(dag.dag_id):
            owning = bundles = []  # written: nothing else to parse
    for bundle in owning or bundles:
        if not bundle.is_initialized:
            bundle.initialize()
        sync_bag_to_db(BundleDagBag(dag_folder=bundle.path, bundle_path=bundle.path, bundle_name=bundle.name),
                       bundle.name, bundle.version)
        if DagVersion.get_version(dag.dag_id):
            break
    scheduler_dag.on_success_callback = dag.on_success_callback
    scheduler_dag.on_failure_callback = dag.on_failure_callback
    return get_or_create_dagrun(
        dag=scheduler_dag, start_date=logical_date, logical_date=logical_date, data_interval=data_interval,
        run_after=run_after,
        run_id=DagRun.generate_run_id(run_type=DagRunType.MANUAL, logical_date=logical_date, run_after=run_after),
        session=session, conf=conf, triggered_by=DagRunTriggeredByType.TEST, triggering_user_name="dag_test")


def lean_execution_api() -> bool:
    """Build the in-process execution API for the newest API versions only; whether it was.

    Airflow's execution API serves every version it ever had (9 in 3.3); Cadwyn builds each version's routes on
    the first request, about 3 s of CPU before the first task of every in-process run. The client in this process
    speaks only the newest version (airflow.sdk.api.client.API_VERSION), whose routes are the same whichever older
    versions exist, so the app here is built from the newest LEAN_API_VERSIONS versions (the oldest kept stripped of
    its changes, as Cadwyn requires of the first version). Anything unexpected (another client version, a Cadwyn
    that refuses the shorter bundle) leaves Airflow's full bundle in place. `airflow dags test` is not affected.
    """
    from airflow.api_fastapi.execution_api import versions
    from airflow.sdk.api.client import API_VERSION
    from airflow.sdk.execution_time import supervisor
    from cadwyn import HeadVersion, Version, VersionBundle

    full = versions.bundle
    kept = list(full.versions)[:LEAN_API_VERSIONS]
    if len(full.versions) <= LEAN_API_VERSIONS or kept[0].value != API_VERSION or full.head_version.changes \
            or supervisor.in_process_api_server.cache_info().currsize:
        return False
    changes = [change for version in kept[:-1] for change in version.changes]
    for change in changes:  # a version change binds to one bundle; the lean bundle takes them over
        change._bound_version_bundle = None
    try:
        versions.bundle = VersionBundle(HeadVersion(), *[Version(v.value, *v.changes) for v in kept[:-1]],
                                        Version(kept[-1].value))
        _execution_api_app()
        return True
    except Exception:  # noqa: BLE001 - a Cadwyn or Airflow this was not written for: build the full API instead
        log.debug("the lean in-process execution API could not be built; using every version", exc_info=True)
        versions.bundle = full
        for change in changes:
            change._bound_version_bundle = full
        supervisor.in_process_api_server.cache_clear()
        return False


def _execution_api_app():
    """The in-process execution API's app, with its versioned routes built (once, here: children reuse them)."""
    from airflow.sdk.execution_time import supervisor

    app = supervisor.in_process_api_server().app
    if not getattr(app, "_cadwyn_initialized", True):
        app._cadwyn_initialize()
    return app


def _in_child(app) -> None:
    """After fork, in the child: the signals the driver expects, and a database connection and an execution API
    loop of its own (the driver's are not safe to share; its API's event-loop thread does not exist here)."""
    # Ctrl-C reaches the whole process group: the driver alone handles it, and stops its children with SIGTERM,
    # which the task runner turns into the task's on_kill (the step is stopped and the failure recorded).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    from airflow import settings
    from airflow.api_fastapi.execution_api.app import InProcessExecutionAPI
    from airflow.sdk.execution_time import supervisor

    settings.engine.dispose(close=False)
    settings.Session.registry.clear()
    api = InProcessExecutionAPI()
    api._app = app  # the routes the driver built; only the loop and transport are new
    supervisor.in_process_api_server = lambda: api


def _pump(fd: int) -> None:
    """Copy a child's output to this process's stdout, line by line (whatever sys.stdout is now: the terminal,
    stderr under --json, or a caller's capture), so its task log reads as if the task ran here."""
    with os.fdopen(fd, "r", errors="replace") as lines:
        for line in lines:
            sys.stdout.write(line)
            sys.stdout.flush()


def _start_child(ti, task, app, parent: int) -> tuple[int, threading.Thread]:
    """Fork a child that runs one task instance as dag.test() would, then exits; its pid and output pump."""
    sys.stdout.flush()
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid:
        os.close(write_end)
        pump = threading.Thread(target=_pump, args=(read_end,), name=f"task-output-{pid}", daemon=True)
        pump.start()
        return pid, pump
    code = 1
    try:
        die_with_parent(parent)  # first thing after fork
        os.close(read_end)
        sys.stdout = sys.stderr = os.fdopen(write_end, "w", buffering=1, errors="replace")
        _in_child(app)
        from airflow.sdk.definitions.dag import _run_task

        _run_task(ti=ti, task=task, run_triggerer=True)
        code = 0
    except BaseException:  # noqa: BLE001 - a child never returns into the driver's loop
        log.exception("task %s (map index %s) failed to run", ti.task_id, ti.map_index)
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _reap(dr, running: dict[tuple[str, int], int], session) -> bool:
    """Collect the children that ended; a task instance a dead child left unfinished is failed. Whether any ended."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.state import State, TaskInstanceState

    ended = False
    for (task_id, map_index), pid in list(running.items()):
        done, status = os.waitpid(pid, os.WNOHANG)
        if not done:
            continue
        del running[(task_id, map_index)]
        ended = True
        session.expire_all()
        ti = session.query(TaskInstance).filter_by(dag_id=dr.dag_id, run_id=dr.run_id, task_id=task_id,
                                                   map_index=map_index).one_or_none()
        if ti is not None and ti.state not in State.finished and ti.state != TaskInstanceState.UP_FOR_RETRY:
            # Killed, or crashed before Airflow could record anything: the run must not wait for it forever.
            log.error("task %s (map index %s) ended (wait status %s) without recording a state; marked failed",
                      task_id, map_index, status)
            ti.set_state(TaskInstanceState.FAILED, session=session)
            session.commit()
    return ended


def _stop_children(running: dict[tuple[str, int], int]) -> None:
    """SIGTERM every child (its task's on_kill stops its step and records the kill), then SIGKILL what is left."""
    for pid in running.values():
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + CHILD_KILL_GRACE
    while running and time.monotonic() < deadline:
        for key, pid in list(running.items()):
            with contextlib.suppress(OSError):
                if os.waitpid(pid, os.WNOHANG)[0]:
                    del running[key]
        time.sleep(POLL_SECONDS)
    for pid in running.values():
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def _fail_run(dr, session) -> None:
    """Mark a run this driver stops (Ctrl-C, SIGTERM) failed, with its unfinished task instances, so it does not
    stay `running` in the metadata DB."""
    from airflow.sdk import DagRunState, timezone
    from airflow.utils.state import State, TaskInstanceState

    session.rollback()
    session.expire_all()
    for ti in dr.get_task_instances(session=session):
        if ti.state not in State.finished:
            ti.state = TaskInstanceState.FAILED
            ti.end_date = timezone.utcnow()
    dr.state = DagRunState.FAILED
    dr.end_date = timezone.utcnow()
    session.merge(dr)
    session.commit()


class Stopped(KeyboardInterrupt):
    """SIGTERM reached the driver: its children are stopped, the run is failed, and the command ends as on Ctrl-C."""


def _stop_on_sigterm(signum, frame) -> None:
    raise Stopped(f"stopped by signal {signum}")


def test_dag(dag, conf: dict | None, parsed=None):
    """Run dag once, like dag.test(run_conf=conf), running up to concurrency(task) instances of each mapped task at
    once; returns the DagRun. parsed: see _create_run."""
    from airflow import settings
    from airflow.sdk import DagRunState, timezone
    from airflow.sdk.definitions.dag import FINISHED_STATES, _run_task
    from airflow.utils.state import TaskInstanceState

    session = settings.Session()
    dr = _create_run(dag, conf, session, parsed)
    running: dict[tuple[str, int], int] = {}
    pumps: dict[tuple[str, int], threading.Thread] = {}
    parent = os.getpid()
    app = None
    try:
        while dr.state == DagRunState.RUNNING:
            session.expire_all()
            schedulable, _ = dr.update_state(session=session)
            for ti in schedulable:
                if ti.state != TaskInstanceState.UP_FOR_RESCHEDULE:
                    ti.try_number += 1
                ti.state = TaskInstanceState.SCHEDULED
                ti.scheduled_dttm = timezone.utcnow()
            session.commit()
            if dr.state != DagRunState.RUNNING:
                break
            tis = dr.get_task_instances(session=session)
            scheduled = sorted((ti for ti in tis if ti.state == TaskInstanceState.SCHEDULED
                                and (ti.task_id, ti.map_index) not in running), key=lambda t: (t.task_id, t.map_index))
            started = False
            for ti in scheduled:
                task = dag.task_dict[ti.task_id]
                cap = concurrency(task)
                if cap > 1:
                    if sum(1 for key in running if key[0] == ti.task_id) >= cap:
                        continue
                    app = app or _execution_api_app()
                    # A task run here earlier left its own SIGTERM handler (its on_kill); with children at work,
                    # SIGTERM stops them all.
                    signal.signal(signal.SIGTERM, _stop_on_sigterm)
                    pid, pumps[(ti.task_id, ti.map_index)] = _start_child(ti, task, app, parent)
                    running[(ti.task_id, ti.map_index)] = pid
                    started = True
                elif not running:  # a task run here waits for the children: it may depend on what they make
                    try:
                        _run_task(ti=ti, task=task, run_triggerer=True)
                    except Exception:  # noqa: BLE001 - dag.test() logs a task that failed to run and goes on
                        log.exception("task failed; ti=%s", ti)
                    started = True
                    break  # its outcome changes what is schedulable
            if _reap(dr, running, session) or started:
                continue
            unfinished = [ti for ti in tis if ti.state not in FINISHED_STATES]
            time.sleep(POLL_SECONDS if running or not unfinished else IDLE_SECONDS)
    except BaseException:
        if running:
            _stop_children(running)
            with contextlib.suppress(Exception):
                _fail_run(dr, session)
        raise
    finally:
        while running:  # the run ended (a deadlock, say) with children still at work: wait for them
            _reap(dr, running, session)
            time.sleep(POLL_SECONDS)
        for pump in pumps.values():  # the last lines of their logs
            pump.join(timeout=2)
    return dr
