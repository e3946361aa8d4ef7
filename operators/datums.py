"""Datum steps (Pachyderm-style): plan the datums that still need processing, map over chunks, collect outputs."""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cached_property
from typing import Any

from airflow.sdk import BaseOperator

from operators.hooks import StoreHook
from operators.step import TrainyardStepOperator
from trainyard import config
from trainyard.datums import chunk, code_version, datum_id, datum_key, glob_datums, record_key, transform_code_dir


class PlanDatumsOperator(BaseOperator):
    """
    Cut the input commit into datums by a glob and keep those whose output (keyed by datum content, step code and
    params) does not exist yet; return them in at most `max_tasks` chunks, which the datum step maps over.

    :param step: step name (outputs are keyed per DAG and step)
    :param input_repo: input repo (templated); `input_ref` 'latest' or a commit id (templated)
    :param code_repo: source repo holding the transform (templated); `code_ref` likewise
    """

    template_fields: Sequence[str] = ("input_repo", "input_ref", "code_repo", "code_ref")

    def __init__(self, *, step: str, input_repo: str, glob: str, code_repo: str, transform: str,
                 params: dict[str, Any] | None = None, input_ref: str = "latest", code_ref: str = "latest",
                 max_tasks: int | None = None, store_uri: str | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.step = step
        self.input_repo, self.input_ref = input_repo, input_ref
        self.code_repo, self.code_ref = code_repo, code_ref
        self.glob = glob
        self.transform = transform
        self.params = dict(params or {})
        self.max_tasks = max_tasks
        self.store_uri = store_uri

    @cached_property
    def hook(self) -> StoreHook:
        return StoreHook(store_uri=self.store_uri)

    def execute(self, context) -> list[dict]:
        store = self.hook.get_conn()
        source = store.resolve(self.input_repo, self.input_ref)
        code = store.resolve(self.code_repo, self.code_ref)
        datums = glob_datums(source.manifest, self.glob)
        version = code_version(code.manifest, [transform_code_dir(self.transform)])
        pipeline = context["dag"].dag_id
        pending = [d for d, files in sorted(datums.items())
                   if not store.exists(record_key(pipeline, self.step, datum_key(datum_id(files), version,
                                                                                  self.params)))]
        max_tasks = self.max_tasks or int(config.load().max_datum_tasks)
        chunks = chunk(pending, max_tasks) if pending else []
        self.log.info("%s: %s datum(s) in %s under %s; %s to process in %s task(s), %s already processed",
                      self.step, len(datums), source.ref, self.glob, len(pending), len(chunks),
                      len(datums) - len(pending))
        context["ti"].xcom_push(key="plan", value={
            "input": f"{source.repo}:{source.id}", "code": f"{code.repo}:{code.id}", "datums": len(datums),
            "pending": len(pending), "skipped": len(datums) - len(pending), "tasks": len(chunks)})
        return [{"datums": c, "label": c[0] if len(c) == 1 else f"{c[0]} .. {c[-1]} ({len(c)})"} for c in chunks]


class DatumStepOperator(TrainyardStepOperator):
    """
    Process one chunk of datums: `python -m training_images.datum`, mapped over the plan's chunks.

    :param chunk: {"datums": [...], "label": ...} from the plan; passed as literal argv, never rendered
    """

    def __init__(self, *, chunk: dict, plan_task: str, step_name: str, glob: str, transform: str,
                 params: dict[str, Any] | None = None, attempts: int = 2, **kwargs) -> None:
        self.chunk = chunk
        plan = f"ti.xcom_pull(task_ids='{plan_task}', key='plan')"
        arguments = ["--input", f"{{{{ {plan}['input'] }}}}", "--code", f"{{{{ {plan}['code'] }}}}",
                     "--step", step_name, "--pipeline", "{{ dag.dag_id }}", "--attempts", str(attempts)]
        literal = ["--glob", glob, "--transform", transform, "--params", json.dumps(params or {}, sort_keys=True),
                   "--datums", json.dumps(chunk["datums"])]
        super().__init__(step="datum", arguments=arguments, literal_arguments=literal, **kwargs)


def datum_step(step: str, *, input_repo: str, glob: str, code_repo: str, transform: str, output_repo: str,
               params: dict[str, Any] | None = None, input_ref: str = "latest", code_ref: str = "latest",
               max_tasks: int | None = None, parallelism: int | None = None, attempts: int = 2,
               **step_options) -> tuple[BaseOperator, Any, TrainyardStepOperator]:
    """Wire plan -> mapped datum tasks -> collect for one step; returns the three so callers can chain them."""
    plan = PlanDatumsOperator(task_id=f"{step}_plan", step=step, input_repo=input_repo, input_ref=input_ref,
                              glob=glob, code_repo=code_repo, code_ref=code_ref, transform=transform, params=params,
                              max_tasks=max_tasks)
    mapped = DatumStepOperator.partial(
        task_id=step, plan_task=plan.task_id, step_name=step, glob=glob, transform=transform, params=params,
        attempts=attempts, max_active_tis_per_dagrun=parallelism or int(config.load().parallelism),
        map_index_template="{{ task.chunk['label'] }}", **step_options,
    ).expand(chunk=plan.output)
    planned = f"ti.xcom_pull(task_ids='{plan.task_id}', key='plan')"
    # none_failed: when every datum was already processed the mapped step has no tasks (skipped) and collect runs.
    collect = TrainyardStepOperator(
        task_id=f"{step}_collect", step="collect", trigger_rule="none_failed",
        arguments=["--input", f"{{{{ {planned}['input'] }}}}", "--code", f"{{{{ {planned}['code'] }}}}",
                   "--step", step, "--pipeline", "{{ dag.dag_id }}", "--output", output_repo],
        literal_arguments=["--glob", glob, "--transform", transform,
                           "--params", json.dumps(params or {}, sort_keys=True)],
        **step_options,
    )
    plan >> mapped >> collect
    return plan, mapped, collect
