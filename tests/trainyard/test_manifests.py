"""Data manifests: every line validated first; parallel fetches with retries; one commit, or none if any line fails."""

from __future__ import annotations

import hashlib
import json
import random
import socket
import tempfile
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import serving
from trainyard.manifests import ManifestEntry, ManifestError, fetch, ingest, parse_manifest
from trainyard.store import open_store
from trainyard.urlpolicy import UrlPolicy

LOCAL = UrlPolicy(allow_loopback=True)


class _Handler(BaseHTTPRequestHandler):
    """Serves state["files"]; state["scripts"][path] lists what the 1st, 2nd, ... request gets before plain success."""

    def do_GET(self):
        state = self.server.state
        with state["lock"]:
            state["hits"][self.path] += 1
            hit = state["hits"][self.path]
            state["times"].setdefault(self.path, []).append(time.monotonic())
            state["in_flight"] += 1
            state["max_in_flight"] = max(state["max_in_flight"], state["in_flight"])
        try:
            time.sleep(state["delay"])
            script = state["scripts"].get(self.path, [])
            action = script[hit - 1] if hit <= len(script) else "ok"
            body = state["files"].get(self.path)
            if isinstance(action, int):
                self._send(action, b"try again later\n")
            elif isinstance(action, tuple):  # (status, Retry-After seconds)
                self._send(action[0], b"try again later\n", {"Retry-After": action[1]})
            elif action == "redirect":
                self.send_response(302)
                self.send_header("Location", state["redirects"][self.path])
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif body is None:
                self._send(404, b"not found\n")
            elif action == "short":
                self._send(200, body[: len(body) // 2])
            elif action == "unsized":
                # No Content-Length: the body ends when the connection closes, here halfway through.
                self.send_response(200)
                self.end_headers()
                self.wfile.write(body[: len(body) // 2])
                self.close_connection = True
            elif action == "lie":
                # Announce the whole file, send half, then close: the way a dropped connection looks.
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2])
                self.close_connection = True
            elif action == "hang":
                time.sleep(1.5)
                self._send(200, body)
            else:
                self._send(200, body)
        finally:
            with state["lock"]:
                state["in_flight"] -= 1

    def _send(self, status: int, body: bytes, headers: dict | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # a client that timed out and hung up is expected in these tests


@pytest.fixture
def server(monkeypatch):
    """A real HTTP server on 127.0.0.1 (free port), stopped after the test."""
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.state = {"lock": threading.Lock(), "hits": Counter(), "files": {}, "scripts": {}, "redirects": {},
                   "in_flight": 0, "max_in_flight": 0, "delay": 0.0, "times": {}}
    # A proxy from the environment would sit between urllib and this server; these tests talk to it directly.
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    with serving(httpd) as base:
        httpd.base = base
        yield httpd


@pytest.fixture
def store(tmp_path):
    return open_store(f"file://{tmp_path}/store")


def line(url: str, path: str, data: bytes | None = None, **extra) -> str:
    obj = {"url": url, "path": path}
    if data is not None:
        obj.update(sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    return json.dumps(obj | extra)


def serve(server, name: str, data: bytes) -> str:
    server.state["files"][f"/{name}"] = data
    return f"{server.base}/{name}"


# -- ingest ---------------------------------------------------------------------------------------------------------
def test_fifty_files_ingest_in_parallel_into_one_commit(server, store, tmp_path):
    rng = random.Random(7)
    sizes = [0, 1, 3 * (1 << 20) + 17] + [rng.randrange(1, 200_000) for _ in range(47)]
    expected = {}
    lines = ["# kaos data manifest", ""]
    for i, size in enumerate(sizes):
        data = rng.randbytes(size)
        path = f"images/{i % 5}/img-{i:03d}.bin"
        expected[path] = data
        # Most lines pin sha256 and size; a few leave them out, which the format allows.
        lines.append(line(serve(server, f"f{i}.bin", data), path, data if i % 10 else None))
    server.state["delay"] = 0.05
    entries = parse_manifest("\n".join(lines), source="data.mf", policy=LOCAL)
    assert [e.line for e in entries] == list(range(3, 53))

    commit, stats = ingest(entries, store, "rawdata", LOCAL, concurrency=8, message="from data.mf")

    assert commit.manifest == {p: {"sha256": hashlib.sha256(d).hexdigest(), "size": len(d)} for p, d in expected.items()}
    assert store.branch_head("rawdata") == commit.id and commit.message == "from data.mf"
    out = tmp_path / "out"
    store.materialize(commit.manifest, out)
    assert {p: (out / p).read_bytes() for p in expected} == expected
    assert stats["files"] == 50 and stats["bytes"] == sum(sizes) and stats["retries"] == 0 and stats["created"]
    assert set(server.state["hits"].values()) == {1}
    assert server.state["max_in_flight"] > 1

    # The same manifest again is the same commit: nothing new, nothing moved.
    again, stats = ingest(entries, store, "rawdata", LOCAL)
    assert again.id == commit.id and not stats["created"] and stats["blobs_uploaded"] == 0
    assert [c.id for c in store.log("rawdata")] == [commit.id]


def test_a_url_that_fails_twice_with_503_is_retried_and_ingested(server, store):
    flaky, steady = b"flaky bytes\n" * 100, b"steady\n"
    server.state["scripts"]["/flaky.csv"] = [503, 503]
    text = "\n".join([line(serve(server, "flaky.csv", flaky), "data/flaky.csv", flaky),
                      line(serve(server, "steady.csv", steady), "data/steady.csv", steady)])
    commit, stats = ingest(parse_manifest(text, policy=LOCAL), store, "rawdata", LOCAL, backoff=0.01)
    assert server.state["hits"]["/flaky.csv"] == 3 and server.state["hits"]["/steady.csv"] == 1
    assert stats["retries"] == 2
    assert store.read_entry(commit.manifest["data/flaky.csv"]) == flaky


def test_retries_back_off_exponentially_and_honour_retry_after(server, tmp_path):
    data = b"eventually\n"
    server.state["scripts"]["/backoff.csv"] = [503, 503]
    server.state["scripts"]["/later.csv"] = [(503, "1")]
    assert fetch(ManifestEntry(1, serve(server, "backoff.csv", data), "a.csv"), tmp_path / "a", LOCAL,
                 backoff=0.2) == len(data)
    first, second, third = server.state["times"]["/backoff.csv"]
    assert second - first >= 0.2 and third - second >= 0.4  # backoff, then twice that
    assert fetch(ManifestEntry(2, serve(server, "later.csv", data), "b.csv"), tmp_path / "b", LOCAL,
                 backoff=0.01) == len(data)
    early, late = server.state["times"]["/later.csv"]
    assert late - early >= 1.0  # the server's Retry-After, not the 0.01 s backoff


def test_429_is_retried_but_other_4xx_fail_at_once(server, store):
    data = b"rate limited\n"
    server.state["scripts"]["/limited.csv"] = [429]
    text = "\n".join([line(serve(server, "limited.csv", data), "a.csv", data),
                      line(f"{server.base}/missing.csv", "b.csv")])
    with pytest.raises(ManifestError, match=r"manifest: 1 of 2 entries failed.*line 2 \(.*/missing.csv\): HTTP 404"):
        ingest(parse_manifest(text, policy=LOCAL), store, "rawdata", LOCAL, backoff=0.01)
    assert server.state["hits"]["/limited.csv"] == 2
    assert server.state["hits"]["/missing.csv"] == 1
    assert store.branch_head("rawdata") is None


def test_truncated_bodies_fail_the_ingest_naming_their_lines_and_commit_nothing(server, store):
    good = b"good data\n" * 50
    first, _ = ingest(parse_manifest(line(serve(server, "good.csv", good), "good.csv", good), policy=LOCAL),
                      store, "rawdata", LOCAL)
    short, lied = b"S" * 4096, b"L" * 8192
    server.state["scripts"]["/short.csv"] = ["unsized"] * 5
    server.state["scripts"]["/lie.csv"] = ["lie"] * 5
    text = "\n".join([line(serve(server, "good.csv", good), "good.csv", good),
                      "# the next two are cut off by the server",
                      line(serve(server, "short.csv", short), "short.csv", short),
                      line(serve(server, "lie.csv", lied), "lie.csv", lied),
                      line(serve(server, "other.csv", b"other\n"), "other.csv", b"other\n")])
    entries = parse_manifest(text, source="data.mf", policy=LOCAL)

    with pytest.raises(ManifestError) as info:
        ingest(entries, store, "rawdata", LOCAL, attempts=2, backoff=0.01, source="data.mf")

    message = str(info.value)
    assert message.startswith("data.mf: 2 of 4 entries failed, so nothing was committed")
    assert "line 3 (" in message and "size mismatch: expected 4,096 bytes, got 2,048 (after 2 attempts)" in message
    assert "line 4 (" in message and "closed after 4,096 of 8,192 bytes" in message
    assert [entry.line for entry, _ in info.value.failures] == [3, 4]
    assert info.value.exit_code == 2
    assert server.state["hits"]["/short.csv"] == 2 and server.state["hits"]["/lie.csv"] == 2
    assert store.branch_head("rawdata") == first.id
    assert [c.id for c in store.log("rawdata")] == [first.id]
    # And a repo that never had a commit still has none.
    with pytest.raises(ManifestError):
        ingest(entries, store, "fresh", LOCAL, attempts=1)
    assert store.branch_head("fresh") is None and "fresh" not in store.repos()


def test_a_wrong_checksum_names_expected_and_got(server, store):
    data, claimed = b"actual bytes", b"claimed byte"
    text = line(serve(server, "x.bin", data), "x.bin", claimed)
    with pytest.raises(ManifestError, match="line 1 .*sha256 mismatch: expected "
                                            f"{hashlib.sha256(claimed).hexdigest()}, got {hashlib.sha256(data).hexdigest()}"):
        ingest(parse_manifest(text, policy=LOCAL), store, "rawdata", LOCAL, attempts=1)


def test_a_redirect_to_the_metadata_endpoint_fails_that_line_at_once(server, store):
    server.state["scripts"]["/go"] = ["redirect"] * 5
    server.state["redirects"]["/go"] = "http://169.254.169.254/latest/meta-data/"
    with pytest.raises(ManifestError, match="line 1 .*169.254.169.254, a cloud metadata endpoint"):
        ingest(parse_manifest(line(f"{server.base}/go", "x"), policy=LOCAL), store, "rawdata", LOCAL)
    assert server.state["hits"]["/go"] == 1


def test_a_host_that_turns_to_loopback_after_its_lookups_is_refused_on_every_line(server, store, monkeypatch):
    # The downloads of one ingest share one DNS lookup per host; the address each connection really reaches is
    # still checked. Here data.test answers with a public address twice (the parse, then ingest's re-check), and
    # with 127.0.0.1 (where the test server listens) from then on, as a rebinding DNS server would.
    real, answers = socket.getaddrinfo, iter(["93.184.216.34", "93.184.216.34"])

    def lookup(host, port, *args, **kwargs):
        if host != "data.test":
            return real(host, port, *args, **kwargs)
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (next(answers, "127.0.0.1"), port))]

    monkeypatch.setattr(socket, "getaddrinfo", lookup)
    base = server.base.replace("127.0.0.1", "data.test")
    text = "\n".join(line(f"{base}/f{i}.bin", f"f{i}.bin") for i in range(4))
    for i in range(4):
        serve(server, f"f{i}.bin", b"data\n")
    entries = parse_manifest(text, source="data.mf", policy=UrlPolicy())

    with pytest.raises(ManifestError) as info:
        ingest(entries, store, "rawdata", UrlPolicy(), source="data.mf")

    assert str(info.value).startswith("data.mf: 4 of 4 entries failed, so nothing was committed")
    assert [e.line for e, _ in info.value.failures] == [1, 2, 3, 4]
    assert all("host 'data.test' resolves to 127.0.0.1, a loopback address" in why for _, why in info.value.failures)
    assert sum(server.state["hits"].values()) == 0  # no request was sent
    assert store.branch_head("rawdata") is None


def test_an_ingest_leaves_no_download_behind(server, store, tmp_path, monkeypatch):
    # Downloads are written in place in the ingest's own temp dir (no temp name and rename per file): a failed
    # attempt and the whole dir are still removed, after a commit and after a failure alike.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    data = b"kept\n" * 1000
    server.state["scripts"]["/flaky.bin"] = ["lie"]
    good = "\n".join([line(serve(server, "a.bin", data), "a.bin", data),
                      line(serve(server, "flaky.bin", data), "flaky.bin", data)])
    commit, stats = ingest(parse_manifest(good, policy=LOCAL), store, "rawdata", LOCAL, backoff=0.01)
    assert store.read_entry(commit.manifest["flaky.bin"]) == data and stats["retries"] == 1
    assert list((tmp_path / "tmp").iterdir()) == []

    bad = good + "\n" + line(f"{server.base}/missing.bin", "missing.bin")
    with pytest.raises(ManifestError, match="line 3 .*HTTP 404"):
        ingest(parse_manifest(bad, policy=LOCAL), store, "rawdata", LOCAL, backoff=0.01)
    assert list((tmp_path / "tmp").iterdir()) == []


# -- fetch ----------------------------------------------------------------------------------------------------------
def test_fetch_streams_to_dest_and_reports_progress(server, tmp_path):
    data = random.Random(1).randbytes(2 * (1 << 20) + 5)
    entry = ManifestEntry(line=1, url=serve(server, "big.bin", data), path="big.bin",
                          sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    seen = []
    dest = tmp_path / "dl" / "big.bin"
    assert fetch(entry, dest, LOCAL, progress=seen.append) == len(data)
    assert dest.read_bytes() == data and sum(seen) == len(data) and len(seen) >= 3
    assert sorted(p.name for p in dest.parent.iterdir()) == ["big.bin"]


def test_a_body_shorter_than_declared_is_refused_before_reading_it(server, tmp_path):
    data = b"x" * 4096
    server.state["scripts"]["/half.bin"] = ["short"] * 5
    entry = ManifestEntry(line=9, url=serve(server, "half.bin", data), path="half.bin", size=len(data))
    with pytest.raises(ManifestError, match="line 9 .*size mismatch: expected 4,096 bytes, the server announces "
                                            "2,048 \\(after 3 attempts\\)"):
        fetch(entry, tmp_path / "half.bin", LOCAL, backoff=0.01)
    assert server.state["hits"]["/half.bin"] == 3


def test_a_timeout_is_retried(server, tmp_path):
    data = b"slow\n"
    server.state["scripts"]["/slow.txt"] = ["hang"]
    entry = ManifestEntry(line=7, url=serve(server, "slow.txt", data), path="slow.txt")
    assert fetch(entry, tmp_path / "slow.txt", LOCAL, timeout=0.3, backoff=0.01) == len(data)
    assert server.state["hits"]["/slow.txt"] == 2


def test_a_failed_fetch_leaves_no_file_behind(server, tmp_path):
    entry = ManifestEntry(line=2, url=f"{server.base}/nope", path="nope")
    with pytest.raises(ManifestError, match="line 2 .*HTTP 404"):
        fetch(entry, tmp_path / "nope", LOCAL)
    assert list(tmp_path.iterdir()) == []


def test_fetch_rechecks_the_policy(tmp_path):
    entry = ManifestEntry(line=4, url="http://127.0.0.1:9/x", path="x")
    with pytest.raises(ManifestError, match="line 4 .*loopback address.*url_allow_loopback"):
        fetch(entry, tmp_path / "x", UrlPolicy())


# -- other sources --------------------------------------------------------------------------------------------------
def test_s3_entries_are_read_with_the_s3_client(s3_bucket, store):
    import boto3

    data = b"id,label\n1,cat\n" * 1000
    boto3.client("s3").put_object(Bucket=s3_bucket, Key="datasets/train.csv", Body=data)
    text = "\n".join([line(f"s3://{s3_bucket}/datasets/train.csv", "train.csv", data),
                      line(f"s3://{s3_bucket}/datasets/missing.csv", "missing.csv")])
    with pytest.raises(ManifestError, match=r"line 2 \(s3://.*/missing.csv\): S3 NoSuchKey"):
        ingest(parse_manifest(text, policy=UrlPolicy()), store, "s3data", UrlPolicy(), backoff=0.01)
    assert store.branch_head("s3data") is None

    entries = parse_manifest(text.splitlines()[0], policy=UrlPolicy())
    commit, stats = ingest(entries, store, "s3data", UrlPolicy(), s3_client=boto3.client("s3"))
    assert store.read_entry(commit.manifest["train.csv"]) == data and stats["bytes"] == len(data)


def test_file_urls_are_read_only_when_allowed(tmp_path, store):
    src = tmp_path / "local.csv"
    src.write_bytes(b"a,b\n1,2\n")
    text = line(f"file://{src}", "local.csv", src.read_bytes())
    with pytest.raises(ManifestError, match="data.mf:1: .*url_allow_file"):
        parse_manifest(text, source="data.mf", policy=UrlPolicy())
    policy = UrlPolicy(allow_file=True)
    commit, _ = ingest(parse_manifest(text, policy=policy), store, "localdata", policy)
    assert store.read_entry(commit.manifest["local.csv"]) == b"a,b\n1,2\n"


# -- validation -----------------------------------------------------------------------------------------------------
GOOD = '{"url": "s3://bucket/a.csv", "path": "a.csv"}'


@pytest.mark.parametrize(("bad", "why"), [
    ('{"url": "s3://bucket/b.csv", "path": "b.csv"', "not valid JSON"),
    ('["s3://bucket/b.csv", "b.csv"]', "expected a JSON object, got list"),
    ('{"url": "s3://bucket/b.csv"}', "'path' must be a non-empty string"),
    ('{"url": "s3://bucket/b.csv", "path": "b.csv", "md5": "x"}', "unknown key\\(s\\) 'md5'"),
    ('{"url": "s3://bucket/b.csv", "path": "b.csv", "sha256": "abc"}', "'sha256' must be 64 hex"),
    ('{"url": "s3://bucket/b.csv", "path": "b.csv", "size": -1}', "'size' must be a whole number"),
    ('{"url": "s3://bucket/b.csv", "path": "b.csv", "size": true}', "'size' must be a whole number"),
    ('{"url": "s3://bucket/b.csv", "path": "../b.csv"}', "contains '..'"),
    ('{"url": "s3://bucket/b.csv", "path": "x/../../b.csv"}', "contains '..'"),
    ('{"url": "s3://bucket/b.csv", "path": "/etc/b.csv"}', "is absolute"),
    ('{"url": "s3://bucket/b.csv", "path": "dir\\\\b.csv"}', "backslash"),
    ('{"url": "s3://bucket/b.csv", "path": "dir//b.csv"}', "not normalised; write it as 'dir/b.csv'"),
    ('{"url": "s3://bucket/b.csv", "path": "./b.csv"}', "not normalised; write it as 'b.csv'"),
    ('{"url": "s3://bucket/b.csv", "path": "a.csv"}', "path 'a.csv' is already used on line 1"),
    ('{"url": "s3://bucket/b.csv", "path": "a.csv/b.csv"}', "puts a file under 'a.csv', which line 1 uses"),
    ('{"url": "ftp://example.com/b.csv", "path": "b.csv"}', "scheme 'ftp'"),
    ('{"url": "http://127.0.0.1:8000/b.csv", "path": "b.csv"}', "loopback address.*url_allow_loopback"),
    ('{"url": "http://169.254.169.254/latest/meta-data", "path": "b.csv"}', "cloud metadata endpoint"),
    ('{"url": "http://10.0.0.1/b.csv", "path": "b.csv"}', "private address.*url_allow_private"),
    ('{"url": "https://u:p@example.com/b.csv", "path": "b.csv"}', "carries credentials"),
])
def test_a_bad_line_is_refused_naming_the_file_and_line(bad, why):
    text = f"{GOOD}\n# comment\n\n{bad}\n"
    with pytest.raises(ManifestError, match=f"^data.mf:4: .*{why}") as info:
        parse_manifest(text, source="data.mf", policy=UrlPolicy())
    assert "\n" not in str(info.value) and info.value.exit_code == 2


def test_an_empty_manifest_is_refused():
    with pytest.raises(ManifestError, match="data.mf has no entries"):
        parse_manifest("# only comments\n\n", source="data.mf", policy=UrlPolicy())


def test_nothing_is_downloaded_when_a_later_line_is_bad(server):
    text = "\n".join([line(serve(server, "a.csv", b"a"), "a.csv"), line(f"{server.base}/b.csv", "../b.csv")])
    with pytest.raises(ManifestError, match="manifest:2: path '../b.csv'"):
        parse_manifest(text, policy=LOCAL)
    assert server.state["hits"] == Counter()


def test_entries_keep_their_fields(tmp_path):
    sha = "AB" * 32
    (entry,) = parse_manifest(json.dumps({"url": "s3://b/k", "path": "d/k", "sha256": sha, "size": 3}),
                              policy=UrlPolicy())
    assert entry == ManifestEntry(line=1, url="s3://b/k", path="d/k", sha256=sha.lower(), size=3)
    assert isinstance(Path(entry.path), Path)


def test_lines_split_on_newlines_only():
    # U+2028 is legal inside a JSON string; it must not cut the line in two.
    text = "\ufeff" + json.dumps({"url": "s3://b/k", "path": "caption\u2028.txt"}, ensure_ascii=False) + "\r\n"
    (entry,) = parse_manifest(text, policy=UrlPolicy())
    assert entry.path == "caption\u2028.txt"
