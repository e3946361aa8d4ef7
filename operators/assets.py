"""Announce repo commits as Airflow Asset events, so DAGs scheduled on a repo run when it gets a new commit."""

from __future__ import annotations

import logging

from operators.datums import repo_asset

log = logging.getLogger(__name__)


def announce_commit(repo: str, commit_id: str) -> bool:
    """Record an Asset event for `trainyard://repos/<repo>` (the commit id in extra) in Airflow's metadata DB.

    Airflow queues a run of every DAG scheduled on that asset; the scheduler starts it. Returns False when no DAG
    knows the asset yet (no DAG produces or consumes the repo), in which case there is nothing to trigger.
    """
    from airflow.assets.manager import AssetManager
    from airflow.models.asset import AssetModel
    from airflow.utils.session import create_session

    uri = repo_asset(repo).uri
    with create_session() as session:
        asset = session.query(AssetModel).filter_by(uri=uri).one_or_none()
        if asset is None:
            log.info("no DAG is scheduled on %s; nothing to trigger", uri)
            return False
        AssetManager.register_asset_change(asset=asset, extra={"repo": repo, "commit": commit_id},
                                           session=session, source_is_api=True)
    return True
