"""The models page: registered models, their versions, direction-aware metric tables, lineage and Airflow run links."""

from __future__ import annotations

import html
import json
import logging
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

from airflow.api_fastapi.app import get_auth_manager
from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.core_api.security import requires_access_dag
from airflow.configuration import conf
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from operators.hooks import StoreHook
from trainyard import registry
from trainyard.contract import model_key
from trainyard.display import format_metric, format_time
from trainyard.errors import NotFound
from trainyard.metrics import MetricError, available, default_metric, is_number, parse_spec, rank
from trainyard.store import Store

log = logging.getLogger(__name__)

SortQuery = Annotated[str | None, Query(description="NAME or NAME:max / NAME:min; best first", max_length=200)]


def open_store() -> Store:
    """The store, opened the way operators open it: trainyard settings plus the `trainyard_store` connection."""
    return StoreHook().get_conn()


StoreDep = Annotated[Store, Depends(open_store)]


# ----------------------------------------------------------------------------------------------------- data
def _airflow_url(path: str, *, absolute: bool) -> str:
    """An Airflow UI URL: absolute from [api] base_url for scripts; root-relative for the page, so a browser that
    reached Airflow under another host name than base_url keeps its session cookie."""
    base = (conf.get("api", "base_url", fallback="") or "").rstrip("/")
    return (base if absolute else urlsplit(base).path.rstrip("/")) + path


def _run_path(dag_id: str, run_id: str) -> str:
    return f"/dags/{quote(str(dag_id), safe='')}/runs/{quote(str(run_id), safe='')}"


def _map_index(airflow: dict) -> str | None:
    # The train step records the map index from the environment, so it is a string ("0") or None when unmapped.
    index = airflow.get("map_index")
    return None if index in (None, "", -1, "-1") else str(index)


def _task_path(airflow: dict) -> str:
    path = _run_path(airflow["dag_id"], airflow["run_id"]) + f"/tasks/{quote(str(airflow['task_id']), safe='')}"
    index = _map_index(airflow)
    return path + f"/mapped/{quote(index, safe='')}" if index is not None else path


def _order(versions: list[dict], requested: str | None, fallback: str | None,
           *, strict: bool) -> tuple[list[dict], str | None, str | None]:
    """Versions best first by the requested metric (else the registry's), numerically; newest first without one.

    With strict, a requested metric that no version reports is an error; otherwise the fallback is used.
    """
    for spec, must in ((requested, strict), (fallback, False)):
        if not spec:
            continue
        try:
            ranked, unranked, name, direction = rank(versions, spec)
        except MetricError:
            if must:
                raise
            continue
        return ranked + unranked, name, direction
    return list(reversed(versions)), None, None


def _record(store: Store, model_id: str) -> dict | None:
    try:
        return store.get_json(model_key(model_id))
    except NotFound:
        log.warning("registry version points at model %s, which has no record in the store", model_id)
        return None


def model_view(store: Store, name: str, sort: str | None = None, *, records: bool = True,
               strict: bool = True) -> dict[str, Any]:
    """One registered model as the page and the JSON API show it; raises NotFound and MetricError."""
    doc = registry.load(store, name)
    versions = doc["versions"]
    fallback = doc.get("metric") or (default_metric(versions[-1]["metrics"]) if versions else None)
    ordered, metric, direction = _order(versions, sort, fallback, strict=strict)
    aliases: dict[str, list[str]] = {}
    for alias, version in sorted(doc["aliases"].items()):
        aliases.setdefault(version, []).append(alias)
    rows = []
    for entry in ordered:
        row = entry | {"aliases": aliases.get(entry["version"], []),
                       "run_url": _airflow_url(_run_path(entry["pipeline"], entry["run_id"]), absolute=True)}
        if records:
            record = _record(store, entry["model_id"])
            row["record"] = record
            if record:
                row["trained_run_url"] = _airflow_url(_run_path(record["lineage"]["airflow"]["dag_id"],
                                                                record["lineage"]["airflow"]["run_id"]),
                                                      absolute=True)
        rows.append(row)
    return {"name": doc["name"], "metric": doc.get("metric"), "aliases": doc["aliases"],
            "sort": {"metric": metric, "direction": direction}, "available_metrics": available(versions),
            "versions": rows}


def _checked_sort(sort: str | None) -> str | None:
    """A malformed ?sort= is the caller's mistake (400), whichever page it was sent to."""
    if sort:
        parse_spec(sort)
    return sort or None


# ----------------------------------------------------------------------------------------------------- html
def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:1.2rem 1.6rem;color:#1f2933}
h1{font-size:1.5rem;margin:0 0 .3rem}h2{font-size:1.15rem;margin:1.6rem 0 .5rem}h3{font-size:1rem;margin:0 0 .4rem}
a{color:#0b62a4;text-decoration:none}a:hover{text-decoration:underline}
table{border-collapse:collapse;margin:.6rem 0;font-variant-numeric:tabular-nums}
th,td{border-bottom:1px solid #d9dee3;padding:.3rem .6rem;text-align:left;vertical-align:top;white-space:nowrap}
th{background:#f3f5f7;font-weight:600}th.sorted{background:#e2ecf5}td.metric,th.metric{text-align:right}
.direction{font-weight:400;color:#52606d;font-size:.85em}.alias{background:#e3f2e6;color:#1e6b34;border-radius:3px;
padding:0 .35rem;margin-right:.25rem;font-size:.85em}code{font-size:.92em}.muted{color:#7b8794}
section.lineage{border:1px solid #d9dee3;border-radius:4px;padding:.6rem .9rem;margin:.7rem 0;max-width:70rem}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.15rem 1rem;margin:0}dt{color:#52606d}dd{margin:0}
.error{color:#a61b1b}
"""

# Inside the Airflow UI this page is an iframe whose sandbox forbids navigating the top window, so a plain link to
# an Airflow page would open a second Airflow UI inside the frame. Same-origin, the frame can hand the URL to the
# UI's router instead (history entry + popstate); anywhere else the link is followed normally.
_FRAMED_LINKS_JS = """
document.addEventListener("click", function (event) {
  var link = event.target.closest && event.target.closest("a[data-airflow-page]");
  if (!link || window.top === window || event.button !== 0 || event.ctrlKey || event.metaKey || event.shiftKey) {
    return;
  }
  try {
    window.top.history.pushState(null, "", link.href);
    window.top.dispatchEvent(new PopStateEvent("popstate", {state: null}));
    event.preventDefault();
  } catch (err) {}
});
"""


def _page(title: str, body: str, status_code: int = 200) -> HTMLResponse:
    return HTMLResponse(
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head>'
        f"<body>{body}<script>{_FRAMED_LINKS_JS}</script></body></html>",
        status_code=status_code)


def _error_page(message: str, status_code: int, home: str, extra: str = "") -> HTMLResponse:
    return _page("trainyard: error", f'<nav><a href="{_e(home)}/">all models</a></nav>'
                 f'<h1>{status_code}</h1><p class="error" id="error">{_e(message)}</p>{extra}', status_code)


def _home(request: Request) -> str:
    """This app's root-relative prefix (the Airflow root path plus the plugin's mount point)."""
    return request.scope.get("root_path", "").rstrip("/")


def _airflow_link(path: str, text: str, cls: str) -> str:
    return f'<a class="{cls}" data-airflow-page href="{_e(_airflow_url(path, absolute=False))}">{_e(text)}</a>'


def _better(direction: str | None) -> str:
    return "higher is better" if direction == "max" else "lower is better"


def _metric_header(metric: str, sort: dict) -> str:
    """A column header that sorts by its metric, best first; on the sorted column it reverses the direction."""
    try:
        natural = parse_spec(metric)[1]
    except MetricError:  # a name ?sort= cannot carry (user code may name metrics freely): shown, not sortable
        return f'<th class="metric" data-metric="{_e(metric)}">{_e(metric)}</th>'
    if sort["metric"] == metric:
        direction = sort["direction"]
        target = "min" if direction == "max" else "max"
        arrow = " \u25bc" if direction == "max" else " \u25b2"
        return (f'<th class="metric sorted" data-metric="{_e(metric)}" data-direction="{direction}" '
                f'aria-sort="{"descending" if direction == "max" else "ascending"}">'
                f'<a href="?sort={_e(quote(f"{metric}:{target}"))}">{_e(metric)}{arrow}</a> '
                f'<span class="direction">({_better(direction)})</span></th>')
    return (f'<th class="metric" data-metric="{_e(metric)}"><a href="?sort={_e(quote(f"{metric}:{natural}"))}" '
            f'title="{_better(natural)}">{_e(metric)}</a></th>')


def _sort_note(sort: dict, scope: str) -> str:
    if not sort["metric"]:
        return '<p id="sort-note">Newest version first: no numeric metric to sort by.</p>'
    return (f'<p id="sort-note">Sorted by <b>{_e(sort["metric"])}</b>: <span class="direction">'
            f'{_better(sort["direction"])}</span>, best first{scope}. Click a metric to sort by it; click it again to '
            f"reverse.</p>")


def _version_cells(row: dict, metrics: list[str]) -> str:
    aliases = "".join(f'<span class="alias">{_e(a)}</span>' for a in row["aliases"])
    cells = "".join(f'<td class="metric" data-metric="{_e(m)}" data-value="{_e(row["metrics"].get(m, ""))}">'
                    f'{_e(format_metric(row["metrics"], m))}</td>' for m in metrics)
    return (f'<td class="version">{_e(row["version"])}</td><td class="aliases">{aliases}</td>'
            f'<td class="model-id"><code>{_e(row["model_id"])}</code></td>{cells}'
            f'<td class="run">{_airflow_link(_run_path(row["pipeline"], row["run_id"]), row["run_id"], "run-link")}'
            f'</td><td class="registered">{_e(format_time(row.get("registered_at")))}</td>')


def _version_row(row: dict, model: str, metrics: list[str], detail: str | None) -> str:
    name_cell = f'<td class="model-name"><a href="{_e(detail)}">{_e(model)}</a></td>' if detail else ""
    return (f'<tr class="model-version" data-model="{_e(model)}" data-version="{_e(row["version"])}" '
            f'data-model-id="{_e(row["model_id"])}">{name_cell}{_version_cells(row, metrics)}</tr>')


def _headers(metrics: list[str], sort: dict, with_model: bool) -> str:
    first = "<th>model</th>" if with_model else ""
    return (f"<thead><tr>{first}<th>version</th><th>aliases</th><th>model id</th>"
            + "".join(_metric_header(m, sort) for m in metrics)
            + "<th>run</th><th>registered</th></tr></thead>")


def _commit_line(commit: dict) -> str:
    return (f'<code>{_e(commit["repo"])}:{_e(commit["commit"][:12])}</code> {_e(commit.get("message", ""))} '
            f'<span class="muted">{_e(commit.get("author", ""))} {_e(format_time(commit.get("time")))}</span>')


def _metric_text(value: Any) -> str:
    return f"{value:.6g}" if is_number(value) else "(text) " + (str(value).strip().splitlines() or [""])[0][:80]


def _lineage_section(row: dict, name: str) -> str:
    version, record = row["version"], row.get("record")
    aliases = "".join(f'<span class="alias">{_e(a)}</span>' for a in row["aliases"])
    head = f'<h3>version {_e(version)} {aliases}<code>{_e(row["model_id"])}</code></h3>'
    attrs = (f'class="lineage" id="lineage-{_e(version)}" data-version="{_e(version)}" '
             f'data-model-id="{_e(row["model_id"])}"')
    if not record:
        return f'<section {attrs}>{head}<p class="error">the model record is missing from the store</p></section>'
    lin = record["lineage"]
    airflow = lin["airflow"]
    mapped = f"[{_map_index(airflow)}]" if _map_index(airflow) is not None else ""
    task = f"task {airflow['task_id']}{mapped}" + (f" ({airflow['label']})" if airflow.get("label") else "")
    run = _airflow_link(_run_path(airflow["dag_id"], airflow["run_id"]), f"{airflow['dag_id']} / {airflow['run_id']}",
                        "airflow-run")
    task_link = _airflow_link(_task_path(airflow), task, "airflow-task")
    parent = lin.get("parent")
    parent_html = (f'<a href="#lineage-{_e(parent["version"])}">{_e(parent.get("name", name))} '
                   f'{_e(parent["version"])}</a> <code>{_e(parent["model_id"])}</code>'
                   if parent else '<span class="muted">none (first version of this model)</span>')
    registered_by = ""
    if (row["pipeline"], row["run_id"]) != (airflow["dag_id"], airflow["run_id"]):
        # A cache hit: the version was registered by a later run than the one that trained the model.
        link = _airflow_link(_run_path(row["pipeline"], row["run_id"]), f"{row['pipeline']} / {row['run_id']}",
                             "run-link")
        registered_by = f'<dt>registered by</dt><dd class="registered-by">{link}</dd>'
    metrics = "".join(f"<li><code>{_e(k)}</code> {_e(_metric_text(v))}</li>"
                      for k, v in sorted(record["metrics"].items()))
    return (f"<section {attrs}>{head}<dl>"
            f'<dt>source</dt><dd class="source">{_commit_line(lin["source"])}</dd>'
            f'<dt>data</dt><dd class="data">{_commit_line(lin["data"])}</dd>'
            f'<dt>params</dt><dd class="params"><code>{_e(json.dumps(record["params"], sort_keys=True))}</code> '
            f'<span class="muted">hash {_e(lin["params_hash"][:12])}</span></dd>'
            f'<dt>env</dt><dd class="env"><code>{_e(record["env"])}</code></dd>'
            f'<dt>trained in</dt><dd class="airflow">{run} \u00b7 {task_link}'
            f' <span class="muted">{record.get("train_seconds", 0):.1f} s</span></dd>{registered_by}'
            f'<dt>parent</dt><dd class="parent">{parent_html}</dd>'
            f'<dt>metrics</dt><dd class="metrics"><ul>{metrics}</ul></dd>'
            f"</dl></section>")


def _index_body(request: Request, views: list[dict], sort: str | None) -> str:
    home = _home(request)
    metrics = sorted({m for view in views for m in view["available_metrics"]})
    shown = {"metric": None, "direction": None}
    if sort:
        name, direction = parse_spec(sort)
        shown = {"metric": name, "direction": direction}
    rows = "".join(_version_row(row, view["name"], metrics, f"{home}/models/{quote(view['name'], safe='')}")
                   for view in views for row in view["versions"])
    note = (_sort_note(shown, " within each model") if sort else
            '<p id="sort-note">Each model\'s versions are sorted by its registry metric, best first. Click a metric '
            "to sort every model by it.</p>")
    table = (f'<table id="models">{_headers(metrics, shown, True)}<tbody>{rows}</tbody></table>' if views
             else '<p id="empty">No registered models yet: train one with <code>trainyard deploy</code> or the '
                  "train_pipeline DAG.</p>")
    return (f'<h1>trainyard models</h1><p class="summary">{len(views)} registered model(s); '
            f'<a href="{_e(home)}/api/models">JSON</a></p>{note}{table}')


def _detail_body(request: Request, view: dict) -> str:
    home = _home(request)
    name = view["name"]
    aliases = ", ".join(f"{_e(a)} {_e(v)}" for a, v in sorted(view["aliases"].items())) or "none"
    rows = "".join(_version_row(row, name, view["available_metrics"], None) for row in view["versions"])
    lineage = "".join(_lineage_section(row, name) for row in view["versions"])
    return (f'<nav><a href="{_e(home)}/">all models</a></nav><h1>{_e(name)}</h1>'
            f'<p class="summary">{len(view["versions"])} version(s); aliases: {aliases}; registry metric '
            f'<code>{_e(view["metric"] or "none")}</code>; '
            f'<a href="{_e(home)}/api/models/{_e(quote(name, safe=""))}">JSON</a></p>'
            f'{_sort_note(view["sort"], "")}'
            f'<table id="versions">{_headers(view["available_metrics"], view["sort"], False)}'
            f"<tbody>{rows}</tbody></table><h2>Lineage</h2>{lineage}")


# ----------------------------------------------------------------------------------------------------- app
async def _auth_errors(request: Request, exc: StarletteHTTPException):
    """For the HTML pages: no Airflow session goes to Airflow's login page and back; a refusal is explained.
    The JSON API answers with Airflow's own JSON errors."""
    home = _home(request)
    if request.url.path.startswith(f"{home}/api/") or exc.status_code not in (401, 403):
        return await http_exception_handler(request, exc)
    # A root-relative `next`: Airflow only follows a next URL on its base_url's host, which may not be this one.
    back = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    login = get_auth_manager().get_url_login(next_url=back)
    if exc.status_code == 401:
        return RedirectResponse(login, status_code=307)
    return _error_page(f"Airflow refused access: {exc.detail}", 403, home,
                       f'<p><a id="login" href="{_e(login)}">Log in again</a> as a user who may read DAG runs.</p>')


def create_app() -> FastAPI:
    """The FastAPI app the plugin mounts; every route needs an Airflow user allowed to read DAG runs."""
    app = FastAPI(title="trainyard models", docs_url=None, redoc_url=None, openapi_url=None,
                  # Airflow's own check, as on its /api/v2 DAG run routes: a valid JWT (Bearer header or the UI's
                  # `_token` cookie), then the auth manager's permission to read DAG runs.
                  dependencies=[Depends(requires_access_dag("GET", DagAccessEntity.RUN))])
    app.add_exception_handler(StarletteHTTPException, _auth_errors)

    @app.get("/", response_class=HTMLResponse)
    def models_index(request: Request, store: StoreDep, sort: SortQuery = None) -> HTMLResponse:
        try:
            sort = _checked_sort(sort)
        except MetricError as exc:
            return _error_page(str(exc), 400, _home(request))
        views = [model_view(store, name, sort, records=False, strict=False) for name in registry.names_in(store)]
        return _page("trainyard models", _index_body(request, views, sort))

    @app.get("/models", include_in_schema=False)
    def models_list(request: Request) -> RedirectResponse:
        return RedirectResponse(f"{_home(request)}/", status_code=307)

    @app.get("/models/{name}", response_class=HTMLResponse)
    def model_detail(request: Request, name: str, store: StoreDep, sort: SortQuery = None) -> HTMLResponse:
        try:
            view = model_view(store, name, _checked_sort(sort))
        except NotFound as exc:
            return _error_page(str(exc), 404, _home(request))
        except MetricError as exc:
            return _error_page(str(exc), 400, _home(request))
        return _page(f"trainyard: {name}", _detail_body(request, view))

    @app.get("/api/models")
    def api_models(store: StoreDep, sort: SortQuery = None) -> dict:
        try:
            sort = _checked_sort(sort)
        except MetricError as exc:
            raise HTTPException(400, str(exc)) from None
        return {"models": [model_view(store, name, sort, records=False, strict=False)
                           for name in registry.names_in(store)]}

    @app.get("/api/models/{name}")
    def api_model(name: str, store: StoreDep, sort: SortQuery = None) -> dict:
        try:
            return model_view(store, name, _checked_sort(sort))
        except NotFound as exc:
            raise HTTPException(404, str(exc)) from None
        except MetricError as exc:
            raise HTTPException(400, str(exc)) from None

    return app
