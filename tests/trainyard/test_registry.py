"""The model registry on both stores: versions 1.0, 1.1 ..., a major bump, aliases latest and best."""

from __future__ import annotations

import threading

import pytest

from trainyard import registry, runs
from trainyard.errors import NotFound


def _add(store, mid, acc, run, **kwargs):
    return registry.add_version(store, "mnist", model_id=mid, metrics={"accuracy_test": acc}, run_id=run,
                                pipeline="train_pipeline", metric="accuracy_test:max", models=[mid], **kwargs)


def test_versions_aliases_and_major_bumps(store):
    first, created = _add(store, "m1", 0.90, "r1")
    assert (first.version, created, first.parent) == ("1.0", True, None)
    assert _add(store, "m2", 0.97, "r2")[0].version == "1.1"
    third, _ = _add(store, "m3", 0.93, "r3")
    assert (third.version, third.parent, third.parent_model_id) == ("1.2", "1.1", "m2")
    doc = registry.load(store, "mnist")
    assert doc.aliases == {"latest": "1.2", "best": "1.1"}
    assert registry.find_version(store, "mnist", "best").model_id == "m2"
    assert _add(store, "m4", 0.5, "r4", major=True)[0].version == "2.0"
    assert registry.find_version(store, "mnist", "latest").version == "2.0"


def test_a_run_that_reuses_the_latest_model_adds_no_version(store):
    _add(store, "m1", 0.9, "r1")
    entry, created = _add(store, "m1", 0.9, "r2")
    assert (entry.version, created) == ("1.0", False)
    assert len(registry.load(store, "mnist").versions) == 1


def test_concurrent_registrations_each_get_their_own_version(store):
    threads = [threading.Thread(target=_add, args=(store, f"m{i}", i / 10, f"r{i}")) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    versions = [v.version for v in registry.load(store, "mnist").versions]
    assert sorted(versions, key=lambda v: int(v.split(".")[1])) == [f"1.{i}" for i in range(6)]
    assert registry.find_version(store, "mnist", "best").model_id == "m5"


def test_unknown_names_and_versions_are_clear(store):
    _add(store, "m1", 0.9, "r1")
    with pytest.raises(NotFound, match=r"no registered model named 'lstm'; registered: mnist"):
        registry.load(store, "lstm")
    with pytest.raises(NotFound, match=r"no version or alias '3.1'"):
        registry.find_version(store, "mnist", "3.1")


def test_pipelines_remember_resources_until_changed(store):
    assert runs.remembered_settings(store, "train_pipeline", "mnist") == {}
    runs.remember_settings(store, "train_pipeline", "mnist", {"cpu": "2", "memory": "4Gi", "gpu": None})
    runs.remember_settings(store, "train_pipeline", "mnist", {"cpu": None, "gpu": 1})
    assert runs.remembered_settings(store, "train_pipeline", "mnist") == {"cpu": "2", "memory": "4Gi", "gpu": 1}
    assert runs.remembered_settings(store, "train_pipeline", "other") == {}
