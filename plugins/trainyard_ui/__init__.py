"""trainyard's pages inside the Airflow UI: `app` is the ASGI app the Airflow plugin mounts at URL_PREFIX."""

from __future__ import annotations

URL_PREFIX = "/trainyard"


class _LazyApp:
    """An ASGI app that builds the real FastAPI app (trainyard_ui.models_page) on its first request."""

    def __init__(self) -> None:
        self._app = None

    def get(self):
        if self._app is None:
            from trainyard_ui.models_page import create_app

            self._app = create_app()
        return self._app

    async def __call__(self, scope, receive, send) -> None:
        await self.get()(scope, receive, send)


# Airflow imports every plugin in every task process (to collect macros for the template context), so the plugin
# must stay cheap to import there: FastAPI and Airflow's API security modules (about 0.5 s) load only in the
# api-server, on the first request to the page.
app = _LazyApp()
