"""Two identical `trainyard deploy --local` processes at once on one bundle and store: one trains the model, the
other records honestly that it reuses that run's model (not a second training, not a second registry version)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import REPO
from trainyard import registry, runs
from trainyard.cli import main
from trainyard.store import open_store

# A kaos bundle whose training takes a few seconds, so two deploys started together both plan to train it.
TRAIN = """#!/usr/bin/env python3
import json, os, sys, time
out = sys.argv[1]
time.sleep(8)
os.makedirs(f"{out}/model", exist_ok=True)
open(f"{out}/model/model.txt", "w").write("trained\\n")
os.makedirs(f"{out}/metrics", exist_ok=True)
json.dump({"accuracy_test": 0.5}, open(f"{out}/metrics/metrics.json", "w"))
"""


def _bundles(root):
    train = root / "src" / "racer" / "model" / "train"
    train.parent.mkdir(parents=True)
    train.write_text(TRAIN)
    train.chmod(0o755)
    (root / "data" / "racedata").mkdir(parents=True)
    (root / "data" / "racedata" / "rows.csv").write_text("1,2\n3,4\n")
    return root / "src", root / "data"


def test_identical_concurrent_deploys_train_once_in_the_record(tmp_path, airflow_db, scenario, capsys):
    src, data = _bundles(tmp_path)
    uri = f"file://{tmp_path / 'store'}"
    argv = ["--store", uri, "deploy", "-s", str(src), "-d", str(data), "--json"]
    assert main([*argv, "--upload-only"]) == 0
    store = open_store(uri)
    scenario.watch(store)

    # Each process gets its own Airflow home (its SQLite metadata DB is created on first use): two processes writing
    # one SQLite file fail now and then, which is Airflow's contention, not the store's race this scenario is about.
    homes = [tmp_path / f"airflow-{n}" for n in range(2)]
    # Their databases are made first, so that the two deploys start their runs at the same moment even on a loaded
    # machine (creating one takes seconds, and the race needs both to plan before either registers).
    for home in homes:
        subprocess.run([sys.executable, "-c", "from operators.inprocess import ensure_metadata_db as e; e()"],
                       cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), "AIRFLOW_HOME": str(home)},
                       check=True, capture_output=True)
    procs = [subprocess.Popen([sys.executable, "-m", "trainyard.cli", *argv, "--local"], cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO), "AIRFLOW_HOME": str(home)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for home in homes]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    results = [json.loads(out) for out, _ in outs]
    (model_id,) = {r["model_id"] for r in results}
    # Both runs planned to train it (the race really happened) ...
    plans = [runs.load_plan(store, "train_pipeline", r["run_id"]) for r in results]
    assert [p.combinations[0].cached for p in plans] == [False, False], "the deploys did not overlap"
    # ... one of them published the model, and only that one records it as trained here.
    winner = registry.load_model(store, model_id).lineage.airflow.run_id
    assert winner in {r["run_id"] for r in results}
    for r in results:
        assert r["models"][0]["cached"] is (r["run_id"] != winner), r
    loser = next(r for r in results if r["run_id"] != winner)
    # Its register step says so, in the run's log kept in the store (what `trainyard logs` shows).
    capsys.readouterr()
    assert main(["--store", uri, "logs", "--run-id", loser["run_id"], "--step", "register"]) == 0
    assert f"trained at the same time by run {winner}" in capsys.readouterr().out
    assert [v.version for v in registry.load(store, "racer").versions] == ["1.0"]
    scenario.check(store)

    # The next normal command works: a cache hit that trains nothing.
    capsys.readouterr()
    assert main([*argv, "--local"]) == 0
    assert json.loads(capsys.readouterr().out)["cached"] is True
