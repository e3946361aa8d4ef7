"""Checks the TensorFlow template bundles share: a kaos bundle trainyard loads, whose image and requirements pin
the versions this project tests (constraints.txt), and which reads the documented env vars instead of /pfs paths."""

from __future__ import annotations

import re
from pathlib import Path

from trainyard.bundles import SourceBundle

REPO = Path(__file__).resolve().parents[2]


def tested_pins() -> dict[str, str]:
    """name -> version, as constraints.txt pins every package CI installs."""
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        name, sep, version = line.strip().partition("==")
        if sep and not line.startswith("#"):
            pins[name.lower()] = version
    return pins


def check_tensorflow_bundle(bundle: Path) -> SourceBundle:
    """The bundle loads as kaos's layout; its requirements pin exactly the tested versions; its Dockerfile's
    TensorFlow base is the pinned TensorFlow (so the pip install adds only what differs); no /pfs/ paths."""
    loaded = SourceBundle.load(bundle.parent)
    assert (loaded.root, loaded.name, loaded.entrypoint) == (bundle, bundle.name, "model/train")
    assert {"Dockerfile", "requirements.txt", "model/params.json"} <= set(loaded.files)
    pins, tested = {}, tested_pins()
    for line in (bundle / "requirements.txt").read_text().split():
        name, sep, version = line.partition("==")
        assert sep, f"{bundle.name}: {line!r} is not pinned"
        pins[name.lower()] = version
    assert pins and all(tested.get(name) == version for name, version in pins.items()), (pins, tested)
    base = re.search(r"^FROM tensorflow/tensorflow:(\S+?)(-gpu)?$", (bundle / "Dockerfile").read_text(), re.M)
    assert base and base.group(1) == pins["tensorflow"], base
    for path in bundle.rglob("*"):  # reads the documented env vars; no kaos /pfs paths, so no private /pfs view
        if path.is_file() and "__pycache__" not in path.parts:
            assert b"/pfs/" not in path.read_bytes(), path
    return loaded
