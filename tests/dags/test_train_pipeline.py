"""train_pipeline end to end: the `trainyard` command on the file:// default, and dag.test() in-process on S3 (moto)."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import boto3
import numpy as np
import pytest

from tests.conftest import REPO
from trainyard.cli import main
from trainyard.store import open_store

pytestmark = pytest.mark.e2e
SRC = str(REPO / "templates/mnist/model-train")
DATA = str(REPO / "templates/mnist/data")


def _trainyard(*args: str) -> dict:
    """Run the installed CLI exactly as a user would; stdout must be one JSON document."""
    proc = subprocess.run([sys.executable, "-m", "trainyard.cli", *args], capture_output=True, text=True,
                          env=os.environ.copy(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_mnist_trains_end_to_end_on_the_file_store(airflow_db, tmp_path):
    uri = f"file://{tmp_path / 'store'}"
    first = _trainyard("--store", uri, "deploy", "-s", SRC, "-d", DATA, "--local", "--json")
    assert first["state"] == "success"
    assert first["metrics"]["accuracy_test"] >= 0.9
    assert first["model_id"].startswith(f"{first['source'][:12]}_{first['data'][:12]}:")

    again = _trainyard("--store", uri, "deploy", "-s", SRC, "-d", DATA, "--local", "--json")
    assert (again["model_id"], again["source"], again["data"]) == (first["model_id"], first["source"], first["data"])
    assert again["uploaded"] == {"blobs": 0, "bytes": 0}

    # the registered model is real: download it and predict held-out digits
    out = tmp_path / "model"
    assert main(["--store", uri, "get", "--model", first["model_id"][:15], "-o", str(out)]) == 0
    lineage = json.loads((out / "lineage.json").read_text())
    assert lineage["lineage"]["source"]["commit"] == first["source"]
    assert lineage["lineage"]["airflow"]["dag_id"] == "train_pipeline"
    assert "accuracy_test" in (out / "train.log").read_text()
    model = pickle.loads((out / "model" / "model.pkl").read_bytes())
    test = np.loadtxt(REPO / "templates/mnist/data/features/test/test.csv", delimiter=",")
    assert (model.predict(test[:, 1:] / 16.0) == test[:, 0]).mean() >= 0.9


def test_mnist_trains_end_to_end_on_s3(airflow_db, s3_bucket, capsys, monkeypatch):
    from operators.inprocess import run_pipeline

    uri = f"s3://{s3_bucket}/team-a"
    monkeypatch.setenv("TRAINYARD_STORE", uri)  # with AWS_ENDPOINT_URL at the moto server (s3_env fixture)
    assert main(["deploy", "-s", SRC, "-d", DATA, "--upload-only", "--json"]) == 0
    capsys.readouterr()
    result = run_pipeline("train_pipeline", {"source": "mnist", "data": "features"})
    assert result["state"] == "success"
    keys = [o["Key"] for page in boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=s3_bucket)
            for o in page.get("Contents", [])]
    assert all(k.startswith("team-a/") for k in keys)
    (model,) = result["results"].models
    src_data, params = model.model_id.split(":")
    assert f"team-a/models/{src_data}/{params}.json" in keys
    assert f"team-a/runs/train_pipeline/{result['run_id']}/_results.json" in keys
    assert "team-a/registry/mnist.json" in keys
    assert sum(k.startswith("team-a/blobs/sha256/") for k in keys) >= 7
    record = open_store(uri).get_json(f"models/{src_data}/{params}.json")
    assert record["metrics"]["accuracy_test"] >= 0.9
    # nothing fell back to the embedded default store that airflow.cfg names
    default_store = open_store(f"file://{os.environ['AIRFLOW_HOME']}/store")
    assert not default_store.exists(f"models/{src_data}/{params}.json")


def _deploy(capsys, uri: str, src, data, *extra: str) -> tuple[int, dict]:
    """`trainyard deploy --local --json` in this process; stdout ends with the one JSON document."""
    capsys.readouterr()
    code = main(["--store", uri, "deploy", "-s", str(src), "-d", str(data), "--local", "--json", *extra])
    out = capsys.readouterr().out
    return code, json.loads(out[out.rindex("\n{") if "\n{" in out else out.index("{"):])


def _cli_json(capsys, *args: str):
    capsys.readouterr()
    assert main([*args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture
def mnist_copy(tmp_path):
    src, data = tmp_path / "model-train", tmp_path / "data"
    shutil.copytree(REPO / "templates/mnist/model-train", src)
    shutil.copytree(REPO / "templates/mnist/data", data)
    training = data / "features/training/training.csv"
    rows = training.read_text().splitlines(keepends=True)
    training.write_text("".join(rows[:300]))  # start small, so adding rows later changes the model
    return src, data, rows


def test_the_kaos_incremental_story(airflow_db, tmp_path, capsys, mnist_copy):
    src, data, all_rows = mnist_copy
    uri = f"file://{tmp_path / 'store'}"
    code, first = _deploy(capsys, uri, src, data)
    assert code == 0 and first["state"] == "success" and not first["cached"]

    params = src / "mnist/model/params.json"
    params.write_text(params.read_text().replace('"rbf"', '"poly"'))
    code, kernel = _deploy(capsys, uri, src, data)
    assert code == 0
    assert kernel["source"] != first["source"] and kernel["data"] == first["data"]
    assert kernel["model_id"] != first["model_id"]
    assert kernel["metrics"]["accuracy_test"] != first["metrics"]["accuracy_test"]

    (data / "features/training/training.csv").write_text("".join(all_rows))
    code, rows = _deploy(capsys, uri, src, data)
    assert code == 0
    assert rows["data"] != kernel["data"] and rows["source"] == kernel["source"]
    assert rows["model_id"] not in (first["model_id"], kernel["model_id"])

    grid = '{"kernel": ["linear", "poly", "rbf"], "C": [0.1, 10.0]}'
    code, sweep = _deploy(capsys, uri, src, data, "-h", grid, "--cpu", "0.5", "--memory", "1Gi", "--timeout", "600")
    assert code == 0 and len(sweep["models"]) == 6
    info = _cli_json(capsys, "--store", uri, "info", "-i", "0", "--sort", "accuracy_test")
    scores = [m["metrics"]["accuracy_test"] for m in info["models"]]
    assert scores == sorted(scores, reverse=True) and len(scores) == 6
    assert info["direction"] == "max" and "accuracy_validation" in info["available_metrics"]
    assert info["models"][0]["best"] is True
    # the poly C=10 combination is the model the previous run trained: reused, not retrained
    assert sum(m["cached"] for m in sweep["models"]) == 1
    lowest_first = _cli_json(capsys, "--store", uri, "info", "-i", "0", "--sort", "accuracy_test:min")
    assert [m["metrics"]["accuracy_test"] for m in lowest_first["models"]] == sorted(scores)

    code, again = _deploy(capsys, uri, src, data, "-h", grid)
    assert code == 0 and again["cached"] is True and again["uploaded"] == {"blobs": 0, "bytes": 0}
    store = open_store(uri)
    assert not list(store.backend.list(f"runs/train_pipeline/{again['run_id']}/trained/"))  # nothing trained
    # resources given once are remembered by the pipeline until changed (kaos reset them on every deploy)
    inputs = store.get_json(f"runs/train_pipeline/{again['run_id']}/_results.json")["parameters"]["inputs"]
    assert (inputs["cpu"], inputs["memory"], inputs["timeout"]) == ("0.5", "1Gi", 600)
    capsys.readouterr()
    assert main(["--store", uri, "info", "-i", "0", "--sort", "f1_score"]) == 2
    assert "unknown metric 'f1_score'; available: accuracy_test, accuracy_training" in capsys.readouterr().err
    listed = _cli_json(capsys, "--store", uri, "list")
    assert [r["run_summary"]["cached"] for r in listed] == [True, False, False, False, False]
    versions = _cli_json(capsys, "--store", uri, "models", "mnist")
    assert [v["version"] for v in versions["versions"]] == ["1.0", "1.1", "1.2", "1.3"]  # the cache hit adds none
    best = max(versions["versions"], key=lambda v: v["metrics"]["accuracy_test"])
    assert versions["aliases"] == {"latest": "1.3", "best": best["version"]}
    assert versions["versions"][1]["parent"] == "1.0"


def test_a_twelve_combination_sweep_and_a_failed_combination(airflow_db, tmp_path, capsys):
    uri = f"file://{tmp_path / 'store'}"
    grid = '{"degree": [3, 5], "kernel": ["linear", "poly"], "gamma": [10, 0.1, 0.01]}'
    code, sweep = _deploy(capsys, uri, SRC, DATA, "-h", grid, "--metric", "accuracy_test")
    assert code == 0 and sweep["state"] == "success"
    assert len({m["model_id"] for m in sweep["models"]}) == 12
    assert [m["model_id"] for m in sweep["models"] if m["best"]] == [sweep["model_id"]]
    assert max(m["metrics"]["accuracy_test"] for m in sweep["models"]) == sweep["metrics"]["accuracy_test"]
    store = open_store(uri)
    assert len([k for k in store.backend.list("models/") if k.endswith(".json")]) == 12
    labels = _mapped_labels(sweep["run_id"])
    assert len(labels) == 12 and "degree=5,gamma=0.01,kernel=poly" in labels

    # C must be > 0: exactly one of these 12 combinations fails, the other 11 are registered and it is reported
    grid = json.dumps({"C": [0.01, 0.1, 1, 10, 100, 1000, 0.5, 5, 50, 500, 2, -1]})
    code, partial = _deploy(capsys, uri, SRC, DATA, "-h", grid)
    assert code == 1 and partial["state"] == "partial"
    assert len(partial["models"]) == 11
    (failure,) = partial["failures"]
    assert failure["label"] == "C=-1" and "exit_code" in failure and failure["error"]
    results = store.get_json(f"runs/train_pipeline/{partial['run_id']}/_results.json")
    assert results["run_summary"]["outputs"]["failures"][0]["label"] == "C=-1"
    assert all(store.exists(f"models/{m['model_id'].replace(':', '/')}.json") for m in partial["models"])


def _mapped_labels(run_id: str) -> list[str]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        tis = session.query(TaskInstance).filter_by(dag_id="train_pipeline", run_id=run_id, task_id="train").all()
        return [ti.rendered_map_index for ti in tis]


def test_a_kaos_bundle_with_hard_coded_pfs_paths_trains_unmodified(airflow_db, tmp_path, capsys):
    from training_images.sandbox import pfs_support

    ok, reason = pfs_support()
    if not ok:
        pytest.skip(f"no private mount namespace for /pfs here: {reason}")
    uri = f"file://{tmp_path / 'store'}"
    code, run = _deploy(capsys, uri, REPO / "tests/fixtures/kaos-bundle/model-train", DATA, "-h", '{"C": [3]}')
    assert code == 0, run
    (model,) = run["models"]
    assert model["params"]["C"] == 3 and model["metrics"]["accuracy_test"] >= 0.9
    assert isinstance(model["metrics"]["report_test"], str)  # kaos's text report: kept, never ranked
    info = _cli_json(capsys, "--store", uri, "info", "-i", "0")
    assert info["metric"] == "accuracy_test" and "report_test" not in info["available_metrics"]
    assert not os.path.exists("/pfs")  # the view existed only inside the step's mount namespace


def test_the_ai_center_template_produces_results_and_artifacts(airflow_db, tmp_path, capsys):
    uri = f"file://{tmp_path / 'store'}"
    template = REPO / "templates/aicenter-sample"
    code, run = _deploy(capsys, uri, template / "model-train", template / "data", "--save-training-data")
    assert code == 0, run
    (model,) = run["models"]
    assert model["metrics"]["score"] >= 0.8
    results = open_store(uri).get_json(f"runs/train_pipeline/{run['run_id']}/_results.json")
    assert results["parameters"]["pipeline_name"] == "train_pipeline"
    assert results["parameters"]["inputs"]["source"].startswith("aicenter-sample:")
    assert results["parameters"]["inputs"]["gpu"] == 0
    summary = results["run_summary"]
    assert summary["execution_time"] > 0 and summary["end_time"] >= summary["start_time"]
    assert summary["outputs"]["registry"] == {"name": "aicenter-sample", "version": "1.0"}
    artifacts = summary["outputs"]["artifacts"][model["model_id"]]
    assert artifacts and all(a.startswith("artifacts/") for a in artifacts)
    assert results["training_data"] == {"source": results["parameters"]["inputs"]["source"],
                                        "data": results["parameters"]["inputs"]["data"]}
    capsys.readouterr()
    assert main(["--store", uri, "info", "--model", model["model_id"]]) == 0
    shown = capsys.readouterr().out
    assert "artifacts" in shown and artifacts[0] in shown
    out = tmp_path / "got"
    assert main(["--store", uri, "get", "--model", model["model_id"], "-o", str(out)]) == 0
    assert (out / "model/train.py").is_file() and (out / artifacts[0]).is_file()  # the package + what save() wrote
    assert (out / "metrics/metrics.json").is_file() and (out / "lineage.json").is_file()
    capsys.readouterr()
    assert main(["--store", uri, "lineage", model["model_id"][:20], "--dot"]) == 0
    dot = capsys.readouterr().out
    source = results["parameters"]["inputs"]["source"].split(":")[1]
    assert dot.startswith("digraph lineage {") and dot.rstrip().endswith("}")
    assert f"source aicenter-sample:{source[:12]}" in dot and '"source" -> "model";' in dot
    assert '"model" -> "v1.0";' in dot and f"airflow run {run['run_id']}" in dot
    assert main(["--store", uri, "models", "nope"]) == 3
    assert "no registered model named 'nope'; registered: aicenter-sample" in capsys.readouterr().err


def test_store_credentials_from_the_connection_never_reach_conf_env_logs_xcom_or_the_store(
        airflow_db, s3_bucket, moto_endpoint, capfd, monkeypatch):
    """The Kubeflow example passed access keys as pipeline params; here they live only in the Airflow connection."""
    from airflow.models.dagrun import DagRun
    from airflow.models.renderedtifields import RenderedTaskInstanceFields
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    from operators.inprocess import run_pipeline
    from trainyard.bundles import DataBundle, SourceBundle, deploy_bundle

    secret = "planted-SECRET-9f3c1e77"
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AIRFLOW_CONN_TRAINYARD_STORE", json.dumps(
        {"conn_type": "aws", "login": "planted-key-id", "password": secret,
         "extra": {"endpoint_url": moto_endpoint, "region_name": "us-east-1"}}))
    uri = f"s3://{s3_bucket}/creds"
    store = open_store(uri, client_kwargs={"aws_access_key_id": "planted-key-id", "aws_secret_access_key": secret,
                                           "endpoint_url": moto_endpoint, "region_name": "us-east-1"})
    deploy_bundle(store, SourceBundle.load(SRC))
    deploy_bundle(store, DataBundle.load(DATA))

    result = run_pipeline("train_pipeline", {"source": "mnist", "data": "features", "hyperparams": {"C": [3]}},
                          store_uri=uri)
    assert result["state"] == "success"  # the steps reached the store, so they did get the credentials
    captured = capfd.readouterr()
    assert "training model" in captured.out + captured.err  # the task logs really were captured
    assert secret not in captured.out + captured.err

    with create_session() as session:
        run = session.query(DagRun).filter_by(dag_id="train_pipeline", run_id=result["run_id"]).one()
        assert secret not in json.dumps(run.conf)
        rendered = session.query(RenderedTaskInstanceFields).filter_by(run_id=result["run_id"]).all()
        assert rendered and all(secret not in json.dumps(r.rendered_fields, default=str) for r in rendered)
        xcoms = session.query(XComModel).filter_by(run_id=result["run_id"]).all()
        assert xcoms and all(secret not in json.dumps(x.value, default=str) for x in xcoms)
    logs = list((Path(os.environ["AIRFLOW_HOME"]) / "logs").rglob("*.log"))
    assert all(secret not in p.read_text(errors="replace") for p in logs)
    for key in store.backend.list(""):
        assert secret.encode() not in store.backend.read(key), key


def test_step_logs_are_kept_in_the_store_also_for_a_failed_combination(airflow_db, tmp_path, capsys):
    uri = f"file://{tmp_path / 'store'}"
    code, run = _deploy(capsys, uri, SRC, DATA, "-h", '{"kernel": ["linear", "nonsense"]}')
    assert code == 1 and run["state"] == "partial"
    assert main(["--store", uri, "logs", "-i", "0", "--step", "train"]) == 0
    out = capsys.readouterr().out
    assert "== train [0] try 1 ==" in out and "training model" in out
    assert "== train [1] try 2 ==" in out and "nonsense" in out  # the failed combination's last try, kept
    assert main(["--store", uri, "logs", "--run-id", run["run_id"], "--step", "register"]) == 0
    assert "registered 1 of 2 combination(s)" in capsys.readouterr().out
    assert main(["--store", uri, "logs", "-i", "0", "--step", "nosuch"]) == 3
