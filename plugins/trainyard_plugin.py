"""Airflow plugin: trainyard's models page, mounted at /trainyard and listed as "Models" in the UI's navigation."""

from __future__ import annotations

from typing import Any, ClassVar

import trainyard_ui
from airflow.plugins_manager import AirflowPlugin


class TrainyardPlugin(AirflowPlugin):
    """The models page (a FastAPI app behind Airflow's auth) and the nav entry that shows it inside the UI."""

    name = "trainyard"
    fastapi_apps: ClassVar[list[dict[str, Any]]] = [
        {"name": "trainyard models", "app": trainyard_ui.app, "url_prefix": trainyard_ui.URL_PREFIX},
    ]
    # With a url_route the UI shows the page inside itself (an iframe at /plugin/trainyard-models). The href is
    # relative to the UI's <base href> (Airflow's base_url), so it survives a base_url with a path; the trailing slash
    # is the app's index route. nav_top_level gives the entry its own nav button instead of a "Plugins" submenu.
    external_views: ClassVar[list[dict[str, Any]]] = [
        {"name": "Models", "href": trainyard_ui.URL_PREFIX.lstrip("/") + "/", "destination": "nav",
         "url_route": "trainyard-models", "nav_top_level": True},
    ]
