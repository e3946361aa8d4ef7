"""Model registry: models grouped by name, a version per successful run (1.0, 1.1 ...), aliases latest and best."""

from __future__ import annotations

import time
from typing import Any

from trainyard import metrics as metric_rules
from trainyard.errors import NotFound
from trainyard.store.versioned import Store

ALIASES = ("latest", "best")


def registry_key(name: str) -> str:
    return f"registry/{name}.json"


def _next_version(versions: list[dict], major: bool) -> str:
    if not versions:
        return "1.0"
    last_major, last_minor = (int(x) for x in versions[-1]["version"].split("."))
    return f"{last_major + 1}.0" if major else f"{last_major}.{last_minor + 1}"


def _best_version(versions: list[dict], spec: str | None) -> str | None:
    if not spec or not versions:
        return None
    name, direction = metric_rules.parse_spec(spec)
    scored = [v for v in versions if metric_rules.is_number(v.get("metrics", {}).get(name))]
    if not scored:
        return None
    pick = (max if direction == "max" else min)(scored, key=lambda v: float(v["metrics"][name]))
    return pick["version"]


def add_version(store: Store, name: str, *, model_id: str, metrics: dict[str, Any], run_id: str, pipeline: str,
                metric: str | None, models: list[str], major: bool = False) -> tuple[dict, bool]:
    """Add the run's best model as the next version; returns (version entry, created).

    A run whose best model is already the latest version (a cache hit) adds nothing, unless a major bump is asked.
    """
    created = {"value": False, "entry": None}

    def mutate(doc: dict | None) -> dict | None:
        doc = doc or {"name": name, "metric": metric, "versions": [], "aliases": {}}
        versions = doc["versions"]
        if metric:
            doc["metric"] = metric
        if versions and versions[-1]["model_id"] == model_id and not major:
            created.update(value=False, entry=versions[-1])
            return None
        entry = {
            "version": _next_version(versions, major), "model_id": model_id, "metrics": metrics,
            "run_id": run_id, "pipeline": pipeline, "models": models, "registered_at": time.time(),
            "parent": versions[-1]["version"] if versions else None,
            "parent_model_id": versions[-1]["model_id"] if versions else None,
        }
        versions.append(entry)
        doc["aliases"] = {"latest": entry["version"]}
        best = _best_version(versions, doc.get("metric"))
        if best:
            doc["aliases"]["best"] = best
        created.update(value=True, entry=entry)
        return doc

    store.update_json(registry_key(name), mutate, what=f"registry {name}")
    return created["entry"], created["value"]


def load(store: Store, name: str) -> dict:
    try:
        return store.get_json(registry_key(name))
    except NotFound:
        names = names_in(store)
        raise NotFound(f"no registered model named {name!r}; registered: {', '.join(names) or 'none yet'}") from None


def names_in(store: Store) -> list[str]:
    return sorted(k.removeprefix("registry/").removesuffix(".json") for k in store.backend.list("registry/")
                  if k.endswith(".json"))


def find_version(store: Store, name: str, ref: str = "latest") -> dict:
    """A version by number ('1.2') or alias ('latest', 'best')."""
    doc = load(store, name)
    version = doc["aliases"].get(ref, ref)
    for entry in doc["versions"]:
        if entry["version"] == version:
            return entry
    known = ", ".join([*doc["aliases"], *(v["version"] for v in doc["versions"])])
    raise NotFound(f"model {name!r} has no version or alias {ref!r}; known: {known}")


def versions_of_model(store: Store, name: str, model_id: str) -> list[str]:
    """Registry versions that point at a model id (usually zero or one)."""
    try:
        doc = store.get_json(registry_key(name))
    except NotFound:
        return []
    return [v["version"] for v in doc["versions"] if v["model_id"] == model_id]
