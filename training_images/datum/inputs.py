"""Datum step inputs: the resolved input commits of a step, read back into work units by every task of the step."""

from __future__ import annotations

import json

from trainyard.datums import DatumInput, work_units
from trainyard.store.versioned import Store


def load_units(store: Store, inputs_json: str, combine: str) -> tuple[dict, list[dict]]:
    """(work units, the input specs) from the plan's resolved inputs: [{"name", "repo", "commit", "glob", "join_on"}]."""
    specs = json.loads(inputs_json)
    inputs = [DatumInput(name=s["name"], manifest=store.get_commit(s["repo"], s["commit"]).manifest, glob=s["glob"],
                         join_on=s.get("join_on")) for s in specs]
    return work_units(inputs, combine), specs
