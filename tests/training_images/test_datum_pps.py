"""The Pachyderm datum step's contract: /pfs/<input>/<path> and /pfs/out, stdin, env, secrets, lazy, tries, timeouts.

Specs are Pachyderm's own doc examples (the group doc's labresults, the reference's minimal `data` spec) with
transforms written for the test; the step runs in-process (`main(argv)`), its transforms under bubblewrap.
"""

from __future__ import annotations

import json
import time

import pytest

from training_images.datum import pps as step
from training_images.sandbox import pfs_support
from trainyard import pps
from trainyard.datums import datum_key, datum_label, input_datums, load_record, pfs_datum_id
from trainyard.store import keys, open_store

OK, REASON = pfs_support()
pytestmark = pytest.mark.skipif(not OK, reason=f"the /pfs view needs bubblewrap: {REASON}")

LABRESULTS = ["LIPID-patientID1-labID1.txt", "LIPID-patientID2-labID1.txt", "LIPID-patientID1-labID2.txt",
              "LIPID-patientID3-labID3.txt", "LIPID-patientID1-labID3.txt", "LIPID-patientID2-labID3.txt"]


@pytest.fixture
def store(tmp_path, monkeypatch):
    uri = f"file://{tmp_path / 'store'}"
    monkeypatch.setenv("TRAINYARD_STORE", uri)
    monkeypatch.setenv("TRAINYARD_RESULT_PATH", str(tmp_path / "result.json"))
    monkeypatch.setenv("TRAINYARD_RUN_ID", "job-1")
    return open_store(uri)


def _commit(store, repo: str, files: dict[str, bytes]) -> None:
    store.commit(repo, {path: {"sha256": store.put_blob_bytes(data), "size": len(data)}
                        for path, data in files.items()})


def _create(store, spec: dict) -> tuple[pps.PipelineRecord, list[dict], dict]:
    (record,) = pps.save_pipelines(store, [(pps.parse_spec(spec), "test.json")], source=None, update=False)
    parsed = record.parsed
    resolved = pps.resolve_inputs(store, parsed)
    manifests = [store.get_commit(r["repo"], r["commit"]).manifest for r in resolved]
    datums = {datum_label(d): pfs_datum_id(d) for d in input_datums(pps.datum_tree(parsed.input, resolved, manifests))}
    return record, resolved, datums


def _run(command: str, record, resolved, datums: list[str] | None = None) -> int:
    argv = [command, "--pipeline", record.name, "--spec", record.spec_sha, "--inputs", json.dumps(resolved),
            "--version", record.version]
    return step.main(argv + (["--datums", json.dumps(datums)] if datums is not None else []))


def _result(tmp_path) -> dict:
    return json.loads((tmp_path / "result.json").read_text())


def _output(store, repo: str) -> dict[str, str]:
    commit = store.resolve(repo)
    return {path: store.read_entry(e).decode() for path, e in commit.manifest.items()}


def test_group_datums_see_their_files_under_pfs_and_outputs_merge(store, tmp_path, capsys):
    # The Group doc's spec; the transform (bash, its script on stdin) lists what /pfs/labresults holds per patient
    _commit(store, "labresults", {name: name.encode() for name in LABRESULTS})
    record, resolved, datums = _create(store, {
        "pipeline": {"name": "group"},
        "input": {"group": [{"pfs": {"repo": "labresults", "branch": "master", "glob": "/*-(*)-lab*.txt",
                                     "group_by": "$1"}}]},
        "transform": {"cmd": ["bash"], "env": {"GREETING": "hello from the spec"}, "stdin": [
            "set -e",
            "patient=$(ls /pfs/labresults | head -1 | cut -d- -f2)",
            "ls /pfs/labresults > /pfs/out/$patient.txt",
            "echo \"$GREETING $labresults_COMMIT $PACH_DATUM_ID $PACH_JOB_ID\" > /pfs/out/$patient.env",
            "test ! -e /pfs/out/$patient.txt.nope && ! touch /pfs/labresults/x 2>/dev/null"]}})
    assert _run("process", record, resolved, list(datums.values())) == 0
    assert _result(tmp_path) == {"processed": 3, "skipped": 0, "failed": 0, "failures": []}
    assert _run("collect", record, resolved) == 0
    out = _output(store, "group")
    assert out["patientID1.txt"].split() == ["LIPID-patientID1-labID1.txt", "LIPID-patientID1-labID2.txt",
                                             "LIPID-patientID1-labID3.txt"]
    assert out["patientID2.txt"].split() == ["LIPID-patientID2-labID1.txt", "LIPID-patientID2-labID3.txt"]
    assert out["patientID3.txt"].split() == ["LIPID-patientID3-labID3.txt"]
    head = store.branch_head("labresults")
    label = "labresults:/LIPID-patientID3-labID3.txt"
    assert out["patientID3.env"].split() == ["hello", "from", "the", "spec", head, datums[label], "job-1"]
    assert _result(tmp_path) == {"output": f"group:{store.branch_head('group')}", "changed": True, "files": 6,
                                 "datums": 3}
    job = store.get_json(keys.pps_state("group"))
    assert (job["job"], job["inputs"][0]["commit"], job["output"]) == ("job-1", head, store.branch_head("group"))

    # incremental: every datum already has its record, so nothing runs again
    capsys.readouterr()
    assert _run("process", record, resolved, list(datums.values())) == 0
    assert _result(tmp_path)["skipped"] == 3 and "datum " not in capsys.readouterr().out
    # a large chunk comes as a slice of the plan's pending list, stored as a blob (an argv string holds 128 KiB)
    sha = store.put_blob_bytes(json.dumps(list(datums.values())).encode())
    assert step.main(["process", "--pipeline", record.name, "--spec", record.spec_sha, "--inputs", json.dumps(resolved),
                      "--version", record.version, "--datums-from", f"{sha}:1:3"]) == 0
    assert _result(tmp_path)["skipped"] == 2


def test_lazy_inputs_are_pipes_fetched_only_when_read_and_stats_keep_timing_and_logs(store, tmp_path):
    # The reference's minimum spec (input `data`, glob /*), with lazy and enable_stats
    _commit(store, "data", {"dir/a.txt": b"A" * 1000, "dir/b.txt": b"B" * 5000})
    record, resolved, datums = _create(store, {
        "pipeline": {"name": "wordcount"},
        "input": {"pfs": {"repo": "data", "glob": "/*", "lazy": True}},
        "enable_stats": True,
        "transform": {"cmd": ["sh"], "stdin": [
            "set -e", "test -p /pfs/data/dir/b.txt", "wc -c < /pfs/data/dir/a.txt > /pfs/out/a.count",
            "echo read a only"]}})
    assert _run("process", record, resolved, list(datums.values())) == 0
    assert _run("collect", record, resolved) == 0
    assert _output(store, "wordcount") == {"a.count": "1000\n"}
    (stats_key,) = store.backend.list("pps/stats/wordcount/job-1/")
    stats = store.get_json(stats_key)
    assert stats["download_bytes"] == 1000  # b.txt was never opened, so never fetched
    assert (stats["state"], stats["attempts"], stats["label"]) == ("success", 1, "data:/dir")
    assert stats["seconds"] >= stats["process_seconds"] > 0 and stats["download_seconds"] >= 0
    assert "read a only" in store.get_blob_bytes(stats["log"]).decode()


def test_a_failing_datum_is_retried_alone_then_named_and_collect_commits_nothing(store, tmp_path, capsys):
    _commit(store, "data", {"good.txt": b"ok", "flaky.txt": b"flaky", "bad.txt": b"bad"})
    marker = tmp_path / "flaky-once"
    record, resolved, datums = _create(store, {
        "pipeline": {"name": "tries"}, "datum_tries": 2,
        "input": {"pfs": {"repo": "data", "glob": "/*"}},
        "transform": {"cmd": ["sh"], "stdin": [
            "f=$(ls /pfs/data)",
            f"if [ $f = flaky.txt ] && [ ! -e {marker} ]; then touch {marker}; echo transient >&2; exit 3; fi",
            "if [ $f = bad.txt ]; then echo 'cannot parse bad.txt' >&2; exit 1; fi",
            "cp /pfs/data/$f /pfs/out/$f"]}})
    capsys.readouterr()
    assert _run("process", record, resolved, list(datums.values())) == 1
    result = _result(tmp_path)
    assert (result["processed"], result["failed"]) == (2, 1)
    assert result["failures"] == [{"datum": "data:/bad.txt", "error": "cannot parse bad.txt", "attempts": 2}]
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == "datum data:/bad.txt failed after 2 attempt(s): cannot parse bad.txt"
    assert marker.exists()  # flaky failed once and succeeded on its second try
    before = set(store.backend.list("repos/"))
    assert _run("collect", record, resolved) == 1  # a datum has no output: no commit
    assert set(store.backend.list("repos/")) == before


def test_datum_timeout_stops_a_transform(store, tmp_path):
    _commit(store, "data", {"slow.txt": b"zzz"})
    record, resolved, datums = _create(store, {
        "pipeline": {"name": "slow"}, "datum_tries": 1, "datum_timeout": "1s",
        "input": {"pfs": {"repo": "data", "glob": "/*"}},
        "transform": {"cmd": ["sh", "-c", "sleep 60; echo late > /pfs/out/late"]}})
    started = time.monotonic()
    assert _run("process", record, resolved, list(datums.values())) == 1
    assert time.monotonic() - started < 20
    assert _result(tmp_path)["failures"][0]["error"] == "ran past datum_timeout 1s and was stopped"


def test_secrets_reach_the_transform_only_and_are_masked_in_logs(store, tmp_path, capsys, monkeypatch):
    _commit(store, "data", {"x.txt": b"x"})
    record, resolved, datums = _create(store, {
        "pipeline": {"name": "secretive"},
        "input": {"pfs": {"repo": "data", "glob": "/"}},
        "transform": {"secrets": [{"name": "api", "env_var": "API_TOKEN", "key": "token"},
                                  {"name": "db", "mount_path": "/secrets/db"}],
                      "cmd": ["sh"], "stdin": [
                          "echo token is $API_TOKEN", "cat /secrets/db/password > /pfs/out/password",
                          "env > /pfs/out/env"]}})
    monkeypatch.setenv(step.SECRETS_ENV, json.dumps({"env": {"API_TOKEN": "tok-0123456789"},
                                                     "files": {"/secrets/db": {"password": "pw-9876543210"}}}))
    capsys.readouterr()
    assert _run("process", record, resolved, list(datums.values())) == 0
    printed = capsys.readouterr().out
    assert "token is ***" in printed and "tok-0123456789" not in printed
    assert _run("collect", record, resolved) == 0
    out = _output(store, "secretive")
    assert out["password"] == "pw-9876543210"
    assert "API_TOKEN=tok-0123456789" in out["env"] and step.SECRETS_ENV not in out["env"]
    assert "TRAINYARD_STORE" not in out["env"] and "AWS_" not in out["env"]
    (datum_id,) = datums.values()
    kept = load_record(store, pps.dag_id("secretive"), pps.TRANSFORM_STEP, datum_key(datum_id, record.version, {}))
    assert "tok-0123456789" not in store.get_blob_bytes(kept.log).decode()


def test_links_into_pfs_inputs_become_those_files_and_conflicting_outputs_are_refused(store, tmp_path, capsys):
    # Pachyderm's shuffle pipelines link input files into /pfs/out instead of copying them
    _commit(store, "data", {"a/img.png": b"png-a", "b/img.png": b"png-b"})
    record, resolved, datums = _create(store, {
        "pipeline": {"name": "shuffle"}, "input": {"pfs": {"repo": "data", "glob": "/*"}},
        "transform": {"cmd": ["sh"], "stdin": ["d=$(ls /pfs/data)", "ln -s /pfs/data/$d/img.png /pfs/out/$d.png"]}})
    assert _run("process", record, resolved, list(datums.values())) == 0
    assert _run("collect", record, resolved) == 0
    manifest = store.resolve("shuffle").manifest
    assert manifest == {"a.png": store.resolve("data").manifest["a/img.png"],
                        "b.png": store.resolve("data").manifest["b/img.png"]}

    record, resolved, datums = _create(store, {
        "pipeline": {"name": "clash"}, "input": {"pfs": {"repo": "data", "glob": "/*"}},
        "transform": {"cmd": ["sh"], "stdin": ["cat /pfs/data/*/img.png > /pfs/out/same.png"]}})
    assert _run("process", record, resolved, list(datums.values())) == 0
    with pytest.raises(SystemExit, match="datums data:/a and data:/b both wrote /pfs/out/same.png"):
        _run("collect", record, resolved)
    assert store.branch_head("clash") is None


def test_without_a_source_bundle_the_run_says_so_in_one_line(store, tmp_path, capsys):
    _commit(store, "data", {"x.txt": b"x"})
    record, resolved, datums = _create(store, {
        "pipeline": {"name": "imaged"}, "input": {"pfs": {"repo": "data", "glob": "/"}},
        "transform": {"image": "pachyderm/opencv:1.0", "cmd": ["python3", "/edges.py"]}})
    capsys.readouterr()
    assert _run("process", record, resolved, list(datums.values())) == 1
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note:")]
    assert notes == ["note: pipeline imaged has no source bundle, so locally transform.cmd runs with this machine's "
                     "tools in an empty working directory (transform.image pachyderm/opencv:1.0 runs only on the "
                     "kubernetes runner); give one with `trainyard pipeline update -f SPEC --source DIR_OR_REPO`"]
