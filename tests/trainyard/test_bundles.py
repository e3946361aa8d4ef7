"""Bundle validation: every bad layout is a clear error raised before anything reaches the store."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import REPO, store_keys
from trainyard.bundles import DataBundle, SourceBundle, deploy_bundle
from trainyard.errors import BundleError
from trainyard.store import open_store

MNIST = REPO / "templates" / "mnist"


@pytest.fixture
def source(tmp_path) -> Path:
    dest = tmp_path / "model-train"
    shutil.copytree(MNIST / "model-train", dest)
    return dest


def test_mnist_source_bundle_is_found_below_the_bundle_folder(source):
    bundle = SourceBundle.load(source)
    assert bundle.name == "mnist"
    assert {"Dockerfile", "model/train", "model/params.json", "requirements.txt"} <= set(bundle.files)


def test_data_repo_is_named_after_its_single_top_folder():
    bundle = DataBundle.load(MNIST / "data")
    assert bundle.name == "features"
    assert "features/training/training.csv" in bundle.files


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda root: (root / "mnist/model/train").unlink(), "has no model/train script"),
        (lambda root: (root / "mnist/Dockerfile").unlink(), "has no Dockerfile"),
        (lambda root: os.symlink("/etc/passwd", root / "mnist/model/secret"), "points outside the bundle"),
        (lambda root: (root / "mnist/model/params.json").write_text("{not json"), "is not valid JSON"),
    ],
    ids=["missing-train", "no-dockerfile", "symlink-escape", "bad-params"],
)
def test_bad_source_bundles_fail_clearly_and_store_nothing(source, tmp_path, breakage, message):
    store = open_store(f"file://{tmp_path / 'store'}")
    store.put_blob_bytes(b"already here")
    before = store_keys(store)
    breakage(source)
    with pytest.raises(BundleError, match=message):
        deploy_bundle(store, SourceBundle.load(source))
    assert store_keys(store) == before


def test_empty_bundles_are_rejected(tmp_path):
    (tmp_path / "empty-src" / "mnist").mkdir(parents=True)
    with pytest.raises(BundleError, match="is empty"):
        SourceBundle.load(tmp_path / "empty-src")
    (tmp_path / "empty-data").mkdir()
    with pytest.raises(BundleError, match="data bundle .* is empty"):
        DataBundle.load(tmp_path / "empty-data")


def test_links_inside_the_bundle_are_kept_as_their_content(source):
    os.symlink("params.json", source / "mnist/model/defaults.json")
    bundle = SourceBundle.load(source)
    assert bundle.files["model/defaults.json"].read_bytes() == (source / "mnist/model/params.json").read_bytes()
