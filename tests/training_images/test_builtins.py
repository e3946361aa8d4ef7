"""Built-in transforms: `builtin:fetch-urls` downloads a datum's TSV URLs through the URL policy."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import serving, static_server


@pytest.fixture
def image_server(tmp_path):
    root = tmp_path / "www"
    (root / "images").mkdir(parents=True)
    for name in ("a.png", "b.png"):
        (root / "images" / name).write_bytes(name.encode() * 100)
    with serving(static_server(root)) as base:
        yield base


def _run(tmp_path, base, allow_loopback: bool):
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    (in_dir / "captions.tsv").mkdir(parents=True)
    out_dir.mkdir(exist_ok=True)
    (in_dir / "captions.tsv" / "0000000000000003").write_text(
        f"a red circle\t{base}/images/a.png\na blue square\t{base}/images/b.png\n")
    env = {**os.environ, "TRAINYARD_DATUM": "/captions.tsv/0000000000000003",
           "TRAINYARD_URL_ALLOW_LOOPBACK": "true" if allow_loopback else "false"}
    return subprocess.run([sys.executable, "-m", "training_images.builtins.fetch_urls", str(in_dir), str(out_dir)],
                          env=env, capture_output=True, text=True, timeout=60), out_dir


def test_fetch_urls_saves_each_url_under_the_datum_name(tmp_path, image_server):
    proc, out = _run(tmp_path, image_server, allow_loopback=True)
    assert proc.returncode == 0, proc.stderr
    assert (out / "0000000000000003" / "a.png").read_bytes() == b"a.png" * 100
    assert (out / "0000000000000003" / "b.png").read_bytes() == b"b.png" * 100


def test_fetch_urls_obeys_the_url_policy(tmp_path, image_server):
    proc, out = _run(tmp_path, image_server, allow_loopback=False)
    assert proc.returncode != 0
    assert "0000000000000003:1" in proc.stderr and "url_allow_loopback" in proc.stderr
    assert not list(out.rglob("*.png"))
