"""A source bundle in exactly kaos's documented layout deploys and trains unchanged on the local runner.

The fixture (tests/fixtures/kaos-layout) follows kaos's docs: `model-train/<name>/Dockerfile` built with `model/` as
its context, and `model/` holding `__init__.py`, `params.json`, `requirements.txt`, `train` and `utils.py`. Its
training needs pandas, which the runner's own environment lacks, so only an installed `model/requirements.txt`
lets it run. It reads kaos's fixed paths (/pfs/data, /pfs/hyper) and writes text metrics next to numbers.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO, store_keys
from trainyard.cli import main
from trainyard.store import open_store

FIXTURE = REPO / "tests" / "fixtures" / "kaos-layout"
NAME = "tumours"


@pytest.fixture
def kaos_copy(tmp_path):
    """The fixture's bundles copied out of the checkout (running train directly writes __pycache__ next to it)."""
    src, data = tmp_path / "model-train", tmp_path / "data"
    shutil.copytree(FIXTURE / "model-train", src)
    shutil.copytree(FIXTURE / "data", data)
    return src, data


def _deploy(capsys, uri: str, src, data, *extra: str) -> tuple[int, dict]:
    capsys.readouterr()
    code = main(["--store", uri, "deploy", "-s", str(src), "-d", str(data), "--local", "--json", *extra])
    out = capsys.readouterr().out
    return code, json.loads(out[out.rindex("\n{") if "\n{" in out else out.index("{"):])


def _pfs_or_skip():
    from training_images.sandbox import pfs_support

    ok, reason = pfs_support()
    if not ok:
        pytest.skip(f"kaos's train reads /pfs/data and /pfs/hyper; no private mount namespace here: {reason}")


@pytest.mark.e2e
def test_kaos_layout_trains_and_matches_its_train_run_directly(airflow_db, tmp_path, capsys, kaos_copy):
    _pfs_or_skip()
    src, data = kaos_copy
    uri = f"file://{tmp_path / 'store'}"
    code, run = _deploy(capsys, uri, src, data, "-h", '{"C": [0.5]}')
    assert code == 0, run.get("failures")
    assert run["state"] == "success"
    (model,) = run["models"]
    assert model["params"] == {"label_column": 1, "kernel": "rbf", "C": 0.5, "gamma": "scale"}
    trained = model["metrics"]
    assert 0.85 <= trained["accuracy_test"] <= 1.0
    # kaos writes sklearn's text reports as metrics: kept as text, never ranked
    assert isinstance(trained["metrics_test"], str) and "precision" in trained["metrics_test"]
    assert run["metric"] == "accuracy_test:max"

    # the model trained in the environment built from model/requirements.txt, keyed by that file's hash
    requirements = (src / NAME / "model" / "requirements.txt").read_bytes()
    key = hashlib.sha256(requirements).hexdigest()[:16]
    record = open_store(uri).get_json(f"models/{model['model_id'].replace(':', '/')}.json")
    assert record["env"] == f"venv:{key}"
    venv = Path(os.environ["TRAINYARD_VENV_CACHE"]) / key

    # Run the bundle's own train the way kaos runs it: ./train <out> from model/, the data bundle at /pfs/data,
    # the combination's hyperparameters alone in /pfs/hyper, in the same Python environment.
    from training_images.sandbox import bwrap_argv

    model_dir = src / NAME / "model"
    hyper = tmp_path / "hyper" / "hyperparams.json"
    hyper.parent.mkdir()
    hyper.write_text(json.dumps({"C": 0.5}))
    out = tmp_path / "direct-out"
    out.mkdir()
    env = {"PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}", "HOME": str(tmp_path)}
    argv = bwrap_argv([str(model_dir / "train"), "/pfs/out"], data_dir=data, hyper=hyper, out_dir=out,
                      cwd=model_dir, bwrap=shutil.which("bwrap"))
    proc = subprocess.run(argv, cwd=model_dir, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    direct = json.loads((out / "metrics" / "metrics.json").read_text())
    with capsys.disabled():
        print(f"\nkaos layout: accuracy_test {trained['accuracy_test']} on the local runner, {direct['accuracy_test']} "
              "from train run directly")
    for split in ("train", "validation", "test"):
        assert trained[f"accuracy_{split}"] == direct[f"accuracy_{split}"]
        assert trained[f"metrics_{split}"] == direct[f"metrics_{split}"]


@pytest.mark.parametrize("root_requirements", ["pandas==2.2.3\nscikit-learn\njoblib\n", None],
                         ids=["different", "identical"])
def test_a_root_requirements_file_next_to_models(tmp_path, capsys, kaos_copy, root_requirements):
    src, data = kaos_copy
    kept = src / NAME / "model" / "requirements.txt"
    (src / NAME / "requirements.txt").write_text(root_requirements or kept.read_text())
    uri = f"file://{tmp_path / 'store'}"
    store = open_store(uri)
    before = store_keys(store)
    capsys.readouterr()
    code = main(["--store", uri, "deploy", "-s", str(src), "-d", str(data), "--upload-only"])
    if root_requirements is None:  # the same requirements in both places: one environment, no question
        assert code == 0
        return
    assert code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: ") and "requirements.txt" in line and "model/requirements.txt" in line
    assert "differ" in line and "remove one" in line
    assert store_keys(store) == before
