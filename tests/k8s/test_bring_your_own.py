"""What users bring, built and trained on the cluster: a kaos bundle with its own Dockerfile, and an AI Center
package with none (the build pod builds the default image from its requirements.txt).

The fixtures are written from kaos's and AI Center's own docs (tests/fixtures/), not from our templates.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid

import pytest

from tests.conftest import REPO
from tests.k8s.podwatch import PodWatcher
from trainyard import runs
from trainyard.cli import main

pytestmark = pytest.mark.e2e
KAOS = REPO / "tests" / "fixtures" / "kaos-layout"
AICENTER = REPO / "tests" / "fixtures" / "aicenter-package"


def _fresh(fixture, tmp_path, where: str) -> tuple[str, str]:
    """A copy of the fixture whose source commit no registry has seen, so the build pod really builds it."""
    shutil.copytree(fixture / "model-train", tmp_path / "src")
    (tmp_path / "src" / where / "session.txt").write_text(f"{uuid.uuid4()}\n")
    return str(tmp_path / "src"), str(fixture / "data")


def _deploy(capsys, *args) -> tuple[int, dict, str]:
    code = main(["deploy", *args, "--wait", "--json"])
    out = capsys.readouterr()
    return code, (json.loads(out.out) if out.out.strip() else {}), out.err


def _local(tmp_path, *args) -> dict:
    """The same deploy on the local runner, as a user without a server profile runs it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRAINYARD_", "AWS_"))}
    env.update(TRAINYARD_STORE=f"file://{tmp_path / 'local-store'}", TRAINYARD_CONFIG_DIR=str(tmp_path / "cfg"),
               TRAINYARD_VENV_CACHE=os.environ["TRAINYARD_VENV_CACHE"])
    proc = subprocess.run([sys.executable, "-m", "trainyard.cli", "deploy", *args, "--local", "--json"],
                          capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def test_a_kaos_bundle_builds_from_its_own_dockerfile_and_trains_as_locally(k8s_profile, kube, capsys, tmp_path):
    src, data = _fresh(KAOS, tmp_path, "tumours/model")
    args = ("-s", src, "-d", data, "-h", '{"C": [0.5]}')
    with PodWatcher(kube) as watcher:
        code, result, err = _deploy(capsys, *args)
    assert code == 0, err[-3000:]
    run_id = result["run_id"]
    [train] = watcher.of_run(run_id, "train")
    assert train.status.phase == "Succeeded"
    # kaos builds its Dockerfile with model/ as the context (`COPY . /opt/program/`, `RUN chmod +x train`).
    assert main(["logs", "--run-id", run_id, "--step", "build"]) == 0
    build_log = capsys.readouterr().out
    image = train.spec.containers[1].image  # the user's container
    assert f"built and pushed {image}" in build_log
    local = _local(tmp_path, *args)
    assert result["metrics"]["accuracy_test"] == local["metrics"]["accuracy_test"]
    assert result["model_id"] == local["model_id"]


def test_an_ai_center_package_without_a_dockerfile_gets_the_default_image(k8s_profile, kube, store, capsys,
                                                                           tmp_path):
    src, data = _fresh(AICENTER, tmp_path, "irises")
    with PodWatcher(kube) as watcher:
        code, result, err = _deploy(capsys, "-s", src, "-d", data, "-h", '{"n_estimators": [10]}')
    assert code == 0, err[-3000:]
    run_id = result["run_id"]
    assert main(["logs", "--run-id", run_id, "--step", "build"]) == 0
    build_log = capsys.readouterr().out
    [train] = watcher.of_run(run_id, "train")
    image = train.spec.containers[1].image  # the user's container
    assert "has no Dockerfile: building the default image on python:3.11-slim" in build_log
    assert f"built and pushed {image}" in build_log
    (model,) = result["models"]
    assert 0.8 <= model["metrics"]["score"] <= 1.0
    got = tmp_path / "got"
    assert main(["get", "--model", model["model_id"], "-o", str(got)]) == 0
    assert "n_estimators=10" in (got / "artifacts" / "my-training-artifact.txt").read_text()
    results = runs.read_results(store, "train_pipeline", run_id)
    assert results.run_summary.outputs.package == "irises"
