"""How commands print: JSON for scripts on stdout, tables drawn by rich, notes on stderr."""

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from typing import Any


def say(line: str) -> None:
    """A note for the person at the terminal, on stderr, so stdout stays data (and JSON with --json)."""
    print(line, file=sys.stderr, flush=True)


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


def emit(result: Any, as_json: bool, line: str | None) -> None:
    """The result as JSON, or else the human line (nothing when there is none)."""
    if as_json:
        print_json(result)
    elif line:
        print(line)


def print_table(rows: list[dict], columns: list[str]) -> None:
    """Rows as a table with upper-case headers; on a terminal it fits the width, elsewhere no cell is cut."""
    if not rows:
        print("(none)")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, show_edge=False, pad_edge=False, header_style="bold")
    for column in columns:
        table.add_column(column.upper(), overflow="fold")
    for row in rows:
        table.add_row(*(str(row.get(column, "")) for column in columns))
    console = Console(file=sys.stdout, highlight=False)
    if console.is_terminal:
        console.print(table)
        return
    # Piped or captured: as wide as the table needs (scripts grep whole ids), without trailing padding.
    console = Console(file=sys.stdout, highlight=False, width=1_000_000)
    with console.capture() as captured:
        console.print(table)
    sys.stdout.write("".join(line.rstrip() + "\n" for line in captured.get().splitlines()))


def duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


@contextlib.contextmanager
def stdout_to_stderr(enabled: bool) -> Iterator[None]:
    """Send everything written to fd 1 (Airflow's task logs included) to stderr, so stdout stays pure JSON."""
    if not enabled:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
