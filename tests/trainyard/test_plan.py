"""trainyard.plan, the one place that decides what a run trains: commits pinned, the grid merged over params.json into
deterministic model ids, an existing model a cache hit unless caching is off. No Airflow is involved."""

from __future__ import annotations

import json
import shutil

from tests.conftest import REPO
from trainyard import config, contract
from trainyard.bundles import DataBundle, SourceBundle, deploy_bundle
from trainyard.options import RunOptions
from trainyard.plan import plan_run
from trainyard.store import keys

FIXTURE = REPO / "tests" / "fixtures"


def _deployed(store, tmp_path):
    src, data = tmp_path / "src", tmp_path / "data"
    shutil.copytree(FIXTURE / "sleepy-train", src)
    shutil.copytree(FIXTURE / "sleepy-train-data", data)
    (src / "model" / "params.json").write_text(json.dumps({"rate": 0.1, "run": 0}))
    source, _, _ = deploy_bundle(store, SourceBundle.load(str(src)))
    data_commit, _, _ = deploy_bundle(store, DataBundle.load(str(data)))
    return source, data_commit


def _plan(store, settings, options: dict, **kwargs):
    return plan_run(store, settings, pipeline="train_pipeline", run_id="r1", source="src", data="data",
                    options=RunOptions.parse(options, settings), **kwargs)


def test_a_run_is_planned_without_airflow_and_an_existing_model_is_a_cache_hit(store, tmp_path):
    settings = config.load()
    source, data = _deployed(store, tmp_path)
    planned = _plan(store, settings, {"hyperparams": {"run": [1, 2]}})
    ids = [contract.model_id(source.id, data.id, {"rate": 0.1, "run": r}) for r in (1, 2)]
    assert [c.model_id for c in planned.plan.combinations] == ids
    assert [c.label for c in planned.plan.combinations] == ["run=1", "run=2"]
    assert [c["model_id"] for c in planned.to_train] == ids and not planned.all_cached
    assert planned.plan.source == f"src:{source.id}" and planned.plan.data == f"data:{data.id}"

    # One model exists: that combination is a cache hit, the other trains.
    store.put_json(keys.model(ids[0]), {"model_id": ids[0]})
    planned = _plan(store, settings, {"hyperparams": {"run": [1, 2]}})
    assert [c.cached for c in planned.plan.combinations] == [True, False]
    assert [c["model_id"] for c in planned.to_train] == [ids[1]]

    # Both exist: the whole run is cached, unless the run or the DAG turns caching off.
    store.put_json(keys.model(ids[1]), {"model_id": ids[1]})
    assert _plan(store, settings, {"hyperparams": {"run": [1, 2]}}).all_cached
    assert not _plan(store, settings, {"hyperparams": {"run": [1, 2]}, "no_cache": True}).all_cached
    assert not _plan(store, settings, {"hyperparams": {"run": [1, 2]}}, cache="false").all_cached


def test_declared_hyperparameters_and_remembered_options_feed_the_plan(store, tmp_path):
    settings = config.load()
    _deployed(store, tmp_path)
    first = _plan(store, settings, {"cpu": "0.5", "timeout": 600}, declared={"run": 3})
    assert [c.hyper for c in first.plan.combinations] == [{"run": 3}]
    first.remember(store)
    # Options given once are remembered for the next plan of the same pipeline and source.
    second = _plan(store, settings, {})
    assert (second.plan.resources.cpu, second.plan.timeout) == ("0.5", 600)
    assert second.kept == {"cpu": "0.5", "timeout": 600}
