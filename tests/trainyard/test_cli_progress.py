"""Progress bars appear for hashing and upload on a terminal, and never with --json."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios

import pytest

from tests.conftest import REPO


def _deploy_on_a_tty(store_uri: str, *extra: str) -> tuple[str, str]:
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a real terminal's size
    proc = subprocess.Popen([sys.executable, "-m", "trainyard.cli", "--store", store_uri, "deploy",
                             "-s", str(REPO / "templates/mnist/model-train"), "-d", str(REPO / "templates/mnist/data"),
                             "--upload-only", *extra], stdout=subprocess.PIPE, stderr=secondary, text=True)
    os.close(secondary)
    chunks = []
    while True:
        try:
            chunk = os.read(primary, 65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    out = proc.stdout.read()
    assert proc.wait(timeout=60) == 0
    os.close(primary)
    return out, b"".join(chunks).decode(errors="replace")


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_bars_on_a_terminal_and_quiet_json(tmp_path):
    out, terminal = _deploy_on_a_tty(f"file://{tmp_path / 'a'}")
    assert "hashing mnist" in terminal and "uploading mnist" in terminal and "100%" in terminal
    out, terminal = _deploy_on_a_tty(f"file://{tmp_path / 'b'}", "--json")
    assert "hashing" not in terminal and "uploading" not in terminal
    assert json.loads(out)["uploaded"]["blobs"] == 7
