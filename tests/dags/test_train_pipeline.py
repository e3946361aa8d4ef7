"""train_pipeline end to end: the `trainyard` command on the file:// default, and dag.test() in-process on S3 (moto)."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

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
    (model,) = result["results"]["models"]
    src_data, params = model["model_id"].split(":")
    assert f"team-a/models/{src_data}/{params}.json" in keys
    assert f"team-a/runs/train_pipeline/{result['run_id']}/_results.json" in keys
    assert "team-a/registry/mnist.json" in keys
    assert sum(k.startswith("team-a/blobs/sha256/") for k in keys) >= 7
    record = open_store(uri).get_json(f"models/{src_data}/{params}.json")
    assert record["metrics"]["accuracy_test"] >= 0.9
    # nothing fell back to the embedded default store that airflow.cfg names
    default_store = open_store(f"file://{os.environ['AIRFLOW_HOME']}/store")
    assert not default_store.exists(f"models/{src_data}/{params}.json")
