"""Options the commands share: the global --store and --json, accepted before or after any command, and the
options that appear in several commands, declared once so a flag (short ones above all) means one thing everywhere.

Short flags: -s source, -d data, -m manifest, -h hyperparams (kaos's deploy), -i index, -o output, -f spec file,
-c conf, -e endpoint, -u username. Every other option is long only; `--help` is the only help flag.
"""

import functools
import inspect
from collections.abc import Callable
from typing import Annotated, Any

import typer

from trainyard.cli.context import Session

EXIT_CODES = """exit codes:
  0  success
  1  a pipeline step or the run failed (or an unexpected error; TRAINYARD_DEBUG=1 shows its traceback)
  2  bad input: options, bundle layout, resources, settings (nothing was stored)
  3  not found or ambiguous: unknown repo, short id, model, DAG or run; or the store itself (bucket, path)
  4  credentials refused: by the S3 store, or by Airflow in server mode
  5  unavailable: the S3 endpoint or the Airflow server cannot be reached or stopped answering in time
  6  the store cannot be written: disk full or read-only (nothing stored is changed)
  7  damage: a corrupt blob was read (and quarantined), or fsck found damage
  130  interrupted (Ctrl-C)
"""
# Click rewraps help paragraphs; a paragraph that opens with \b keeps its lines.
EXIT_CODES_EPILOG = "\b\n" + EXIT_CODES


StoreOption = Annotated[str | None, typer.Option(
    "--store", metavar="URI", show_default=False,
    help="the store: file:///path or s3://bucket/prefix (default: TRAINYARD_STORE, then the `trainyard init` "
         "profile, then airflow.cfg [trainyard] store); `init` saves it in the profile")]
JsonOption = Annotated[bool, typer.Option(
    "--json", help="print one JSON document for scripts (`logs --follow`: one per line); no progress bars, notes "
                   "go to stderr")]

# Options of several commands: one declaration each.
PipelineOption = Annotated[str, typer.Option(
    "--pipeline", metavar="DAG", help="the pipeline (DAG id) whose runs to read")]
IndexOption = Annotated[int | None, typer.Option(
    "-i", "--index", metavar="N", show_default=False, help="run number from `trainyard list` (0 is the newest)")]
RunIdOption = Annotated[str | None, typer.Option(
    "--run-id", metavar="ID", show_default=False, help="an Airflow run id (also of runs that failed before "
                                                        "registering)")]
MessageOption = Annotated[str, typer.Option(
    "--message", metavar="TEXT", show_default=False, help="commit message")]
WaitOption = Annotated[bool, typer.Option(
    "--wait", help="server mode: follow the run's tasks until it ends")]


def keep_global_options(ctx: typer.Context, store: StoreOption = None, as_json: JsonOption = False) -> None:
    """The callback of the root and of each group: keeps --store and --json given before the command's name
    (`trainyard --store URI data log REPO`, `trainyard data --json log REPO`) for the command."""
    before = ctx.obj if isinstance(ctx.obj, Session) else Session()
    ctx.obj = Session(store_uri=store or before.store_uri, json=as_json or before.json)


class App(typer.Typer):
    """A Typer app whose commands all take the global options; each command function gets them as its first
    argument, a Session, instead of declaring them itself."""

    def __init__(self, **kwargs: Any) -> None:
        # Plain (click-style) help: help texts name airflow.cfg sections like [trainyard], which rich markup eats.
        kwargs.setdefault("rich_markup_mode", None)
        kwargs.setdefault("add_completion", False)
        kwargs.setdefault("context_settings", {"max_content_width": 120})
        super().__init__(**kwargs)

    def command(self, name: str | None = None, **kwargs: Any) -> Callable[[Callable], Callable]:
        register = super().command(name, **kwargs)

        def decorator(func: Callable) -> Callable:
            register(_with_globals(func))
            return func

        return decorator


def _with_globals(func: Callable) -> Callable:
    """func(session, **options) as a Typer command that also takes --store and --json after the command name;
    given there, they win over the same options given before it (kept by the root callback in ctx.obj)."""
    own = list(inspect.signature(func, eval_str=True).parameters.values())[1:]  # the first one is the Session
    added = [inspect.Parameter("global_ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context),
             inspect.Parameter("global_store", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=StoreOption),
             inspect.Parameter("global_json", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=JsonOption)]

    @functools.wraps(func)
    def command(*args: Any, global_ctx: typer.Context, global_store: str | None = None, global_json: bool = False,
                **kwargs: Any) -> Any:
        before = global_ctx.obj if isinstance(global_ctx.obj, Session) else Session()
        return func(Session(store_uri=global_store or before.store_uri, json=global_json or before.json),
                    *args, **kwargs)

    parameters = [*own, *added]
    command.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in parameters}
    return command
