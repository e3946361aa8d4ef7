"""Source and data bundles: scan, validate (before anything is stored) and deploy into repos."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path

from trainyard.errors import BundleError
from trainyard.store.versioned import Commit, Store, UploadReport, check_repo_name

IGNORED_NAMES = {".git", "__pycache__", ".DS_Store", ".ipynb_checkpoints", ".venv"}
IGNORED_SUFFIXES = (".pyc",)
TRAIN_SCRIPT = "model/train"
AICENTER_SCRIPT = "train.py"
# Static parameters, merged in this order (later wins) before the run's hyperparameters.
PARAMS_FILES = ("params.json", "model/params.json")


def static_params(read: Callable[[str], bytes | None]) -> dict:
    """A source bundle's static params: its PARAMS_FILES merged in order (later wins); read(name) gives a file's
    bytes or None. The planner (reading the store) and the train step (reading its checkout) both use this, so
    they compute the same model id."""
    merged: dict = {}
    for name in PARAMS_FILES:
        data = read(name)
        if data is not None:
            merged.update(json.loads(data))
    return merged


def _check_link(root: Path, path: Path) -> None:
    rel = path.relative_to(root).as_posix()
    target = path.resolve()
    if target != root and root not in target.parents:
        raise BundleError(
            f"symlink {rel} -> {os.readlink(path)} points outside the bundle {root}; "
            "copy the file into the bundle or remove the link"
        )
    if not target.exists():
        raise BundleError(f"symlink {rel} is broken; fix or remove it")
    if target.is_dir():
        raise BundleError(f"symlink {rel} points to a directory; replace it with the directory itself")


def scan_tree(root: Path) -> dict[str, Path]:
    """Map every regular file under root to its path; a symlink is allowed only if it stays inside root."""
    root = root.resolve()
    files: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        kept = []
        for name in sorted(dirnames):
            if name in IGNORED_NAMES:
                continue
            if (Path(dirpath) / name).is_symlink():
                _check_link(root, Path(dirpath) / name)
            kept.append(name)
        dirnames[:] = kept
        for name in sorted(filenames):
            if name in IGNORED_NAMES or name.endswith(IGNORED_SUFFIXES):
                continue
            path = Path(dirpath) / name
            if path.is_symlink():
                _check_link(root, path)
            if path.is_file():
                files[path.relative_to(root).as_posix()] = path
    return files


@dataclasses.dataclass(frozen=True)
class SourceBundle:
    """A kaos-layout source bundle: Dockerfile, model/train (or AI Center's train.py), requirements, params."""

    root: Path
    name: str
    files: dict[str, Path]

    @property
    def entrypoint(self) -> str:
        return TRAIN_SCRIPT if TRAIN_SCRIPT in self.files else AICENTER_SCRIPT

    @classmethod
    def load(cls, path: str | Path) -> SourceBundle:
        path = Path(path)
        if not path.is_dir():
            raise BundleError(f"source bundle {path} is not a directory; pass the folder that holds <name>/Dockerfile")
        root = path
        if not (path / "Dockerfile").exists():
            subdirs = [d for d in path.iterdir() if d.is_dir() and d.name not in IGNORED_NAMES]
            if len(subdirs) == 1:
                root = subdirs[0]
        files = scan_tree(root)
        if not files:
            raise BundleError(f"source bundle {root} is empty; it needs Dockerfile and model/train (or train.py)")
        if "Dockerfile" not in files:
            raise BundleError(
                f"source bundle {root} has no Dockerfile; add one at {root / 'Dockerfile'} "
                "(it builds the training image on Kubernetes)"
            )
        if TRAIN_SCRIPT not in files and AICENTER_SCRIPT not in files:
            raise BundleError(
                f"source bundle {root} has no {TRAIN_SCRIPT} script; add an executable {root / TRAIN_SCRIPT} "
                f"that takes the output dir as argv[1] (or a {AICENTER_SCRIPT} with class Main)"
            )
        for name in PARAMS_FILES:
            if name in files:
                try:
                    params = json.loads(files[name].read_text())
                except (ValueError, UnicodeDecodeError) as exc:
                    raise BundleError(f"{root / name} is not valid JSON ({exc}); fix the file") from None
                if not isinstance(params, dict):
                    raise BundleError(f"{root / name} must hold a JSON object of parameters")
        name = root.resolve().name.lower()
        check_repo_name(name)
        return cls(root=root, name=name, files=files)


@dataclasses.dataclass(frozen=True)
class DataBundle:
    """A directory of data files committed as-is; the repo is named after its single top folder."""

    root: Path
    name: str
    files: dict[str, Path]

    @classmethod
    def load(cls, path: str | Path, name: str | None = None) -> DataBundle:
        path = Path(path)
        if not path.is_dir():
            raise BundleError(f"data bundle {path} is not a directory; pass the folder that holds your data files")
        files = scan_tree(path)
        if not files:
            raise BundleError(f"data bundle {path} is empty; put the training data files in it before deploying")
        if name is None:
            tops = {rel.split("/", 1)[0] for rel in files}
            only = next(iter(tops))
            name = only if len(tops) == 1 and "/" in next(iter(files)) else path.resolve().name
        check_repo_name(name.lower())
        return cls(root=path, name=name.lower(), files=files)


def deploy_bundle(store: Store, bundle: SourceBundle | DataBundle, *, message: str = "", quiet: bool = True,
                  repo: str | None = None) -> tuple[Commit, bool, UploadReport]:
    """Upload a validated bundle's blobs, then commit its manifest; returns (commit, created, report)."""
    report = store.upload_files(bundle.files, quiet=quiet, desc=bundle.name, repo=repo or bundle.name)
    commit, created = store.commit(repo or bundle.name, report.manifest,
                                   message=message or f"deploy {bundle.root}")
    return commit, created, report
