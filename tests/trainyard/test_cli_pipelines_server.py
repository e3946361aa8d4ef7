"""Server mode: the captioning template's five Pachyderm specs on a real Airflow, started only by data commits.

`trainyard pipeline create` stores the specs and waits for the server to parse their DAGs; a `trainyard data put`
of 20 datums into rawdata is announced as an Asset event, and the scheduler runs images -> features -> consolidate
-> model by itself, each started by its input repo's event; a put into inpredict then gives <image>.png.txt.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO
from training_images.sandbox import pfs_support
from trainyard import pps
from trainyard.cli import _open_store, main
from trainyard.store import keys

CAPTIONING = REPO / "templates" / "captioning"
PIPELINES = ("images", "features", "consolidate", "model", "predict")
pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(not pfs_support()[0], reason=f"the /pfs view needs bubblewrap: {pfs_support()[1]}")]


@pytest.fixture
def profile(airflow_server, tmp_path, monkeypatch):
    """A user who ran `trainyard init` against the server (the store's keys are then only in the profile)."""
    monkeypatch.setenv("TRAINYARD_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("TRAINYARD_PASSWORD", airflow_server.password)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", airflow_server.store_credentials["aws_access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", airflow_server.store_credentials["aws_secret_access_key"])
    assert main(["init", "-e", airflow_server.url, "-u", airflow_server.username, "--store",
                 airflow_server.store_uri, "--store-endpoint", airflow_server.moto_endpoint]) == 0
    for var in ("TRAINYARD_PASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(var, raising=False)



def _wait_for(what: str, check, client, timeout: float = 480):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(2)
    runs = {d: [(r["run_type"], r["state"]) for r in client.runs(pps.dag_id(d))] for d in PIPELINES}
    raise AssertionError(f"{what} did not happen within {timeout:.0f} s; runs: {runs}")


def test_the_captioning_specs_run_on_the_server_started_by_data_commits(airflow_server, profile, tmp_path, capsys,
                                                                         image_server):
    client = airflow_server.client()
    store = _open_store(airflow_server.store_uri)  # the store `trainyard init` saved in the profile
    started = time.monotonic()
    try:
        assert main(["pipeline", "create", "-f", str(CAPTIONING / "pipelines"), "--source",
                     str(CAPTIONING / "model-train")]) == 0
        err = capsys.readouterr().err
        for name in PIPELINES:  # create waited until the server parsed each DAG, and it is live (unpaused)
            assert f"pipeline {name} is live on {airflow_server.url} (DAG pps_{name})" in err
            assert client.dag(pps.dag_id(name))["is_paused"] is False

        tsv = subprocess.run([sys.executable, str(CAPTIONING / "generate_data.py"), "--tsv", "training",
                              "--base-url", image_server], capture_output=True, text=True, check=True).stdout
        captions = tmp_path / "captions.tsv"
        captions.write_text("\n".join(tsv.splitlines()[:100]) + "\n")
        assert main(["data", "put", "rawdata", str(captions), "--split", "line", "--target-file-datums", "5",
                     "--json"]) == 0
        put = json.loads(capsys.readouterr().out)
        assert put["datums"] == 20
        created, started = time.monotonic() - started, time.monotonic()

        def model_trained_on_this_put():
            try:
                state = store.get_json(keys.pps_state("model"))
                consolidate = store.get_json(keys.pps_state("consolidate"))
            except Exception:  # noqa: BLE001 - not there yet
                return None
            rawdata = {i["repo"]: i["commit"] for i in consolidate["inputs"]}.get("rawdata")
            if rawdata == put["commit"] and state["inputs"][0]["commit"] == consolidate["output"]:
                return state
            return None

        state = _wait_for("the model trained on the put", model_trained_on_this_put, client)
        chained, started = time.monotonic() - started, time.monotonic()
        metrics = json.loads(store.read_entry(store.get_commit("model", state["output"])
                                                  .manifest["metrics/metrics.json"]))
        assert metrics["exact_match"] > metrics["chance_exact_match"] + 0.3
        assert len(store.resolve("images").manifest) == 100
        # nobody triggered anything: every run of the chain was started by an Asset event
        for name in ("images", "features", "consolidate", "model"):
            # A job's record is written by its last task, a moment before Airflow marks the run itself finished.
            _wait_for(f"a successful run of pps_{name}",
                      lambda name=name: any(r["state"] == "success" for r in client.runs(pps.dag_id(name))), client,
                      timeout=60)
            kinds = {r["run_type"] for r in client.runs(pps.dag_id(name))}
            assert kinds == {"asset_triggered"}, (name, kinds)
        images_job = store.get_json(keys.pps_state("images"))
        assert images_job["inputs"][0]["commit"] == put["commit"] and images_job["datums"] == 20

        # predict: a put into inpredict gives <image>.png.txt through the cross with the model repo
        image = CAPTIONING / "data" / "heldout" / "images" / "heldout_0000.png"
        assert main(["data", "put", "inpredict", str(image)]) == 0

        def captioned():
            head = store.branch_head("predict")
            manifest = store.get_commit("predict", head).manifest if head else {}
            return manifest.get("heldout_0000.png.txt")

        entry = _wait_for("a caption for heldout_0000.png", captioned, client, timeout=240)
        caption = store.read_entry(entry).decode().strip()
        print(f"\nserver: create until live {created:.0f} s, put -> model {chained:.0f} s, put -> caption "
              f"{time.monotonic() - started:.0f} s; exact_match {metrics['exact_match']}, caption {caption!r}")
        assert caption.startswith("a ") and caption.split()[1] in ("red", "green", "blue", "yellow")
    finally:
        # The server is shared by the session: later tests' puts into rawdata must not start these pipelines.
        for name in PIPELINES:
            try:
                client.call("PATCH", f"/api/v2/dags/{pps.dag_id(name)}", {"is_paused": True})
            except Exception:  # noqa: BLE001 - a DAG that never appeared
                pass
        main(["pipeline", "delete", *PIPELINES])
