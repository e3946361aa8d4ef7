"""A Pachyderm pipeline spec on the kubernetes runner: transform.image runs as is, without the store's keys.

The spec is written the way Pachyderm's docs write theirs (the fruit-stand and opencv examples: `cmd` and `stdin`
for a shell in a stock image, one `pfs` input globbed `/*`, `/pfs/<repo>` in and `/pfs/out` out), plus the env,
secret and parallelism fields users set. A `data put` in server mode starts it by an Asset event; each datum runs
in the image the spec names (the local stand-in of Debian's `debian:bookworm-slim`, no trainyard, no Python).
"""

from __future__ import annotations

import json
import time

import pytest
from kubernetes import client

from tests.k8s.podwatch import PodWatcher
from trainyard.cli import main

pytestmark = pytest.mark.e2e
TOKEN = "wordcount-token-0123456789"
SPEC = {
    "pipeline": {"name": "wordcount"},
    "description": "Count the words of each text, and say what the transform's environment holds.",
    "transform": {
        "image": "debian:bookworm-slim",
        "cmd": ["sh"],
        "stdin": [
            "for f in /pfs/texts/*; do wc -w < \"$f\" > /pfs/out/$(basename \"$f\").count; done",
            "name=$(basename /pfs/texts/*)",
            "echo \"$GREETING token:${#TOKEN} aws:$(env | grep -c '^AWS_')\" > /pfs/out/$name.env",
        ],
        "env": {"GREETING": "hello"},
        "secrets": [{"name": "wordcount-token", "env_var": "TOKEN", "key": "token"}],
    },
    "input": {"pfs": {"repo": "texts", "glob": "/*"}},
    "parallelism_spec": {"constant": 2},
    "datum_tries": 2,
    "enable_stats": True,
}


def _wait_for_output(store, files: set[str], timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    manifest: dict = {}
    while time.monotonic() < deadline:
        head = store.branch_head("wordcount")
        manifest = store.get_commit("wordcount", head).manifest if head else {}
        if files <= set(manifest):
            return manifest
        time.sleep(2)
    raise AssertionError(f"the wordcount repo holds {sorted(manifest)}, not {sorted(files)}, after {timeout} s")


def _text(store, manifest: dict, path: str) -> str:
    return store.read_entry(manifest[path]).decode().strip()


def test_transform_image_runs_as_is_per_datum_without_the_stores_keys(k8s_profile, kube, store, tmp_path, capsys):
    kube.create_namespaced_secret("default", client.V1Secret(metadata=client.V1ObjectMeta(name="wordcount-token"),
                                                             string_data={"token": TOKEN}))
    spec = tmp_path / "wordcount.json"
    spec.write_text(json.dumps(SPEC))
    assert main(["pipeline", "create", "-f", str(spec)]) == 0
    capsys.readouterr()
    first = tmp_path / "a.txt"
    first.write_text("the quick brown fox\n")
    with PodWatcher(kube) as watcher:
        assert main(["data", "put", "texts", str(first)]) == 0
        manifest = _wait_for_output(store, {"a.txt.count", "a.txt.env"})
        time.sleep(2)
    assert _text(store, manifest, "a.txt.count") == "4"
    # transform.env and the Secret reached the transform; the store's keys did not.
    assert _text(store, manifest, "a.txt.env") == f"hello token:{len(TOKEN)} aws:0"
    [pod] = [p for p in watcher.pods.values() if p.metadata.labels.get("trainyard.io/pipeline") == "wordcount"
             and p.metadata.labels.get("task_id") == "process"]
    containers = {c.name: c for c in pod.spec.containers}
    assert containers["transform"].image == "debian:bookworm-slim"
    assert not containers["transform"].env_from
    assert [e.secret_ref.name for e in containers["base"].env_from if e.secret_ref] == ["trainyard-store"]
    assert pod.status.phase == "Succeeded"

    # A second text is one more datum: the first is not processed again.
    second = tmp_path / "b.txt"
    second.write_text("jumps over the lazy dog again\n")
    assert main(["data", "put", "texts", str(second)]) == 0
    manifest = _wait_for_output(store, {"a.txt.count", "b.txt.count"})
    assert _text(store, manifest, "b.txt.count") == "6"
    capsys.readouterr()
    assert main(["pipeline", "list", "--json"]) == 0
    [row] = [r for r in json.loads(capsys.readouterr().out) if r["name"] == "wordcount"]
    assert row["output"] == "wordcount"
    # enable_stats: one record per datum processed, over both runs, with its timing
    stats = [store.get_json(k) for k in store.backend.list("pps/stats/wordcount/")]
    assert sorted(s["label"] for s in stats) == ["texts:/a.txt", "texts:/b.txt"]
    assert all(s["state"] == "success" and s["attempts"] == 1 for s in stats)
