"""Repo commits as Airflow Asset events: the CLI announces a rawdata commit, caption_pipeline is queued for it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tests.conftest import REPO
from trainyard.cli import main
from trainyard.store import open_store


def _sync_dags_to_db() -> None:
    """What the dag-processor does: parse dags/ and record the DAGs (and the assets they use) in the DB."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import BundleDagBag, sync_bag_to_db

    DagBundlesManager().sync_bundles_to_db()
    bag = BundleDagBag(dag_folder=str(REPO / "dags"), bundle_path=REPO / "dags", bundle_name="dags-folder")
    assert bag.import_errors == {}
    sync_bag_to_db(bag, "dags-folder", None)


def test_a_rawdata_commit_queues_caption_pipeline_with_the_commit(airflow_db, tmp_path, monkeypatch, capsys):
    from airflow.models.asset import AssetDagRunQueue, AssetEvent, AssetModel
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session

    _sync_dags_to_db()
    with create_session() as session:  # dags start paused (airflow.cfg); a user unpauses the one to trigger
        session.query(DagModel).filter_by(dag_id="caption_pipeline").update({"is_paused": False})
    uri = f"file://{tmp_path / 'store'}"
    monkeypatch.setenv("TRAINYARD_ANNOUNCE_COMMITS", "true")
    captions = tmp_path / "captions.tsv"
    captions.write_text("a red circle\thttp://example.com/a.png\n")
    assert main(["--store", uri, "data", "put", "rawdata", str(captions), "--split", "line"]) == 0
    commit = open_store(uri).resolve("rawdata")
    assert "announced rawdata:" in capsys.readouterr().err
    with create_session() as session:
        asset = session.query(AssetModel).filter_by(uri="trainyard://repos/rawdata").one()
        events = session.query(AssetEvent).filter_by(asset_id=asset.id).all()
        assert events[-1].extra == {"repo": "rawdata", "commit": commit.id}
        queued = {q.target_dag_id for q in session.query(AssetDagRunQueue).filter_by(asset_id=asset.id)}
    assert queued == {"caption_pipeline"}  # the scheduler starts it; a model commit triggers nothing


def test_caption_pipeline_processes_the_commit_its_event_names(monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags" / "caption_pipeline.py"))
    plan = bag.dags["caption_pipeline"].get_task("images_plan")
    event = SimpleNamespace(extra={"repo": "rawdata", "commit": "f7abe" + "0" * 59})
    for events, ref in (({"rawdata-asset": [event]}, event.extra["commit"]), ({}, "latest")):
        rendered = plan.render_template(plan.inputs, {"triggering_asset_events": events})
        assert rendered[0]["ref"] == ref


@pytest.mark.parametrize("setting", ["false", None])
def test_commits_are_not_announced_unless_asked(airflow_db, tmp_path, monkeypatch, capsys, setting):
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    _sync_dags_to_db()  # caption_pipeline is scheduled on rawdata: an announced commit would be an event for it
    if setting is None:
        monkeypatch.delenv("TRAINYARD_ANNOUNCE_COMMITS", raising=False)
    else:
        monkeypatch.setenv("TRAINYARD_ANNOUNCE_COMMITS", setting)

    def events() -> int:
        with create_session() as session:
            asset = session.query(AssetModel).filter_by(uri="trainyard://repos/rawdata").one()
            return session.query(AssetEvent).filter_by(asset_id=asset.id).count()

    before = events()
    captions = tmp_path / "captions.tsv"
    captions.write_text("a blue square\thttp://example.com/b.png\n")
    assert main(["--store", f"file://{tmp_path / 'store'}", "data", "put", "rawdata", str(captions),
                 "--split", "line"]) == 0
    assert "announced" not in capsys.readouterr().err
    assert events() == before
