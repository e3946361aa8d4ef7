"""`trainyard data put`: a file whole or split into datums; bad input is one error line, exit 2, nothing stored."""

from __future__ import annotations

import json

import pytest

from tests.conftest import store_keys
from trainyard.cli import main
from trainyard.store import open_store


@pytest.fixture
def captions(tmp_path):
    path = tmp_path / "captions.tsv"
    path.write_bytes(b"url\tcaption\n" + b"".join(b"http://x/%d.png\tcat %d\n" % (i, i) for i in range(10)))
    return path


@pytest.fixture
def uri(tmp_path):
    return f"file://{tmp_path / 'store'}"


def test_data_put_splits_and_prints_ref_and_datums(uri, captions, capsys):
    assert main(["--store", uri, "data", "put", "rawdata", str(captions), "--split", "line",
                 "--target-file-datums", "4", "--header", "--message", "captions"]) == 0
    commit = open_store(uri).resolve("rawdata")
    assert capsys.readouterr().out == f"rawdata:{commit.id[:5]}  3 datum(s)\n"
    assert commit.message == "captions"
    assert sorted(commit.manifest) == [f"captions.tsv/{i:016d}" for i in range(3)]
    last = open_store(uri).read_entry(commit.manifest["captions.tsv/0000000000000002"])
    assert last == b"url\tcaption\nhttp://x/8.png\tcat 8\nhttp://x/9.png\tcat 9\n"


def test_data_put_json_output_and_whole_file(uri, captions, capsys):
    assert main(["--store", uri, "data", "put", "rawdata", str(captions), "--path", "/in/c.tsv", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    commit = open_store(uri).resolve("rawdata")
    assert out == {"repo": "rawdata", "commit": commit.id, "ref": f"rawdata:{commit.id[:5]}", "datums": 1, "files": 1}
    assert open_store(uri).read_entry(commit.manifest["in/c.tsv"]) == captions.read_bytes()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--split", "line", "--target-file-datums", "0"], "error: --target-file-datums must be at least 1, got 0"),
        (["--header"], "error: --header only works with --split line"),
        (["--split", "json", "--header"], "error: --header only works with --split line"),
        (["--target-file-datums", "3"], "error: --target-file-datums needs --split line or --split json"),
        (["--split", "json"], "error: .*captions.tsv: line 1 is not valid JSON"),
        (["--split", "words"], "error: --split must be one of line, json, got 'words'"),
        (["--missing"], "error: .*nope.tsv does not exist"),
    ],
    ids=["zero-datums", "header-without-split", "header-with-json", "target-without-split", "bad-json",
         "unknown-split", "missing-file"],
)
def test_data_put_bad_input_is_one_line_exit_2_and_stores_nothing(uri, captions, capsys, extra, message):
    assert main(["--store", uri, "data", "put", "rawdata", str(captions)]) == 0
    store = open_store(uri)
    before = store_keys(store)
    capsys.readouterr()
    file = str(captions.with_name("nope.tsv")) if extra == ["--missing"] else str(captions)
    args = [a for a in extra if a != "--missing"]
    assert main(["--store", uri, "data", "put", "rawdata", file, *args]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1, err
    assert pytest.importorskip("re").match(message, err[0]), err[0]
    assert captured.out == ""
    assert store_keys(store) == before


def _written(path):
    path.write_text("a\n")
    return path


@pytest.mark.parametrize(
    ("make", "extra", "message"),
    [
        (lambda d: _written(d / "bad\nname.tsv"), [],
         r"error: file 'bad\\nname.tsv' has a control character '\\n' in its name; rename it"),
        (lambda d: d / "captions.tsv", ["--path", "in/x\x1b.tsv"],
         r"error: file 'in/x\\x1b.tsv' has a control character '\\x1b' in its name"),
        (lambda d: (d / "passwd.tsv").symlink_to("/etc/passwd") or d / "passwd.tsv", [],
         r"error: symlink passwd.tsv -> /etc/passwd points outside its folder .*; copy the file into it or remove "
         r"the link"),
    ],
    ids=["newline-in-name", "escape-in-path", "symlink-to-etc-passwd"],
)
def test_data_put_refuses_what_deploy_refuses(uri, captions, capsys, make, extra, message):
    """Names with control characters and links out of the folder: the same rules as a bundle's files."""
    assert main(["--store", uri, "data", "put", "rawdata", str(captions)]) == 0
    store = open_store(uri)
    before = store_keys(store)
    capsys.readouterr()
    assert main(["--store", uri, "data", "put", "rawdata", str(make(captions.parent)), *extra, "--no-run"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1, err
    assert pytest.importorskip("re").match(message, err[0]), err[0]
    assert store_keys(store) == before


def test_data_put_keeps_a_link_to_a_file_beside_it(uri, captions, capsys):
    (captions.parent / "current.tsv").symlink_to(captions.name)
    assert main(["--store", uri, "data", "put", "rawdata", str(captions.parent / "current.tsv"), "--no-run"]) == 0
    assert list(open_store(uri).resolve("rawdata").manifest) == ["current.tsv"]
