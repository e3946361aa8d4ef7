"""ResolveInputsOperator: turn the run's source/data refs ('latest' or short ids) into full commit ids."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

from airflow.sdk import BaseOperator

from operators.hooks import StoreHook
from trainyard import config


class ResolveInputsOperator(BaseOperator):
    """Pin a run to exact commits so every later step sees the same inputs even if a branch moves."""

    template_fields: Sequence[str] = ("source", "source_ref", "data", "data_ref")

    def __init__(self, *, source: str, data: str, source_ref: str = "latest", data_ref: str = "latest",
                 store_uri: str | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.source = source
        self.source_ref = source_ref
        self.data = data
        self.data_ref = data_ref
        self.store_uri = store_uri

    @cached_property
    def hook(self) -> StoreHook:
        return StoreHook(store_uri=self.store_uri)

    def execute(self, context) -> dict:
        store = self.hook.get_conn()
        source = store.resolve(self.source, self.source_ref)
        data = store.resolve(self.data, self.data_ref)
        settings = config.load(store=self.store_uri)
        self.log.info("source %s (%s) data %s (%s)", source.ref, source.message, data.ref, data.message)
        return {
            "source": f"{source.repo}:{source.id}", "source_short": source.ref,
            "data": f"{data.repo}:{data.id}", "data_short": data.ref,
            "name": source.repo,
            "image": f"{settings.registry}/{source.repo}:{source.id[:12]}",
        }
