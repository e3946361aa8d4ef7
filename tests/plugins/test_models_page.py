"""The trainyard models page, mounted by the plugin into Airflow's real API app and served under Airflow's auth."""

from __future__ import annotations

import json
import secrets
import sys
from html.parser import HTMLParser

import pytest

from tests.conftest import REPO
from trainyard import contract, registry
from trainyard.store import keys, open_store

PIPELINE = "train_pipeline"
RUNS = ["manual__2026-01-01T00:00:00+00:00", "manual__2026-01-02T00:00:00+00:00", "scheduled__2026-01-03T00:00:00"]
HOSTILE_NAME = "<img src=x onerror=alert(1)>"
HOSTILE_MESSAGE = 'first cut <script>alert("x")</script> & more'
USER, PASSWORD = "ada", secrets.token_urlsafe(12)


def _commit(store, repo: str, content: str, message: str) -> str:
    sha = store.put_blob_bytes(content.encode())
    commit, _ = store.commit(repo, {"model/train": {"sha256": sha, "size": len(content)}}, message=message,
                             author="ada")
    return f"{commit.repo}:{commit.id}"


def _register_run(store, run_id: str, source: str, data: str, trained: list[tuple[dict, dict]]) -> None:
    """Run the real register step over a plan and train results shaped like resolve's and train's."""
    from training_images.register.__main__ import main as register

    combos = []
    for index, (params, metrics) in enumerate(trained):
        mid = contract.model_id(source.split(":")[1], data.split(":")[1], params)
        label = ",".join(f"{k}={v}" for k, v in sorted(params.items()))
        combos.append({"index": index, "label": label, "hyper": params, "params": params, "model_id": mid,
                       "cached": False})
        store.put_json(keys.run_trained(PIPELINE, run_id, mid), {
            "model_id": mid, "label": label, "source": source, "data": data, "params": params,
            "params_hash": contract.params_hash(params), "metrics": metrics, "outputs": "0" * 64, "log": "0" * 64,
            "train_seconds": 1.5, "artifacts": [], "env": "venv:0123abcd", "task_id": "train",
            "map_index": str(index)})
    store.put_json(keys.run_plan(PIPELINE, run_id), {
        "pipeline": PIPELINE, "run_id": run_id, "start_time": 1767225600.0, "source": source, "data": data,
        "name": source.split(":")[0], "image": "registry.local:5000/mnist:0", "timeout": None,
        "resources": {"cpu": "1", "memory": "2Gi", "gpu": 0}, "metric": "accuracy:max",
        "grid": {k: [v] for k, v in trained[0][0].items()}, "no_cache": False, "major": False,
        "save_training_data": False, "runner": "local", "combinations": combos})
    assert register(["--pipeline", PIPELINE, "--run-id", run_id]) == 0


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Three registered versions of mnist (through the real register step) and one hostile, record-less name."""
    root = tmp_path_factory.mktemp("models-page")
    uri = f"file://{root / 'store'}"
    store = open_store(uri)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(contract.STORE_ENV, uri)
        mp.setenv(contract.RESULT_PATH_ENV, str(root / "result.json"))
        first = _commit(store, "mnist", "v1", HOSTILE_MESSAGE)
        data = _commit(store, "features", "digits", "digits, 1797 rows")
        report = "              precision    recall\n  accuracy   0.90"
        _register_run(store, RUNS[0], first, data, [({"C": 1}, {"accuracy": 0.90, "loss": 0.30, "report": report}),
                                                    ({"C": 10}, {"accuracy": 0.85, "loss": 0.35})])
        second = _commit(store, "mnist", "v2", "tune the kernel")
        _register_run(store, RUNS[1], second, data, [({"C": 1}, {"accuracy": 0.97, "loss": 0.25})])
        _register_run(store, RUNS[2], second, data, [({"C": 100}, {"accuracy": 0.93, "loss": 0.10})])
    # A name and a metric name no registry check stops; the metric is not a valid ?sort= name either.
    registry.add_version(store, HOSTILE_NAME, model_id="abc_def:123", metrics={"top-5 <b>": 0.5}, run_id="r<1>",
                         pipeline=PIPELINE, metric=None, models=["abc_def:123"])
    return store


@pytest.fixture(scope="module")
def api(airflow_db, store, tmp_path_factory):
    """Airflow's own API app (create_app), with the plugins folder's plugin mounted and SimpleAuthManager users."""
    from airflow.api_fastapi.app import create_app
    from airflow.configuration import conf
    from fastapi.testclient import TestClient

    if not conf.get("api_auth", "jwt_secret", fallback=""):
        # As a deployment sets it. Only when still unset: Airflow caches its token validator with the first secret
        # it sees in a process (and would otherwise generate a 16-byte one, too short for HS512).
        conf.set("api_auth", "jwt_secret", secrets.token_urlsafe(64))

    passwords = tmp_path_factory.mktemp("auth") / "passwords.json"
    passwords.write_text(json.dumps({USER: PASSWORD}))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", f"{USER}:viewer")
        mp.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE", str(passwords))
        mp.setenv("TRAINYARD_STORE", store.uri)
        yield TestClient(create_app("core"), base_url="http://127.0.0.1:8080")


@pytest.fixture(scope="module")
def token(api):
    """A JWT minted by Airflow's auth manager for a viewer, the kind the UI keeps in its `_token` cookie."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    return get_auth_manager().generate_jwt(SimpleAuthManagerUser(username=USER, role="viewer"))


def _get(api, token, path: str, status: int = 200):
    response = api.get(path, headers={"Authorization": f"Bearer {token}"}, follow_redirects=False)
    assert response.status_code == status, response.text[:2000]
    return response


class _Elements(HTMLParser):
    """Every element's tag, attributes and text, in document order (enough to assert on the page's structure)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.found: list[dict] = []
        self._open: list[dict] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        row = next(((e.get("data-model"), e.get("data-version")) for e in reversed(self._open) if e["tag"] == "tr"),
                   None)
        element = {"tag": tag, **{k: v or "" for k, v in attrs}, "text": "", "row": row}
        self.found.append(element)
        if tag not in ("meta", "br", "img", "input", "link"):
            self._open.append(element)

    def handle_endtag(self, tag):
        while self._open and self._open.pop()["tag"] != tag:
            pass

    def handle_data(self, data):
        for element in self._open:
            element["text"] += data

    def select(self, tag: str, cls: str | None = None, **attrs: str) -> list[dict]:
        return [e for e in self.found if e["tag"] == tag and (cls is None or cls in e.get("class", "").split())
                and all(e.get(k.replace("_", "-")) == v for k, v in attrs.items())]


def _versions(page: str) -> list[str]:
    return [row["data-version"] for row in _Elements(page).select("tr", "model-version")]


def _href(page: _Elements, text: str) -> str:
    return next(a["href"] for a in page.select("a") if a["text"].strip() == text)


def test_the_plugin_is_loaded_by_airflow_and_listed_for_the_ui(api, token):
    from airflow import plugins_manager

    assert (REPO / "plugins" / "airflow_local_settings.py").is_file()
    assert plugins_manager.get_import_errors() == {}
    plugin = {p["name"]: p for p in plugins_manager.get_plugin_info()}["trainyard"]
    assert plugin["fastapi_apps"] == [{"name": "trainyard models", "app": "trainyard_ui._LazyApp",
                                       "url_prefix": "/trainyard"}]
    # plugins/.airflowignore keeps Airflow's plugin scan (in every task process) from importing the page's own files
    # as top-level modules, which would load FastAPI there and defeat the lazy app.
    from airflow._shared.plugins_manager.plugins_manager import _load_plugins_from_plugin_directory

    sys.modules.pop("models_page", None)
    found, errors = _load_plugins_from_plugin_directory(str(REPO / "plugins"))
    assert [p.name for p in found] == ["trainyard"] and errors == {}
    assert "models_page" not in sys.modules
    # What the UI itself fetches to build its navigation.
    listed = _get(api, token, "/api/v2/plugins").json()["plugins"]
    views = [v for p in listed if p["name"] == "trainyard" for v in p["external_views"]]
    assert views == [{"name": "Models", "href": "trainyard/", "destination": "nav", "url_route": "trainyard-models",
                      "nav_top_level": True, "icon": None, "icon_dark_mode": None, "category": None}]


def test_every_route_needs_an_airflow_login(api, token):
    page = api.get("/trainyard/models/mnist?sort=loss", follow_redirects=False)
    assert page.status_code == 307
    assert page.headers["location"] == "/auth/login?next=%2Ftrainyard%2Fmodels%2Fmnist%3Fsort%3Dloss"
    for path in ("/trainyard/api/models", "/trainyard/api/models/mnist"):
        assert api.get(path).status_code == 401
        assert api.get(path, headers={"Authorization": "Bearer not-a-jwt"}).status_code == 403
    refused = api.get("/trainyard/", headers={"Authorization": "Bearer not-a-jwt"})
    assert refused.status_code == 403
    assert _Elements(refused.text).select("a", id="login")[0]["href"] == "/auth/login?next=%2Ftrainyard%2F"

    # A user the auth manager does not allow to read DAG runs (SimpleAuthManager: no role) is refused.
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    no_role = get_auth_manager().generate_jwt(SimpleAuthManagerUser(username="nobody", role=None))
    assert _get(api, no_role, "/trainyard/api/models", 403).json() == {"detail": "Forbidden"}

    # The browser flow: the login page posts the credentials to /auth/token and keeps the JWT in the `_token` cookie.
    login = api.post("/auth/token", json={"username": USER, "password": PASSWORD})
    assert login.status_code == 201, login.text
    api.cookies.set("_token", login.json()["access_token"])
    try:
        assert api.get("/trainyard/", follow_redirects=False).status_code == 200
    finally:
        api.cookies.clear()
    assert _get(api, token, "/trainyard/api/models").status_code == 200


def test_the_index_lists_every_model_with_its_versions(api, token):
    page = _Elements(_get(api, token, "/trainyard/").text)
    assert page.select("h1")[0]["text"] == "trainyard models"
    rows = page.select("tr", "model-version")
    assert [(r["data-model"], r["data-version"]) for r in rows] == [
        (HOSTILE_NAME, "1.0"), ("mnist", "1.1"), ("mnist", "1.2"), ("mnist", "1.0")]  # each by its registry metric
    headers = page.select("th", "metric")
    assert [th["data-metric"] for th in headers] == ["accuracy", "loss", "top-5 <b>"]  # the text report is no column
    assert [th["text"] for th in headers if not th["text"].startswith(("accuracy", "loss"))] == ["top-5 <b>"]
    assert "?sort=top" not in str(page.found)  # a name ?sort= cannot carry is shown but not sortable
    cells = {c["data-metric"]: c["text"] for c in page.select("td", "metric") if c["row"] == ("mnist", "1.1")}
    assert cells == {"accuracy": "0.9700", "loss": "0.2500", "top-5 <b>": ""}
    assert [a["text"] for a in page.select("td", "aliases")] == ["latest", "best", "latest", ""]
    links = page.select("a", "run-link")
    assert links[1]["href"] == "/dags/train_pipeline/runs/manual__2026-01-02T00%3A00%3A00%2B00%3A00"
    assert page.select("td", "model-name")[1]["text"] == "mnist"
    assert _href(page, "mnist") == "/trainyard/models/mnist"
    assert _get(api, token, "/trainyard/models", 307).headers["location"] == "/trainyard/"

    by_loss = _Elements(_get(api, token, "/trainyard/?sort=loss").text)
    assert [r["data-version"] for r in by_loss.select("tr", "model-version") if r["data-model"] == "mnist"] == [
        "1.2", "1.1", "1.0"]
    assert "lower is better" in by_loss.select("p", id="sort-note")[0]["text"]


@pytest.mark.parametrize(("sort", "order", "better"), [
    ("", ["1.1", "1.2", "1.0"], "higher is better"),            # the registry's metric, accuracy:max
    ("?sort=accuracy", ["1.1", "1.2", "1.0"], "higher is better"),
    ("?sort=loss", ["1.2", "1.1", "1.0"], "lower is better"),   # loss-like: ascending, as numbers
    ("?sort=accuracy:min", ["1.0", "1.2", "1.1"], "lower is better"),
    ("?sort=loss:max", ["1.0", "1.1", "1.2"], "higher is better"),
])
def test_the_detail_page_sorts_versions_by_any_metric_direction_aware(api, token, sort, order, better):
    text = _get(api, token, f"/trainyard/models/mnist{sort}").text
    assert _versions(text) == order
    page = _Elements(text)
    assert page.select("h1")[0]["text"] == "mnist"
    sorted_header = page.select("th", "sorted")[0]
    assert better in sorted_header["text"]
    # Clicking the sorted column reverses it; another column sorts by its own natural direction.
    metric, direction = sorted_header["data-metric"], sorted_header["data-direction"]
    flipped = {"max": "min", "min": "max"}[direction]
    arrow = {"max": "\u25bc", "min": "\u25b2"}[direction]
    assert _href(page, f"{metric} {arrow}") == f"?sort={metric}%3A{flipped}"
    other, natural = {"accuracy": ("loss", "min"), "loss": ("accuracy", "max")}[metric]
    assert _href(page, other) == f"?sort={other}%3A{natural}"


def test_bad_sorts_are_explained(api, token):
    unknown = _get(api, token, "/trainyard/models/mnist?sort=f1", 400)
    assert _Elements(unknown.text).select("p", id="error")[0]["text"] == "unknown metric 'f1'; available: accuracy, loss"
    assert "'f1'" not in unknown.text  # quotes are escaped too
    assert _get(api, token, "/trainyard/?sort=acc%20uracy", 400).status_code == 400
    assert "available: accuracy, loss" in _get(api, token, "/trainyard/api/models/mnist?sort=f1", 400).json()["detail"]
    # On the index a metric one model lacks leaves that model in its own order.
    assert _get(api, token, "/trainyard/?sort=loss:max").status_code == 200


def test_each_version_shows_its_lineage_and_the_airflow_run_that_produced_it(api, token):
    page = _Elements(_get(api, token, "/trainyard/models/mnist").text)
    sections = {s["data-version"]: s for s in page.select("section", "lineage")}
    first = sections["1.0"]
    assert "mnist:" in first["text"] and "features:" in first["text"] and "digits, 1797 rows" in first["text"]
    assert '{"C": 1}' in first["text"] and "venv:0123abcd" in first["text"]
    assert "none (first version of this model)" in first["text"]
    assert "report (text) precision    recall" in first["text"]  # kaos-style text metrics: first line only
    assert "mnist 1.0" in sections["1.1"]["text"] and "tune the kernel" in sections["1.1"]["text"]
    runs_ = [a["href"] for a in page.select("a", "airflow-run")]
    tasks = [a["href"] for a in page.select("a", "airflow-task")]
    assert runs_[-1] == "/dags/train_pipeline/runs/manual__2026-01-01T00%3A00%3A00%2B00%3A00"
    assert tasks[-1] == "/dags/train_pipeline/runs/manual__2026-01-01T00%3A00%3A00%2B00%3A00/tasks/train/mapped/0"
    assert page.select("a", "airflow-run")[-1]["text"] == f"train_pipeline / {RUNS[0]}"

    doc = _get(api, token, "/trainyard/api/models/mnist?sort=loss").json()
    assert [v["version"] for v in doc["versions"]] == ["1.2", "1.1", "1.0"]
    assert doc["sort"] == {"metric": "loss", "direction": "min"}
    assert doc["aliases"] == {"latest": "1.2", "best": "1.1"}
    oldest = doc["versions"][-1]
    assert oldest["run_url"] == f"http://127.0.0.1:8080/dags/train_pipeline/runs/{RUNS[0].replace(':', '%3A')}" \
        .replace("+", "%2B")
    assert oldest["record"]["lineage"]["airflow"] == {"dag_id": PIPELINE, "run_id": RUNS[0], "task_id": "train",
                                                      "map_index": "0", "label": "C=1"}
    listing = _get(api, token, "/trainyard/api/models").json()["models"]
    assert [m["name"] for m in listing] == [HOSTILE_NAME, "mnist"]


def test_user_controlled_strings_are_escaped(api, token):
    index = _get(api, token, "/trainyard/").text
    detail = _get(api, token, "/trainyard/models/mnist").text
    hostile = _get(api, token, "/trainyard/models/%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E").text
    for text in (index, detail, hostile):
        assert "<img" not in text and "<script>alert" not in text
    assert "&lt;img src=x onerror=alert(1)&gt;" in index
    assert "first cut &lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; more" in detail
    source = _Elements(detail).select("dd", "source")[-1]["text"]
    assert HOSTILE_MESSAGE in source  # shown as written
    assert _Elements(hostile).select("h1")[0]["text"] == HOSTILE_NAME
    assert "the model record is missing from the store" in hostile
    assert 'href="/dags/train_pipeline/runs/r%3C1%3E"' in hostile


def test_an_unknown_model_is_a_clear_404(api, token):
    page = _get(api, token, "/trainyard/models/nope", 404)
    assert "no registered model named &#39;nope&#39;; registered: " in page.text
    assert "mnist" in _Elements(page.text).select("p", id="error")[0]["text"]
    assert "no registered model named 'nope'" in _get(api, token, "/trainyard/api/models/nope", 404).json()["detail"]
