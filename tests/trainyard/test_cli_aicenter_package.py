"""A UiPath AI Center ML package (main.py, train.py, requirements.txt; no Dockerfile) trains on the local runner.

The fixture (tests/fixtures/aicenter-package) is written from AI Center's "Building ML packages" docs: main.py is the
serving component (class Main with predict), train.py the training component (class Main with __init__, train,
evaluate and save), requirements.txt its dependencies (pandas, which the runner's own environment lacks). It reads
its parameters from environment variables, as AI Center passes them, and writes an artifact under
$artifacts_directory. The dataset `flowers` holds irises.csv and a held-out evaluation/ folder.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO
from trainyard.bundles import SourceBundle, default_dockerfile
from trainyard.cli import main
from trainyard.store import open_store

FIXTURE = REPO / "tests" / "fixtures" / "aicenter-package"
ARTIFACT = "artifacts/my-training-artifact.txt"


def _deploy(capsys, uri: str, *extra: str) -> tuple[int, dict]:
    capsys.readouterr()
    code = main(["--store", uri, "deploy", "-s", str(FIXTURE / "model-train"), "-d", str(FIXTURE / "data"),
                 "--local", "--json", *extra])
    out = capsys.readouterr().out
    return code, json.loads(out[out.rindex("\n{") if "\n{" in out else out.index("{"):])


def _results(uri: str, run: dict) -> dict:
    return open_store(uri).get_json(f"runs/train_pipeline/{run['run_id']}/_results.json")


def test_the_package_has_no_dockerfile_and_gets_the_default_image():
    bundle = SourceBundle.load(FIXTURE / "model-train")
    assert bundle.name == "irises" and bundle.entrypoint == "train.py"
    assert set(bundle.files) == {"main.py", "train.py", "requirements.txt"}
    text = default_dockerfile({p: {"sha256": "0" * 64} for p in bundle.files}, base_image="python:3.11-slim")
    assert text.splitlines()[2:] == [
        "FROM python:3.11-slim",
        "ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1",
        "COPY requirements.txt /tmp/trainyard/requirements.txt",
        "RUN pip install --no-cache-dir -r /tmp/trainyard/requirements.txt",
        "COPY . /opt/program",
        "WORKDIR /opt/program",
    ]


@pytest.mark.e2e
def test_an_ai_center_package_trains_keeps_its_artifact_and_versions_1_0_then_1_1(airflow_db, tmp_path, capsys):
    uri = f"file://{tmp_path / 'store'}"
    code, first = _deploy(capsys, uri, "-h", '{"n_estimators": [10]}', "--save-training-data")
    assert code == 0, first.get("failures")
    (model,) = first["models"]
    assert 0.8 <= model["metrics"]["score"] <= 1.0  # evaluate() on the held-out evaluation/ folder
    assert first["version"] == {"name": "irises", "version": "1.0"}

    # the artifact written under $artifacts_directory is kept with the run, and saw AI Center's environment
    got = tmp_path / "got"
    assert main(["--store", uri, "get", "--model", model["model_id"], "-o", str(got)]) == 0
    assert (got / ARTIFACT).read_text() == (
        "trained on 110 flowers with n_estimators=10 max_depth=3 save_training_data=true\n")
    # the trained package is the code plus what save() wrote; main.py came along untouched and serves the model
    assert {"main.py", "train.py", "requirements.txt", "model.joblib"} <= {p.name for p in (got / "model").iterdir()}
    assert (got / "model" / "main.py").read_bytes() == (FIXTURE / "model-train/irises/main.py").read_bytes()
    record = open_store(uri).get_json(f"models/{model['model_id'].replace(':', '/')}.json")
    python = Path(os.environ["TRAINYARD_VENV_CACHE"]) / record["env"].removeprefix("venv:") / "bin" / "python"
    flower = [{"sepal_length": 5.0, "sepal_width": 3.4, "petal_length": 1.5, "petal_width": 0.2}]
    serve = subprocess.run([str(python), "-c", f"import main; print(main.Main().predict({json.dumps(flower)!r}))"],
                           cwd=got / "model", capture_output=True, text=True, timeout=120, check=False)
    assert serve.returncode == 0, serve.stderr
    assert json.loads(serve.stdout) == ["setosa"]

    results = _results(uri, first)
    parameters, summary = results["parameters"], results["run_summary"]
    assert parameters["pipeline"] == "train_pipeline"
    assert parameters["inputs"]["package"] == "irises" and parameters["inputs"]["version"] is None
    assert parameters["inputs"]["train_data"] == f"flowers:{first['data']}"
    assert parameters["env"]["artifacts_directory"] == "artifacts" and parameters["env"]["save_training_data"]
    assert parameters["env"]["parameters"] == {"n_estimators": "10"}
    assert summary["execution_time"] > 0 and summary["end_at"] >= summary["start_at"]
    assert summary["score"] == model["metrics"]["score"]
    outputs = summary["outputs"]
    assert (outputs["package"], outputs["version"]) == ("irises", "1.0")
    assert outputs["train_data"] == f"flowers:{first['data']}"
    assert outputs["artifacts_data"] == {"model_id": model["model_id"], "paths": [ARTIFACT]}

    # a second run with other parameters is not a cache hit: it trains and adds the next minor version
    code, second = _deploy(capsys, uri, "-h", '{"n_estimators": [40]}')
    assert code == 0, second.get("failures")
    assert not second["cached"] and second["version"] == {"name": "irises", "version": "1.1"}
    results = _results(uri, second)
    assert results["parameters"]["inputs"]["version"] == "1.0"
    assert results["run_summary"]["outputs"]["version"] == "1.1"
    assert results["run_summary"]["outputs"]["train_data"] is None  # not asked to keep the data this time
    (model,) = second["models"]
    got = tmp_path / "got-1.1"
    assert main(["--store", uri, "get", "--model", model["model_id"], "-o", str(got)]) == 0
    assert "n_estimators=40 max_depth=3 save_training_data=false" in (got / ARTIFACT).read_text()

    # the same inputs again are a cache hit, which trains nothing and adds no version
    code, third = _deploy(capsys, uri, "-h", '{"n_estimators": [40]}')
    assert code == 0 and third["cached"] is True
    capsys.readouterr()
    assert main(["--store", uri, "models", "irises", "--json"]) == 0
    versions = json.loads(capsys.readouterr().out)["versions"]
    assert [v["version"] for v in versions] == ["1.0", "1.1"]
    with capsys.disabled():
        print(f"\nAI Center package: versions {[(v['version'], v['metrics']['score']) for v in versions]}")
