"""`trainyard template`: the bundled templates (kaos's `template get`): mnist, aicenter-sample, lstm, captioning."""

import shutil
from pathlib import Path
from typing import Annotated

import typer

from trainyard.cli.context import TEMPLATES, Session
from trainyard.cli.options import App, keep_global_options
from trainyard.cli.output import emit
from trainyard.errors import ConfigError, NotFound

app = App()
app.callback(help="List or copy the bundled templates.")(keep_global_options)


def _names() -> list[str]:
    return sorted(p.name for p in TEMPLATES.iterdir() if p.is_dir()) if TEMPLATES.is_dir() else []


@app.command("list")
def list_templates(session: Session) -> int:
    """The templates' names."""
    names = _names()
    emit(names, session.json, "\n".join(names))
    return 0


@app.command("get")
def get(session: Session,
        name: Annotated[str, typer.Argument(metavar="NAME", help="a template from `trainyard template list`",
                                            show_default=False)],
        output: Annotated[str | None, typer.Option("-o", "--output", metavar="DIR", show_default=False,
                                                   help="a new directory to copy it to (default: NAME)")] = None,
        ) -> int:
    """Copy a template's bundles into a new directory."""
    names = _names()
    if name not in names:
        raise NotFound(f"unknown template {name!r}; available: {', '.join(names)}")
    dest = Path(output or name)
    if dest.exists():
        raise ConfigError(f"{dest} already exists; pass -o to choose another directory")
    shutil.copytree(TEMPLATES / name, dest, ignore=shutil.ignore_patterns("__pycache__"))
    emit({"template": name, "path": str(dest)}, session.json, f"template {name} written to {dest}")
    return 0
