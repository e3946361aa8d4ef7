"""Infrastructure faults injected for real (a killed or stopped S3 endpoint, a missing bucket, refused credentials, a
full or read-only disk, a missing store path): each is one line on stderr with its own exit code, in bounded time."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import REPO
from trainyard.store import StoreTimeouts, open_store

TRAINYARD = [sys.executable, "-m", "trainyard.cli"]
MNIST = REPO / "templates" / "mnist"
# A TCP forwarder that stands for "the endpoint": killing it is an endpoint that is down, while the S3 state behind
# it (an in-memory moto server) survives, so the store can be checked and used again once it is back.
FORWARDER = """
import asyncio, sys
async def pipe(r, w):
    try:
        while data := await r.read(65536):
            w.write(data); await w.drain()
    except Exception:
        pass
    finally:
        w.close()
async def serve(cr, cw):
    try:
        ur, uw = await asyncio.open_connection("127.0.0.1", int(sys.argv[2]))
    except OSError:
        cw.close(); return
    await asyncio.gather(pipe(cr, uw), pipe(ur, cw))
async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", int(sys.argv[1]))
    print("ready", flush=True)
    await server.serve_forever()
asyncio.run(main())
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"process {proc.args} exited with {proc.returncode}"
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


def stop(proc: subprocess.Popen | None) -> None:
    """End a process this test started, stopped (SIGSTOP) or not."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGCONT)
    proc.kill()
    proc.wait(timeout=10)


@dataclass
class Endpoint:
    """A moto server process of this test's own (to SIGSTOP) behind a forwarder process (to SIGKILL)."""

    moto: subprocess.Popen
    moto_port: int
    port: int
    forwarder: subprocess.Popen | None = None
    env: dict = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start_forwarder(self) -> None:
        self.forwarder = subprocess.Popen([sys.executable, "-c", FORWARDER, str(self.port), str(self.moto_port)],
                                          stdout=subprocess.DEVNULL)
        wait_for_port(self.port, self.forwarder)

    def kill_forwarder(self) -> None:
        self.forwarder.send_signal(signal.SIGKILL)
        self.forwarder.wait(timeout=10)

    def auth(self, count: str) -> None:
        """moto's IAM auth: "0" refuses every unknown access key from now on, "inf" accepts any again."""
        import urllib.request

        request = urllib.request.Request(f"http://127.0.0.1:{self.moto_port}/moto-api/reset-auth",
                                         data=count.encode(), method="POST",
                                         headers={"Content-Type": "text/plain"})  # form-encoded reads as empty
        urllib.request.urlopen(request, timeout=10).read()

    def store(self, bucket: str):
        """The store as the test sees it, straight to moto (no fault in between), with short timeouts."""
        return open_store(f"s3://{bucket}/p", client_kwargs={"endpoint_url": f"http://127.0.0.1:{self.moto_port}"},
                          timeouts=StoreTimeouts(2, 5, 1))

    def bucket(self) -> str:
        import boto3

        name = f"faults-{uuid.uuid4().hex[:10]}"
        boto3.client("s3", endpoint_url=f"http://127.0.0.1:{self.moto_port}").create_bucket(Bucket=name)
        return name


@pytest.fixture
def endpoint(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "faults-key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "faults-secret-key")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("TRAINYARD_DEBUG", raising=False)
    moto_port = free_port()
    moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(moto_port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ep = Endpoint(moto, moto_port, free_port())
    try:
        wait_for_port(moto_port, moto)
        ep.start_forwarder()
        monkeypatch.setenv("AWS_ENDPOINT_URL", ep.url)
        yield ep
    finally:  # SIGCONT before the kill: a stopped process must not outlive the test
        stop(ep.forwarder)
        stop(moto)


@dataclass
class Result:
    code: int
    out: str
    err: list[str]
    seconds: float


def trainyard(*args: str, timeout: float = 240, env: dict | None = None) -> Result:
    """The real CLI in its own process, as a user runs it."""
    started = time.monotonic()
    proc = subprocess.run([*TRAINYARD, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env={**os.environ, **(env or {})})
    return Result(proc.returncode, proc.stdout, proc.stderr.splitlines(), time.monotonic() - started)


def one_error(result: Result, code: int, *names: str) -> str:
    """Exactly one line on stderr, `error: ...`, naming what failed, and the exit code of its kind."""
    assert result.code == code, (result.code, result.err[-5:])
    assert len(result.err) == 1, f"{len(result.err)} stderr lines: {result.err[:8]}"
    line = result.err[0]
    assert line.startswith("error: ") and "Traceback" not in line and "unexpected" not in line, line
    for name in names:
        assert name in line, (name, line)
    return line


def ok(result: Result) -> Result:
    assert result.code == 0, (result.code, result.err[-5:])
    return result


def files(tmp_path: Path, **contents: bytes | int) -> dict[str, Path]:
    """Input files named <key>.txt: the bytes given, or that many random bytes."""
    made = {}
    for name, body in contents.items():
        path = tmp_path / "input" / f"{name}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body if isinstance(body, bytes) else os.urandom(body))
        made[name] = path
    return made


# -- S3 ------------------------------------------------------------------------------------------------------------
def test_endpoint_killed_is_exit_5_at_once_and_the_store_is_whole_when_it_is_back(endpoint, scenario, tmp_path):
    bucket = endpoint.bucket()
    uri = f"s3://{bucket}/p"
    given = files(tmp_path, a=b"a\n", b=b"b\n")
    ok(trainyard("--store", uri, "data", "put", "x", str(given["a"])))
    scenario.watch(endpoint.store(bucket))
    endpoint.kill_forwarder()
    for args in (("data", "put", "x", str(given["b"])), ("data", "log", "x"), ("list",), ("models",)):
        result = trainyard("--store", uri, *args)
        one_error(result, 5, uri, endpoint.url, "cannot be reached")
        assert result.seconds < 20, result.seconds  # refused connections are not waited on
    endpoint.start_forwarder()
    ok(trainyard("--store", uri, "data", "put", "x", str(given["b"])))
    assert "b.txt" in ok(trainyard("--store", uri, "data", "inspect", "x")).out
    scenario.check(endpoint.store(bucket))


SHORT = {"TRAINYARD_STORE_CONNECT_TIMEOUT": "1", "TRAINYARD_STORE_READ_TIMEOUT": "2", "TRAINYARD_STORE_RETRIES": "1"}


@pytest.mark.parametrize("timeouts", ["short", "defaults"])
def test_endpoint_stalled_is_exit_5_within_the_timeouts_then_works_once_it_answers(endpoint, scenario, tmp_path,
                                                                                  timeouts):
    bucket = endpoint.bucket()
    uri = f"s3://{bucket}/p"
    given = files(tmp_path, a=b"a\n", b=b"b\n")
    ok(trainyard("--store", uri, "data", "put", "x", str(given["a"])))
    scenario.watch(endpoint.store(bucket))
    env = SHORT if timeouts == "short" else {}
    bound = (StoreTimeouts(1, 2, 1) if env else StoreTimeouts()).bound
    endpoint.moto.send_signal(signal.SIGSTOP)
    try:
        result = trainyard("--store", uri, "data", "log", "x", env=env, timeout=bound + 60)
    finally:
        endpoint.moto.send_signal(signal.SIGCONT)
    one_error(result, 5, uri, "stopped answering", "store_read_timeout")
    print(f"stalled endpoint ({timeouts}: bound {bound:.0f} s): exit 5 after {result.seconds:.1f} s, "
          f"{len(result.err)} stderr line(s)")
    # the bound is per request; the process start (Python, imports) comes on top of it
    assert result.seconds <= bound + 10, (result.seconds, bound)
    if timeouts == "defaults":
        assert bound <= 60 and result.seconds <= 60
    ok(trainyard("--store", uri, "data", "put", "x", str(given["b"]), env=env))
    scenario.check(endpoint.store(bucket))


def test_bucket_missing_is_exit_3_naming_the_bucket_and_nothing_is_created(endpoint, scenario, tmp_path):
    import boto3

    bucket = endpoint.bucket()
    given = files(tmp_path, a=b"a\n")
    ok(trainyard("--store", f"s3://{bucket}/p", "data", "put", "x", str(given["a"])))
    scenario.watch(endpoint.store(bucket))
    missing = f"faults-missing-{uuid.uuid4().hex[:8]}"
    for args in (("data", "put", "x", str(given["a"])), ("data", "log", "x"), ("list",), ("models",)):
        one_error(trainyard("--store", f"s3://{missing}/p", *args), 3, repr(missing), "does not exist")
    client = boto3.client("s3", endpoint_url=endpoint.url)
    assert missing not in [b["Name"] for b in client.list_buckets()["Buckets"]]
    client.create_bucket(Bucket=missing)  # the fault removed: the bucket exists now
    ok(trainyard("--store", f"s3://{missing}/p", "data", "put", "x", str(given["a"])))
    scenario.check(endpoint.store(bucket))


def test_credentials_refused_is_exit_4_then_works_with_auth_accepted(endpoint, scenario, tmp_path):
    bucket = endpoint.bucket()
    uri = f"s3://{bucket}/p"
    given = files(tmp_path, a=b"a\n", b=b"b\n")
    ok(trainyard("--store", uri, "data", "put", "x", str(given["a"])))
    scenario.watch(endpoint.store(bucket))
    endpoint.auth("0")  # moto checks every access key from now on; ours is unknown to its IAM
    try:
        for args in (("data", "put", "x", str(given["b"])), ("data", "log", "x")):
            one_error(trainyard("--store", uri, *args), 4, uri, "refused the credentials", "InvalidAccessKeyId")
    finally:
        endpoint.auth("inf")
    ok(trainyard("--store", uri, "data", "put", "x", str(given["b"])))
    scenario.check(endpoint.store(bucket))


def test_no_credentials_at_all_is_exit_4(endpoint, tmp_path):
    bucket = endpoint.bucket()
    env = {k: "" for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    env.update(AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"), AWS_CONFIG_FILE=str(tmp_path / "none"),
               AWS_EC2_METADATA_DISABLED="true")
    one_error(trainyard("--store", f"s3://{bucket}/p", "data", "log", "x", env=env), 4, "AWS_ACCESS_KEY_ID")


# -- file:// -------------------------------------------------------------------------------------------------------
@pytest.fixture
def mounts():
    """Mount points this test made, unmounted at the end; skips when this process may not mount."""
    made: list[Path] = []

    def mount(*args: str, target: Path) -> Path:
        target.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(["mount", *args, str(target)], capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount here ({proc.stderr.strip() or proc.returncode}): needs root or CAP_SYS_ADMIN")
        made.append(target)
        return target
    yield mount
    for target in reversed(made):
        subprocess.run(["umount", "-l", str(target)], check=False)


def temp_files(root: Path) -> list[str]:
    return sorted(str(p) for p in root.rglob(".tmp-*"))


def test_disk_full_is_exit_6_loses_nothing_leaves_no_temp_file_and_works_once_freed(mounts, scenario, tmp_path):
    disk = mounts("-t", "tmpfs", "-o", "size=1m", "tmpfs", target=tmp_path / "disk")
    uri = f"file://{disk / 'store'}"
    given = files(tmp_path, small=b"kept\n", big=3 << 20, medium=400 << 10)
    ok(trainyard("--store", uri, "data", "put", "x", str(given["small"])))
    store = open_store(uri)
    scenario.watch(store)
    result = trainyard("--store", uri, "data", "put", "x", str(given["big"]))  # bigger than the whole disk
    one_error(result, 6, str(disk / "store"), "no space left")
    assert temp_files(disk) == []
    filler = disk / "filler"
    with open(filler, "wb") as out:  # fill what is left, so the next put finds the disk full from the start
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        except OSError:
            pass
    one_error(trainyard("--store", uri, "data", "put", "x", str(given["medium"])), 6, "no space left")
    assert temp_files(disk) == []
    assert "small.txt" in ok(trainyard("--store", uri, "data", "inspect", "x")).out
    filler.unlink()  # the fault removed: space freed
    ok(trainyard("--store", uri, "data", "put", "x", str(given["medium"])))
    assert temp_files(disk) == []
    scenario.check(store)


def test_read_only_store_is_exit_6_reads_still_work_and_writes_work_once_writable(mounts, scenario, tmp_path):
    real = tmp_path / "store"
    given = files(tmp_path, a=b"a\n", b=b"b\n")
    ok(trainyard("--store", f"file://{real}", "data", "put", "x", str(given["a"])))
    scenario.watch(open_store(f"file://{real}"))
    readonly = mounts("--bind", str(real), target=tmp_path / "ro")
    subprocess.run(["mount", "-o", "remount,bind,ro", str(readonly)], check=True)
    uri = f"file://{readonly}"
    one_error(trainyard("--store", uri, "data", "put", "x", str(given["b"])), 6, str(readonly), "read-only")
    assert ok(trainyard("--store", uri, "data", "log", "x")).out  # reading a read-only store is fine
    ok(trainyard("--store", f"file://{real}", "data", "put", "x", str(given["b"])))  # writable again
    scenario.check(open_store(f"file://{real}"))


def test_store_path_missing_is_exit_3_naming_the_path_not_no_commits(scenario, tmp_path):
    typo = tmp_path / "stroe"
    given = files(tmp_path, a=b"a\n")
    for args in (("data", "log", "x"), ("data", "inspect", "x")):
        line = one_error(trainyard("--store", f"file://{typo}", *args), 3, str(typo), "does not exist")
        assert "no commits" not in line
    assert not typo.exists()  # reading never creates the store
    scenario.watch(open_store(f"file://{tmp_path / 'store'}"))
    # a first write creates the store: `data put` to a new path works
    ok(trainyard("--store", f"file://{tmp_path / 'store'}", "data", "put", "x", str(given["a"])))
    ok(trainyard("--store", f"file://{tmp_path / 'store'}", "data", "log", "x"))
    scenario.check(open_store(f"file://{tmp_path / 'store'}"))


# -- deploy --local -------------------------------------------------------------------------------------------------
@pytest.fixture
def bundles(tmp_path):
    shutil.copytree(MNIST / "model-train", tmp_path / "model-train")
    shutil.copytree(MNIST / "data", tmp_path / "data")
    return str(tmp_path / "model-train"), str(tmp_path / "data")


def test_deploy_local_with_the_endpoint_killed_is_one_line_exit_5(endpoint, scenario, bundles, airflow_db):
    bucket = endpoint.bucket()
    uri = f"s3://{bucket}/p"
    source, data = bundles
    ok(trainyard("--store", uri, "deploy", "--local", "-s", source, "-d", data, "--upload-only"))
    scenario.watch(endpoint.store(bucket))
    endpoint.kill_forwarder()
    result = trainyard("--store", uri, "deploy", "--local", "-s", source, "-d", data, env=SHORT)
    one_error(result, 5, uri, "cannot be reached")
    assert "Traceback" not in result.out + "\n".join(result.err)
    endpoint.start_forwarder()
    ok(trainyard("--store", uri, "deploy", "--local", "-s", source, "-d", data, "--upload-only"))
    scenario.check(endpoint.store(bucket))


def test_deploy_local_with_the_endpoint_killed_during_the_run_is_exit_5(endpoint, scenario, bundles, airflow_db):
    """The store answers the upload, then goes away while Airflow runs the steps: the run fails, and the CLI says
    why in one line with the store's exit code, not the task's traceback and exit 1."""
    bucket = endpoint.bucket()
    uri = f"s3://{bucket}/p"
    source, data = bundles
    scenario.watch(endpoint.store(bucket))
    proc = subprocess.Popen([*TRAINYARD, "--store", uri, "deploy", "--local", "-s", source, "-d", data],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            # INFO: the task lines mark when Airflow runs a task (an earlier in-process --json deploy
                            # of this session may have set WARNING in the environment this inherits).
                            env={**os.environ, **SHORT, "TRAINYARD_DEFAULT_RETRIES": "0", "PYTHONUNBUFFERED": "1",
                                 "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO"})
    try:
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if "[DAG TEST] starting task_id" in line:  # past the upload and the store check: Airflow runs a task
                endpoint.kill_forwarder()
                break
        assert any(" uploaded " in line for line in seen) and endpoint.forwarder.poll() is not None, seen[-5:]
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    result = Result(proc.returncode, out, err.splitlines(), 0)
    one_error(result, 5, uri, "cannot be reached")
    assert "[DAG TEST] end task" in out  # the fault hit a running pipeline, not the check before it
    print(f"deploy --local, endpoint killed during the run: exit {result.code}, {len(result.err)} stderr line(s), "
          f"{len(seen) + len(out.splitlines())} lines of run log on stdout")
    endpoint.start_forwarder()
    ok(trainyard("--store", uri, "models"))
    scenario.check(endpoint.store(bucket))
