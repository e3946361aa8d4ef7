"""PublishModelOperator: put a registered model's files into a repo, so datum steps can cross inputs with it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cached_property

from airflow.sdk import BaseOperator

from operators.hooks import StoreHook
from trainyard import registry


class PublishModelOperator(BaseOperator):
    """
    Commit the files of a registered model version (or alias: latest, best) to `repo`. The commit's id is the
    hash of the model's files, so the same model always gives the same commit, and its message names the model.

    :param name: model name (templated); :param version: version or alias (templated); :param repo: target repo
    """

    template_fields: Sequence[str] = ("name", "version")

    def __init__(self, *, name: str, version: str, repo: str, store_uri: str | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.name = name
        self.version = version
        self.repo = repo
        self.store_uri = store_uri

    @cached_property
    def hook(self) -> StoreHook:
        return StoreHook(store_uri=self.store_uri)

    def execute(self, context) -> dict:
        store = self.hook.get_conn()
        entry = registry.find_version(store, self.name, self.version)
        record = registry.load_model(store, entry.model_id)
        files = json.loads(store.get_blob_bytes(record.outputs))
        commit, created = store.commit(self.repo, files,
                                       message=f"model {entry.model_id} ({self.name} {entry.version})")
        self.log.info("model %s %s (%s) is %s%s", self.name, entry.version, entry.model_id, commit.ref,
                      "" if created else ", already published")
        return {"repo": commit.repo, "commit": commit.id, "model_id": entry.model_id, "version": entry.version}
