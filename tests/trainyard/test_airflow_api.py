"""The REST client against a small Airflow stand-in on 127.0.0.1: each failure is one typed line with its exit code
(4 login refused, 5 server down or stalled or failing, 3 not found, 2 conf rejected), and an expired token logs in
again once. The real api-server is covered by tests/trainyard/test_cli_server.py."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from trainyard.airflow_api import AirflowClient, InvalidConf, LoginRefused, ServerError, ServerUnreachable
from trainyard.errors import NotFound

PASSWORD = "s3cret-password"


class _FakeAirflow(BaseHTTPRequestHandler):
    """POST /auth/token with the right password gives a token; other paths answer what `routes` says."""

    def log_message(self, *args) -> None:  # keep the test output quiet
        pass

    def _answer(self, status: int, body) -> None:
        raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def _handle(self) -> None:
        state = self.server.state
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        state["requests"].append((self.command, self.path, self.headers.get("Authorization"), body))
        if self.path == "/auth/token":
            state["logins"] += 1
            ok = body == {"username": "admin", "password": PASSWORD}
            return self._answer(201, {"access_token": f"token-{state['logins']}"}) if ok else self._answer(
                401, {"detail": "Invalid credentials"})
        if self.headers.get("Authorization") in state["expired"]:
            return self._answer(401, {"detail": "Token expired"})
        status, payload = state["routes"].get((self.command, self.path.split("?")[0]), (404, {"detail": "Not Found"}))
        self._answer(status, payload)

    do_GET = do_POST = do_PATCH = _handle


@pytest.fixture
def airflow():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeAirflow)
    server.state = {"routes": {}, "requests": [], "logins": 0, "expired": set()}
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _client(server, password=PASSWORD, timeout=5.0) -> AirflowClient:
    return AirflowClient(endpoint=f"http://127.0.0.1:{server.server_port}/", username="admin", password=password,
                         timeout=timeout)


def test_calls_carry_the_token_and_json(airflow):
    airflow.state["routes"][("POST", "/api/v2/dags/train_pipeline/dagRuns")] = (200, {"dag_run_id": "manual__1"})
    run = _client(airflow).trigger("train_pipeline", {"source": "mnist"}, run_id="manual__1")
    assert run == {"dag_run_id": "manual__1"}
    method, path, auth, body = airflow.state["requests"][-1]
    assert (method, path, auth) == ("POST", "/api/v2/dags/train_pipeline/dagRuns", "Bearer token-1")
    assert body == {"logical_date": None, "conf": {"source": "mnist"}, "dag_run_id": "manual__1"}


def test_an_expired_token_logs_in_again_once(airflow):
    airflow.state["routes"][("GET", "/api/v2/dags/train_pipeline")] = (200, {"dag_id": "train_pipeline"})
    client = _client(airflow)
    assert client.dag("train_pipeline")["dag_id"] == "train_pipeline"
    airflow.state["expired"].add("Bearer token-1")
    assert client.dag("train_pipeline")["dag_id"] == "train_pipeline"
    assert airflow.state["logins"] == 2 and airflow.state["requests"][-1][2] == "Bearer token-2"


def test_a_wrong_password_is_exit_4_and_never_echoed(airflow):
    with pytest.raises(LoginRefused) as refused:
        _client(airflow, password="wrong-password").dag("train_pipeline")
    assert refused.value.exit_code == 4
    assert str(refused.value).startswith(f"Airflow at http://127.0.0.1:{airflow.server_port} refused the login of "
                                         "user 'admin' (HTTP 401)")
    assert "wrong-password" not in str(refused.value)


@pytest.mark.parametrize(("status", "payload", "error", "code", "message"), [
    (404, {"detail": "DAG with dag_id: 'nope' was not found"}, NotFound, 3,
     r"^DAG 'nope': not found on Airflow at .* \(DAG with dag_id: 'nope' was not found\)$"),
    (422, {"detail": [{"loc": ["body", "conf", "memory"], "msg": "'2GB' does not match '^([0-9]+...)'"}]},
     InvalidConf, 2, r"^Airflow rejected DAG 'nope' \(HTTP 422\): conf\.memory: '2GB' does not match"),
    (400, {"detail": "Invalid input for param memory: '2GB' does not match\n\nFailed validating 'pattern' ..."},
     InvalidConf, 2, r"^Airflow rejected DAG 'nope' \(HTTP 400\): Invalid input for param memory: '2GB' does not "
                     r"match$"),
    (500, "<html>Internal Server Error</html>", ServerError, 5,
     r"^DAG 'nope' failed on Airflow at .*: HTTP 500 <html>Internal Server Error</html>$"),
    (403, {"detail": "Forbidden"}, LoginRefused, 4, r"^Airflow refused DAG 'nope' for user 'admin' \(HTTP 403\)"),
])
def test_each_error_is_one_typed_line(airflow, status, payload, error, code, message):
    airflow.state["routes"][("GET", "/api/v2/dags/nope")] = (status, payload)
    with pytest.raises(error, match=message) as raised:
        _client(airflow).dag("nope")
    assert raised.value.exit_code == code and "\n" not in str(raised.value)


def test_a_server_that_is_down_is_exit_5(airflow):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = AirflowClient(endpoint=f"http://127.0.0.1:{port}", username="admin", password=PASSWORD)
    with pytest.raises(ServerUnreachable, match=rf"^cannot reach Airflow at http://127.0.0.1:{port}: .*refused.*; "
                                                 r"is its api-server running\?") as raised:
        client.dag("train_pipeline")
    assert raised.value.exit_code == 5


def test_a_server_that_stalls_is_exit_5_after_the_timeout():
    with socket.socket() as listener:  # accepts connections (the kernel's backlog) and never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        port = listener.getsockname()[1]
        client = AirflowClient(endpoint=f"http://127.0.0.1:{port}", username="admin", password=PASSWORD,
                               timeout=0.5)
        with pytest.raises(ServerUnreachable, match=rf"^Airflow at http://127.0.0.1:{port} did not answer within "
                                                     r"0\.5 s") as raised:
            client.dag("train_pipeline")
    assert raised.value.exit_code == 5
