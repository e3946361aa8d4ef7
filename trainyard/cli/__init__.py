"""The `trainyard` command line (kaos-like), on typer: one module per command group.

deploy (deploy), runs (list, info, logs, kill, trigger), models (models, lineage, get), data (data log, inspect,
repos, ingest, put), template (template list, get), pipeline (Pachyderm specs), server (init, config); app holds
the root, the global options and error handling. `main(argv) -> int` runs a command in-process; the console
script and `python -m trainyard.cli` call `entrypoint()`.
"""

from trainyard.cli.app import EXIT_CODES, app, entrypoint, main
from trainyard.cli.context import store_at as _open_store  # tests open the store the way the CLI does

__all__ = ["EXIT_CODES", "_open_store", "app", "entrypoint", "main"]
