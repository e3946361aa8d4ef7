"""The /pfs sandbox: a kaos bundle with hard-coded /pfs paths trains locally, and nothing appears on the host's /."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from training_images.sandbox import SandboxError, pfs_command, pfs_support, wants_pfs

REPO = Path(__file__).resolve().parents[2]
KAOS_BUNDLE = REPO / "tests" / "fixtures" / "kaos-bundle" / "model-train" / "kaosdigits"
MNIST_DATA = REPO / "templates" / "mnist" / "data"
AICENTER_SOURCE = REPO / "templates" / "aicenter-sample" / "model-train" / "aicenter-sample"


@pytest.fixture
def kaos(tmp_path):
    """The kaos bundle copied out of the checkout (its helpers import would leave __pycache__ there), plus dirs."""
    src = tmp_path / "src"
    shutil.copytree(KAOS_BUNDLE, src)
    (tmp_path / "hyper").mkdir()
    hyper = tmp_path / "hyper" / "hyperparams.json"
    hyper.write_text(json.dumps({"C": 3.0}))
    out = tmp_path / "out"
    out.mkdir()
    return {"source_dir": src, "data_dir": MNIST_DATA, "hyper": hyper, "out_dir": out, "cwd": src / "model"}


@pytest.fixture
def require_bwrap():
    ok, reason = pfs_support()
    if not ok:
        print(f"/pfs sandbox unavailable: {reason}")
        pytest.skip(f"/pfs sandbox unavailable: {reason}")


@pytest.fixture
def no_bwrap(tmp_path, monkeypatch):
    """A PATH with no bwrap on it, as on a machine where bubblewrap is not installed."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))


def _user_env() -> dict[str, str]:
    # model/train's `#!/usr/bin/env python3` must find the interpreter that has numpy and scikit-learn.
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def test_kaos_bundle_trains_with_hard_coded_pfs_paths(kaos, require_bwrap):
    pfs_existed = Path("/pfs").exists()
    # kaos passes /pfs/out as argv[1]; the bundle also reads /pfs/data, /pfs/hyper, params.json and helpers.py
    cmd, note = pfs_command([str(kaos["cwd"] / "train"), "/pfs/out"], **kaos, environ={})
    assert note.startswith("kaos /pfs view")
    proc = subprocess.run(cmd, check=False, cwd=kaos["cwd"], env=_user_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    out = kaos["out_dir"]
    with open(out / "model" / "model.pkl", "rb") as fh:
        model = pickle.load(fh)
    assert model.C == 3.0  # the hyperparameters in /pfs/hyper won over params.json's C=10
    assert json.loads((out / "model" / "params.json").read_text()) == {"C": 3.0, "kernel": "rbf", "gamma": "scale"}
    metrics = json.loads((out / "metrics" / "metrics.json").read_text())
    assert metrics["accuracy_test"] > 0.9
    assert "precision" in metrics["report_test"] and "weighted avg" in metrics["report_test"]
    assert Path("/pfs").exists() == pfs_existed  # the mounts lived only in the sandbox's namespace


def test_pfs_data_and_hyper_are_read_only(kaos, require_bwrap):
    probe = "touch /pfs/data/x; echo data=$?; touch /pfs/hyper/x; echo hyper=$?; touch /pfs/out/x; echo out=$?"
    cmd, _ = pfs_command(["sh", "-c", probe], **kaos, environ={"TRAINYARD_PFS": "always"})
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=60)
    assert "data=1" in proc.stdout and "hyper=1" in proc.stdout and "out=0" in proc.stdout, proc.stderr
    assert (kaos["out_dir"] / "x").exists()
    assert not (MNIST_DATA / "x").exists()


def test_wants_pfs_detects_references_in_text_files_only(tmp_path):
    assert wants_pfs(KAOS_BUNDLE)
    assert not wants_pfs(AICENTER_SOURCE)
    bundle = tmp_path / "b"
    (bundle / ".git").mkdir(parents=True)
    (bundle / ".git" / "notes").write_text("/pfs/data/features")
    (bundle / "weights.bin").write_bytes(b"\0\1/pfs/data/" * 10)
    (bundle / "train.py").write_text("DATA = os.environ['TRAINYARD_DATA_DIR']  # /pfsx is not a path\n")
    assert not wants_pfs(bundle)
    (bundle / "train.py").write_text("DATA = os.path.join('/pfs', 'data')\n")
    assert wants_pfs(bundle)


def test_auto_mode_leaves_bundles_without_pfs_alone(kaos):
    kaos["source_dir"] = AICENTER_SOURCE
    assert pfs_command(["python", "-m", "x"], **kaos, environ={}) == (["python", "-m", "x"], None)


def test_never_disables_the_sandbox(kaos):
    cmd = [str(kaos["cwd"] / "train"), str(kaos["out_dir"])]
    assert pfs_command(cmd, **kaos, environ={"TRAINYARD_PFS": "never"}) == (cmd, None)


def test_inputs_already_at_pfs_need_no_sandbox(kaos):
    # pods materialize into an emptyDir mounted at /pfs; the path is only compared, nothing is created
    kaos["data_dir"] = Path("/pfs/data")
    assert pfs_command(["true"], **kaos, environ={"TRAINYARD_PFS": "always"}) == (["true"], None)


def test_unknown_mode_is_an_error(kaos):
    with pytest.raises(SandboxError, match="TRAINYARD_PFS='sometimes' is not one of auto, always, never"):
        pfs_command(["true"], **kaos, environ={"TRAINYARD_PFS": "sometimes"})


def test_without_bwrap_auto_runs_unwrapped_and_says_why(kaos, no_bwrap):
    ok, reason = pfs_support()
    assert not ok
    assert reason.startswith("bwrap not installed") and "make setup" in reason
    cmd = [str(kaos["cwd"] / "train"), str(kaos["out_dir"])]
    wrapped, note = pfs_command(cmd, **kaos, environ={})
    assert wrapped == cmd
    assert note.startswith("warning:") and reason in note and "TRAINYARD_DATA_DIR" in note
    with pytest.raises(SandboxError, match="TRAINYARD_PFS=always but the /pfs sandbox is unavailable: bwrap not"):
        pfs_command(cmd, **kaos, environ={"TRAINYARD_PFS": "always"})


def test_bwrap_that_cannot_create_namespaces_is_reported(tmp_path, monkeypatch):
    fake = tmp_path / "bin" / "bwrap"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to creating new namespace' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    ok, reason = pfs_support()
    assert not ok
    assert reason.startswith("bwrap cannot create namespaces here: bwrap: No permissions to creating new namespace")
