"""The lstm template: a deterministic zipped time-series dataset and a kaos model/train that learns it.

model/train runs as a subprocess exactly as trainyard's train step runs it (cwd model/, argv[1] the output dir,
TRAINYARD_DATA_DIR with the zip unpacked, TRAINYARD_PARAMS, CUDA_VISIBLE_DEVICES), so TensorFlow is never
imported into the pytest process.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.templates.bundle_checks import check_tensorflow_bundle

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "templates" / "lstm"
GENERATOR = TEMPLATE / "generate_data.py"
DATA_ZIP = TEMPLATE / "data" / "timeseries" / "training_dataset.zip"
BUNDLE = TEMPLATE / "model-train" / "lstm"
MODEL_DIR = BUNDLE / "model"
SHAPE = (1200, 101, 3)  # N series x (100 input timesteps + 1 target row) x 3 channels
TEST_EPOCHS = 5  # the template trains 15; 5 at learning rate 0.01 reaches val_r2 ~0.94 here in ~3 s
DEVICE_LINE = "TensorFlow 2.21.0 devices: "


def _npy_from_zip(path: Path) -> bytes:
    with zipfile.ZipFile(path) as zf:
        assert zf.namelist() == ["training_dataset.npy"]
        assert zf.getinfo("training_dataset.npy").compress_type == zipfile.ZIP_DEFLATED
        return zf.read("training_dataset.npy")


def _generate(out: Path) -> Path:
    subprocess.run([sys.executable, str(GENERATOR), "--out", str(out)], check=True, capture_output=True,
                   text=True, timeout=120)
    return out / "training_dataset.zip"


def _unpacked_data_dir(tmp: Path) -> Path:
    """The data commit as the train step materializes it: data/timeseries/ with the zip unpacked beside it."""
    data_dir = tmp / "data"
    (data_dir / "timeseries").mkdir(parents=True)
    shutil.copy(DATA_ZIP, data_dir / "timeseries" / DATA_ZIP.name)
    with zipfile.ZipFile(DATA_ZIP) as zf:
        zf.extractall(data_dir / "timeseries")
    return data_dir


def _train(tmp: Path, data_dir: Path, overrides: dict, cuda: str = "", timeout: int = 300):
    params = json.loads((MODEL_DIR / "params.json").read_text())
    params.update(overrides)
    params_file = tmp / "params.json"
    params_file.write_text(json.dumps(params))
    out = tmp / "out"
    env = {**os.environ, "TRAINYARD_DATA_DIR": str(data_dir), "TRAINYARD_PARAMS": str(params_file),
           "TRAINYARD_SOURCE_DIR": str(BUNDLE), "artifacts_directory": str(out / "artifacts"),
           "CUDA_VISIBLE_DEVICES": cuda}
    proc = subprocess.run([str(MODEL_DIR / "train"), str(out)], cwd=MODEL_DIR, env=env, capture_output=True,
                          text=True, timeout=timeout)
    return proc, out


# -- the dataset ------------------------------------------------------------------------------------------------

def test_generator_is_deterministic_and_zip_holds_one_plain_array(tmp_path):
    first, second = _generate(tmp_path / "a"), _generate(tmp_path / "b")
    assert _npy_from_zip(first) == _npy_from_zip(second)
    assert first.read_bytes() == second.read_bytes()  # fixed timestamps: the zip itself is reproducible too
    data = np.load(io.BytesIO(_npy_from_zip(first)), allow_pickle=False)
    assert data.shape == SHAPE and data.dtype == np.float32
    assert np.isfinite(data).all()
    # the targets are not constant: predicting their mean scores R^2 = 0
    assert (data[:, 100, :].std(axis=0) > 0.3).all()


def test_committed_zip_is_what_the_generator_writes(tmp_path):
    assert DATA_ZIP.is_file(), "run templates/lstm/generate_data.py"
    assert DATA_ZIP.stat().st_size < 2 * 1024 * 1024
    # compare the array, not the zip: another zlib may deflate the same bytes differently
    assert _npy_from_zip(DATA_ZIP) == _npy_from_zip(_generate(tmp_path))


def test_the_bundle_loads_as_kaos_and_pins_the_tested_tensorflow():
    check_tensorflow_bundle(BUNDLE)
    assert os.access(MODEL_DIR / "train", os.X_OK)
    params = json.loads((MODEL_DIR / "params.json").read_text())
    assert set(params) == {"learning_rate", "batch_size", "epochs", "validation_split"}


# -- training on CPU ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lstm-cpu")
    proc, out = _train(tmp, _unpacked_data_dir(tmp), {"epochs": TEST_EPOCHS, "learning_rate": 0.01})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, out


def test_train_writes_model_and_numeric_metrics(cpu_run):
    proc, out = cpu_run
    assert (out / "model" / "model.keras").stat().st_size > 0
    metrics = json.loads((out / "metrics" / "metrics.json").read_text())
    assert set(metrics) == {"loss", "val_loss", "val_mae", "val_r2", "train_seconds", "learning_rate"}
    for name, value in metrics.items():
        assert isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value), name
    assert metrics["learning_rate"] == 0.01
    # observed here: val_r2 ~0.94, val_loss ~0.04 (predicting the mean: val_r2 0, val_loss ~0.57)
    assert metrics["val_r2"] > 0.8, metrics
    assert metrics["val_loss"] < 0.15, metrics
    history = json.loads((out / "artifacts" / "history.json").read_text())
    assert len(history["loss"]) == len(history["val_loss"]) == TEST_EPOCHS
    assert history["val_loss"][-1] < history["val_loss"][0]


def test_train_logs_devices_and_epochs(cpu_run):
    proc, _ = cpu_run
    assert f"{DEVICE_LINE}CPU:0 | GPUs: none (CUDA_VISIBLE_DEVICES='')" in proc.stdout
    assert proc.stdout.count("Epoch ") >= TEST_EPOCHS  # verbose=2: one line-based record per epoch
    assert "val_loss" in proc.stdout


def test_train_is_reproducible(cpu_run, tmp_path):
    """Same code, data and params give the same model (seeded), as the content-addressed model id promises."""
    _, first_out = cpu_run
    proc, out = _train(tmp_path, _unpacked_data_dir(tmp_path), {"epochs": TEST_EPOCHS, "learning_rate": 0.01})
    assert proc.returncode == 0, proc.stderr[-3000:]
    first = json.loads((first_out / "metrics" / "metrics.json").read_text())
    again = json.loads((out / "metrics" / "metrics.json").read_text())
    for name in ("loss", "val_loss", "val_r2"):
        assert again[name] == pytest.approx(first[name], rel=1e-3, abs=1e-4), name


def test_train_without_unpacked_data_names_the_zip(tmp_path):
    data_dir = tmp_path / "data"
    (data_dir / "timeseries").mkdir(parents=True)
    shutil.copy(DATA_ZIP, data_dir / "timeseries" / DATA_ZIP.name)  # packed, as in the bundle, not unpacked
    proc, out = _train(tmp_path, data_dir, {"epochs": 1})
    assert proc.returncode != 0
    assert "training_dataset.npy" in proc.stderr and "training_dataset.zip" in proc.stderr, proc.stderr[-2000:]
    assert not (out / "metrics" / "metrics.json").exists()


# -- training on a GPU (only where there is one) ------------------------------------------------------------------

def _gpus_listed() -> list[str]:
    if not shutil.which("nvidia-smi"):
        pytest.skip("no GPU on this machine: nvidia-smi is not installed")
    try:
        proc = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"no GPU on this machine: nvidia-smi -L failed ({exc})")
    gpus = [line for line in proc.stdout.splitlines() if line.startswith("GPU ")]
    if proc.returncode != 0 or not gpus:
        reason = (proc.stderr or proc.stdout).strip().splitlines()[:1] or ["it lists none"]
        pytest.skip(f"no GPU on this machine: nvidia-smi -L: {reason[0]}")
    return gpus


def test_train_uses_the_gpu_when_there_is_one(tmp_path):
    gpus = _gpus_listed()
    probe = subprocess.run(
        [sys.executable, "-c", "import tensorflow as tf; print(len(tf.config.list_physical_devices('GPU')))"],
        env={**os.environ, "CUDA_VISIBLE_DEVICES": "0"}, capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr[-2000:]
    assert int(probe.stdout.strip().splitlines()[-1]) >= 1, (
        f"nvidia-smi lists {gpus[0]!r} but TensorFlow sees no GPU: install the CUDA 12 / cuDNN 9 libraries "
        f"(pip install 'tensorflow[and-cuda]==2.21.0') or use the template's tensorflow:2.21.0-gpu image\n"
        + probe.stderr[-2000:])
    proc, out = _train(tmp_path, _unpacked_data_dir(tmp_path), {"epochs": 2}, cuda="0")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"{DEVICE_LINE}" in proc.stdout and "| GPUs: GPU:0 (CUDA_VISIBLE_DEVICES='0')" in proc.stdout, \
        proc.stdout[:2000]
    assert "TensorFlow sees none" not in proc.stdout
    assert (out / "model" / "model.keras").is_file()
