"""Source and data bundles: scan, validate (before anything is stored) and deploy into repos."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import unicodedata
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from trainyard.contract import REQUIREMENTS_FILES, requirements_conflict, requirements_path
from trainyard.errors import BundleError, ConfigError
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


def name_problem(rel: str) -> str | None:
    """Why a file path cannot be committed, or None. A control character (a newline, a tab, ESC ...) would break
    every table, log line and manifest listing that shows the path, and a name that is not UTF-8 cannot be stored."""
    for char in rel:
        if unicodedata.category(char) == "Cc":
            return f"has a control character {char!r} in its name"
        if "\udc80" <= char <= "\udcff":  # os.fsdecode's escape for a byte that is not UTF-8
            return "has a name that is not valid UTF-8"
    return None


def check_name(rel: str, where: str = "") -> None:
    """Refuse a path that cannot be committed (see name_problem): one line naming it with repr, exit 2."""
    problem = name_problem(rel)
    if problem:
        raise BundleError(f"file {rel!r}{' in ' + where if where else ''} {problem}; rename it (nothing was stored)")


def check_link(root: Path, path: Path, what: str = "the bundle") -> None:
    """The one rule for symlinks in what is committed (bundles, pipeline sources, `data put`): a link must resolve
    to a regular file inside `root`, the folder being committed; a link out of it (to /etc/passwd, say) is refused."""
    root = root.resolve()
    rel = path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)
    target = path.resolve()
    if target != root and root not in target.parents:
        raise BundleError(
            f"symlink {rel} -> {os.readlink(path)} points outside {what} {root}; "
            "copy the file into it or remove the link (nothing was stored)"
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
                check_link(root, Path(dirpath) / name)
            kept.append(name)
        dirnames[:] = kept
        for name in sorted(filenames):
            if name in IGNORED_NAMES or name.endswith(IGNORED_SUFFIXES):
                continue
            path = Path(dirpath) / name
            if path.is_symlink():
                check_link(root, path)
            if path.is_file():
                rel = path.relative_to(root).as_posix()
                check_name(rel, str(root))
                files[rel] = path
    return files


@dataclasses.dataclass(frozen=True)
class SourceBundle:
    """A source bundle: kaos's layout (model/train, optional Dockerfile, requirements.txt at the root or in model/,
    params.json) or an AI Center ML package (train.py with class Main, main.py, requirements.txt, no Dockerfile)."""

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
            raise BundleError(f"source bundle {path} is not a directory; pass the folder that holds <name>/model/train "
                              f"(kaos) or <name>/{AICENTER_SCRIPT} (AI Center)")
        root = path
        if not _looks_like_source(path):
            # kaos's `-s model-train` names the folder above the bundle; descend when it holds exactly one.
            subdirs = [d for d in path.iterdir() if d.is_dir() and d.name not in IGNORED_NAMES]
            if len(subdirs) == 1:
                root = subdirs[0]
        files = scan_tree(root)
        if not files:
            raise BundleError(f"source bundle {root} is empty; it needs {TRAIN_SCRIPT} (or {AICENTER_SCRIPT})")
        if TRAIN_SCRIPT not in files and AICENTER_SCRIPT not in files:
            raise BundleError(
                f"source bundle {root} has no {TRAIN_SCRIPT} script; add an executable {root / TRAIN_SCRIPT} "
                f"that takes the output dir as argv[1] (or a {AICENTER_SCRIPT} with class Main)"
            )
        # A Dockerfile is optional: without one the Kubernetes build uses default_dockerfile() (AI Center packages
        # never have one) and the local runner needs none. Two different requirements files are refused here,
        # before anything is stored, because the environment could not say which one it was built from.
        present = [name for name in REQUIREMENTS_FILES if name in files]
        if len(present) > 1 and len({files[name].read_bytes() for name in present}) > 1:
            raise BundleError(requirements_conflict(str(root)))
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


def _looks_like_source(path: Path) -> bool:
    return any((path / name).is_file() for name in ("Dockerfile", TRAIN_SCRIPT, AICENTER_SCRIPT))


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


# Where the default image keeps the bundle: kaos's images use /opt/program as their WORKDIR.
IMAGE_BUNDLE_DIR = "/opt/program"
# A registry image reference (registry/name:tag or @digest): one token, so it cannot add Dockerfile instructions.
_IMAGE_REF = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@+-]*\Z")


def default_dockerfile(manifest: Mapping[str, Mapping[str, Any]], *, base_image: str) -> str:
    """The Dockerfile the Kubernetes build uses for a source bundle that has none (AI Center packages never do).

    `manifest` is the source commit's manifest (`{path: {"sha256", "size"}}`; its keys are the bundle's files) and
    `base_image` is `[trainyard] default_base_image`. The build context is the bundle root. The image is the base,
    the bundle's requirements installed (`requirements.txt` or kaos's `model/requirements.txt`, see
    contract.requirements_path), the bundle copied to /opt/program, and WORKDIR where its training code runs:
    `model/` for kaos's `model/train`, the package root for AI Center's `train.py`.
    Raises ConfigError for a base that is not an image reference, BundleError for two different requirements files.
    """
    base = (base_image or "").strip()
    if not _IMAGE_REF.match(base):
        raise ConfigError(f"[trainyard] default_base_image = {base_image!r} is not an image reference; set it to one "
                          "such as python:3.11-slim (env TRAINYARD_DEFAULT_BASE_IMAGE)")
    requirements = requirements_path(manifest)
    kaos = TRAIN_SCRIPT in manifest
    lines = [
        "# Generated by trainyard: this source bundle has no Dockerfile (an AI Center ML package, for example),",
        "# so its image is [trainyard] default_base_image plus its requirements, as AI Center builds them.",
        f"FROM {base}",
        "ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1",
    ]
    if requirements:
        # Installed before the code is copied, so a code change reuses the dependency layer.
        lines += [f"COPY {requirements} /tmp/trainyard/requirements.txt",
                  "RUN pip install --no-cache-dir -r /tmp/trainyard/requirements.txt"]
    lines.append(f"COPY . {IMAGE_BUNDLE_DIR}")
    if kaos:
        lines.append(f"RUN chmod +x {IMAGE_BUNDLE_DIR}/{TRAIN_SCRIPT}")  # manifests keep content, not modes
    lines.append(f"WORKDIR {IMAGE_BUNDLE_DIR}/model" if kaos else f"WORKDIR {IMAGE_BUNDLE_DIR}")
    return "\n".join(lines) + "\n"


def _copy_sources(dockerfile: str) -> list[str]:
    """The local source paths of a Dockerfile's COPY and ADD instructions (not those copying from another stage)."""
    joined = re.sub(r"\\\r?\n", " ", dockerfile)
    sources: list[str] = []
    for line in joined.splitlines():
        words = line.strip().split(None, 1)
        if len(words) < 2 or words[0].upper() not in ("COPY", "ADD"):
            continue
        rest = words[1].strip()
        if rest.startswith("["):
            try:
                args = [str(a) for a in json.loads(rest)]
            except ValueError:
                continue
        else:
            args = rest.split()
        if any(a.startswith("--from") for a in args):
            continue
        args = [a for a in args if not a.startswith("--")]
        sources += [a.removeprefix("./").rstrip("/") or "." for a in args[:-1]]
    return sources


def dockerfile_context(manifest: Mapping[str, Any], dockerfile: str) -> str:
    """The build context a bundle's own Dockerfile expects, relative to the bundle root: "model" or "" (the root).

    kaos builds `docker build -f <name>/Dockerfile <name>/model` (its Dockerfile copies `.` and runs `./train`);
    trainyard's templates build from the bundle root (`COPY requirements.txt`, `COPY model /model`). The context is
    `model/` when every path the Dockerfile copies exists there and not every one exists at the root, or, for a
    kaos bundle whose Dockerfile copies only `.`, as kaos would build it; otherwise the root.
    """
    if not any(path.startswith("model/") for path in manifest):
        return ""

    def exists(prefix: str, source: str) -> bool:
        if any(ch in source for ch in "*?["):  # a glob: look at the folder it matches in
            source = source.rsplit("/", 1)[0] if "/" in source else "."
        if source == ".":
            return True
        full = prefix + source
        return full in manifest or any(path.startswith(full + "/") for path in manifest)

    sources = _copy_sources(dockerfile)
    in_model = all(exists("model/", s) for s in sources)
    at_root = all(exists("", s) for s in sources)
    if in_model and not at_root:
        return "model"
    if in_model and at_root and TRAIN_SCRIPT in manifest and all(s == "." for s in sources):
        return "model"
    return ""
