"""What every task of a datum step shares: its argv, and its inputs read back into work units and a code version."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from typing import Any

from trainyard.datums import DatumInput, transform_version, work_units
from trainyard.store import parse_ref
from trainyard.store.versioned import Commit, Store


def add_step_arguments(parser: argparse.ArgumentParser) -> None:
    """The argv the plan's XCom and the step declaration give both the datum tasks and collect."""
    parser.add_argument("--inputs", required=True,
                        help='JSON list of resolved inputs [{"name", "repo", "commit", "glob", "join_on"}]')
    parser.add_argument("--combine", default="single", help="single, inner or outer (join), or cross")
    parser.add_argument("--code", default="", help="source commit holding the transform, as repo:id (none for builtin:)")
    parser.add_argument("--code-version", default="", help="the code version the plan computed (keys outputs)")
    parser.add_argument("--transform", required=True, help="the transform's path in the source bundle")
    parser.add_argument("--step", required=True, help="step name; outputs are keyed per pipeline and step")
    parser.add_argument("--pipeline", default=os.environ.get("TRAINYARD_DAG_ID", "datums"))
    parser.add_argument("--params", default="{}", help="step params as a JSON object")


@dataclasses.dataclass(frozen=True)
class StepInputs:
    """A datum step's work units (name -> {"files", "id"}), input specs, code commit, code version and params."""

    units: dict[str, dict[str, Any]]
    specs: list[dict]
    code: Commit | None
    version: str
    params: dict[str, Any]


def load_step(store: Store, args: argparse.Namespace) -> StepInputs:
    specs = json.loads(args.inputs)
    inputs = [DatumInput(name=s["name"], manifest=store.get_commit(s["repo"], s["commit"]).manifest, glob=s["glob"],
                         join_on=s.get("join_on")) for s in specs]
    code = store.resolve(*parse_ref(args.code)) if args.code else None
    # The plan's version is authoritative, so every task of a run keys outputs the same way.
    version = args.code_version or transform_version(args.transform, code.manifest if code else None)
    return StepInputs(units=work_units(inputs, args.combine), specs=specs, code=code, version=version,
                      params=json.loads(args.params))
