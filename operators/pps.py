"""Pachyderm pipeline specs as Airflow DAGs: plan the pending datums, map the transform over chunks, collect."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from datetime import timedelta
from functools import cached_property
from pathlib import Path

from airflow.sdk import DAG, AssetAny, BaseHook, BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowSkipException
from airflow.sdk.log import mask_secret

from operators.datums import chunk_argv, chunk_refs, repo_asset
from operators.hooks import StoreHook
from operators.pipeline import dag_defaults
from operators.step import TrainyardStepOperator
from trainyard import config, pps
from trainyard.datums import chunk, datum_keys, datum_label, datum_records, input_datums, pfs_datum_id
from trainyard.errors import TrainyardError
from trainyard.store import keys

log = logging.getLogger(__name__)

DAG_FILE = Path(__file__).resolve().parents[1] / "dags" / "pachyderm_pipelines.py"
PLAN = "ti.xcom_pull(task_ids='plan', key='plan')"
STEP_CMD = ["python", "-m", "training_images.datum.pps"]
SECRETS_ENV = "TRAINYARD_PPS_SECRETS"
CONNECTION_FIELDS = ("login", "password", "host", "schema", "port")


class PipelineGone(AirflowException):
    """The pipeline was deleted after its DAG was parsed."""


def _event_commits(context) -> dict[str, str]:
    """The newest commit each triggering Asset event names, by repo (an event-triggered run processes that commit)."""
    pinned: dict[str, str] = {}
    for events in (context.get("triggering_asset_events") or {}).values():
        for event in events:
            extra = getattr(event, "extra", None) or {}
            if extra.get("repo") and extra.get("commit"):
                pinned[extra["repo"]] = extra["commit"]
    return pinned


class PlanPipelineOperator(BaseOperator):
    """
    Resolve a pipeline's inputs, wait (skip) while an upstream pipeline has not caught up with its own inputs, cut
    the inputs into datums and return the datums not processed yet in at most `parallelism_spec.constant` chunks.

    Nothing is templated: the spec is user content, and is read from the store by its hash.

    :param pipeline: the pipeline's name; :param spec_sha: the stored spec the DAG was built from
    :param code: the source commit (repo:id) or ""; :param version: the transform version that keys outputs
    """

    template_fields: Sequence[str] = ()

    def __init__(self, *, pipeline: str, spec_sha: str, code: str, version: str, store_uri: str | None = None,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.pipeline = pipeline
        self.spec_sha = spec_sha
        self.code = code
        self.version = version
        self.store_uri = store_uri

    @cached_property
    def hook(self) -> StoreHook:
        return StoreHook(store_uri=self.store_uri)

    def execute(self, context) -> list[dict]:
        store = self.hook.get_conn()
        records = pps.load_pipelines(store)
        if self.pipeline not in records:
            raise PipelineGone(f"pipeline {self.pipeline!r} was deleted; its DAG goes away at the next parse")
        spec = pps.parse_spec(json.loads(store.get_blob_bytes(self.spec_sha)), f"pipeline {self.pipeline}")
        waiting = pps.waiting_for(store, records, spec)
        if waiting:
            raise AirflowSkipException(f"{self.pipeline} waits for {waiting}; that pipeline's commit starts this one "
                                       "again")
        # With one input repo the run processes the commit its event named; with several, their heads together.
        pinned = _event_commits(context) if len(spec.input_repos()) == 1 else {}
        resolved = pps.resolve_inputs(store, spec, pinned)
        manifests = [store.get_commit(r["repo"], r["commit"]).manifest if r["commit"] else {} for r in resolved]
        datums = {pfs_datum_id(d): d for d in input_datums(pps.datum_tree(spec.input, resolved, manifests))}
        dag_id = context["dag"].dag_id
        done = datum_records(store, dag_id, pps.TRANSFORM_STEP).keys()  # a few reads, not one per datum
        ids = [i for i, d in sorted(datums.items(), key=lambda kv: datum_label(kv[1]))]
        pending = [i for i, key in zip(ids, datum_keys(ids, self.version, {})) if key not in done]
        del done
        workers = min(spec.parallelism_spec.constant, self.hook.settings.max_datum_tasks)
        chunks = chunk(pending, workers) if pending else []
        self.log.info("%s: %s datum(s) from %s; %s to process in %s task(s), %s already processed", self.pipeline,
                      len(datums), ", ".join(f"{r['repo']}:{(r['commit'] or 'empty')[:5]}" for r in resolved),
                      len(pending), len(chunks), len(datums) - len(pending))
        context["ti"].xcom_push(key="plan", value={
            "inputs": resolved, "datums": len(datums), "pending": len(pending), "skipped": len(datums) - len(pending),
            "tasks": len(chunks)})
        labels = [datum_label(datums[c[0]])[:200] + (f" .. ({len(c)})" if len(c) > 1 else "") for c in chunks]
        return chunk_refs(store, pending, chunks, labels)


def _step_arguments(command: str, pipeline: str, spec_sha: str, code: str, version: str) -> tuple[list, list]:
    """(templated, literal) argv of the pipeline's steps; only the plan's resolved inputs are rendered."""
    return ([command, "--inputs", f"{{{{ {PLAN}['inputs'] | tojson }}}}"],
            ["--pipeline", pipeline, "--spec", spec_sha, "--code", code, "--version", version])


class PipelineDatumOperator(TrainyardStepOperator):
    """
    Run the transform on one chunk of datums, mapped over the plan.

    Locally: `python -m training_images.datum.pps process`, with the transform in a bubblewrap /pfs view. On
    Kubernetes transform.image runs as is, in a container of its own that holds no store credentials: trainyard's
    init container (`prepare`, with the store Secret) lays out each datum in a shared volume, the transform's
    container runs transform.cmd once per datum under `pfs-driver.sh` (a static busybox shell, so the image needs
    none) with the datum at /pfs/<input>/... and /pfs/out, and trainyard's own container (`finish`) uploads and
    records what it wrote.

    On the local runner transform.secrets come from the Airflow connections they name (a key of the connection's
    extra, or its login/password/host/schema/port) and reach the step in one private env variable, never as argv,
    XCom or a rendered value; on Kubernetes they are Secret references on the transform's container.

    :param chunk: {"datums": [ids], "label"} from the plan, or for a large chunk a slice of the plan's stored pending
        list ({"pending", "start", "stop", "label"}); passed as literal argv, never rendered
    :param transform: the spec's transform as {"image", "cmd", "env"}; on Kubernetes it is the transform container
    """

    def __init__(self, *, chunk: dict, pipeline: str, spec_sha: str, code: str, version: str,
                 transform_secrets: Sequence[dict] = (), transform: dict | None = None, **kwargs) -> None:
        self.chunk = chunk
        self.transform_secrets = [dict(s) for s in transform_secrets]
        self.transform = dict(transform or {})
        templated, literal = _step_arguments("process", pipeline, spec_sha, code, version)
        kwargs.setdefault("cmds", list(STEP_CMD))
        super().__init__(step="pps", arguments=templated,
                         literal_arguments=[*literal, *chunk_argv(chunk)], **kwargs)

    def build_pod_request_obj(self, context=None, *, dry_run: bool = False):
        pod = super().build_pod_request_obj(context, dry_run=dry_run)
        if not self.on_kubernetes:
            return pod
        # The transform container's log first (it ends first), then trainyard's upload; and what prepare says.
        self.container_logs = [TRANSFORM_CONTAINER, self.base_container_name]
        self.init_container_logs = True
        return self.checked(transform_pod(pod, self.transform, self.transform_secrets, self.settings.step_image))

    def resolve_secrets(self) -> dict:
        """{"env": {VAR: value}, "files": {mount_path: {key: value}}} from Airflow connections, each value masked."""
        resolved: dict = {"env": {}, "files": {}}
        for secret in self.transform_secrets:
            try:
                conn = BaseHook.get_connection(secret["name"])
            except Exception:  # noqa: BLE001 - any lookup failure means the same thing to the user
                raise AirflowException(
                    f"transform.secrets names {secret['name']!r}, but no Airflow connection has that id; locally a "
                    "secret is an Airflow connection (its extra's keys, or login/password)") from None
            values = {k: str(v) for k, v in (conn.extra_dejson or {}).items() if isinstance(v, (str, int, float))}
            for field in CONNECTION_FIELDS:
                if getattr(conn, field, None) not in (None, ""):
                    values.setdefault(field, str(getattr(conn, field)))
            for value in values.values():
                mask_secret(value)
            if secret.get("env_var"):
                if secret["key"] not in values:
                    raise AirflowException(f"connection {secret['name']!r} has no key {secret['key']!r} for "
                                           f"transform.secrets env_var {secret['env_var']}; it has: "
                                           f"{', '.join(sorted(values)) or 'nothing'}")
                resolved["env"][secret["env_var"]] = values[secret["key"]]
            else:
                resolved["files"][secret["mount_path"]] = values
        return resolved

    def _local_env(self, container, result_path):
        env = super()._local_env(container, result_path)
        if self.transform_secrets:
            env[SECRETS_ENV] = json.dumps(self.resolve_secrets())
        return env


TRANSFORM_CONTAINER = "transform"
PFS_VOLUMES = {"pfs": "/pfs", "datums": "/data", "runtime": "/trainyard"}


def transform_pod(pod, transform: dict, secrets: Sequence[dict], step_image: str):
    """Turn the step's pod into prepare (init) -> transform (transform.image) + finish (trainyard, the base)."""
    from kubernetes.client import models as k8s

    base = pod.spec.containers[0]
    if not transform.get("image"):
        raise AirflowException("pipeline transform has no image; on the kubernetes runner transform.image is what "
                               "runs (locally the --source bundle does); add it to the spec")
    mounts = {name: k8s.V1VolumeMount(name=name, mount_path=path) for name, path in PFS_VOLUMES.items()}
    env = [k8s.V1EnvVar(name=k, value=str(v)) for k, v in sorted((transform.get("env") or {}).items())]
    volumes = [k8s.V1Volume(name=name, empty_dir=k8s.V1EmptyDirVolumeSource()) for name in PFS_VOLUMES]
    secret_mounts = []
    for secret in secrets:
        if secret.get("env_var"):
            env.append(k8s.V1EnvVar(name=secret["env_var"], value_from=k8s.V1EnvVarSource(
                secret_key_ref=k8s.V1SecretKeySelector(name=secret["name"], key=secret["key"]))))
        else:
            name = f"secret-{len(secret_mounts)}"
            volumes.append(k8s.V1Volume(name=name, secret=k8s.V1SecretVolumeSource(secret_name=secret["name"])))
            secret_mounts.append(k8s.V1VolumeMount(name=name, mount_path=secret["mount_path"], read_only=True))
    runner = k8s.V1Container(
        name=TRANSFORM_CONTAINER, image=transform["image"],
        command=["/trainyard/busybox", "sh", "/trainyard/pfs-driver.sh", *transform["cmd"]],
        env=env, resources=base.resources, volume_mounts=[*mounts.values(), *secret_mounts])
    # trainyard's own containers: the steps image, the store Secret, small requests (the transform has the spec's).
    prepare = k8s.V1Container(name="prepare", image=step_image, command=list(base.command),
                              args=["prepare", *base.args[1:]], env=base.env, env_from=base.env_from,
                              volume_mounts=[mounts["datums"], mounts["runtime"]],
                              resources=k8s.V1ResourceRequirements(requests={"cpu": "100m", "memory": "256Mi"},
                                                                   limits={"cpu": "1", "memory": "1Gi"}))
    base.image = step_image
    base.args = ["finish", *base.args[1:]]
    base.resources = prepare.resources
    base.volume_mounts = [*(base.volume_mounts or []), mounts["datums"]]
    pod.spec.init_containers = [*(pod.spec.init_containers or []), prepare]
    pod.spec.containers = [base, runner, *pod.spec.containers[1:]]
    pod.spec.volumes = [*(pod.spec.volumes or []), *volumes]
    return pod


class PipelineCollectOperator(TrainyardStepOperator):
    """Collect: commit the merged output and record the job; the outlet event (the output repo's Asset) names the
    commit and whether it changed, and starts the pipelines that read the repo."""

    def execute(self, context):
        result = super().execute(context)
        for asset in self.outlets:
            if result:
                repo, _, commit = result["output"].partition(":")
                context["outlet_events"][asset].extra = {"repo": repo or asset.uri.rsplit("/", 1)[-1],
                                                         "commit": commit or None, "changed": result["changed"]}
        return result


def _doc(record: pps.PipelineRecord, spec: pps.PipelineSpec) -> str:
    source = f"`{record.source.repo}:{record.source.commit[:12]}`" if record.source else "none (see below)"
    return f"""**Pachyderm pipeline `{spec.name}`** (from `{record.file or 'a spec'}`). {spec.description}

| | |
|---|---|
| input | `{pps.describe_input(spec.input)}` |
| output repo | `{spec.name}` |
| transform.cmd | `{json.dumps(spec.transform.cmd)}` |
| source bundle (the cmd's working directory locally) | {source} |
| workers (parallelism_spec.constant) | {spec.parallelism_spec.constant} |

A commit to an input repo (an Asset event) starts a run: `plan` cuts the inputs into datums and keeps those not
processed yet, `process` runs the transform on each (mapped over at most `parallelism_spec.constant` chunks) with
the datum at `/pfs/<input name>/<path>` and its output in `/pfs/out`, and `collect` commits the merged output to
the repo `{spec.name}`, which starts the pipelines that read it. A run waits (is skipped) while an upstream pipeline
has not caught up. The spec is stored at `{keys.pps_pipeline(spec.name)}`; change it with
`trainyard pipeline update -f SPEC`.

```json
{json.dumps(record.spec, indent=2)}
```
"""


def pipeline_dag(record: pps.PipelineRecord, settings: config.Settings | None = None) -> DAG:
    """The DAG of one stored pipeline: plan -> process (mapped) -> collect, scheduled on its input repos' Assets."""
    (settings or config.load()).checked()  # a runner and store that cannot work together fail the DAG's parse
    spec = record.parsed
    assets = [repo_asset(repo) for repo in spec.input_repos()]
    datum_timeout, job_timeout = pps.timeouts(spec)
    code = f"{record.source.repo}:{record.source.commit}" if record.source else ""
    common = {"pipeline": spec.name, "spec_sha": record.spec_sha, "code": code, "version": record.version}
    with DAG(
        dag_id=spec.dag_id,
        description=(spec.description or f"Pachyderm pipeline {spec.name}")[:200],
        doc_md=_doc(record, spec),
        # Any input's commit starts the pipeline, as in Pachyderm (a plain list would wait for all of them).
        schedule=assets if len(assets) == 1 else AssetAny(*assets),
        tags=["trainyard", "pachyderm", "datums"],
        # A created pipeline is live in Pachyderm; runs are serial, so output commits follow input commits in order.
        is_paused_upon_creation=False,
        max_active_runs=1,
        dagrun_timeout=timedelta(seconds=job_timeout) if job_timeout else None,
        **dag_defaults(),
    ) as dag:
        plan = PlanPipelineOperator(task_id="plan", **common)
        process = PipelineDatumOperator.partial(
            task_id="process", max_active_tis_per_dagrun=spec.parallelism_spec.constant,
            map_index_template="{{ task.chunk['label'] }}", timeout=job_timeout,
            transform_secrets=[s.model_dump(exclude_none=True) for s in spec.transform.secrets],
            transform={"image": spec.transform.image, "cmd": list(spec.transform.cmd), "env": spec.transform.env},
            labels={"trainyard.io/pipeline": spec.name}, **pps.step_resources(spec), **common,
        ).expand(chunk=plan.output)
        templated, literal = _step_arguments("collect", **common)
        # none_failed_min_one_success: runs when every datum was already processed (no mapped task), not when the
        # plan was skipped because an upstream pipeline has not caught up.
        collect = PipelineCollectOperator(
            task_id="collect", step="pps", cmds=list(STEP_CMD), arguments=templated, literal_arguments=literal,
            trigger_rule="none_failed_min_one_success", outlets=[repo_asset(spec.name)], cpu="0.25", memory="256Mi",
            timeout=job_timeout, labels={"trainyard.io/pipeline": spec.name})
        plan >> process >> collect
        plan >> collect
    return dag


def pipeline_dags() -> dict[str, DAG]:
    """One DAG per pipeline stored in the configured store (read when the DAG file is parsed)."""
    settings = config.load().checked()
    store = StoreHook(store_uri=settings.store).get_conn()
    dags = {}
    for name, record in pps.load_pipelines(store).items():
        try:
            dags[pps.dag_id(name)] = pipeline_dag(record, settings)
        except (TrainyardError, ValueError) as exc:
            # One bad record must not take every other pipeline's DAG down with it.
            log.error("pipeline %s has no DAG: %s", name, exc)
    return dags


def run_downstream(repo: str, *, store_uri: str | None = None, quiet: bool = False, say=print) -> list[dict]:
    """Run in this process, with `dag.test()` (what `airflow dags test` does), every pipeline a commit to `repo`
    reaches, upstream first: the embedded default's stand-in for the scheduler's Asset-triggered runs."""
    from airflow.dag_processing.dagbag import DagBag

    from operators.inprocess import ensure_metadata_db

    if quiet:
        os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")
    ensure_metadata_db()
    previous = os.environ.get("TRAINYARD_STORE")
    if store_uri:
        os.environ["TRAINYARD_STORE"] = store_uri
    try:
        settings = config.load()
        store = StoreHook(store_uri=settings.store).get_conn()
        order = pps.downstream_order(pps.load_pipelines(store), repo)
        if not order:
            return []
        bag = DagBag(dag_folder=str(DAG_FILE))
        if bag.import_errors:
            raise AirflowException(f"{DAG_FILE.name} failed to parse: "
                                   f"{next(iter(bag.import_errors.values())).strip().splitlines()[-1]}")
        results = []
        for name in order:
            before = store.branch_head(name)
            say(f"running pipeline {name} ({pps.dag_id(name)}) in-process")
            dag_run = bag.dags[pps.dag_id(name)].test()
            state = str(getattr(dag_run.state, "value", dag_run.state))
            head = store.branch_head(name)
            results.append({"pipeline": name, "dag_id": pps.dag_id(name), "run_id": dag_run.run_id, "state": state,
                            "output": f"{name}:{head}" if head else "", "changed": head != before})
            if state != "success":
                break  # its readers would only wait for it
        return results
    finally:
        if store_uri:
            if previous is None:
                os.environ.pop("TRAINYARD_STORE", None)
            else:
                os.environ["TRAINYARD_STORE"] = previous
