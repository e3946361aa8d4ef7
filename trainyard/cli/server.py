"""Where trainyard works: `init` remembers an Airflow server and the store for this user (server mode), `config`
shows the settings every command resolves."""

import getpass
import os
import sys
from typing import Annotated

import typer

from trainyard import userconfig
from trainyard.cli.context import Session
from trainyard.cli.options import EXIT_CODES_EPILOG, App
from trainyard.cli.output import emit, print_json
from trainyard.errors import ConfigError

app = App()


@app.command("init", epilog=EXIT_CODES_EPILOG)
def init(
    session: Session,
    endpoint: Annotated[str, typer.Option("-e", "--endpoint", metavar="URL", show_default=False,
                                          help="Airflow's address, e.g. http://127.0.0.1:8080")],
    username: Annotated[str | None, typer.Option(
        "-u", "--username", metavar="USER", show_default=False,
        help="Airflow user (default: TRAINYARD_USERNAME, else admin); the password comes from TRAINYARD_PASSWORD "
             "or a prompt")] = None,
    store_endpoint: Annotated[str | None, typer.Option(
        "--store-endpoint", metavar="URL", show_default=False,
        help="S3 endpoint of the store, e.g. http://127.0.0.1:9000 for MinIO (default: AWS_ENDPOINT_URL)")] = None,
    no_check: Annotated[bool, typer.Option("--no-check", help="save without logging in first")] = False,
) -> int:
    """Server mode: remember an Airflow server and its store.

    Saves the endpoint, user and store (--store, else the current setting) in the user's profile, and the
    password and S3 keys in credentials.json (mode 0600). It logs in first, so a typo saves nothing."""
    from trainyard.airflow_api import AirflowClient

    if not endpoint.startswith(("http://", "https://")):
        raise ConfigError(f"-e/--endpoint must be Airflow's http(s):// address, got {endpoint!r}")
    username = username or os.environ.get("TRAINYARD_USERNAME", "admin")
    password = os.environ.get("TRAINYARD_PASSWORD")
    if not password:
        if not sys.stdin.isatty():
            raise ConfigError("no password: set TRAINYARD_PASSWORD, or run `trainyard init` in a terminal to be asked")
        password = getpass.getpass(f"Airflow password for {username} at {endpoint}: ")
    client = AirflowClient(endpoint=endpoint, username=username, password=password)
    if not no_check:
        client.token  # noqa: B018 - logs in: a wrong password or a server that is down stops here, nothing saved
    store = session.settings().store
    store_endpoint = store_endpoint or os.environ.get("AWS_ENDPOINT_URL")
    where = userconfig.save(endpoint=endpoint, username=username, password=password, store=store,
                            store_endpoint=store_endpoint, aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID"),
                            aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY"))
    emit({"endpoint": client.endpoint, "username": username, "store": store, "store_endpoint": store_endpoint,
          "profile": str(where), "logged_in": not no_check}, session.json,
         f"{'saved' if no_check else 'logged in to'} {client.endpoint} as {username}; store {store}\n"
         f"profile in {where} (credentials.json is readable by you only)")
    return 0


@app.command("config")
def show_config(session: Session, key: Annotated[str | None, typer.Argument(
        metavar="KEY", show_default=False, help="one setting, e.g. store or runner; omit for all")] = None) -> int:
    """Show the resolved settings.

    Precedence: argument (--store) > env > `trainyard init` profile > airflow.cfg [trainyard] > default."""
    settings = session.settings()
    if key is None:
        print_json(settings.model_dump(mode="json"))
        return 0
    if key not in type(settings).model_fields:
        raise ConfigError(f"unknown setting {key!r}; `trainyard config` lists them all")
    emit({key: settings.model_dump(mode="json")[key]}, session.json, settings.text(key))
    return 0
