"""The dependency direction holds: trainyard core never imports Airflow, operators, DAGs or step code."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

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


SOURCE_DIRS = ("trainyard", "operators", "training_images", "plugins", "dags")
# The store's top-level key prefixes; only trainyard/store/keys.py may spell them.
KEY_PREFIXES = ("blobs/", "trees/", "repos/", "runs/", "logs/", "models/", "registry/", "pipelines/", "datums/",
                "provenance/", "pps/")
# A prefix at the start of a string, or after a space, quote or backtick (not inside a URI like trainyard://repos/).
_KEY_LITERAL = re.compile(r"(?:^|[\s`'\"(])(?:" + "|".join(re.escape(p) for p in KEY_PREFIXES) + ")")


def _source_files():
    for root in SOURCE_DIRS:
        yield from sorted((REPO / root).rglob("*.py"))


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the string constants that are docstrings (a bare string statement), which may describe the layout."""
    return {id(node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)}


def test_nothing_outside_the_store_package_touches_a_store_backend():
    offenders = []
    for path in _source_files():
        rel = path.relative_to(REPO)
        if rel.parts[:2] == ("trainyard", "store"):
            continue
        offenders += [f"{rel}:{node.lineno}" for node in ast.walk(ast.parse(path.read_text()))
                      if isinstance(node, ast.Attribute) and node.attr == "backend"]
    assert offenders == []


def test_only_the_key_module_spells_store_keys():
    from trainyard.store import keys

    assert set(KEY_PREFIXES) == set(keys.PREFIXES)
    offenders = []
    for path in _source_files():
        rel = path.relative_to(REPO)
        if rel == Path("trainyard/store/keys.py"):
            continue
        tree = ast.parse(path.read_text())
        docs = _docstrings(tree)
        for node in ast.walk(tree):
            pieces = []
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
                pieces = [node.value]
            elif isinstance(node, ast.JoinedStr):
                pieces = [v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str)]
            offenders += [f"{rel}:{node.lineno}: {piece[:60]!r}" for piece in pieces
                          if _KEY_LITERAL.search(piece) or "_results.json" in piece]
    assert offenders == []


def _config_loads_in_operator_inits(root) -> list[str]:
    """`config.load(` calls inside the `__init__` of any class under root (operators read settings lazily)."""
    offenders = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
            for init in (n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"):
                offenders += [f"{path.name}:{call.lineno}: {cls.name}.__init__" for call in ast.walk(init)
                              if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
                              and call.func.attr == "load" and isinstance(call.func.value, ast.Name)
                              and call.func.value.id == "config"]
    return offenders


def test_no_operator_reads_settings_in_its_init():
    """Operators store their arguments in __init__ and read settings when they run (a cached_property), as the
    provider operators do: a DAG file is parsed again and again, and settings belong to the worker's run."""
    assert _config_loads_in_operator_inits(REPO / "operators") == []
