"""AI Center contract runner: train.py's Main trains, saves into the model dir, and its evaluate() score is recorded."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "templates" / "aicenter-sample"


def run_aicenter(source: Path, data: Path, out: Path, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **env}
    return subprocess.run([sys.executable, "-m", "training_images.aicenter", "--source", str(source),
                           "--data", str(data), "--out", str(out)],
                          check=False, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=300)


@pytest.fixture
def dirs(tmp_path):
    """The template's package and dataset copied to tmp, an empty out dir, and a neutral working directory."""
    source = tmp_path / "src" / "aicenter-sample"
    shutil.copytree(TEMPLATE / "model-train" / "aicenter-sample", source)
    data = tmp_path / "data"
    shutil.copytree(TEMPLATE / "data", data)
    (tmp_path / "work").mkdir()
    return {"source": source, "data": data, "out": tmp_path / "out", "cwd": tmp_path / "work"}


def package(tmp_path: Path, code: str) -> Path:
    src = tmp_path / "pkg"
    src.mkdir()
    (src / "train.py").write_text(code)
    return src


def test_sample_package_trains_saves_and_scores(dirs):
    artifacts = dirs["out"] / "artifacts"
    proc = run_aicenter(dirs["source"], dirs["data"], dirs["out"], dirs["cwd"], artifacts_directory=str(artifacts))
    assert proc.returncode == 0, proc.stdout + proc.stderr

    model_dir = dirs["out"] / "model"
    # the trained package is the code plus what save() wrote in its working directory
    assert {"train.py", "params.json", "requirements.txt", "model.pkl"} <= {p.name for p in model_dir.iterdir()}
    assert not (dirs["source"] / "model.pkl").exists()
    assert not list(model_dir.rglob("__pycache__"))
    with open(model_dir / "model.pkl", "rb") as fh:
        model = pickle.load(fh)
    assert model.n_estimators == 200  # from the package's params.json

    metrics = json.loads((dirs["out"] / "metrics" / "metrics.json").read_text())
    assert set(metrics) == {"score"} and 0.8 <= metrics["score"] <= 1.0
    # evaluate() got the held-out folder: 36 test rows, so the confusion matrix counts 36
    matrix = (artifacts / "confusion_matrix.csv").read_text().split()
    assert sum(int(v) for row in matrix for v in row.split(",")) == 36
    assert (artifacts / "feature_importance.txt").read_text().count("\n") == 13


def test_merged_params_file_wins(dirs, tmp_path):
    params = tmp_path / "params.json"
    params.write_text(json.dumps({"n_estimators": 7, "max_depth": 2, "random_state": 1}))
    proc = run_aicenter(dirs["source"], dirs["data"], dirs["out"], dirs["cwd"], TRAINYARD_PARAMS=str(params))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    saved = json.loads((dirs["out"] / "model" / "trained_params.json").read_text())
    assert saved == {"n_estimators": 7, "max_depth": 2, "random_state": 1}
    # without $artifacts_directory, artifacts still land with the run
    assert (dirs["out"] / "artifacts" / "confusion_matrix.csv").is_file()


def test_evaluate_dict_merges_over_metrics_written_by_user_code(dirs, tmp_path):
    src = package(tmp_path, """
import json, os
class Main:
    def train(self, data_directory):
        os.makedirs("../metrics", exist_ok=True)
        json.dump({"loss": 0.5, "f1": 0.1}, open("../metrics/metrics.json", "w"))
    def save(self):
        open("weights.txt", "w").write("w")
    def evaluate(self, evaluation_directory):
        return {"f1": 0.75, "rows": len(os.listdir(evaluation_directory))}
""")
    proc = run_aicenter(src, dirs["data"], dirs["out"], dirs["cwd"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads((dirs["out"] / "metrics" / "metrics.json").read_text()) == {"loss": 0.5, "f1": 0.75, "rows": 1}
    assert (dirs["out"] / "model" / "weights.txt").read_text() == "w"


def test_package_without_evaluate_records_no_score(dirs, tmp_path):
    src = package(tmp_path, "class Main:\n    def train(self, d):\n        pass\n    def save(self):\n        pass\n")
    proc = run_aicenter(src, dirs["data"], dirs["out"], dirs["cwd"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no evaluate(self, evaluation_directory)" in proc.stdout
    assert json.loads((dirs["out"] / "metrics" / "metrics.json").read_text()) == {}


@pytest.mark.parametrize("code, message", [
    ("def train(d):\n    pass\n", "train.py defines no class Main: AI Center packages need train.py with `class Main`"),
    ("class Main:\n    def train(self, d):\n        pass\n", "class Main in train.py lacks save(self): add it"),
    ("class Main:\n    pass\n", "lacks train(self, data_directory) and save(self): add them"),
    (("class Main:\n    def __init__(self, x):\n        pass\n    def train(self, d):\n        pass\n"
      "    def save(self):\n        pass\n"), "AI Center creates Main with no arguments"),
    (("class Main:\n    def train(self, d):\n        pass\n    def save(self):\n        pass\n"
      "    def evaluate(self, d):\n        return 'great'\n"), "evaluate() returned 'great'; return a number"),
])
def test_contract_errors_name_what_is_missing(dirs, tmp_path, code, message):
    proc = run_aicenter(package(tmp_path, code), dirs["data"], dirs["out"], dirs["cwd"])
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_train_py(dirs, tmp_path):
    (tmp_path / "empty").mkdir()
    proc = run_aicenter(tmp_path / "empty", dirs["data"], dirs["out"], dirs["cwd"])
    assert proc.returncode == 2
    assert f"no train.py in {tmp_path / 'empty'}" in proc.stderr and "model/train" in proc.stderr


def test_train_gets_the_dataset_folder_then_evaluate_then_save_as_ai_center_calls_them(dirs, tmp_path):
    src = package(tmp_path, """
import json, os
calls = []
class Main:
    def train(self, data_directory):
        calls.append(["train", os.path.basename(data_directory), sorted(os.listdir(data_directory))])
    def evaluate(self, evaluation_directory):
        calls.append(["evaluate", os.path.relpath(evaluation_directory, os.path.dirname(evaluation_directory) + "/..")])
        return 0.5
    def save(self):
        calls.append(["save"])
        json.dump(calls, open("calls.json", "w"))
""")
    proc = run_aicenter(src, dirs["data"], dirs["out"], dirs["cwd"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    calls = json.loads((dirs["out"] / "model" / "calls.json").read_text())
    # the data commit keeps its bundle's top folder (wine/); AI Center hands train() the dataset folder itself
    assert calls == [["train", "wine", ["test", "training"]], ["evaluate", "wine/test"], ["save"]]
