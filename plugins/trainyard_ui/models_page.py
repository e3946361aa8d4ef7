"""The models page: registered models, their versions, direction-aware metric tables, lineage and Airflow run links."""

from __future__ import annotations

import dataclasses
import json
import logging
from functools import cache
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

from airflow.api_fastapi.app import get_auth_manager
from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.core_api.security import requires_access_dag
from airflow.configuration import conf
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import HTMLResponse, RedirectResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from starlette.exceptions import HTTPException as StarletteHTTPException

from operators.hooks import StoreHook
from trainyard import registry
from trainyard.display import format_metric, format_time
from trainyard.errors import NotFound
from trainyard.metrics import MetricError, available, default_metric, is_number, parse_spec, rank
from trainyard.records import AirflowTask, ModelRecord, RegistryEntry, RegistryVersion
from trainyard.store import Store

log = logging.getLogger(__name__)

SortQuery = Annotated[str | None, Query(description="NAME or NAME:max / NAME:min; best first", max_length=200)]
TEMPLATES = Path(__file__).with_name("templates")


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


def _run_path(dag_id: str | None, run_id: str) -> str:
    return f"/dags/{quote(str(dag_id), safe='')}/runs/{quote(str(run_id), safe='')}"


def _task_path(airflow: AirflowTask) -> str:
    path = _run_path(airflow.dag_id, airflow.run_id) + f"/tasks/{quote(str(airflow.task_id), safe='')}"
    return path + f"/mapped/{quote(airflow.mapped, safe='')}" if airflow.mapped is not None else path


def _order(versions: list[RegistryVersion], requested: str | None, fallback: str | None,
           *, strict: bool) -> tuple[list[RegistryVersion], str | None, str | None]:
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


def _record(store: Store, model_id: str) -> ModelRecord | None:
    try:
        return registry.load_model(store, model_id)
    except NotFound:
        log.warning("registry version points at model %s, which has no record in the store", model_id)
        return None


@dataclasses.dataclass
class ModelView:
    """One registered model as the pages and the JSON API show it: its versions in the order asked for."""

    entry: RegistryEntry
    versions: list[RegistryVersion]
    sort: dict[str, str | None]
    available: list[str]
    records: dict[str, ModelRecord | None]

    @property
    def name(self) -> str:
        return self.entry.name

    def aliases_of(self, version: str) -> list[str]:
        return [alias for alias, target in sorted(self.entry.aliases.items()) if target == version]

    def to_json(self) -> dict[str, Any]:
        rows = []
        for version in self.versions:
            row = version.model_dump(mode="json") | {
                "aliases": self.aliases_of(version.version),
                "run_url": _airflow_url(_run_path(version.pipeline, version.run_id), absolute=True)}
            if version.model_id in self.records:
                record = self.records[version.model_id]
                row["record"] = record and record.to_json()
                if record:
                    airflow = record.lineage.airflow
                    row["trained_run_url"] = _airflow_url(_run_path(airflow.dag_id, airflow.run_id), absolute=True)
            rows.append(row)
        return {"name": self.name, "metric": self.entry.metric, "aliases": self.entry.aliases, "sort": self.sort,
                "available_metrics": self.available, "versions": rows}


def model_view(store: Store, name: str, sort: str | None = None, *, records: bool = True,
               strict: bool = True) -> ModelView:
    """One registered model with its versions ordered by `sort`; raises NotFound and MetricError."""
    entry = registry.load(store, name)
    versions = entry.versions
    fallback = entry.metric or (default_metric(versions[-1].metrics) if versions else None)
    ordered, metric, direction = _order(versions, sort, fallback, strict=strict)
    found = {v.model_id: _record(store, v.model_id) for v in ordered} if records else {}
    return ModelView(entry=entry, versions=ordered, sort={"metric": metric, "direction": direction},
                     available=available(versions), records=found)


def _checked_sort(sort: str | None) -> str | None:
    """A malformed ?sort= is the caller's mistake (400), whichever page it was sent to."""
    if sort:
        parse_spec(sort)
    return sort or None


# ----------------------------------------------------------------------------------------------------- html
def _natural_direction(metric: str) -> str | None:
    """The direction a metric sorts in by its name; None for a name ?sort= cannot carry."""
    try:
        return parse_spec(metric)[1]
    except MetricError:
        return None


def _better(direction: str | None) -> str:
    return "higher is better" if direction == "max" else "lower is better"


def _metric_text(value: Any) -> str:
    return f"{value:.6g}" if is_number(value) else "(text) " + (str(value).strip().splitlines() or [""])[0][:80]


@cache
def _templates() -> Environment:
    """The pages' Jinja2 templates; autoescape escapes every value a user or their code controls."""
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"]),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["quote"] = lambda value, safe="/": quote(str(value), safe=safe)
    env.filters["json"] = lambda value: json.dumps(value, sort_keys=True)
    env.globals.update(airflow_url=lambda path: _airflow_url(path, absolute=False), run_path=_run_path,
                       task_path=_task_path, natural_direction=_natural_direction, better=_better,
                       format_metric=format_metric, format_time=format_time, metric_text=_metric_text)
    return env


def _page(template: str, request: Request, status_code: int = 200, **context: Any) -> HTMLResponse:
    html = _templates().get_template(template).render(home=_home(request), **context)
    return HTMLResponse(html, status_code=status_code)


def _error_page(request: Request, message: str, status_code: int, login: str | None = None) -> HTMLResponse:
    return _page("error.html", request, status_code, title="trainyard: error", message=message, status=status_code,
                 login=login)


def _home(request: Request) -> str:
    """This app's root-relative prefix (the Airflow root path plus the plugin's mount point)."""
    return request.scope.get("root_path", "").rstrip("/")


def _index(request: Request, views: list[ModelView], sort: str | None) -> HTMLResponse:
    shown: dict[str, str | None] = {"metric": None, "direction": None}
    if sort:
        name, direction = parse_spec(sort)
        shown = {"metric": name, "direction": direction}
    metrics = sorted({m for view in views for m in view.available})
    return _page("index.html", request, title="trainyard models", views=views, metrics=metrics, sort=shown)


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
    return _error_page(request, f"Airflow refused access: {exc.detail}", 403, login=login)


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
            return _error_page(request, str(exc), 400)
        views = [model_view(store, name, sort, records=False, strict=False) for name in registry.names_in(store)]
        return _index(request, views, sort)

    @app.get("/models", include_in_schema=False)
    def models_list(request: Request) -> RedirectResponse:
        return RedirectResponse(f"{_home(request)}/", status_code=307)

    @app.get("/models/{name}", response_class=HTMLResponse)
    def model_detail(request: Request, name: str, store: StoreDep, sort: SortQuery = None) -> HTMLResponse:
        try:
            view = model_view(store, name, _checked_sort(sort))
        except NotFound as exc:
            return _error_page(request, str(exc), 404)
        except MetricError as exc:
            return _error_page(request, str(exc), 400)
        return _page("detail.html", request, title=f"trainyard: {name}", view=view)

    @app.get("/api/models")
    def api_models(store: StoreDep, sort: SortQuery = None) -> dict:
        try:
            sort = _checked_sort(sort)
        except MetricError as exc:
            raise HTTPException(400, str(exc)) from None
        return {"models": [model_view(store, name, sort, records=False, strict=False).to_json()
                           for name in registry.names_in(store)]}

    @app.get("/api/models/{name}")
    def api_model(name: str, store: StoreDep, sort: SortQuery = None) -> dict:
        try:
            return model_view(store, name, _checked_sort(sort)).to_json()
        except NotFound as exc:
            raise HTTPException(404, str(exc)) from None
        except MetricError as exc:
            raise HTTPException(400, str(exc)) from None

    return app
