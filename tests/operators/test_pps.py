"""Pachyderm specs as DAGs: one DAG per stored spec, its schedule, pods on Kubernetes, secrets, waiting, chains.

Specs are Pachyderm's doc examples: the Join doc's `joins`, the reference's `wordcount` minimum spec and its
resource, secret and timeout fields.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pendulum
import pytest
from airflow.dag_processing.dagbag import DagBag
from airflow.sdk import DAG, AssetAny
from airflow.sdk.exceptions import AirflowException

from operators.datums import repo_asset
from operators.pps import DAG_FILE, PipelineDatumOperator, _event_commits
from tests.conftest import REPO
from training_images.sandbox import pfs_support
from trainyard import pps
from trainyard.cli import main
from trainyard.store import keys, open_store

JOINS = {"pipeline": {"name": "joins"},
         "input": {"join": [{"pfs": {"repo": "readings", "branch": "master", "glob": "/*/(*).txt", "join_on": "$1"}},
                            {"pfs": {"repo": "parameters", "branch": "master", "glob": "/(*).txt", "join_on": "$1"}}]},
         "transform": {"cmd": ["python3", "/joins.py"], "image": "joins-example"}}
WORDCOUNT = {"pipeline": {"name": "wordcount"}, "description": "count words {{ dag_run.conf }}",
             "transform": {"image": "wordcount-image", "cmd": ["/binary", "/pfs/data", "{{ dag_run.conf }}"],
                           "env": {"MODE": "{{ var.value.x }}"},
                           "secrets": [{"name": "api", "env_var": "API_TOKEN", "key": "token"},
                                       {"name": "db-creds", "mount_path": "/secrets/db"}]},
             "input": {"pfs": {"repo": "data", "glob": "/*"}},
             "parallelism_spec": {"constant": 3},
             "resource_requests": {"cpu": 0.5, "memory": "1Gi"},
             "resource_limits": {"cpu": 2, "memory": "4Gi", "gpu": {"type": "nvidia.com/gpu", "number": 1}},
             "datum_tries": 5, "datum_timeout": "90s", "job_timeout": "1h30m", "standby": True, "enable_stats": True}


def _store_specs(uri: str, *specs: dict) -> dict[str, pps.PipelineRecord]:
    store = open_store(uri)
    pps.save_pipelines(store, [(pps.parse_spec(s), f"{s['pipeline']['name']}.json") for s in specs], source=None,
                       update=False)
    return pps.load_pipelines(store)


def test_the_factory_makes_one_dag_per_stored_spec(tmp_path, monkeypatch):
    uri = f"file://{tmp_path / 'store'}"
    monkeypatch.setenv("TRAINYARD_STORE", uri)
    assert DagBag(dag_folder=str(DAG_FILE)).dag_ids == []  # an empty store: no DAG, no error
    _store_specs(uri, JOINS, WORDCOUNT)
    bag = DagBag(dag_folder=str(DAG_FILE))
    assert bag.import_errors == {}
    assert sorted(bag.dag_ids) == ["pps_joins", "pps_wordcount"]
    assert sorted(p.name for p in (REPO / "dags").iterdir() if "pps" in p.name or "joins" in p.name) == []

    joins = bag.dags["pps_joins"]
    # any input's commit starts it (Pachyderm); a plain list of Assets would wait for all of them
    assert isinstance(joins.schedule, AssetAny)
    assert {a.uri for a in joins.schedule.objects} == {"trainyard://repos/readings", "trainyard://repos/parameters"}
    assert [t.task_id for t in joins.topological_sort()] == ["plan", "process", "collect"]
    assert joins.get_task("collect").outlets == [repo_asset("joins")]
    assert joins.is_paused_upon_creation is False and joins.max_active_runs == 1 and joins.catchup is False
    assert "pps/pipelines/joins.json" in joins.doc_md and "readings:/*/(*).txt ⋈ parameters:/(*).txt" in joins.doc_md

    wordcount = bag.dags["pps_wordcount"]
    assert wordcount.schedule == [repo_asset("data")]
    assert wordcount.dagrun_timeout.total_seconds() == 5400
    process = wordcount.get_task("process")
    kwargs = process.partial_kwargs
    assert (kwargs["max_active_tis_per_dagrun"], kwargs["cpu"], kwargs["memory"], kwargs["cpu_limit"],
            kwargs["memory_limit"], kwargs["gpu"], kwargs["timeout"]) == (3, "0.5", "1Gi", "2", "4Gi", 1, 5400)
    # transform.image is the transform container's image on Kubernetes (locally it is not used); the steps' own
    # containers and collect keep the steps image
    assert kwargs["transform"]["image"] == "wordcount-image"
    assert kwargs["transform"]["cmd"] == ["/binary", "/pfs/data", "{{ dag_run.conf }}"]
    assert "image" not in kwargs and wordcount.get_task("collect").image != "wordcount-image"
    assert all(t.retries >= 1 for t in wordcount.tasks) and wordcount.tags
    # the spec is user content: it reaches steps by its hash and is never rendered as a template
    for task in wordcount.tasks:
        for field in task.template_fields:
            value = getattr(task, field, None) if not hasattr(task, "partial_kwargs") else \
                task.partial_kwargs.get(field)
            assert "dag_run.conf" not in repr(value) and "var.value" not in repr(value), (task.task_id, field)


def _context(task, map_index=-1):
    ti = SimpleNamespace(dag_id=task.dag_id, task_id=task.task_id, map_index=map_index, try_number=1)
    return {"ti": ti, "run_id": "manual__2026-11-22T10:00:00+00:00", "dag": task.dag}


def test_on_kubernetes_transform_image_runs_as_is_with_its_secrets_and_without_the_stores(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAINYARD_RUNNER", "kubernetes")
    monkeypatch.setenv("TRAINYARD_STORE", "s3://models-bucket/trainyard")
    record = next(iter(_store_specs(f"file://{tmp_path / 'store'}", WORDCOUNT).values()))
    spec = record.parsed
    with DAG("pods", start_date=pendulum.datetime(2026, 1, 1), schedule=None):
        task = PipelineDatumOperator(
            task_id="process", chunk={"datums": ["d1", "d2"], "label": "data:/a"}, pipeline="wordcount",
            spec_sha=record.spec_sha, code="", version=record.version,
            transform_secrets=[s.model_dump(exclude_none=True) for s in spec.transform.secrets],
            transform={"image": spec.transform.image, "cmd": spec.transform.cmd, "env": spec.transform.env},
            **pps.step_resources(spec))
    pod = task.build_pod_request_obj(_context(task, map_index=0), dry_run=True)
    containers = {c.name: c for c in pod.spec.containers}
    transform, finish = containers["transform"], containers["base"]
    [prepare] = pod.spec.init_containers
    # transform.image runs transform.cmd as argv under the injected static shell, with the spec's resources.
    assert transform.image == "wordcount-image"
    assert transform.command == ["/trainyard/busybox", "sh", "/trainyard/pfs-driver.sh", *spec.transform.cmd]
    assert transform.resources.limits == {"cpu": "2", "memory": "4Gi", "nvidia.com/gpu": "1"}
    assert {m.mount_path for m in transform.volume_mounts} >= {"/pfs", "/data", "/trainyard", "/secrets/db"}
    token = next(e for e in transform.env if e.name == "API_TOKEN")
    assert (token.value, token.value_from.secret_key_ref.name, token.value_from.secret_key_ref.key) == \
        (None, "api", "token")
    mount = next(m for m in transform.volume_mounts if m.mount_path == "/secrets/db")
    volume = next(v for v in pod.spec.volumes if v.name == mount.name)
    assert volume.secret.secret_name == "db-creds"
    # The store's credentials are only on trainyard's own containers, which prepare and upload the datums.
    assert not transform.env_from and "AWS_" not in str(transform.env)
    for own in (prepare, finish):
        assert own.image == "trainyard/steps:latest"
        assert own.command == ["python", "-m", "training_images.datum.pps"]
        assert "trainyard-store" in [e.secret_ref.name for e in own.env_from or []]
    assert prepare.args[0] == "prepare" and finish.args[0] == "finish"
    assert finish.args[-2:] == ["--datums", '["d1", "d2"]']
    assert "nvidia.com/gpu" not in finish.resources.limits


def test_datum_step_takes_an_image_and_cmds_for_its_datum_tasks_only():
    from operators.datums import datum_step

    with DAG("imaged", start_date=pendulum.datetime(2026, 1, 1), schedule=None):
        plan, mapped, collect = datum_step("edges", inputs=[{"repo": "images", "glob": "/*"}], code_repo="code",
                                           transform="edges/transform", output_repo="edges",
                                           image="pachyderm/opencv:1.0", cmds=["python3", "-m", "x"])
    assert mapped.partial_kwargs["image"] == "pachyderm/opencv:1.0"
    assert mapped.partial_kwargs["cmds"] == ["python3", "-m", "x"]
    assert collect.image != "pachyderm/opencv:1.0" and collect.cmds == ["python", "-m", "training_images.collect"]


def test_locally_secrets_come_from_airflow_connections(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_API", json.dumps({"conn_type": "generic", "extra": {"token": "tok-123456"}}))
    monkeypatch.setenv("AIRFLOW_CONN_DB-CREDS", json.dumps({"conn_type": "generic", "login": "reader",
                                                            "password": "pw-654321"}))
    with DAG("secrets", start_date=pendulum.datetime(2026, 1, 1), schedule=None):
        task = PipelineDatumOperator(task_id="process", chunk={"datums": [], "label": ""}, pipeline="wordcount",
                                     spec_sha="0" * 64, code="", version="v",
                                     transform_secrets=WORDCOUNT["transform"]["secrets"])
    assert task.resolve_secrets() == {"env": {"API_TOKEN": "tok-123456"},
                                      "files": {"/secrets/db": {"login": "reader", "password": "pw-654321"}}}
    monkeypatch.delenv("AIRFLOW_CONN_API")
    with pytest.raises(AirflowException, match="transform.secrets names 'api', but no Airflow connection"):
        task.resolve_secrets()


def test_an_event_triggered_run_processes_the_commit_its_event_names():
    events = {"rawdata": [SimpleNamespace(extra={"repo": "rawdata", "commit": "a" * 64}),
                          SimpleNamespace(extra={"repo": "rawdata", "commit": "b" * 64})],
              "other": [SimpleNamespace(extra={})]}
    assert _event_commits({"triggering_asset_events": events}) == {"rawdata": "b" * 64}
    assert _event_commits({}) == {}


UPPER = {"pipeline": {"name": "upper"}, "input": {"pfs": {"repo": "words", "glob": "/*"}},
         "transform": {"cmd": ["sh"], "stdin": ["f=$(ls /pfs/words)", "tr a-z A-Z < /pfs/words/$f > /pfs/out/$f"]},
         "parallelism_spec": {"constant": 2}, "enable_stats": True}
COUNT = {"pipeline": {"name": "count"}, "input": {"cross": [{"pfs": {"repo": "upper", "glob": "/"}},
                                                            {"pfs": {"repo": "words", "glob": "/"}}]},
         "transform": {"cmd": ["sh"], "stdin": ["cat /pfs/upper/* | wc -l > /pfs/out/lines",
                                                "ls /pfs/words | wc -l > /pfs/out/words"]}}


@pytest.fixture
def forget_pipeline_dags():
    """Delete the pps_* DAGs this test ran from the session's metadata DB afterwards: they are live (unpaused) and
    scheduled on repos such as rawdata, so later tests' commits to those repos would queue them too."""
    yield
    from airflow.api.common.delete_dag import delete_dag
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session

    with create_session() as session:
        dag_ids = [d for (d,) in session.query(DagModel.dag_id).filter(DagModel.dag_id.like("pps\\_%", escape="\\"))]
    for dag_id in dag_ids:
        delete_dag(dag_id)


def _xcom(dag_id: str, run_id: str, task_id: str, key: str = "plan"):
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.query(XComModel).filter_by(dag_id=dag_id, run_id=run_id, task_id=task_id, key=key).one()
        return row.value


def _task_state(dag_id: str, run_id: str, task_id: str) -> str:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        return str(session.query(TaskInstance).filter_by(dag_id=dag_id, run_id=run_id, task_id=task_id).one().state)


@pytest.mark.e2e
@pytest.mark.skipif(not pfs_support()[0], reason=f"the /pfs view needs bubblewrap: {pfs_support()[1]}")
def test_a_put_runs_the_chain_incrementally_and_a_downstream_pipeline_waits_for_its_upstream(
        airflow_db, forget_pipeline_dags, tmp_path, monkeypatch, capsys):
    uri = f"file://{tmp_path / 'store'}"
    monkeypatch.setenv("TRAINYARD_STORE", uri)
    folder = tmp_path / "specs"
    folder.mkdir()
    for spec in (UPPER, COUNT):
        (folder / f"{spec['pipeline']['name']}.json").write_text(json.dumps(spec))
    assert main(["pipeline", "create", "-f", str(folder)]) == 0
    for i in range(3):
        (tmp_path / f"w{i}.txt").write_text(f"word {i}\nline two\n")
        assert main(["data", "put", "words", str(tmp_path / f"w{i}.txt"), "--no-run" if i < 2 else "--json"]) == 0
    err = capsys.readouterr().err
    assert "pipeline upper: success" in err and "pipeline count: success" in err
    store = open_store(uri)
    out = {p: store.read_entry(e) for p, e in store.resolve("upper").manifest.items()}
    assert out == {f"w{i}.txt": f"WORD {i}\nLINE TWO\n".encode() for i in range(3)}
    assert store.read_entry(store.resolve("count").manifest["lines"]).strip() == b"6"
    capsys.readouterr()
    assert main(["pipeline", "datums", "upper", "--json"]) == 0  # enable_stats: each datum's state and timing
    stats = json.loads(capsys.readouterr().out)
    assert sorted((s["label"], s["state"], s["attempts"]) for s in stats) == [
        (f"words:/w{i}.txt", "success", 1) for i in range(3)]
    assert all(s["process_seconds"] > 0 and s["log"] for s in stats)
    assert main(["pipeline", "datums", "count"]) == 3  # no enable_stats: it says how to turn it on
    assert "set \"enable_stats\": true" in capsys.readouterr().err

    # a new word: upper processes one datum; count (crossing upper with words) sees both new commits at once
    (tmp_path / "w3.txt").write_text("word 3\n")
    assert main(["data", "put", "words", str(tmp_path / "w3.txt")]) == 0
    jobs = {d["pipeline"]: d for d in (store.get_json(keys.pps_state(n)) for n in ("upper", "count"))}
    plan = _xcom("pps_upper", jobs["upper"]["job"], "plan")
    assert (plan["datums"], plan["pending"], plan["skipped"], plan["tasks"]) == (4, 1, 3, 1)
    assert store.read_entry(store.resolve("count").manifest["lines"]).strip() == b"7"
    assert store.read_entry(store.resolve("count").manifest["words"]).strip() == b"4"

    # words moves on but upper has not run yet: count, started on its own, waits instead of mixing the two
    (tmp_path / "w4.txt").write_text("word 4\n")
    assert main(["data", "put", "words", str(tmp_path / "w4.txt"), "--no-run"]) == 0
    head = store.branch_head("count")
    run = DagBag(dag_folder=str(DAG_FILE)).dags["pps_count"].test()
    assert _task_state("pps_count", run.run_id, "plan") == "skipped"
    assert _task_state("pps_count", run.run_id, "collect") == "skipped"
    assert store.branch_head("count") == head
    waiting = pps.waiting_for(store, pps.load_pipelines(store), pps.get_pipeline(store, "count").parsed)
    assert waiting.startswith("pipeline upper, which has not processed words:")
