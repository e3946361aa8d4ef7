"""The Airflow UI in a real browser: log in, trigger train_pipeline from its form with a param, see the run succeed,
and find the new model on the trainyard models page.

Headless Chromium is Debian's `chromium` package (scripts/install-system-deps.sh installs it), driven by Playwright
with `executable_path`; no browser is downloaded. Screenshots are saved under test-artifacts/browser/.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from tests.conftest import REPO
from trainyard import runs
from trainyard.cli import main
from trainyard.store import open_store

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "test-artifacts" / "browser"
# Chromium's own connections (updates, sync, Google lookups) are refused on a closed network; keep it quiet.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.e2e


def _browser_unavailable() -> str | None:
    if not CHROMIUM.exists():
        return f"{CHROMIUM} not installed (Debian package chromium; run `bash scripts/install-system-deps.sh` as root)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -r requirements.txt)"
    return None


@pytest.fixture
def page():
    reason = _browser_unavailable()
    if reason:
        print(f"SKIP browser test: {reason}")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        context.set_default_timeout(30_000)
        page = context.new_page()
        try:
            yield page
        finally:
            page.screenshot(path=str(ARTIFACTS / "99-last-page.png"), full_page=True)  # what it saw at the end
            context.close()
            browser.close()


def _shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def _upload_mnist(server, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", server.store_credentials["aws_access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", server.store_credentials["aws_secret_access_key"])
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.moto_endpoint)
    mnist = REPO / "templates" / "mnist"
    shutil.copytree(mnist / "model-train", tmp_path / "src")
    shutil.copytree(mnist / "data", tmp_path / "data")
    # A data commit of its own, so the run trains a new model even when other tests trained mnist before.
    (tmp_path / "data" / "features" / "README.txt").write_text(f"browser test data, {tmp_path.name}\n")
    assert main(["--store", server.store_uri, "deploy", "-s", str(tmp_path / "src"), "-d", str(tmp_path / "data"),
                 "--upload-only", "--json"]) == 0


def _wait_for_run(server, run_id: str, timeout: float = 240) -> str:
    client = server.client()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = client.runs("train_pipeline") and client.run("train_pipeline", run_id)["state"]
        if state in ("success", "failed"):
            return state
        time.sleep(1)
    return "timeout"


def test_trigger_from_the_ui_form_and_find_the_model_on_the_trainyard_page(airflow_server, page, tmp_path,
                                                                             monkeypatch, capsys):
    from playwright.sync_api import expect

    _upload_mnist(airflow_server, tmp_path, monkeypatch)
    capsys.readouterr()
    url = airflow_server.url

    # Log in through Airflow's own login page.
    page.goto(url + "/")
    page.wait_for_url("**/auth/login**")
    page.fill("input[name=username]", airflow_server.username)
    page.fill("input[name=password]", airflow_server.password)
    _shot(page, "01-login")
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(lambda u: "/auth/login" not in u)
    assert any(c["name"] == "_token" for c in page.context.cookies())

    # The trigger form renders each Param with its description and default.
    page.goto(url + "/dags/train_pipeline")
    page.get_by_test_id("trigger-dag-button").click()
    # The form fills in the Params' defaults after it renders; expect() waits for them.
    expect(page.locator("#element_source")).to_have_value("mnist")
    expect(page.locator("#element_source_ref")).to_have_value("latest")
    page.get_by_text("'latest' or a commit short id").first.wait_for()

    # An invalid value is refused with the schema's message, and no run starts.
    runs_before = {r["dag_run_id"] for r in airflow_server.client().runs("train_pipeline")}
    page.fill("#element_memory", "2GB")
    page.get_by_test_id("trigger-dag-submit").click()
    page.get_by_text("Invalid input for param memory: '2GB' does not match").wait_for()
    _shot(page, "02-invalid-param")
    assert {r["dag_run_id"] for r in airflow_server.client().runs("train_pipeline")} == runs_before
    page.fill("#element_memory", "")

    # A valid form with one parameter set, and our own run id so the test can follow it.
    page.fill("#element_metric", "accuracy_training:max")
    page.get_by_role("button", name="Advanced Options").click()
    run_id = f"browser_{int(time.time())}"
    page.fill("input[name=dagRunId]", run_id)
    _shot(page, "03-trigger-form")
    page.get_by_test_id("trigger-dag-submit").click()
    page.get_by_test_id("trigger-dag-submit").wait_for(state="detached")  # the dialog closes once the run exists

    assert _wait_for_run(airflow_server, run_id) == "success"
    page.goto(f"{url}/dags/train_pipeline/runs/{run_id}")
    page.get_by_text("success").first.wait_for()
    _shot(page, "04-run-succeeded")
    conf = airflow_server.client().run("train_pipeline", run_id)["conf"]
    assert conf["metric"] == "accuracy_training:max" and conf["source"] == "mnist"

    # The trainyard page, from the UI's navigation, shows the new model and links to the run that made it.
    page.goto(url + "/")
    page.get_by_role("link", name="Models").first.click()
    frame = page.frame_locator("iframe").first
    link = frame.locator("tr.model-version a.run-link", has_text=run_id)
    link.first.wait_for()
    _shot(page, "05-models-page")
    assert link.first.get_attribute("href").endswith(f"/dags/train_pipeline/runs/{run_id}")
    row = frame.locator("tr.model-version").filter(has=frame.locator("a.run-link", has_text=run_id))
    shown = row.first.get_attribute("data-model-id")
    store = open_store(airflow_server.store_uri)  # the AWS_* env of _upload_mnist reaches the moto bucket
    results = runs.read_results(store, "train_pipeline", run_id)
    assert shown == results.run_summary.outputs.best.model_id
    assert results.run_summary.metric == "accuracy_training:max"
