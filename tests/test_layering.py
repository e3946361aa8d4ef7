"""The dependency direction holds: trainyard core never imports Airflow, operators, DAGs or step code."""

from __future__ import annotations

import ast
import subprocess
import sys

from tests.conftest import REPO

FORBIDDEN_TOP_LEVEL = ("airflow", "operators", "dags", "training_images", "kubernetes")


def test_core_modules_import_nothing_from_the_layers_above():
    offenders = []
    for path in sorted((REPO / "trainyard").rglob("*.py")):
        tree = ast.parse(path.read_text())
        # Only module-level imports count; cli.py imports the in-process runner lazily, inside a function.
        for node in tree.body:
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.relative_to(REPO)}: {n}" for n in names if n.split(".")[0] in FORBIDDEN_TOP_LEVEL]
    assert offenders == []


def test_importing_the_core_and_cli_loads_no_airflow():
    code = ("import sys, trainyard.cli, trainyard.store, trainyard.bundles, trainyard.contract; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('airflow', 'kubernetes')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_module_opens_with_a_docstring():
    missing = [str(p.relative_to(REPO)) for root in ("trainyard", "operators", "training_images", "dags", "plugins", "tests")
               for p in sorted((REPO / root).rglob("*.py")) if ast.get_docstring(ast.parse(p.read_text())) is None
               and p.read_text().strip()]
    assert missing == []
