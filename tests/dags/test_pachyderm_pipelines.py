"""The captioning template's five Pachyderm specs end to end on the embedded default, against caption_pipeline.

`trainyard pipeline create` stores the specs; a `trainyard data put` of 20 datums into rawdata then runs images ->
features -> consolidate -> model by itself (each a `dag.test()`, what `airflow dags test` does); the model is the
one caption_pipeline trains from the same TSV, score for score; and `airflow dags test pps_predict` captions a put
into inpredict through the cross with the model repo.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from operators.inprocess import run_pipeline
from tests.conftest import REPO
from training_images.sandbox import pfs_support
from trainyard.bundles import SourceBundle, deploy_bundle
from trainyard.cli import main
from trainyard.datums import put_file
from trainyard.store import open_store

CAPTIONING = REPO / "templates" / "captioning"
pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(not pfs_support()[0], reason=f"the /pfs view needs bubblewrap: {pfs_support()[1]}")]



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


def _plan(dag_id: str, run_id: str) -> dict:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        return session.query(XComModel).filter_by(dag_id=dag_id, run_id=run_id, task_id="plan", key="plan").one().value


def _json(store, repo: str, path: str):
    return json.loads(store.read_entry(store.resolve(repo).manifest[path]))


def test_the_captioning_specs_match_caption_pipeline_and_predict_through_the_cross(
        airflow_db, forget_pipeline_dags, tmp_path, monkeypatch, image_server, capsys):
    monkeypatch.setenv("TRAINYARD_URL_ALLOW_LOOPBACK", "true")  # caption_pipeline's fetch: the server is local
    tsv = subprocess.run([sys.executable, str(CAPTIONING / "generate_data.py"), "--tsv", "training", "--base-url",
                          image_server], capture_output=True, text=True, check=True).stdout.splitlines()
    captions = tmp_path / "captions.tsv"
    captions.write_text("\n".join(tsv[:100]) + "\n")

    # caption_pipeline, the DAG, on a store of its own
    reference_uri = f"file://{tmp_path / 'reference'}"
    reference = open_store(reference_uri)
    deploy_bundle(reference, SourceBundle.load(CAPTIONING / "model-train"))
    put_file(reference, "rawdata", captions, split="line", target_file_datums=5)
    expected = run_pipeline("caption_pipeline", {}, store_uri=reference_uri)
    assert expected["state"] == "success"
    (trained,) = expected["results"].models

    # the same tutorial as five Pachyderm specs: create them, then a put of 20 datums starts the chain by itself
    uri = f"file://{tmp_path / 'store'}"
    monkeypatch.setenv("TRAINYARD_STORE", uri)
    assert main(["pipeline", "create", "-f", str(CAPTIONING / "pipelines"), "--source",
                 str(CAPTIONING / "model-train")]) == 0
    capsys.readouterr()
    assert main(["data", "put", "rawdata", str(captions), "--split", "line", "--target-file-datums", "5"]) == 0
    err = capsys.readouterr().err
    ran = [line.split()[1].rstrip(":") for line in err.splitlines() if line.startswith("pipeline ")]
    assert ran == ["images", "features", "consolidate", "model", "predict"], err[-2000:]
    assert "pipeline predict: success" in err and "no output" in err  # nothing in inpredict yet: zero datums
    store = open_store(uri)
    for name in ("images", "features", "consolidate"):
        job = store.get_json(f"pps/state/{name}.json")
        plan = _plan(f"pps_{name}", job["job"])
        assert (plan["datums"], plan["pending"], plan["tasks"]) == (20, 20, 2), name
    assert len(store.resolve("images").manifest) == 100 and len(store.resolve("consolidate").manifest) == 20

    # the model is caption_pipeline's: same consolidated data (the same commit id), same scores
    assert store.resolve("consolidate").id == reference.resolve("consolidated").id
    metrics = _json(store, "model", "metrics/metrics.json")
    print(f"pps model {metrics} vs caption_pipeline {trained.metrics}")
    assert metrics["exact_match"] == trained.metrics["exact_match"]
    assert {k: v for k, v in metrics.items() if k != "train_seconds"} == \
        {k: v for k, v in trained.metrics.items() if k != "train_seconds"}
    assert metrics["exact_match"] > metrics["chance_exact_match"] + 0.3

    # predict: a put into inpredict, then `airflow dags test pps_predict` crosses it with the model repo
    image = CAPTIONING / "data" / "heldout" / "images" / "heldout_0000.png"
    assert main(["data", "put", "inpredict", str(image), "--no-run"]) == 0
    from airflow import settings

    proc = subprocess.run(["airflow", "dags", "test", "pps_predict"], capture_output=True, text=True,
                          env={**os.environ, "TRAINYARD_STORE": uri,
                               "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": settings.SQL_ALCHEMY_CONN,
                               # the session DB is made by initdb in-process, so it carries no migration stamp
                               "AIRFLOW__DATABASE__CHECK_MIGRATIONS": "False"}, timeout=600)
    assert proc.returncode == 0, (proc.stdout[-3000:] + proc.stderr[-3000:],
                                  {k: v for k, v in os.environ.items() if k.startswith("AIRFLOW")})
    out = store.resolve("predict")
    assert sorted(out.manifest) == ["heldout_0000.png.txt"]
    caption = store.read_entry(out.manifest["heldout_0000.png.txt"]).decode().strip()
    assert caption.startswith("a ") and caption.split()[1] in ("red", "green", "blue", "yellow")
    capsys.readouterr()
    assert main(["info", "--file", "predict:heldout_0000.png.txt", "--json"]) == 0
    lineage = json.loads(capsys.readouterr().out)
    assert (lineage["pipeline"], lineage["datum"]) == ("pps_predict", "inpredict:/heldout_0000.png, model:/")
    assert {i["name"]: i["commit"] for i in lineage["inputs"]} == {"inpredict": store.branch_head("inpredict"),
                                                                   "model": store.branch_head("model")}
