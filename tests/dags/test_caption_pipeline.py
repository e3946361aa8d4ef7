"""caption_pipeline end to end under dag.test(): 100 TSV lines in 20 datums, then 5 more lines process 1 datum."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO
from trainyard.bundles import SourceBundle, deploy_bundle
from trainyard.datums import put_file
from trainyard.store import open_store

CAPTIONING = REPO / "templates" / "captioning"
pytestmark = pytest.mark.e2e



def _plan(run_id: str, task_id: str) -> dict:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.query(XComModel).filter_by(dag_id="caption_pipeline", run_id=run_id, task_id=task_id,
                                                 key="plan").one()
        return row.value


def test_caption_pipeline_processes_only_new_datums(airflow_db, tmp_path, monkeypatch, image_server, capsys):
    from operators.inprocess import run_pipeline

    uri = f"file://{tmp_path / 'store'}"
    monkeypatch.setenv("TRAINYARD_URL_ALLOW_LOOPBACK", "true")  # the demo image server is on 127.0.0.1
    monkeypatch.setenv("TRAINYARD_MAX_DATUM_TASKS", "4")
    tsv = subprocess.run([sys.executable, str(CAPTIONING / "generate_data.py"), "--tsv", "training",
                          "--base-url", image_server], capture_output=True, text=True, check=True).stdout.splitlines()
    store = open_store(uri)
    deploy_bundle(store, SourceBundle.load(CAPTIONING / "model-train"))
    captions = tmp_path / "captions.tsv"
    captions.write_text("\n".join(tsv[:100]) + "\n")
    put_file(store, "rawdata", captions, split="line", target_file_datums=5)

    first = run_pipeline("caption_pipeline", {"hyperparams": {"epochs": [20]}}, store_uri=uri)
    assert first["state"] == "success"
    for step in ("images", "features", "consolidate"):
        plan = _plan(first["run_id"], f"{step}_plan")
        assert (plan["datums"], plan["pending"], plan["tasks"]) == (20, 20, 4), step
    assert len(store.resolve("images").manifest) == 100  # one image per line, under its datum's folder
    assert len(store.resolve("consolidated").manifest) == 20  # one dataset per joined datum
    (model,) = first["results"].models
    assert model.metrics["exact_match"] > model.metrics["chance_exact_match"] + 0.3

    captions.write_text("\n".join(tsv[:105]) + "\n")  # 5 more lines: one new datum
    put_file(store, "rawdata", captions, split="line", target_file_datums=5)
    second = run_pipeline("caption_pipeline", {"hyperparams": {"epochs": [20]}}, store_uri=uri)
    assert second["state"] == "success"
    for step in ("images", "features", "consolidate"):
        plan = _plan(second["run_id"], f"{step}_plan")
        assert (plan["datums"], plan["pending"], plan["skipped"]) == (21, 1, 20), step
    assert len(store.resolve("images").manifest) == 105
    (retrained,) = second["results"].models
    assert retrained.model_id != model.model_id  # new consolidated data, new model

    # predict: a committed image crossed with the latest model gives its caption, with the model in its lineage
    from trainyard.cli import main

    image = CAPTIONING / "data" / "heldout" / "images" / "heldout_0000.png"
    put_file(store, "inpredict", image)
    predicted = run_pipeline("predict", {}, store_uri=uri)
    assert predicted["state"] == "success"
    out = store.resolve("predictions")
    assert sorted(out.manifest) == ["heldout_0000.png.txt"]
    caption = store.read_entry(out.manifest["heldout_0000.png.txt"]).decode().strip()
    expected = next(line.split("\t")[0] for line in (CAPTIONING / "data/heldout/captions.tsv").read_text().splitlines()
                    if "heldout_0000.png" in line)
    assert caption.startswith("a ") and caption.split()[1] in ("red", "green", "blue", "yellow")
    print(f"predicted {caption!r} for {expected!r}")
    capsys.readouterr()
    assert main(["--store", uri, "info", "--file", "predictions:heldout_0000.png.txt", "--json"]) == 0
    lineage = json.loads(capsys.readouterr().out)
    assert (lineage["pipeline"], lineage["step"]) == ("predict", "predict")
    model_input = next(i for i in lineage["inputs"] if i["name"] == "model")
    latest = second["results"].models[0].model_id
    assert model_input["message"] == f"model {latest} (captioning 1.1)"
