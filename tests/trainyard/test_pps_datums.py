"""Pachyderm's own doc examples, datum for datum: glob, join (inner and outer), cross, union and group.

Each test builds the repos a Pachyderm doc page shows (its file listings are the fixtures), parses the spec the page
gives, and checks trainyard cuts exactly the datums the page lists. Pages are cited by title and URL; the text is
also in the Pachyderm repository under doc/docs/master/concepts/pipeline-concepts/datum/.
"""

from __future__ import annotations

import hashlib

import pytest

from trainyard import pps
from trainyard.datums import GlobError, datum_files, datum_label, input_datums, pfs_datum_id, pfs_glob


def _repo(*paths: str) -> dict[str, dict]:
    """A commit manifest holding these files (each file's content is its own path)."""
    return {p.lstrip("/"): {"sha256": hashlib.sha256(p.encode()).hexdigest(), "size": len(p)} for p in paths}


def _datums(spec: dict, repos: dict[str, dict]) -> list[list[str]]:
    """Every datum of the spec over these repos, as `pachctl list datum` prints them: [name:path, ...]."""
    parsed = pps.parse_spec(spec, "doc example")
    leaves = parsed.input.leaves()
    resolved = [{"name": leaf.input_name, "repo": leaf.repo, "ref": "latest", "commit": f"{leaf.repo}-head"}
                for leaf in leaves]
    tree = pps.datum_tree(parsed.input, resolved, [repos[leaf.repo] for leaf in leaves])
    return [[p.label for p in d] for d in input_datums(tree)]


def _spec(input_: dict) -> dict:
    return {"pipeline": {"name": "example"}, "transform": {"cmd": ["true"]}, "input": input_}


# "Glob Pattern", https://docs.pachyderm.com/latest/concepts/pipeline-concepts/datum/glob-pattern/
STATES = _repo("/California/San-Francisco.json", "/California/Los-Angeles.json", "/Colorado/Denver.json",
               "/Colorado/Boulder.json", "/Washington/Seattle.json", "/Washington/Vancouver.json")
TESTS = _repo("/nope1.txt", "/test1.txt", "/foo-1/nope2.txt", "/foo-1/test2.txt", "/foo-2/foo-2_1/nope3.txt",
              "/foo-2/foo-2_1/test3.txt", "/foo-2/foo-2_1/anothertest.txt")
# "Pipeline Specification", section "The Input Glob Pattern", https://docs.pachyderm.com/1.13.x/reference/pipeline_spec/
REFERENCE = _repo("/foo-1", "/foo-2", "/bar/bar-1", "/bar/bar-2")


@pytest.mark.parametrize(("repo", "glob", "expected"), [
    # "all the data would be one large datum"
    (STATES, "/", ["/"]),
    # "one datum per state"
    (STATES, "/*", ["/California", "/Colorado", "/Washington"]),
    # "files only under the /Colorado directory ... one datum per city"
    (STATES, "/Colorado/*", ["/Colorado/Boulder.json", "/Colorado/Denver.json"]),
    # "the California and Colorado directories will each define a datum"
    (STATES, "/C*", ["/California", "/Colorado"]),
    # "everything that's two levels deep relative to the root"
    (STATES, "/*/*", sorted(f"/{p}" for p in STATES)),
    # "Example: The case of the /** glob pattern": "the resulting datums will be" these four
    (TESTS, "/**test*.txt", ["/foo-1/test2.txt", "/foo-2/foo-2_1/anothertest.txt", "/foo-2/foo-2_1/test3.txt",
                             "/test1.txt"]),
    # the reference's own repo: "/*" gives 3 datums: /foo-1, /foo-2, and everything under /bar
    (REFERENCE, "/*", ["/bar", "/foo-1", "/foo-2"]),
    (REFERENCE, "/bar/*", ["/bar/bar-1", "/bar/bar-2"]),
    (REFERENCE, "/foo*", ["/foo-1", "/foo-2"]),
    (REFERENCE, "/*/*", ["/bar/bar-1", "/bar/bar-2"]),
])
def test_glob_gives_the_datums_of_pachyderms_glob_pattern_doc(repo, glob, expected):
    got = _datums(_spec({"pfs": {"repo": "states", "glob": glob}}), {"states": repo})
    assert got == [[f"states:{path}"] for path in expected]
    if glob == "/*":
        # a directory datum brings every file under it, at its full path under /pfs/<input name>
        (california,) = [d for d in input_datums(pps.datum_tree(pps.parse_spec(_spec({"pfs": {
            "repo": "states", "glob": "/*"}})).input, [{"name": "states", "repo": "states", "commit": "c"}], [repo]))
            if d[0].path in ("/California", "/bar")]
        assert sorted(datum_files(california)) == sorted(f"states/{k}" for k in repo if k.startswith(
            california[0].path.lstrip("/") + "/"))


# "Join", https://docs.pachyderm.com/latest/concepts/pipeline-concepts/datum/join/ (its spec, verbatim)
READINGS = _repo(*(f"/ID1234/file{i}.txt" for i in range(1, 6)))
PARAMETERS = _repo(*(f"/file{i}.txt" for i in range(1, 9)))
JOINS = {"pipeline": {"name": "joins"},
         "input": {"join": [{"pfs": {"repo": "readings", "branch": "master", "glob": "/*/(*).txt", "join_on": "$1"}},
                            {"pfs": {"repo": "parameters", "branch": "master", "glob": "/(*).txt", "join_on": "$1"}}]},
         "transform": {"cmd": ["python3", "/joins.py"], "image": "joins-example"}}


def test_join_gives_the_datums_of_pachyderms_join_doc():
    repos = {"readings": READINGS, "parameters": PARAMETERS}
    # "All files with indices from 1 to 5 match. The files with indices from 6 to 8 do not match. Therefore, you
    # only get five datums for this job."
    assert _datums(JOINS, repos) == [[f"parameters:/file{i}.txt", f"readings:/ID1234/file{i}.txt"]
                                     for i in range(1, 6)]
    # "Outer Joins Example": "In addition to those five datums your code will also see three new ones, one for
    # each of the parameter files which didn't have a match."
    outer = {**JOINS, "input": {"join": [JOINS["input"]["join"][0], {"pfs": {
        **JOINS["input"]["join"][1]["pfs"], "outer_join": True}}]}}
    assert _datums(outer, repos) == ([[f"parameters:/file{i}.txt", f"readings:/ID1234/file{i}.txt"]
                                      for i in range(1, 6)] + [[f"parameters:/file{i}.txt"] for i in range(6, 9)])
    # the reverse: readings outer, parameters inner; readings has no file without a partner, so still five
    reverse = {**JOINS, "input": {"join": [{"pfs": {**JOINS["input"]["join"][0]["pfs"], "outer_join": True}},
                                           JOINS["input"]["join"][1]]}}
    assert len(_datums(reverse, repos)) == 5


# "Cross and Union Inputs", https://docs.pachyderm.com/latest/concepts/pipeline-concepts/datum/cross-union/
A = _repo("/1.txt", "/2.txt", "/3.txt")
B = _repo("/4.txt", "/5.txt", "/6.txt")


def test_cross_gives_the_datums_of_pachyderms_cross_doc():
    spec = _spec({"cross": [{"pfs": {"glob": "/*", "repo": "a"}}, {"pfs": {"glob": "/*", "repo": "b"}}]})
    got = _datums(spec, {"a": A, "b": B})
    # "Because you have three datums in each repo, Pachyderm exposes a total of nine combinations of datums to your
    # code", both /pfs/A and /pfs/B visible in each run
    assert got == [[f"a:/{i}.txt", f"b:/{j}.txt"] for i in (1, 2, 3) for j in (4, 5, 6)]
    # the reference's table: (foo, fizz), (foo, buzz), (bar, fizz), (bar, buzz)
    table = _datums(_spec({"cross": [{"pfs": {"glob": "/*", "repo": "inputa"}},
                                     {"pfs": {"glob": "/*", "repo": "inputb"}}]}),
                    {"inputa": _repo("/foo", "/bar"), "inputb": _repo("/fizz", "/buzz")})
    assert sorted(tuple(d) for d in table) == sorted([("inputa:/foo", "inputb:/fizz"), ("inputa:/foo", "inputb:/buzz"),
                                                      ("inputa:/bar", "inputb:/fizz"), ("inputa:/bar", "inputb:/buzz")])


def test_union_gives_the_datums_of_pachyderms_union_doc():
    spec = _spec({"union": [{"pfs": {"glob": "/*", "repo": "a"}}, {"pfs": {"glob": "/*", "repo": "b"}}]})
    # "the union of A and B has six datums in total", each alone
    assert _datums(spec, {"a": A, "b": B}) == ([[f"a:/{i}.txt"] for i in (1, 2, 3)]
                                              + [[f"b:/{i}.txt"] for i in (4, 5, 6)])
    # "Simplifying the Union Pipelines Code": the same name C for both, "all datums appear in the same directory"
    named = _spec({"union": [{"pfs": {"name": "c", "glob": "/*", "repo": "a"}},
                             {"pfs": {"name": "c", "glob": "/*", "repo": "b"}}]})
    parsed = pps.parse_spec(named)
    tree = pps.datum_tree(parsed.input, [{"commit": "x"}, {"commit": "y"}], [A, B])
    assert [sorted(datum_files(d)) for d in input_datums(tree)] == [[f"c/{i}.txt"] for i in range(1, 7)]


# "Group", https://docs.pachyderm.com/latest/concepts/pipeline-concepts/datum/group/ (its spec, verbatim)
LABRESULTS = _repo("/LIPID-patientID1-labID1.txt", "/LIPID-patientID2-labID1.txt", "/LIPID-patientID1-labID2.txt",
                   "/LIPID-patientID3-labID3.txt", "/LIPID-patientID1-labID3.txt", "/LIPID-patientID2-labID3.txt")
GROUP = {"pipeline": {"name": "group"},
         "input": {"group": [{"pfs": {"repo": "labresults", "branch": "master", "glob": "/*-(*)-lab*.txt",
                                      "group_by": "$1"}}]},
         "transform": {"cmd": ["bash"], "stdin": ["wc", "-l", "/pfs/labresults/*"]}}


def test_group_gives_the_datums_of_pachyderms_group_doc():
    # "The pipeline will process 3 datums for this job": patientID1's files (1, 3, 5), patientID2's (2, 6), and (4)
    assert _datums(GROUP, {"labresults": LABRESULTS}) == [
        ["labresults:/LIPID-patientID1-labID1.txt", "labresults:/LIPID-patientID1-labID2.txt",
         "labresults:/LIPID-patientID1-labID3.txt"],
        ["labresults:/LIPID-patientID2-labID1.txt", "labresults:/LIPID-patientID2-labID3.txt"],
        ["labresults:/LIPID-patientID3-labID3.txt"]]


def test_nested_inputs_and_groups_across_repos():
    # "Joins and groups can be used simultaneously; generally, you would use the join inside the group": the join
    # keeps matched files, the group then gathers them by another capture (pipeline spec reference, Group Input)
    spec = _spec({"group": [{"join": [
        {"pfs": {"repo": "readings", "glob": "/*/(file)(*).txt", "join_on": "$2", "group_by": "$1"}},
        {"pfs": {"repo": "parameters", "glob": "/(file)(*).txt", "join_on": "$2", "group_by": "$1"}}]}]})
    (one,) = _datums(spec, {"readings": READINGS, "parameters": PARAMETERS})
    assert len(one) == 10  # the five matched pairs, in one group keyed "file"
    # a cross of a union with another input: every union datum meets every datum of the other side
    crossed = _spec({"cross": [{"union": [{"pfs": {"glob": "/*", "repo": "a"}}, {"pfs": {"glob": "/*", "repo": "b"}}]},
                               {"pfs": {"glob": "/", "repo": "model"}}]})
    got = _datums(crossed, {"a": A, "b": B, "model": _repo("/model.bin")})
    assert len(got) == 6 and all(d[-1] == "model:/" for d in got)


def test_a_datum_id_follows_content_names_and_paths():
    first = input_datums(pps.datum_tree(pps.parse_spec(GROUP).input, [{"commit": "x"}], [LABRESULTS]))
    again = input_datums(pps.datum_tree(pps.parse_spec(GROUP).input, [{"commit": "y"}], [dict(LABRESULTS)]))
    assert [pfs_datum_id(d) for d in first] == [pfs_datum_id(d) for d in again]  # another commit, same content
    changed = dict(LABRESULTS, **{"LIPID-patientID3-labID3.txt": {"sha256": "0" * 64, "size": 1}})
    third = input_datums(pps.datum_tree(pps.parse_spec(GROUP).input, [{"commit": "z"}], [changed]))
    assert [pfs_datum_id(d) for d in third][:2] == [pfs_datum_id(d) for d in first][:2]
    assert pfs_datum_id(third[2]) != pfs_datum_id(first[2])
    assert datum_label(first[2]) == "labresults:/LIPID-patientID3-labID3.txt"


@pytest.mark.parametrize("glob", ["*.txt", "/[ab", "/(*", "/a//b", "/{a,{b}}", "/!(x)", "/**/"])
def test_globs_that_are_not_globs_are_refused(glob):
    with pytest.raises(GlobError):
        pfs_glob(A, glob)
