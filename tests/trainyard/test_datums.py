"""Datums: line and JSON splits, put file into a repo, glob, join, cross and chunking for mapped tasks."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest

from tests.conftest import store_keys
from trainyard.datums import (
    DatumError,
    GlobError,
    SplitError,
    chunk,
    cross,
    datum_id,
    glob_datums,
    join,
    put_file,
    split_json,
    split_lines,
)
from trainyard.store import keys as store_layout, open_store


def _lines(start: int, stop: int) -> bytes:
    return b"".join(b"line %d\n" % i for i in range(start, stop))


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _entry(content: bytes) -> dict:
    return {"sha256": _sha(content), "size": len(content)}


# -- split ----------------------------------------------------------------------------------------------------------
def test_split_lines_gives_exact_chunks_of_n_lines():
    chunks = split_lines(_lines(0, 100), 5)
    assert len(chunks) == 20
    assert chunks == [_lines(i, i + 5) for i in range(0, 100, 5)]
    assert b"".join(chunks) == _lines(0, 100)


def test_split_lines_keeps_a_short_last_chunk_and_a_last_line_without_newline():
    assert split_lines(b"a\nb\nc\nd\ne", 2) == [b"a\nb\n", b"c\nd\n", b"e"]


def test_split_lines_does_not_break_on_carriage_returns():
    assert split_lines(b"a\r\nb\rstill b\n", 1) == [b"a\r\n", b"b\rstill b\n"]


def test_split_lines_with_header_repeats_it_and_does_not_count_it():
    data = b"id\tcaption\n" + _lines(0, 100)
    chunks = split_lines(data, 20, header=True)
    assert len(chunks) == 5
    assert chunks == [b"id\tcaption\n" + _lines(i, i + 20) for i in range(0, 100, 20)]
    assert split_lines(b"id\tcaption\n", 3, header=True) == []
    assert split_lines(b"", 3) == []


@pytest.mark.parametrize("n", [0, -1])
def test_split_needs_at_least_one_datum_per_file(n):
    with pytest.raises(SplitError, match="--target-file-datums must be at least 1"):
        split_lines(b"a\n", n)
    with pytest.raises(SplitError, match="--target-file-datums must be at least 1"):
        split_json(b"{}\n", n)


def test_appending_lines_keeps_earlier_datums_and_adds_one():
    """The incremental property: an appended file re-splits into the same datums plus new ones at the end."""
    before = {_sha(c) for c in split_lines(_lines(0, 100), 5)}
    after_chunks = split_lines(_lines(0, 105), 5)
    after = [_sha(c) for c in after_chunks]
    assert len(before) == 20
    assert set(after[:20]) == before
    assert set(after) - before == {_sha(_lines(100, 105))}
    assert split_lines(_lines(0, 105), 5) == after_chunks  # deterministic


def test_split_json_groups_records_and_skips_blank_lines():
    records = [json.dumps({"i": i}).encode() + b"\n" for i in range(5)]
    data = b"".join(records[:2]) + b"\n" + b"".join(records[2:])
    assert split_json(data, 2) == [records[0] + records[1], records[2] + records[3], records[4]]


def test_split_json_names_the_bad_line():
    data = b'{"a": 1}\n{"a": 2}\n{"a": \n{"a": 4}\n'
    with pytest.raises(SplitError, match=r"^line 3 is not valid JSON \(Expecting value at column 7\)"):
        split_json(data, 10)


# -- put file -------------------------------------------------------------------------------------------------------
@pytest.fixture
def store(tmp_path):
    return open_store(f"file://{tmp_path}/store")


def test_put_file_split_twice_is_one_commit_and_an_extension_adds_one_datum(store, tmp_path):
    src = tmp_path / "captions.tsv"
    src.write_bytes(_lines(0, 100))
    first, datums = put_file(store, "rawdata", src, split="line", target_file_datums=5, header=False)
    assert datums == 20
    assert sorted(first.manifest) == [f"captions.tsv/{i:016d}" for i in range(20)]
    assert store.read_entry(first.manifest["captions.tsv/0000000000000003"]) == _lines(15, 20)

    keys = store_keys(store)
    again, datums = put_file(store, "rawdata", src, split="line", target_file_datums=5, header=False)
    assert (again.id, datums) == (first.id, 20)
    assert [c.id for c in store.log("rawdata")] == [first.id]
    assert store_keys(store) == keys

    src.write_bytes(_lines(0, 105))
    third, datums = put_file(store, "rawdata", src, split="line", target_file_datums=5, header=False)
    assert datums == 21 and len(third.manifest) == 21
    assert third.parent == first.id
    assert {k: v for k, v in third.manifest.items() if k != "captions.tsv/0000000000000020"} == first.manifest
    assert store.read_entry(third.manifest["captions.tsv/0000000000000020"]) == _lines(100, 105)
    new_blobs = {k for k in store_keys(store) - keys if k.startswith("blobs/")}
    # Only the new datum was uploaded: one new pack, which holds just its bytes.
    assert new_blobs == {store_layout.pack(_sha(_lines(100, 105)))}
    assert third.manifest["captions.tsv/0000000000000020"]["pack"] == _sha(_lines(100, 105))


def test_put_file_keeps_other_files_and_replaces_its_own_path(store, tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.tsv"
    a.write_bytes(b"hello\n")
    b.write_bytes(b"h\n1\n2\n3\n")
    put_file(store, "raw", a)
    split, datums = put_file(store, "raw", b, split="line", target_file_datums=2, header=True, path="/tables/b.tsv")
    assert datums == 2
    # The datums share one pack; each keeps its own sha256 and size.
    assert {p: {"sha256": e["sha256"], "size": e["size"]} for p, e in split.manifest.items()} == {
        "a.txt": _entry(b"hello\n"), "tables/b.tsv/0000000000000000": _entry(b"h\n1\n2\n"),
        "tables/b.tsv/0000000000000001": _entry(b"h\n3\n")}
    assert [split.manifest[f"tables/b.tsv/000000000000000{i}"]["offset"] for i in (0, 1)] == [0, 6]
    whole, datums = put_file(store, "raw", b, path="tables/b.tsv", message="unsplit")
    assert datums == 1 and whole.message == "unsplit"
    assert whole.manifest == {"a.txt": _entry(b"hello\n"), "tables/b.tsv": _entry(b"h\n1\n2\n3\n")}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"split": "line", "target_file_datums": 0}, "--target-file-datums must be at least 1, got 0"),
        ({"target_file_datums": 5}, "--target-file-datums needs --split line or --split json"),
        ({"split": "json", "header": True}, "--header only works with --split line"),
        ({"header": True}, "--header only works with --split line"),
        ({"split": "csv"}, "--split must be one of line, json, got 'csv'"),
        ({"split": "json"}, r"rows.jsonl: line 2 is not valid JSON"),
        ({"path": "../escape"}, "--path '../escape' is not a file path inside the repo"),
        ({"path": "keep.txt/inner"}, "'keep.txt' is a file there, not a directory"),
    ],
)
def test_put_file_bad_input_stores_nothing(store, tmp_path, kwargs, message):
    keep = tmp_path / "keep.txt"
    keep.write_bytes(b"x\n")
    put_file(store, "raw", keep)
    before = store_keys(store)
    rows = tmp_path / "rows.jsonl"
    rows.write_bytes(b'{"a": 1}\nnot json\n')
    with pytest.raises(DatumError, match=message) as info:
        put_file(store, "raw", rows, **kwargs)
    assert info.value.exit_code == 2
    assert store_keys(store) == before


def test_put_file_refuses_a_missing_file_and_a_bad_repo(store, tmp_path):
    with pytest.raises(DatumError, match="nope.tsv does not exist"):
        put_file(store, "raw", tmp_path / "nope.tsv")
    (tmp_path / "ok.tsv").write_bytes(b"a\n")
    with pytest.raises(DatumError, match="invalid repo name 'Bad Repo'"):
        put_file(store, "Bad Repo", tmp_path / "ok.tsv")
    (tmp_path / "head.tsv").write_bytes(b"only a header\n")
    with pytest.raises(SplitError, match="has no lines to split after its header"):
        put_file(store, "raw", tmp_path / "head.tsv", split="line", header=True)
    assert store_keys(store) == set()


# -- glob -----------------------------------------------------------------------------------------------------------
MANIFEST = {
    "captions.tsv/0000000000000000": _entry(b"c0"),
    "captions.tsv/0000000000000001": _entry(b"c1"),
    "images/a/1.png": _entry(b"a1"),
    "images/a/2.png": _entry(b"a2"),
    "images/b/1.png": _entry(b"b1"),
    "labels.tsv": _entry(b"labels"),
    "readme.md": _entry(b"readme"),
}


def test_glob_root_is_one_datum_with_everything():
    assert glob_datums(MANIFEST, "/") == {"/": MANIFEST}
    assert glob_datums({}, "/") == {}


def test_glob_star_gives_one_datum_per_top_level_entry():
    got = glob_datums(MANIFEST, "/*")
    assert list(got) == ["/captions.tsv", "/images", "/labels.tsv", "/readme.md"]
    assert sorted(got["/images"]) == ["images/a/1.png", "images/a/2.png", "images/b/1.png"]
    assert got["/readme.md"] == {"readme.md": MANIFEST["readme.md"]}


def test_glob_patterns():
    assert list(glob_datums(MANIFEST, "/*/*")) == ["/captions.tsv/0000000000000000", "/captions.tsv/0000000000000001",
                                                  "/images/a", "/images/b"]
    assert list(glob_datums(MANIFEST, "/*.tsv")) == ["/captions.tsv", "/labels.tsv"]
    assert glob_datums(MANIFEST, "/captions.tsv/*") == {
        f"/captions.tsv/{i:016d}": {f"captions.tsv/{i:016d}": MANIFEST[f"captions.tsv/{i:016d}"]} for i in range(2)}
    assert list(glob_datums(MANIFEST, "/images/*/?.png")) == ["/images/a/1.png", "/images/a/2.png", "/images/b/1.png"]
    assert list(glob_datums(MANIFEST, "/*/")) == ["/captions.tsv", "/images"]  # a trailing slash: directories only
    assert list(glob_datums(MANIFEST, "/{labels,readme}.*")) == ["/labels.tsv", "/readme.md"]
    assert list(glob_datums(MANIFEST, "/images/[!a]")) == ["/images/b"]
    assert glob_datums(MANIFEST, "/nothing/*") == {}


@pytest.mark.parametrize(("pattern", "message"), [
    ("", "glob pattern is empty"),
    ("/**", "uses '\\*\\*', which is not supported"),
    ("/a//b", "empty path segment"),
    ("/[ab", "unclosed '\\['"),
    ("/{a,b", "unclosed '\\{'"),
    ("/(*", "unclosed '\\('"),
])
def test_bad_globs_are_refused(pattern, message):
    with pytest.raises(GlobError, match=message):
        glob_datums(MANIFEST, pattern)


def test_datum_id_depends_on_content_and_names_not_on_location():
    images = glob_datums(MANIFEST, "/images/*")
    moved = glob_datums({k.replace("images/", "pics/"): v for k, v in MANIFEST.items()}, "/pics/*")
    assert datum_id(images["/images/a"]) == datum_id(moved["/pics/a"])
    assert datum_id(images["/images/a"]) != datum_id(images["/images/b"])
    assert datum_id(images["/images/a"]) == datum_id({"x/y/1.png": _entry(b"a1"), "x/y/2.png": _entry(b"a2")})
    assert datum_id({"a/1.png": _entry(b"a1")}) != datum_id({"a/1.png": _entry(b"changed")})
    assert datum_id({"a/1.png": _entry(b"a1")}) != datum_id({"a/9.png": _entry(b"a1")})
    expected = hashlib.sha256(b'{"1.png":{"sha256":"%s","size":2}}' % _sha(b"a1").encode()).hexdigest()
    assert datum_id({"deep/dir/1.png": _entry(b"a1")}) == expected
    with pytest.raises(DatumError, match="at least one file"):
        datum_id({})


# -- join and cross -------------------------------------------------------------------------------------------------
JOIN_LEFT = {f"{k}.tsv": _entry(k.encode()) for k in ("cat", "dog", "eel")}
JOIN_RIGHT = {"cat/1.png": _entry(b"c1"), "cat/2.png": _entry(b"c2"), "dog/1.png": _entry(b"d1"),
              "fox/1.png": _entry(b"f1"), "stray.tsv": _entry(b"s")}


def test_inner_join_pairs_datums_by_captured_key():
    left, right = glob_datums(JOIN_LEFT, "/*"), glob_datums(JOIN_RIGHT, "/*")
    joined = join(left, "/(*).tsv", right, "/(*)/", mode="inner")
    assert [(d.key, d.left, d.right) for d in joined] == [("cat", "/cat.tsv", "/cat"), ("dog", "/dog.tsv", "/dog")]
    assert joined[0].left_id == datum_id(left["/cat.tsv"]) and joined[0].right_id == datum_id(right["/cat"])
    assert len({d.id for d in joined}) == 2


def test_outer_join_keeps_unmatched_with_none():
    left, right = glob_datums(JOIN_LEFT, "/*"), glob_datums(JOIN_RIGHT, "/*")
    joined = join(left, "/(*).tsv", right, "/(*)/", mode="outer")
    assert [(d.key, d.left, d.right) for d in joined] == [
        ("cat", "/cat.tsv", "/cat"), ("dog", "/dog.tsv", "/dog"), ("eel", "/eel.tsv", None), ("fox", None, "/fox")]
    assert joined[2].right_id is None and joined[3].left_id is None


def test_join_pairs_every_datum_sharing_a_key():
    left = {"/a/x.tsv": {"a/x.tsv": _entry(b"1")}, "/b/x.tsv": {"b/x.tsv": _entry(b"2")}}
    right = {"/x.csv": {"x.csv": _entry(b"3")}}
    joined = join(left, "/*/(*).tsv", right, "/(*).csv", mode="inner")
    assert [(d.key, d.left, d.right) for d in joined] == [("x", "/a/x.tsv", "/x.csv"), ("x", "/b/x.tsv", "/x.csv")]


@pytest.mark.parametrize("pattern", ["/*.tsv", "/(*)-(*).tsv", "/((*)).tsv"])
def test_join_glob_needs_exactly_one_capture_group(pattern):
    with pytest.raises(GlobError, match="must hold exactly one capture group in parentheses"):
        join({}, pattern, {}, "/(*)", mode="inner")


def test_join_mode_is_inner_or_outer():
    with pytest.raises(DatumError, match="join mode must be 'inner' or 'outer', got 'left'"):
        join({}, "/(*)", {}, "/(*)", mode="left")


def test_cross_pairs_everything_sorted():
    assert cross({"/b": {}, "/a": {}}, {"/model": {}, "/old": {}}) == [
        ("/a", "/model"), ("/a", "/old"), ("/b", "/model"), ("/b", "/old")]
    assert cross({"/a": {}}, {}) == []


# -- chunking -------------------------------------------------------------------------------------------------------
def test_chunk_is_balanced_contiguous_and_capped():
    datums = [f"/d/{i:04d}" for i in range(1000)]
    chunks = chunk(datums, 64)
    sizes = [len(c) for c in chunks]
    assert len(chunks) == 64 and max(sizes) - min(sizes) <= 1 and set(sizes) == {15, 16}
    assert [d for c in chunks for d in c] == datums
    assert chunk(datums, 64) == chunks
    assert chunk(datums[:3], 64) == [[d] for d in datums[:3]]
    assert chunk([], 8) == []
    with pytest.raises(DatumError, match="max_tasks must be at least 1, got 0"):
        chunk(datums, 0)


def test_datums_module_does_not_import_airflow():
    code = "import sys, trainyard.datums; print('airflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_concurrent_puts_to_one_repo_keep_every_file(tmp_path):
    """Each put reads the head's manifest and adds a file; the branch moves only if the head is still that one."""
    import threading

    from trainyard.datums import put_file
    from trainyard.store import open_store

    store = open_store(f"file://{tmp_path / 'store'}")
    files = []
    for i in range(6):
        f = tmp_path / f"part{i}.txt"
        f.write_text(f"row {i}\n")
        files.append(f)
    threads = [threading.Thread(target=put_file, args=(store, "rawdata", f)) for f in files]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    head = store.resolve("rawdata")
    assert sorted(head.manifest) == [f"part{i}.txt" for i in range(6)]


def test_work_units_for_a_single_input_a_join_and_a_cross():
    from trainyard.datums import DatumError, DatumInput, work_units

    def entry(sha):
        return {"sha256": sha * 64, "size": 1}

    captions = {"captions.tsv/0000000000000000": entry("a"), "captions.tsv/0000000000000001": entry("b")}
    features = {"0000000000000000/x.npy": entry("c"), "0000000000000001/y.npy": entry("d"),
                "0000000000000002/z.npy": entry("e")}
    raw = DatumInput("captions", captions, "/captions.tsv/*", "/captions.tsv/(*)")
    feats = DatumInput("features", features, "/*", "/(*)/")
    single = work_units([raw])
    assert sorted(single) == ["/captions.tsv/0000000000000000", "/captions.tsv/0000000000000001"]
    inner = work_units([raw, feats], "inner")
    assert sorted(inner) == ["0000000000000000", "0000000000000001"]
    assert sorted(inner["0000000000000001"]["files"]) == ["captions/captions.tsv/0000000000000001",
                                                          "features/0000000000000001/y.npy"]
    outer = work_units([raw, feats], "outer")
    assert sorted(outer["0000000000000002"]["files"]) == ["features/0000000000000002/z.npy"]
    crossed = work_units([raw, feats], "cross")
    assert len(crossed) == 6 and len({u["id"] for u in crossed.values()}) == 6
    changed = DatumInput("features", {**features, "0000000000000001/y.npy": entry("f")}, "/*", "/(*)/")
    again = work_units([raw, changed], "inner")
    assert again["0000000000000000"]["id"] == inner["0000000000000000"]["id"]
    assert again["0000000000000001"]["id"] != inner["0000000000000001"]["id"]  # one side changed: redo that pair
    with pytest.raises(DatumError, match="combine 'cross' takes two inputs"):
        work_units([raw], "cross")
    with pytest.raises(DatumError, match="needs join_on on both inputs"):
        work_units([raw, DatumInput("f", features, "/*")], "inner")
