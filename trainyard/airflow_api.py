"""A small client for Airflow's REST API v2 (server mode) on httpx, turning each server error into one clear line."""

from __future__ import annotations

import functools
import json
import urllib.parse
from typing import TYPE_CHECKING

from trainyard.errors import ConfigError, NotFound, TrainyardError

if TYPE_CHECKING:
    import httpx

TERMINAL_RUN_STATES = {"success", "failed"}
FINISHED_TASK_STATES = {"success", "failed", "skipped", "upstream_failed", "removed"}


class ServerError(TrainyardError):
    """Airflow answered with an error the user cannot fix by changing their input."""

    exit_code = 5


class ServerUnreachable(ServerError):
    """Airflow's api-server could not be reached at all."""


class LoginRefused(TrainyardError):
    """Airflow refused the user name and password (or the token lacks permission)."""

    exit_code = 4


class InvalidConf(ConfigError):
    """Airflow rejected a run's conf (a Param's JSON schema) or another request body."""


def _detail(payload) -> str:
    """The human part of an Airflow error body: FastAPI's `detail`, a string or a list of validation errors."""
    detail = payload.get("detail", payload) if isinstance(payload, dict) else payload
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict):
                where = ".".join(str(x) for x in item.get("loc", []) if x != "body")
                parts.append(f"{where}: {item.get('msg', item)}" if where else str(item.get("msg", item)))
            else:
                parts.append(str(item))
        detail = "; ".join(parts)
    elif isinstance(detail, dict):
        detail = detail.get("message") or detail.get("reason") or json.dumps(detail)
    # A Param's schema error repeats the schema and the value after its first sentence; the sentence says it all.
    detail = str(detail).split("\n\nFailed validating")[0]
    return " ".join(detail.split())[:600]


class AirflowClient:
    """REST calls to one Airflow with a JWT from `POST /auth/token`; logs in again once when the token expires.

    :param endpoint: Airflow's base URL, e.g. http://127.0.0.1:8080
    :param username: Airflow user
    :param password: that user's password (kept in memory only; never logged or put in an error message)
    """

    def __init__(self, *, endpoint: str, username: str, password: str, timeout: float = 30) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.username = username
        self._password = password
        self.timeout = timeout
        self._token: str | None = None

    def __repr__(self) -> str:
        return f"AirflowClient({self.endpoint!r}, user={self.username!r})"

    @functools.cached_property
    def _http(self) -> httpx.Client:
        # Imported here: httpx costs 50 ms at start-up, and only server-mode commands talk to Airflow.
        import httpx

        return httpx.Client(base_url=self.endpoint, timeout=self.timeout, headers={"Accept": "application/json"})

    def _send(self, method: str, path: str, body=None, token: str | None = None) -> tuple[int, dict]:
        """One request: (HTTP status, JSON body or {"detail": text}); no answer at all is ServerUnreachable."""
        import httpx

        headers = {"Authorization": f"Bearer {token}"} if token else None
        try:
            response = self._http.request(method, path, json=body, headers=headers)
        except httpx.TimeoutException:
            raise ServerUnreachable(f"Airflow at {self.endpoint} did not answer within {self.timeout:g} s; is its "
                                    "api-server stalled or overloaded? Try again, or check its logs") from None
        except httpx.HTTPError as exc:
            raise ServerUnreachable(f"cannot reach Airflow at {self.endpoint}: {exc}; is its api-server running? "
                                    "(change the address with `trainyard init -e URL`)") from None
        try:
            return response.status_code, response.json() if response.content else {}
        except ValueError:
            return response.status_code, {"detail": response.text[:300] or response.reason_phrase}

    @property
    def token(self) -> str:
        if self._token is None:
            status, payload = self._send("POST", "/auth/token",
                                         {"username": self.username, "password": self._password})
            if status in (401, 403):
                raise LoginRefused(f"Airflow at {self.endpoint} refused the login of user {self.username!r} "
                                   f"(HTTP {status}); check the password (TRAINYARD_PASSWORD, or run `trainyard init` "
                                   "again)")
            if status >= 300 or "access_token" not in payload:
                raise ServerError(f"login at {self.endpoint}/auth/token failed: HTTP {status} {_detail(payload)}")
            self._token = payload["access_token"]
        return self._token

    def call(self, method: str, path: str, body=None, *, what: str = "") -> dict:
        """One REST call; 401 → log in again once; errors → LoginRefused / NotFound / InvalidConf / ServerError."""
        status, payload = self._send(method, path, body, self.token)
        if status == 401:
            self._token = None
            status, payload = self._send(method, path, body, self.token)
        if status < 300:
            return payload
        detail = _detail(payload)
        if status in (401, 403):
            raise LoginRefused(f"Airflow refused {what or path} for user {self.username!r} (HTTP {status}): {detail}")
        if status == 404:
            raise NotFound(f"{what or path}: not found on Airflow at {self.endpoint} ({detail})")
        if status in (400, 422):
            raise InvalidConf(f"Airflow rejected {what or path} (HTTP {status}): {detail}")
        raise ServerError(f"{what or path} failed on Airflow at {self.endpoint}: HTTP {status} {detail}")

    # DAGs and runs ---------------------------------------------------------------------------------------------
    def dag(self, dag_id: str) -> dict:
        return self.call("GET", f"/api/v2/dags/{_q(dag_id)}", what=f"DAG {dag_id!r}")

    def check_dag(self, dag_id: str) -> dict:
        """The DAG, or a NotFound that lists the DAGs this Airflow has."""
        try:
            return self.dag(dag_id)
        except NotFound:
            known = [d["dag_id"] for d in self.call("GET", "/api/v2/dags?limit=100").get("dags", [])]
            raise NotFound(f"Airflow at {self.endpoint} has no DAG {dag_id!r}; it has: "
                           f"{', '.join(sorted(known)) or 'none (is the dag-processor running?)'}") from None

    def unpause(self, dag_id: str) -> None:
        self.call("PATCH", f"/api/v2/dags/{_q(dag_id)}", {"is_paused": False}, what=f"unpausing {dag_id!r}")

    def trigger(self, dag_id: str, conf: dict, run_id: str | None = None) -> dict:
        body = {"logical_date": None, "conf": conf}
        if run_id:
            body["dag_run_id"] = run_id
        return self.call("POST", f"/api/v2/dags/{_q(dag_id)}/dagRuns", body, what=f"triggering {dag_id!r}")

    def run(self, dag_id: str, run_id: str) -> dict:
        return self.call("GET", f"/api/v2/dags/{_q(dag_id)}/dagRuns/{_q(run_id)}", what=f"run {run_id!r}")

    def runs(self, dag_id: str, limit: int = 50) -> list[dict]:
        page = self.call("GET", f"/api/v2/dags/{_q(dag_id)}/dagRuns?order_by=-run_after&limit={limit}",
                         what=f"runs of {dag_id!r}")
        return page.get("dag_runs", [])

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        out: list[dict] = []
        while True:
            page = self.call("GET", f"/api/v2/dags/{_q(dag_id)}/dagRuns/{_q(run_id)}/taskInstances"
                                    f"?limit=100&offset={len(out)}", what=f"tasks of run {run_id!r}")
            out.extend(page.get("task_instances", []))
            if len(out) >= page.get("total_entries", 0) or not page.get("task_instances"):
                return out

    def fail_run(self, dag_id: str, run_id: str) -> dict:
        """Mark a run failed: Airflow fails its running tasks (their on_kill stops processes and deletes pods)."""
        return self.call("PATCH", f"/api/v2/dags/{_q(dag_id)}/dagRuns/{_q(run_id)}", {"state": "failed"},
                         what=f"stopping run {run_id!r}")

    def announce(self, uri: str, extra: dict) -> bool:
        """Record an Asset event (Airflow queues the DAGs scheduled on it); False when no DAG knows the asset."""
        assets = self.call("GET", f"/api/v2/assets?uri_pattern={_q(uri)}&limit=10", what=f"asset {uri}")
        match = [a for a in assets.get("assets", []) if a.get("uri") == uri]
        if not match:
            return False
        self.call("POST", "/api/v2/assets/events", {"asset_id": match[0]["id"], "extra": extra},
                  what=f"announcing {uri}")
        return True

    def run_url(self, dag_id: str, run_id: str) -> str:
        """The run's page in the Airflow UI."""
        return f"{self.endpoint}/dags/{_q(dag_id)}/runs/{_q(run_id)}"


def _q(part: str) -> str:
    return urllib.parse.quote(part, safe="")
