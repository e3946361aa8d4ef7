"""The `trainyard` command: the root of the command groups, the global options, and how errors reach the user
(one line `error: ...` and a documented exit code, never a traceback)."""

import logging
import os
import sys
import typer

from trainyard.cli import data, deploy, fsck, models, pipeline, runs, server, template
from trainyard.cli.context import embedded_airflow_env
from trainyard.cli.options import EXIT_CODES, EXIT_CODES_EPILOG, App, keep_global_options
from trainyard.errors import TrainyardError
from trainyard.store import infra_error
from trainyard.store.local import LocalBackend

__all__ = ["EXIT_CODES", "app", "entrypoint", "main"]

app = App(name="trainyard", add_completion=True, epilog=EXIT_CODES_EPILOG)
for group in (deploy, runs, models, fsck):
    app.add_typer(group.app)
app.add_typer(data.app, name="data")
app.add_typer(template.app, name="template")
app.add_typer(pipeline.app, name="pipeline")
app.add_typer(server.app)

app.callback(help="The trainyard command line (kaos-like): deploy source and data bundles, train, and inspect "
                  "runs, models and data. --store and --json work before or after any command.")(keep_global_options)


def main(argv: list[str] | None = None) -> int:
    """Run one command in-process; its exit code. Errors are one line on stderr."""
    embedded_airflow_env()
    argv = list(sys.argv[1:] if argv is None else argv)
    LocalBackend.absent_roots.clear()  # only this command's reads of a missing file:// store explain its NotFound
    try:
        code = app(args=argv, prog_name="trainyard", standalone_mode=False)
    except TrainyardError as exc:
        exc = infra_error(exc) or exc  # "repo has no commits" in a file:// store that does not exist: its path
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except typer.TyperException as exc:  # a usage error: unknown option, missing or malformed value
        command = getattr(getattr(exc, "ctx", None), "command_path", None) or "trainyard"
        print(f"error: {exc.format_message()} (see `{command} --help`)", file=sys.stderr)
        return exc.exit_code
    except (KeyboardInterrupt, typer.Abort):
        return 130
    except Exception as exc:  # noqa: BLE001 - the user gets one line; TRAINYARD_DEBUG=1 gets the traceback
        if os.environ.get("TRAINYARD_DEBUG"):
            raise
        # Last resort: a botocore or OSError failure no store code translated still gets its infra exit code.
        infra = infra_error(exc)
        if infra is not None:
            print(f"error: {infra}", file=sys.stderr)
            return infra.exit_code
        print(f"error: unexpected {type(exc).__name__}: {exc} (TRAINYARD_DEBUG=1 shows the traceback)",
              file=sys.stderr)
        return 1
    return code if isinstance(code, int) else 0


def entrypoint() -> None:
    """The console script. After an in-process pipeline run, exit without tearing down Airflow's objects.

    Interpreter teardown after `dag.test()` takes about 1.5 s of garbage collection and finalizers; everything the
    run wrote is already closed and committed, so the process flushes its output and ends at once.
    """
    code = main()
    if "airflow" in sys.modules:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
