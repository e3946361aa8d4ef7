"""`trainyard pipeline create|update|list|delete`: Pachyderm specs stored as they are, bad specs refused in one line.

The specs are Pachyderm's doc examples (the Join doc's `joins`, the reference's minimum `wordcount`), changed only
where a test breaks them on purpose.
"""

from __future__ import annotations

import copy
import json

import pytest

from tests.conftest import REPO, store_keys
from trainyard import pps
from trainyard.cli import main
from trainyard.store import open_store

# "Join", https://docs.pachyderm.com/latest/concepts/pipeline-concepts/datum/join/
JOINS = {"pipeline": {"name": "joins"},
         "input": {"join": [{"pfs": {"repo": "readings", "branch": "master", "glob": "/*/(*).txt", "join_on": "$1"}},
                            {"pfs": {"repo": "parameters", "branch": "master", "glob": "/(*).txt", "join_on": "$1"}}]},
         "transform": {"cmd": ["python3", "/joins.py"], "image": "joins-example"}}
# "Pipeline Specification": the minimum spec
WORDCOUNT = {"pipeline": {"name": "wordcount"}, "transform": {"image": "wordcount-image",
                                                              "cmd": ["/binary", "/pfs/data", "/pfs/out"]},
             "input": {"pfs": {"repo": "data", "glob": "/*"}}}


@pytest.fixture
def uri(tmp_path):
    uri = f"file://{tmp_path / 'store'}"
    open_store(uri).commit("seed", {"x": {"sha256": open_store(uri).put_blob_bytes(b"x"), "size": 1}})
    return uri


def _write(tmp_path, name: str, spec: dict) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(spec))
    return str(path)


def _one_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: ")
    return err[0]


def _broken(change) -> dict:
    spec = copy.deepcopy(JOINS)
    change(spec)
    return spec


def _no_join_on(spec):
    del spec["input"]["join"][1]["pfs"]["join_on"]


BAD = {
    "unknown field": (lambda s: s["transform"].update(working_dir="/src"),
                      "joins.json: transform.working_dir is a Pachyderm field trainyard does not support; supported "
                      "in transform: cmd, stdin, env, image, secrets"),
    "misspelt field": (lambda s: s.update(paralellism_spec={"constant": 2}),
                       "joins.json: paralellism_spec is not a known field; supported at the top level: pipeline, "
                       "transform, input, description, parallelism_spec,"),
    "join without join_on": (_no_join_on, "joins.json: input.join[1].pfs (repo 'parameters') is inside a join but "
                                          "has no join_on"),
    "glob that is not a glob": (lambda s: s["input"]["join"][0]["pfs"].update(glob="/*/([0-9*.txt"),
                                "joins.json: input.join[0].pfs.glob: glob '/*/([0-9*.txt' has an unclosed '['"),
    "glob without a leading slash": (lambda s: s["input"]["join"][1]["pfs"].update(glob="(*).txt"),
                                     "does not start with '/'"),
    "cmd as a string": (lambda s: s["transform"].update(cmd="python3 /joins.py"),
                        "joins.json: transform.cmd must be a list, got str \"python3 /joins.py\" (Pachyderm runs cmd "
                        "without a shell"),
    "name not a repo name": (lambda s: s["pipeline"].update(name="Joins_Pipeline!"),
                             "joins.json: pipeline.name: 'Joins_Pipeline!' is not a valid repo name"),
    "join_on beyond the captures": (lambda s: s["input"]["join"][0]["pfs"].update(join_on="$2"),
                                    "refers to a capture group the glob '/*/(*).txt' does not have"),
    "two inputs of one name": (lambda s: s["input"]["join"][1]["pfs"].update(name="readings"),
                               "two inputs of a join are both named 'readings'"),
    "a cron input": (lambda s: s.update(input={"cron": {"name": "tick", "spec": "@every 10s"}}),
                     "joins.json: input.cron is a Pachyderm field trainyard does not support"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_spec_is_one_line_exit_2_and_stores_nothing(case, uri, tmp_path, capsys):
    change, message = BAD[case]
    path = _write(tmp_path, "joins.json", _broken(change))
    before = store_keys(open_store(uri))
    src = tmp_path / "src"
    src.mkdir()
    (src / "joins.py").write_text("print('never committed')\n")
    assert main(["--store", uri, "pipeline", "create", "-f", path, "--source", str(src)]) == 2
    line = _one_error(capsys)
    assert message in line, line
    assert "Traceback" not in line
    assert store_keys(open_store(uri)) == before  # not the spec, and not the source bundle either


def test_a_cycle_between_specs_is_refused_and_changes_nothing(uri, tmp_path, capsys):
    # wordcount reads `data`; a `data` pipeline reading wordcount's output would close a loop
    assert main(["--store", uri, "pipeline", "create", "-f", _write(tmp_path, "wordcount.json", WORDCOUNT)]) == 0
    capsys.readouterr()
    loop = copy.deepcopy(WORDCOUNT)
    loop["pipeline"]["name"], loop["input"]["pfs"]["repo"] = "data", "wordcount"
    before = store_keys(open_store(uri))
    assert main(["--store", uri, "pipeline", "create", "-f", _write(tmp_path, "data.json", loop)]) == 2
    line = _one_error(capsys)
    assert "pipelines would form a cycle: data -> wordcount -> data" in line
    assert store_keys(open_store(uri)) == before
    # a folder with both halves of a loop is refused as a whole
    folder = tmp_path / "loop"
    folder.mkdir()
    one, two = copy.deepcopy(WORDCOUNT), copy.deepcopy(WORDCOUNT)
    one["pipeline"]["name"], one["input"]["pfs"]["repo"] = "left", "right"
    two["pipeline"]["name"], two["input"]["pfs"]["repo"] = "right", "left"
    _write(folder, "left.json", one)
    _write(folder, "right.json", two)
    assert main(["--store", uri, "pipeline", "create", "-f", str(folder)]) == 2
    assert "cycle: left -> right -> left" in _one_error(capsys)
    assert store_keys(open_store(uri)) == before


def test_create_list_update_delete(uri, tmp_path, capsys):
    src = tmp_path / "code" / "wordcount"
    src.mkdir(parents=True)
    (src / "count.py").write_text("print(1)\n")
    path = _write(tmp_path, "wordcount.json", WORDCOUNT)
    assert main(["--store", uri, "pipeline", "create", "-f", path, "--source", str(tmp_path / "code"), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    store = open_store(uri)
    source = store.resolve("wordcount")  # the folder's only subfolder is the bundle, named after itself
    assert sorted(source.manifest) == ["count.py"]
    assert row == {"name": "wordcount", "dag": "pps_wordcount", "input": "data:/*", "output": "wordcount",
                   "source": f"wordcount:{source.short}", "updated": row["updated"], "file": path,
                   "note": row["note"]}
    record = pps.get_pipeline(store, "wordcount")
    assert record.spec == WORDCOUNT and store.get_blob_bytes(record.spec_sha) == json.dumps(
        WORDCOUNT, sort_keys=True, separators=(",", ":")).encode()

    joins = _write(tmp_path, "joins.json", JOINS)
    assert main(["--store", uri, "pipeline", "create", "-f", joins, "--source", "wordcount"]) == 0
    assert "created pipeline joins (DAG pps_joins): (readings:/*/(*).txt ⋈ parameters:/(*).txt) -> repo joins, " \
           f"source wordcount:{source.short}" in capsys.readouterr().out
    assert main(["--store", uri, "pipeline", "list", "--json"]) == 0
    assert [r["name"] for r in json.loads(capsys.readouterr().out)] == ["joins", "wordcount"]

    # update keeps the source; a changed transform is a new version (its datums are processed again)
    changed = copy.deepcopy(WORDCOUNT)
    changed["transform"]["cmd"] = ["/binary", "--lower", "/pfs/data", "/pfs/out"]
    changed["parallelism_spec"] = {"constant": 4}
    assert main(["--store", uri, "pipeline", "update", "-f", _write(tmp_path, "wc2.json", changed)]) == 0
    updated = pps.get_pipeline(store, "wordcount")
    assert updated.source == record.source and updated.created == record.created
    assert updated.version != record.version and updated.parsed.parallelism_spec.constant == 4
    only_parallelism = copy.deepcopy(changed)
    only_parallelism["parallelism_spec"] = {"constant": 8}
    assert main(["--store", uri, "pipeline", "update", "-f", _write(tmp_path, "wc3.json", only_parallelism)]) == 0
    assert pps.get_pipeline(store, "wordcount").version == updated.version  # not part of what a datum makes
    capsys.readouterr()

    assert main(["--store", uri, "pipeline", "update", "-f", _write(tmp_path, "nope.json", {
        **WORDCOUNT, "pipeline": {"name": "nope"}})]) == 3
    assert "no pipeline 'nope' to update" in _one_error(capsys)
    assert main(["--store", uri, "pipeline", "create", "-f", path]) == 2
    assert "pipeline 'wordcount' already exists" in _one_error(capsys)
    assert main(["--store", uri, "pipeline", "create", "-f", str(tmp_path / "missing.json")]) == 3
    assert "spec" in _one_error(capsys)
    assert main(["--store", uri, "pipeline", "update", "-f", path, "--source", "no-such-repo"]) == 3
    assert "no source repo 'no-such-repo'" in _one_error(capsys)

    assert main(["--store", uri, "pipeline", "delete", "wordcount", "joins"]) == 0
    assert "deleted pipeline wordcount (its repo wordcount and datum records stay)" in capsys.readouterr().out
    assert main(["--store", uri, "pipeline", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert store.resolve("wordcount").id == source.id  # the repo stays
    assert main(["--store", uri, "pipeline", "delete", "joins"]) == 3


def test_a_pipeline_others_read_cannot_be_deleted_alone(uri, tmp_path, capsys):
    reader = copy.deepcopy(WORDCOUNT)
    reader["pipeline"]["name"], reader["input"]["pfs"]["repo"] = "summary", "wordcount"
    folder = tmp_path / "specs"
    folder.mkdir()
    _write(folder, "a.json", WORDCOUNT)
    _write(folder, "b.yaml", {})  # YAML works too: rewrite it as YAML
    (folder / "b.yaml").write_text("pipeline: {name: summary}\ntransform: {cmd: [/binary]}\n"
                                   "input: {pfs: {repo: wordcount, glob: /}}\n")
    assert main(["--store", uri, "pipeline", "create", "-f", str(folder)]) == 0
    capsys.readouterr()
    assert main(["--store", uri, "pipeline", "delete", "wordcount"]) == 2
    assert "summary read(s) its output repo" in _one_error(capsys)


def test_the_captioning_template_ships_five_specs(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["template", "get", "captioning"]) == 0
    specs = {spec.name: spec for spec, _ in pps.load_spec_files([tmp_path / "captioning" / "pipelines"])}
    assert sorted(specs) == ["consolidate", "features", "images", "model", "predict"]
    assert specs["consolidate"].input.kind == "join" and specs["predict"].input.kind == "cross"
    assert [leaf.repo for leaf in specs["predict"].input.leaves()] == ["inpredict", "model"]
    assert pps.find_cycle(specs) is None
    for spec in specs.values():  # they run the template's own transforms, which exist in the bundle
        script = next(arg for arg in [*spec.transform.cmd, *" ".join(spec.transform.stdin).split()]
                      if arg.startswith(("steps/", "model/")))
        assert (REPO / "templates/captioning/model-train/captioning" / script).is_file()
