"""The train step gives an AI Center package AI Center's environment: its params as variables, save_training_data."""

from __future__ import annotations

import json

from tests.training_images.test_steps import run_step
from trainyard import runs
from trainyard.bundles import DataBundle, SourceBundle, deploy_bundle
from trainyard.records import PlanResources, RunPlan
from trainyard.store import open_store

# A package that reports the environment its train() saw; AI Center packages read their parameters this way.
TRAIN_PY = """
import json, os
class Main:
    def train(self, data_directory):
        names = ("epochs", "rate", "name", "flag", "PATH", "save_training_data", "artifacts_directory")
        self.seen = {n: os.environ.get(n) for n in names}
    def save(self):
        json.dump(self.seen, open("seen.json", "w"))
"""


def _deploy(tmp_path):
    uri = f"file://{tmp_path / 'store'}"
    store = open_store(uri)
    src = tmp_path / "src" / "envpkg"
    src.mkdir(parents=True)
    (src / "train.py").write_text(TRAIN_PY)
    (src / "main.py").write_text("class Main:\n    def predict(self, input):\n        return input\n")
    data = tmp_path / "data" / "rows"
    data.mkdir(parents=True)
    (data / "rows.csv").write_text("1\n")
    source, _, _ = deploy_bundle(store, SourceBundle.load(src.parent))
    dataset, _, _ = deploy_bundle(store, DataBundle.load(data.parent))
    return uri, store, source, dataset


def _seen(store, result) -> dict:
    outputs = json.loads(store.get_blob_bytes(result["outputs"]))
    return json.loads(store.get_blob_bytes(outputs["model/seen.json"]["sha256"]))


def test_params_become_environment_variables_except_reserved_names(tmp_path):
    uri, store, source, dataset = _deploy(tmp_path)
    params = {"epochs": 3, "rate": 0.5, "name": "$(id)", "flag": True, "PATH": "/nowhere"}
    proc, result = run_step("train", ["--source", f"envpkg:{source.id}", "--data", f"rows:{dataset.id}",
                                      "--params", json.dumps(params)], uri, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    seen = _seen(store, result)
    assert (seen["epochs"], seen["rate"], seen["name"], seen["flag"]) == ("3", "0.5", "$(id)", "true")
    assert seen["PATH"] != "/nowhere" and seen["artifacts_directory"].endswith("/out/artifacts")
    assert seen["save_training_data"] == "false"
    assert "params not exported as environment variables (reserved or not a valid name): PATH" in proc.stdout
    assert result["env_parameters"] == {"epochs": "3", "rate": "0.5", "name": "$(id)", "flag": "true"}


def test_save_training_data_comes_from_the_run(tmp_path):
    uri, store, source, dataset = _deploy(tmp_path)
    runs.save_plan(store, RunPlan(
        pipeline="train_pipeline", run_id="run-1", start_time=0.0, source=f"envpkg:{source.id}",
        data=f"rows:{dataset.id}", name="envpkg", image="unused", resources=PlanResources(cpu="1", memory="1Gi"),
        save_training_data=True))
    proc, result = run_step("train", ["--source", f"envpkg:{source.id}", "--data", f"rows:{dataset.id}"], uri,
                            tmp_path, {"TRAINYARD_RUN_ID": "run-1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _seen(store, result)["save_training_data"] == "true"
