"""Datum steps (Pachyderm-style): plan the datums that still need processing, map over chunks, collect outputs."""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cached_property
from typing import Any

from airflow.sdk import Asset, BaseOperator

from operators.build import build_step
from operators.hooks import StoreHook
from operators.step import TrainyardStepOperator, user_code_pod
from trainyard import config
from trainyard.datums import (
    DatumError,
    DatumInput,
    check_combine,
    chunk,
    datum_keys,
    datum_records,
    transform_version,
    work_units,
)
from trainyard.k8s import built_image
from trainyard.store.versioned import Store


class DatumStepDeclarationError(ValueError):
    """A datum step was declared with inputs that cannot work; raised when the DAG is parsed."""


def _check_inputs(step: str, inputs: list[dict[str, str]], combine: str) -> list[dict[str, str]]:
    try:
        check_combine(combine, len(inputs))
    except DatumError as exc:
        raise DatumStepDeclarationError(f"step {step!r}: {exc}") from None
    for spec in inputs:
        missing = {"repo", "glob"} - set(spec)
        if missing:
            raise DatumStepDeclarationError(f"step {step!r}: input {spec} lacks {', '.join(sorted(missing))}")
        if combine in ("inner", "outer") and not spec.get("join_on"):
            raise DatumStepDeclarationError(f"step {step!r}: a join needs join_on on each input, e.g. /(*).tsv")
    return [{"name": s.get("name", s["repo"]), "ref": "latest", **s} for s in inputs]


class PlanDatumsOperator(BaseOperator):
    """
    Resolve the step's inputs to commits, cut them into work units (datums, joined pairs or cross pairings) and keep
    those whose output, keyed by unit content, the transform's code and the params, does not exist yet; return them
    in at most `max_tasks` chunks, which the datum step maps over.

    :param inputs: [{"repo", "glob", "name"?, "join_on"?, "ref"?}]; one input, or two for a join or cross
    :param combine: single, inner / outer (join on the inputs' capture groups) or cross
    :param step_params: the transform's params (TRAINYARD_PARAMS); part of every output's key
    """

    template_fields: Sequence[str] = ("code_ref", "inputs")

    def __init__(self, *, step: str, inputs: list[dict[str, str]], code_repo: str | None, transform: str,
                 combine: str = "single", step_params: dict[str, Any] | None = None, code_ref: str = "latest",
                 code_paths: Sequence[str] = (), max_tasks: int | None = None, store_uri: str | None = None,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.step = step
        self.inputs = _check_inputs(step, inputs, combine)
        self.combine = combine
        if not code_repo and not transform.startswith("builtin:"):
            raise DatumStepDeclarationError(f"step {step!r}: transform {transform!r} needs code_repo, the source repo "
                                            "that holds it (only builtin: transforms need none)")
        self.code_repo, self.code_ref = code_repo, code_ref
        self.transform = transform
        self.code_paths = list(code_paths)
        self.step_params = dict(step_params or {})
        self.max_tasks = max_tasks
        self.store_uri = store_uri

    @cached_property
    def hook(self) -> StoreHook:
        return StoreHook(store_uri=self.store_uri)

    def execute(self, context) -> list[dict]:
        store = self.hook.get_conn()
        resolved, datum_inputs = [], []
        for spec in self.inputs:
            commit = store.resolve(spec["repo"], spec["ref"])
            resolved.append({"name": spec["name"], "repo": commit.repo, "commit": commit.id, "glob": spec["glob"],
                             "join_on": spec.get("join_on")})
            datum_inputs.append(DatumInput(name=spec["name"], manifest=commit.manifest, glob=spec["glob"],
                                           join_on=spec.get("join_on")))
        code = store.resolve(self.code_repo, self.code_ref) if self.code_repo else None
        units = work_units(datum_inputs, self.combine)
        version = transform_version(self.transform, code.manifest if code else None, self.code_paths)
        pipeline = context["dag"].dag_id
        # What was processed, in a few reads (an index and the batch key lists it does not cover), not one per datum.
        done = datum_records(store, pipeline, self.step).keys()
        names = sorted(units)
        keyed = datum_keys((units[name]["id"] for name in names), version, self.step_params)
        pending = [name for name, key in zip(names, keyed) if key not in done]
        del done, keyed
        settings = self.hook.settings  # the settings the store was opened with, read once
        chunks = chunk(pending, self.max_tasks or settings.max_datum_tasks) if pending else []
        self.log.info("%s: %s datum(s) from %s (%s); %s to process in %s task(s), %s already processed",
                      self.step, len(units), ", ".join(f"{r['repo']}:{r['commit'][:5]}" for r in resolved),
                      self.combine, len(pending), len(chunks), len(units) - len(pending))
        # On Kubernetes a transform runs in its code repo's image, built once per code commit (the build step
        # skips a tag that exists); builtin transforms run in the steps image.
        image = built_image(settings.registry, code.repo, code.id, settings.step_image) if code else ""
        context["ti"].xcom_push(key="plan", value={
            "inputs": resolved, "code": f"{code.repo}:{code.id}" if code else "", "code_version": version,
            "image": image,
            "datums": len(units), "pending": len(pending),
            "skipped": len(units) - len(pending), "tasks": len(chunks)})
        return chunk_refs(store, pending, chunks,
                          [c[0] if len(c) == 1 else f"{c[0]} .. {c[-1]} ({len(c)})" for c in chunks])


# A chunk's datum list above this many bytes is not put in the XCom and argv (one argv string may hold 128 KiB):
# the plan stores the pending list once, as a blob, and each chunk names its slice of it.
INLINE_CHUNK_BYTES = 16 * 1024


def chunk_refs(store: Store, pending: list[str], chunks: list[list[str]], labels: list[str]) -> list[dict]:
    """What each mapped task gets: {"datums": [...]} for a small chunk, else {"pending": sha, "start", "stop"};
    both with the task's label."""
    if all(len(json.dumps(c)) <= INLINE_CHUNK_BYTES for c in chunks):
        return [{"datums": c, "label": label} for c, label in zip(chunks, labels)]
    sha = store.put_blob_bytes(json.dumps(pending).encode())
    refs, start = [], 0
    for c, label in zip(chunks, labels):
        refs.append({"pending": sha, "start": start, "stop": start + len(c), "label": label})
        start += len(c)
    return refs


def _step_argv(plan_task: str, step: str, combine: str, transform: str,
               step_params: dict[str, Any] | None) -> tuple[list[str], list[str]]:
    """(templated, literal) argv every task of a datum step takes (training_images.datum.inputs parses it)."""
    plan = f"ti.xcom_pull(task_ids='{plan_task}', key='plan')"
    templated = ["--inputs", f"{{{{ {plan}['inputs'] | tojson }}}}", "--code", f"{{{{ {plan}['code'] }}}}",
                 "--code-version", f"{{{{ {plan}['code_version'] }}}}", "--step", step,
                 "--pipeline", "{{ dag.dag_id }}"]
    literal = ["--combine", combine, "--transform", transform,
               "--params", json.dumps(step_params or {}, sort_keys=True)]
    return templated, literal


def chunk_argv(chunk: dict) -> list[str]:
    """The argv that hands a task its chunk (training_images.datum and .datum.pps read both forms)."""
    if "pending" in chunk:
        return ["--datums-from", f"{chunk['pending']}:{chunk['start']}:{chunk['stop']}"]
    return ["--datums", json.dumps(chunk["datums"])]


class DatumStepOperator(TrainyardStepOperator):
    """
    Process one chunk of work units: `python -m training_images.datum`, mapped over the plan's chunks.

    :param chunk: {"datums": [...], "label": ...} from the plan, or for a large chunk {"pending": sha of the plan's
        pending list, "start", "stop", "label"}; passed as literal argv, never rendered
    """

    def __init__(self, *, chunk: dict, plan_task: str, step_name: str, combine: str, transform: str,
                 step_params: dict[str, Any] | None = None, attempts: int = 2, **kwargs) -> None:
        self.chunk = chunk
        arguments, literal = _step_argv(plan_task, step_name, combine, transform, step_params)
        super().__init__(step="datum", arguments=[*arguments, "--attempts", str(attempts)],
                         literal_arguments=[*literal, *chunk_argv(chunk)], **kwargs)

    def build_pod_request_obj(self, context=None, *, dry_run: bool = False):
        pod = super().build_pod_request_obj(context, dry_run=dry_run)
        # The transform is user code: on Kubernetes it gets a container of its own, without the store's Secret.
        return self.checked(user_code_pod(pod, self.settings.step_image, "training_images.datum")) \
            if self.on_kubernetes else pod


def repo_asset(repo: str) -> Asset:
    """The Airflow Asset of a trainyard repo: a DAG scheduled on it runs when a step commits to the repo."""
    return Asset(uri=f"trainyard://repos/{repo}", name=f"trainyard-repo-{repo}")


class CollectOperator(TrainyardStepOperator):
    """The collect step; its outlet event (the output repo's Asset) carries the new commit id in `extra`."""

    def execute(self, context):
        result = super().execute(context)
        for asset in self.outlets:
            if isinstance(asset, Asset) and result:
                repo, _, commit = result["output"].partition(":")
                context["outlet_events"][asset].extra = {"repo": repo, "commit": commit, "created": result["created"]}
        return result


def datum_step(step: str, *, inputs: list[dict[str, str]], transform: str, output_repo: str,
               code_repo: str | None = None,
               combine: str = "single", step_params: dict[str, Any] | None = None, code_ref: str = "latest",
               code_paths: Sequence[str] = (), max_tasks: int | None = None, parallelism: int | None = None,
               attempts: int = 2,
               nest_outputs: bool = False, image: str | None = None, cmds: Sequence[str] | None = None,
               **step_options) -> tuple[BaseOperator, Any, TrainyardStepOperator]:
    """Wire plan -> mapped datum tasks -> collect for one step; returns the three so callers can chain them.

    nest_outputs puts each datum's outputs under a folder named after it, for transforms that write the same file
    name for every datum (Pachyderm merges all outputs into one tree, so they would collide).
    image and cmds (e.g. a Pachyderm transform.image) apply to the mapped datum tasks only, over the code repo's
    built image; plan and collect are trainyard's own steps and keep the steps image.
    """
    settings = config.load().checked()  # a runner and store that cannot work together fail the DAG's parse
    plan = PlanDatumsOperator(task_id=f"{step}_plan", step=step, inputs=inputs, combine=combine,
                              code_repo=code_repo, code_ref=code_ref, transform=transform, step_params=step_params,
                              code_paths=code_paths, max_tasks=max_tasks)
    build, in_image = None, {}
    if settings.on_kubernetes and code_repo and not transform.startswith("builtin:"):
        # The transform needs its code repo's dependencies: it runs in the image built from that repo's commit.
        planned = f"ti.xcom_pull(task_ids='{plan.task_id}', key='plan')"
        build = build_step(task_id=f"{step}_build", source=f"{{{{ {planned}['code'] }}}}",
                           image=f"{{{{ {planned}['image'] }}}}",
                           skip_reason=f"{{{{ '' if {planned}['tasks'] else 'no datum to process: nothing to build' }}}}")
        in_image = {"image": f"{{{{ {planned}['image'] }}}}", "cmds": ["python3", "-m", "training_images.datum"]}
    mapped = DatumStepOperator.partial(
        task_id=step, plan_task=plan.task_id, step_name=step, combine=combine, transform=transform,
        step_params=step_params,
        attempts=attempts, max_active_tis_per_dagrun=parallelism or settings.parallelism,
        map_index_template="{{ task.chunk['label'] }}",
        **{**in_image, **({"image": image} if image else {}), **({"cmds": list(cmds)} if cmds else {}),
           **step_options},
    ).expand(chunk=plan.output)
    arguments, literal = _step_argv(plan.task_id, step, combine, transform, step_params)
    # none_failed: when every datum was already processed the mapped step has no tasks (skipped) and collect runs.
    # A templated output repo (chosen per run) has no fixed Asset; a fixed one announces each commit.
    outlets = [] if "{{" in output_repo else [repo_asset(output_repo)]
    collect = CollectOperator(
        task_id=f"{step}_collect", step="collect", trigger_rule="none_failed", outlets=outlets,
        arguments=[*arguments, "--output", output_repo],
        literal_arguments=[*literal, *(["--nest"] if nest_outputs else [])],
        **step_options,
    )
    if build is not None:
        plan >> build >> mapped >> collect
    else:
        plan >> mapped >> collect
    return plan, mapped, collect
