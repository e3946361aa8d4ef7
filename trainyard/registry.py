"""Model registry: model records with their lineage, and per name a version per successful run (1.0, 1.1 ...) with
aliases latest and best."""

from __future__ import annotations

import time
from typing import Any

from trainyard import metrics as metric_rules
from trainyard.errors import AmbiguousId, NotFound
from trainyard.records import Metrics, ModelRecord, RegistryEntry, RegistryVersion
from trainyard.store import keys
from trainyard.store.versioned import Store

ALIASES = ("latest", "best")


# -- model records -------------------------------------------------------------------------------------------------
def publish_model(store: Store, record: ModelRecord) -> tuple[ModelRecord, bool]:
    """Publish a model record (its outputs are already stored), never overwriting one; returns (stored, created)."""
    created = store.put_record(keys.model(record.model_id), record, create_only=True)
    return (record if created else load_model(store, record.model_id)), created


def load_model(store: Store, model_id: str) -> ModelRecord:
    """A model record by its full id; NotFound when no model has that id."""
    return store.get_record(keys.model(model_id), ModelRecord)


def has_model(store: Store, model_id: str) -> bool:
    return store.exists(keys.model(model_id))


def find_model(store: Store, text: str) -> ModelRecord:
    """A model record by its id or a unique prefix of it (`325ad5966d9d_f3eecf11db7d:79b8`, `325ad`)."""
    text = text.strip()
    try:
        return load_model(store, text)
    except NotFound:
        pass
    matches = [mid for mid in map(keys.model_id, store.list_keys(keys.model_prefix(text))) if mid.startswith(text)]
    if not matches:
        raise NotFound(f"no model id starts with {text!r}; list models with `trainyard list` or `trainyard info -i 0`")
    if len(matches) > 1:
        raise AmbiguousId(f"model id {text!r} is ambiguous; candidates: {', '.join(matches)}")
    return load_model(store, matches[0])


# -- registry entries ----------------------------------------------------------------------------------------------
def _next_version(versions: list[RegistryVersion], major: bool) -> str:
    if not versions:
        return "1.0"
    last_major, last_minor = (int(x) for x in versions[-1].version.split("."))
    return f"{last_major + 1}.0" if major else f"{last_major}.{last_minor + 1}"


def _best_version(versions: list[RegistryVersion], spec: str | None) -> str | None:
    if not spec or not versions:
        return None
    name, direction = metric_rules.parse_spec(spec)
    scored = [v for v in versions if metric_rules.is_number(v.metrics.get(name))]
    if not scored:
        return None
    pick = (max if direction == "max" else min)(scored, key=lambda v: float(v.metrics[name]))
    return pick.version


def add_version(store: Store, name: str, *, model_id: str, metrics: Metrics, run_id: str, pipeline: str,
                metric: str | None, models: list[str], major: bool = False) -> tuple[RegistryVersion, bool]:
    """Add the run's best model as the next version; returns (version entry, created).

    A run whose best model is already the latest version (a cache hit) adds nothing, unless a major bump is asked.
    """
    created: dict[str, Any] = {"value": False, "entry": None}
    key = keys.registry(name)

    def mutate(doc: dict | None) -> dict | None:
        entry = RegistryEntry.load(doc, where=key) if doc else RegistryEntry(name=name, metric=metric)
        versions = entry.versions
        if metric:
            entry.metric = metric
        if versions and versions[-1].model_id == model_id and not major:
            created.update(value=False, entry=versions[-1])
            return None
        last = versions[-1] if versions else None
        version = RegistryVersion(
            version=_next_version(versions, major), model_id=model_id, metrics=metrics, run_id=run_id,
            pipeline=pipeline, models=models, registered_at=time.time(), parent=last and last.version,
            parent_model_id=last and last.model_id)
        versions.append(version)
        entry.aliases = {"latest": version.version}
        best = _best_version(versions, entry.metric)
        if best:
            entry.aliases["best"] = best
        created.update(value=True, entry=version)
        return entry.to_json()

    store.update_json(key, mutate, what=f"registry {name}")
    return created["entry"], created["value"]


def load(store: Store, name: str) -> RegistryEntry:
    try:
        return store.get_record(keys.registry(name), RegistryEntry)
    except NotFound:
        names = names_in(store)
        raise NotFound(f"no registered model named {name!r}; registered: {', '.join(names) or 'none yet'}") from None


def names_in(store: Store) -> list[str]:
    return sorted(name for name in map(keys.registry_name, store.list_keys(keys.REGISTRY)) if name)


def find_version(store: Store, name: str, ref: str = "latest") -> RegistryVersion:
    """A version by number ('1.2') or alias ('latest', 'best')."""
    entry = load(store, name)
    version = entry.aliases.get(ref, ref)
    for candidate in entry.versions:
        if candidate.version == version:
            return candidate
    known = ", ".join([*entry.aliases, *(v.version for v in entry.versions)])
    raise NotFound(f"model {name!r} has no version or alias {ref!r}; known: {known}")


def versions_of_model(store: Store, name: str, model_id: str) -> list[str]:
    """Registry versions that point at a model id (usually zero or one)."""
    try:
        entry = store.get_record(keys.registry(name), RegistryEntry)
    except NotFound:
        return []
    return [v.version for v in entry.versions if v.model_id == model_id]
