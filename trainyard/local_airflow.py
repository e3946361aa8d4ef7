"""A throw-away Airflow server on 127.0.0.1 (api-server, scheduler, dag-processor, triggerer) for server-mode tests.

Used by the server-mode tests, `bench/server` and `make server`. It never touches the developer's .airflow: each
instance gets its own AIRFLOW_HOME under a work directory, its own metadata database, free ports, and one admin
user whose password it writes. Metadata lives in PostgreSQL when Debian's server binaries are installed
(scripts/install-system-deps.sh installs them; the cluster is created with initdb and started with pg_ctl in the
work directory); otherwise in SQLite, which Airflow 3 accepts with LocalExecutor because task processes reach the
metadata only through the api-server's execution API. `Postgres.unavailable()` says why it was not used.

Airflow 3 specifics handled here:
  - every component gets the same AIRFLOW__API_AUTH__JWT_SECRET (Airflow's default is a random value per process,
    so the api-server would reject the task tokens the scheduler signs);
  - AIRFLOW__CORE__EXECUTION_API_SERVER_URL points the task processes at this api-server's /execution/;
  - SimpleAuthManager with one admin user and a passwords file we write.
"""

from __future__ import annotations

import glob
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Self

REPO_ROOT = Path(__file__).resolve().parents[1]
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
HEALTHY = {"metadatabase", "scheduler", "dag_processor", "triggerer"}


class ServerStartError(RuntimeError):
    """A component of the local Airflow or its database did not start; the message names the log to read."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tail(path: Path, lines: int = 30, skip: str | None = None) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"(cannot read {path}: {exc})"
    return "\n".join([ln for ln in text if not skip or skip not in ln][-lines:])


class Postgres:
    """A PostgreSQL cluster in a directory of its own, on 127.0.0.1 and a free port, with trust auth for `airflow`."""

    def __init__(self) -> None:
        # Its own directory under the temp dir, not inside the caller's work dir: as root the cluster belongs to
        # the `postgres` user, who cannot enter private directories such as pytest's tmp_path.
        self.root = Path(tempfile.mkdtemp(prefix="trainyard-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.bin = self.server_bin()
        self.started = False

    @staticmethod
    def server_bin() -> Path | None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        return Path(found[-1]).parent if found else None

    @classmethod
    def unavailable(cls) -> str | None:
        """Why a local PostgreSQL cannot be used, or None."""
        if cls.server_bin() is None:
            return ("PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin); "
                    "run `bash scripts/install-system-deps.sh` as root")
        if os.geteuid() == 0 and shutil.which("runuser") is None:
            return "running as root without runuser, and initdb refuses to run as root"
        return None

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://airflow@127.0.0.1:{self.port}/airflow"

    def _as_owner(self, argv: list[str]) -> list[str]:
        # initdb and postgres refuse to run as root; the Debian package's `postgres` user owns the cluster instead.
        return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv

    def start(self) -> None:
        log = self.root / "postgres.log"
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
            log.touch()
            shutil.chown(log, "postgres")
        steps = [
            [str(self.bin / "initdb"), "-D", str(self.data), "-U", "airflow", "-A", "trust", "-E", "UTF8",
             "--no-sync"],
            [str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(log), "-w", "-t", "60", "start", "-o",
             f"-p {self.port} -h 127.0.0.1 -k {self.root} -c fsync=off -c full_page_writes=off"],
        ]
        for argv in steps:
            proc = subprocess.run(self._as_owner(argv), capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise ServerStartError(f"{Path(argv[0]).name} failed ({proc.returncode}): "
                                       f"{(proc.stderr or proc.stdout).strip()[-500:]}; log: {log}")
        self.started = True
        proc = subprocess.run([str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "airflow",
                               "airflow"], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise ServerStartError(f"createdb failed: {proc.stderr.strip()}")

    def stop(self) -> None:
        if self.started:
            subprocess.run(self._as_owner([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                                           "stop"]), capture_output=True, check=False)
            self.started = False
        shutil.rmtree(self.root, ignore_errors=True)


class LocalAirflow:
    """Airflow's four long-running components as child process groups, started on 127.0.0.1 and a free port.

    :param work: directory for AIRFLOW_HOME, logs and the database (created; removed by `stop(cleanup=True)`)
    :param env: extra environment for every component, e.g. TRAINYARD_STORE and AIRFLOW_CONN_TRAINYARD_STORE
    :param database: "postgres", "sqlite", or "auto" (Postgres when available, else SQLite)
    :param dag_bundles: extra DAG folders as {bundle name: path}, besides the repo's dags/
    """

    def __init__(self, work: Path, *, env: dict[str, str] | None = None, database: str = "auto",
                 dag_bundles: dict[str, Path] | None = None, username: str = "admin") -> None:
        self.work = Path(work)
        self.home = self.work / "airflow"
        self.logs = self.work / "logs"
        self.extra_env = dict(env or {})
        self.username = username
        self.password = secrets.token_urlsafe(12)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dag_bundles = dict(dag_bundles or {})
        reason = Postgres.unavailable() if database in ("auto", "postgres") else "SQLite was asked for"
        if database == "postgres" and reason:
            raise ServerStartError(f"cannot use PostgreSQL: {reason}")
        self.postgres = Postgres() if reason is None else None
        self.database_note = "postgresql" if self.postgres else f"sqlite ({reason})"
        self.procs: dict[str, subprocess.Popen] = {}
        self.env = self._environment()

    def _environment(self) -> dict[str, str]:
        # The server reaches the store with the `trainyard_store` connection only (pass AIRFLOW_CONN_TRAINYARD_STORE
        # in env), never with the AWS_* credentials of whoever started it.
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("AIRFLOW__", "AIRFLOW_", "TRAINYARD_", "AWS_")) or k == "AWS_DEFAULT_REGION"}
        bundles = [{"name": "dags-folder", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
                    "kwargs": {}}]
        bundles += [{"name": name, "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
                     "kwargs": {"path": str(path)}} for name, path in self.dag_bundles.items()]
        database = self.postgres.url if self.postgres else f"sqlite:///{self.home / 'airflow.db'}"
        env.update({
            "TRAINYARD_HOME": str(REPO_ROOT),  # airflow.cfg: dags_folder and plugins_folder under it
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW_CONFIG": str(REPO_ROOT / "airflow.cfg"),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONUNBUFFERED": "1",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": database,
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            # LocalExecutor forks this many workers up front; Airflow's default of 32 is a lot of idle processes
            # for a laptop or a 2-core CI machine.
            "AIRFLOW__CORE__PARALLELISM": str(max(4, 2 * (os.cpu_count() or 2))),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": json.dumps(bundles),
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API__BASE_URL": self.url,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(64),  # >= 64 bytes for HS512
            "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{self.username}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.home / "passwords.json"),
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.home / "logs"),
        })
        env.update(self.extra_env)
        return env

    # lifecycle -------------------------------------------------------------------------------------------------
    def start(self, timeout: float = 180) -> LocalAirflow:
        """Create the database, start the four components and wait until Airflow reports them all healthy."""
        self.home.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        (self.home / "passwords.json").write_text(json.dumps({self.username: self.password}))
        os.chmod(self.home / "passwords.json", 0o600)
        try:
            if self.postgres:
                self.postgres.start()
            self._migrate()
            airflow = str(Path(sys.executable).parent / "airflow")
            commands = {
                "api-server": [airflow, "api-server", "--host", "127.0.0.1", "--port", str(self.port),
                               "--workers", "1"],
                # --skip-serve-logs: no worker log server on a fixed port; the api-server reads the log files.
                "scheduler": [airflow, "scheduler", "--skip-serve-logs"],
                "dag-processor": [airflow, "dag-processor"],
                "triggerer": [airflow, "triggerer", "--skip-serve-logs"],
            }
            for name, argv in commands.items():
                with open(self.logs / f"{name}.log", "a") as out:
                    self.procs[name] = subprocess.Popen(argv, cwd=REPO_ROOT, env=self.env, stdout=out,
                                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                        start_new_session=True)
            self.wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _migrate(self) -> None:
        log = self.logs / "db-migrate.log"
        with open(log, "w") as out:
            code = subprocess.run([str(Path(sys.executable).parent / "airflow"), "db", "migrate"], cwd=REPO_ROOT,
                                  env=self.env, stdout=out, stderr=subprocess.STDOUT, check=False).returncode
        if code != 0:
            raise ServerStartError(f"airflow db migrate exited {code}:\n{tail(log)}")

    def stop(self, cleanup: bool = False) -> None:
        import psutil  # an Airflow dependency

        # Some descendants (the api-server's workers) start sessions of their own, out of reach of killpg.
        strays = []
        for proc in self.procs.values():
            try:
                strays += psutil.Process(proc.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                pass
        for proc in self.procs.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 15
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            try:  # task processes left in the group go too
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        for stray in strays:
            try:
                stray.kill()
            except psutil.NoSuchProcess:
                pass
        self.procs = {}
        if self.postgres:
            self.postgres.stop()
        if cleanup:
            shutil.rmtree(self.work, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise ServerStartError(f"airflow {name} exited with {proc.returncode}:\n"
                                       f"{tail(self.logs / f'{name}.log')}")

    def wait_healthy(self, timeout: float) -> float:
        t0 = time.monotonic()
        last: dict = {}
        while time.monotonic() - t0 < timeout:
            self.check_alive()
            try:
                with urllib.request.urlopen(f"{self.url}/api/v2/monitor/health", timeout=5) as resp:
                    last = {k: (v or {}).get("status") for k, v in json.loads(resp.read()).items()}
            except (urllib.error.URLError, OSError, ValueError):
                last = {}
            if last and all(last.get(part) == "healthy" for part in HEALTHY):
                return time.monotonic() - t0
            time.sleep(1)
        raise ServerStartError(f"Airflow not healthy after {timeout:.0f} s ({last or 'api-server not answering'});\n"
                               + self.log_tails())

    def client(self):
        """A REST client logged in as the admin user."""
        from trainyard.airflow_api import AirflowClient

        return AirflowClient(endpoint=self.url, username=self.username, password=self.password)

    def wait_for_dags(self, dag_ids: list[str], timeout: float = 120) -> None:
        """Wait until the dag-processor has parsed these DAGs; an import error of the repo's DAGs fails at once."""
        client = self.client()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            known = {d["dag_id"] for d in client.call("GET", "/api/v2/dags?limit=100")["dags"]}
            if set(dag_ids) <= known:
                return
            errors = client.call("GET", "/api/v2/importErrors?limit=100").get("import_errors", [])
            if errors:
                raise ServerStartError("DAG import errors: " + "; ".join(
                    f"{e.get('filename')}: {e.get('stack_trace', '').strip().splitlines()[-1:]}" for e in errors))
            time.sleep(1)
        raise ServerStartError(f"DAGs {sorted(set(dag_ids) - known)} not parsed within {timeout:.0f} s;\n"
                               + self.log_tails())

    def log_tails(self, lines: int = 20) -> str:
        return "\n".join(f"--- {name}.log ---\n{tail(self.logs / f'{name}.log', lines, skip='[http.access]')}"
                         for name in COMPONENTS)


def _stop_on_sigterm(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """`python -m trainyard.local_airflow WORKDIR`: start a local Airflow, print how to reach it, stop on Ctrl-C."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("work", nargs="?", default="/tmp/trainyard-server", help="work directory (recreated)")
    parser.add_argument("--database", choices=("auto", "postgres", "sqlite"), default="auto")
    args = parser.parse_args(argv)
    from trainyard.cli.context import cli_settings

    shutil.rmtree(args.work, ignore_errors=True)
    # The server uses the store (and venv cache) this shell's CLI resolves, so `trainyard deploy` and the server
    # share it; an s3:// store's keys travel only as the trainyard_store connection, if one is exported.
    settings = cli_settings()
    env = {k: v for k, v in os.environ.items() if k.startswith("TRAINYARD_") or k == "AIRFLOW_CONN_TRAINYARD_STORE"}
    env.update(TRAINYARD_STORE=settings.store, TRAINYARD_VENV_CACHE=settings.venv_cache)
    server = LocalAirflow(Path(args.work), env=env)
    # The components run in sessions of their own; a plain SIGTERM must stop them too, like Ctrl-C does.
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    print(f"starting Airflow in {args.work} (metadata: {server.database_note}) ...", file=sys.stderr)
    with server:
        secret = server.home / "passwords.json"
        print(f"Airflow UI and API: {server.url}  user {server.username}  (password in {secret}, mode 0600)")
        print(f"store:              {settings.store}")
        print(f"connect the CLI:    trainyard init -e {server.url} -u {server.username} --store {settings.store}"
              "   (it prompts for the password)")
        try:
            while True:
                time.sleep(5)
                server.check_alive()
        except KeyboardInterrupt:
            print("stopping", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
