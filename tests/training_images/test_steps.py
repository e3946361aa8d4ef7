"""Step entrypoints run as subprocesses, exactly as the local runner launches them."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from trainyard import runs
from trainyard.bundles import DataBundle, SourceBundle, deploy_bundle
from trainyard.store import open_store

ENV_PROBE_TRAIN = """#!/usr/bin/env python3
import json, os, sys
out = sys.argv[1]
params = json.load(open(os.environ["TRAINYARD_PARAMS"]))
seen = {k: v for k, v in os.environ.items() if k.startswith(("TRAINYARD_", "AWS_", "artifacts"))}
print("cwd", os.getcwd())
os.makedirs(f"{out}/model", exist_ok=True); os.makedirs(f"{out}/metrics", exist_ok=True)
open(f"{out}/model/env.json", "w").write(json.dumps({"env": seen, "cwd": os.getcwd(), "params": params,
    "data": sorted(os.listdir(os.environ["TRAINYARD_DATA_DIR"]))}))
os.makedirs(os.environ["artifacts_directory"], exist_ok=True)
open(os.path.join(os.environ["artifacts_directory"], "note.txt"), "w").write("kept")
json.dump(METRICS, open(f"{out}/metrics/metrics.json", "w"))
sys.exit(EXIT)
"""


def make_bundles(root: Path, metrics: str = '{"loss": 0.25}', exit_code: int = 0) -> tuple[Path, Path]:
    src = root / "src" / "probe"
    (src / "model").mkdir(parents=True)
    (src / "Dockerfile").write_text("FROM python:3.11-slim\n")
    (src / "model" / "train").write_text(ENV_PROBE_TRAIN.replace("METRICS", metrics).replace("EXIT", str(exit_code)))
    (src / "model" / "params.json").write_text('{"lr": 0.1, "epochs": 3}')
    data = root / "data" / "probe-data"
    data.mkdir(parents=True)
    (data / "rows.csv").write_text("1,2\n")
    return src.parent, data.parent


def run_step(step: str, args: list[str], store_uri: str, tmp: Path, extra_env: dict | None = None):
    result = tmp / f"{step}-result.json"
    env = {**os.environ, "TRAINYARD_STORE": store_uri, "TRAINYARD_RESULT_PATH": str(result),
           "TRAINYARD_VENV_CACHE": str(tmp / "venvs"), **(extra_env or {})}
    proc = subprocess.run([sys.executable, "-m", f"training_images.{step}", *args], env=env, capture_output=True,
                          text=True, timeout=300)
    return proc, (json.loads(result.read_text()) if result.exists() else None)


@pytest.fixture
def deployed(tmp_path):
    uri = f"file://{tmp_path / 'store'}"
    store = open_store(uri)

    def deploy(**kwargs):
        src, data = make_bundles(tmp_path / f"b{len(list(tmp_path.glob('b*')))}", **kwargs)
        s, _, _ = deploy_bundle(store, SourceBundle.load(src))
        d, _, _ = deploy_bundle(store, DataBundle.load(data))
        return uri, store, s, d

    return deploy


def test_train_contract_env_params_and_outputs(deployed, tmp_path):
    uri, store, src, data = deployed()
    hostile = '{"lr": 0.5, "note": "$(id); rm -rf /"}'
    proc, result = run_step("train", ["--source", f"probe:{src.id}", "--data", f"probe-data:{data.id}",
                                      "--params", hostile], uri, tmp_path,
                            {"AWS_SECRET_ACCESS_KEY": "planted-secret", "AWS_ACCESS_KEY_ID": "planted-id"})
    assert proc.returncode == 0, proc.stderr
    assert result["metrics"] == {"loss": 0.25}
    assert result["params"] == {"lr": 0.5, "epochs": 3, "note": "$(id); rm -rf /"}  # merged over params.json
    outputs = json.loads(store.get_blob_bytes(result["outputs"]))
    assert {"model/env.json", "metrics/metrics.json", "artifacts/note.txt"} <= set(outputs)
    seen = json.loads(store.get_blob_bytes(outputs["model/env.json"]["sha256"]))
    assert seen["cwd"].endswith("/src/model")
    assert seen["data"] == ["probe-data"]  # the data repo keeps its top folder, like kaos's /pfs/data/<bundle>
    assert seen["params"]["note"] == "$(id); rm -rf /"
    assert {"TRAINYARD_DATA_DIR", "TRAINYARD_PARAMS", "TRAINYARD_HYPERPARAMS", "TRAINYARD_MODEL_ID"} <= set(seen["env"])
    # user code never sees the store or its credentials
    assert not any(k.startswith("AWS_") or k == "TRAINYARD_STORE" for k in seen["env"])
    assert "planted-secret" not in proc.stdout + proc.stderr


def test_failed_training_fails_the_step_with_its_last_lines_and_keeps_the_log(deployed, tmp_path):
    uri, store, src, data = deployed(exit_code=3)
    proc, result = run_step("train", ["--source", f"probe:{src.id}", "--data", f"probe-data:{data.id}",
                                      "--pipeline", "probe_pipeline"], uri, tmp_path,
                            {"TRAINYARD_RUN_ID": "manual__probe"})
    assert proc.returncode == 3 and result is None
    assert "training failed with exit code 3" in proc.stderr and "cwd" in proc.stderr
    model_id = re.search(r"^training model (\S+): source", proc.stdout, re.M).group(1)
    failure = runs.load_failure(store, "probe_pipeline", "manual__probe", model_id)
    assert failure.exit_code == 3
    # the failure record keeps the whole log the training wrote, not only the last lines on stderr
    log = store.get_blob_bytes(failure.log).decode()
    assert re.fullmatch(r"cwd /\S+/src/model\n", log), log  # the probe's one line, then exit 3


def test_text_metrics_are_kept_as_text_and_a_non_object_is_rejected(deployed, tmp_path):
    uri, store, src, data = deployed(metrics='{"loss": 0.5, "report_test": "precision 0.9"}')
    proc, result = run_step("train", ["--source", f"probe:{src.id}", "--data", f"probe-data:{data.id}"], uri, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert result["metrics"] == {"loss": 0.5, "report_test": "precision 0.9"}

    uri, store, src, data = deployed(metrics='[0.5]')
    (tmp_path / "again").mkdir()
    proc, result = run_step("train", ["--source", f"probe:{src.id}", "--data", f"probe-data:{data.id}"], uri,
                            tmp_path / "again")
    assert proc.returncode != 0 and result is None
    assert "metrics.json must be a JSON object" in proc.stderr


def test_build_makes_one_venv_per_requirements_hash_and_reuses_it(deployed, tmp_path):
    uri, store, src, _ = deployed()
    first_proc, first = run_step("build", ["--source", f"probe:{src.id[:6]}"], uri, tmp_path)
    assert first_proc.returncode == 0, first_proc.stderr
    second_proc, second = run_step("build", ["--source", f"probe:{src.id[:6]}"], uri, tmp_path)
    assert (first["reused"], second["reused"]) == (False, True)
    assert first["env"] == second["env"]
    assert len(list((tmp_path / "venvs").glob("*/.trainyard-ready"))) == 1


def test_a_malicious_archive_in_the_data_fails_the_step_naming_the_member(tmp_path):
    import io
    import zipfile

    uri = f"file://{tmp_path / 'store'}"
    store = open_store(uri)
    src, data = make_bundles(tmp_path / "b")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("../../escaped.txt", "owned")
    (data / "probe-data" / "payload.zip").write_bytes(buf.getvalue())
    s, _, _ = deploy_bundle(store, SourceBundle.load(src))
    d, _, _ = deploy_bundle(store, DataBundle.load(data))
    before = set(store.backend.list(""))
    work = tmp_path / "work"
    work.mkdir()
    proc, result = run_step("train", ["--source", f"probe:{s.id}", "--data", f"probe-data:{d.id}"], uri, tmp_path,
                            {"TRAINYARD_WORKDIR": str(work)})
    assert proc.returncode != 0 and result is None
    assert "payload.zip" in proc.stderr and "'../../escaped.txt'" in proc.stderr and "'..'" in proc.stderr
    assert not list(tmp_path.rglob("escaped.txt"))
    assert set(store.backend.list("")) == before  # nothing was published
