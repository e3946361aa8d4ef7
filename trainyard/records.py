"""Typed records that cross layers: run plans, train outcomes, run records, model records, registry entries, datums.

Every layer (CLI, operators, step entrypoints, the UI plugin) reads and writes these JSON documents only through
the classes below; trainyard.store.keys says where each one lives. Each record carries a `schema_version`. A record
written before versioning (no `schema_version`) or by an older writer is upgraded on read, so stores stay readable;
one written by a newer trainyard is refused with a message that says so. Fields a reader does not know are kept,
so a read-modify-write never drops them.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, ValidationError

from trainyard.errors import StoreError

# A metric is a number (ranked) or a text report (kept, never ranked); params are any JSON.
Metrics = dict[str, float | int | str]
Params = dict[str, Any]
Manifest = dict[str, dict[str, Any]]


class RecordError(StoreError):
    """A stored record cannot be read: it is malformed, or was written by a newer trainyard."""


class Part(BaseModel):
    """A piece of a record: typed fields, and any field it does not declare kept as written."""

    # Built on first use: a CLI command that reads no record does not pay for every schema at start-up.
    model_config = ConfigDict(extra="allow", defer_build=True)


class Record(Part):
    """A JSON document in the store, with the schema version it was written in."""

    SCHEMA: ClassVar[int] = 1
    # Fields written only when set (AI Center's `training_data` is there only when the run kept its data).
    OMIT_WHEN_NONE: ClassVar[tuple[str, ...]] = ()

    schema_version: int = 1

    @classmethod
    def upgrade(cls, data: dict[str, Any], version: int) -> dict[str, Any]:
        """Bring a document written in an older schema to the current one (fields added since get defaults)."""
        return data

    @classmethod
    def load(cls, doc: Any, where: str = "") -> Self:
        """Read a stored document: upgraded from an older schema, refused from a newer one or when malformed."""
        what = where or f"a {cls.__name__} record"
        if not isinstance(doc, dict):
            raise RecordError(f"{what} is not a JSON object")
        version = doc.get("schema_version", 0)  # 0: written before records had a version
        if not isinstance(version, int) or isinstance(version, bool) or version < 0:
            raise RecordError(f"{what} has schema_version {version!r}; it must be a whole number")
        if version > cls.SCHEMA:
            raise RecordError(f"{what} has schema_version {version}, newer than this trainyard reads ({cls.SCHEMA}); "
                              "upgrade trainyard to read it")
        if version < cls.SCHEMA:
            doc = {**cls.upgrade(dict(doc), version), "schema_version": cls.SCHEMA}
        try:
            return cls.model_validate(doc)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "(record)"
            raise RecordError(f"{what} is not a valid {cls.__name__}: {field}: {first['msg']}") from None

    def to_json(self) -> dict[str, Any]:
        doc = self.model_dump(mode="json")
        for name in self.OMIT_WHEN_NONE:
            if doc.get(name) is None:
                doc.pop(name, None)
        return doc


# -- the plan a run trains (resolve step -> train and register steps) ----------------------------------------------
class PlanResources(Part):
    cpu: str
    memory: str
    gpu: int = 0


class PlannedCombination(Part):
    """One combination of the sweep: its hyperparameters, merged params and deterministic model id."""

    index: int
    label: str
    hyper: Params
    params: Params
    model_id: str
    cached: bool


class RunPlan(Record):
    """runs/<pipeline>/<run>/plan.json: the exact commits, resources and combinations a run trains."""

    pipeline: str
    run_id: str
    start_time: float
    source: str
    data: str
    name: str
    image: str
    resources: PlanResources
    timeout: int | None = None
    metric: str | None = None
    grid: dict[str, Any] = {}
    no_cache: bool = False
    major: bool = False
    save_training_data: bool = False
    runner: str = "local"
    combinations: list[PlannedCombination] = []


# -- what one train task left (train step -> register step) --------------------------------------------------------
class Failure(Part):
    """A combination that trained no model, and why."""

    model_id: str
    label: str = ""
    error: str
    exit_code: int | None = None
    log: str | None = None
    tail: list[str] | None = None


class TrainFailure(Failure, Record):
    """runs/<pipeline>/<run>/failed/<model>.json: written by the train step, or by the operator when no pod ran."""


class TrainedModel(Record):
    """runs/<pipeline>/<run>/trained/<model>.json: a trained combination whose outputs are uploaded (the XCom too)."""

    model_id: str
    label: str = ""
    source: str
    source_id: str | None = None
    data: str
    data_id: str | None = None
    params: Params
    params_hash: str
    metrics: Metrics
    outputs: str  # the blob holding the manifest of everything the code wrote under its output dir
    log: str
    train_seconds: float
    artifacts: list[str] = []
    env: str
    env_parameters: dict[str, str] = {}
    task_id: str = "train"
    map_index: int | str | None = None


# -- model records and their lineage (register step -> CLI, operators, UI) -----------------------------------------
class CommitInfo(Part):
    repo: str
    commit: str
    author: str = ""
    time: float | None = None
    message: str = ""


class AirflowTask(Part):
    dag_id: str | None = None
    run_id: str
    task_id: str = "train"
    map_index: int | str | None = None  # the train step records it from the environment: "0", or None unmapped
    label: str | None = None

    @property
    def mapped(self) -> str | None:
        """The map index as Airflow's URLs take it, or None for an unmapped task."""
        return None if self.map_index in (None, "", -1, "-1") else str(self.map_index)


class ParentVersion(Part):
    """The registry version that was current when a model was registered: what it improves on."""

    name: str | None = None
    version: str
    model_id: str


class Lineage(Part):
    source: CommitInfo
    data: CommitInfo
    params_hash: str
    env: str | None = None
    airflow: AirflowTask
    parent: ParentVersion | None = None


class ModelRecord(Record):
    """models/<src>_<data>/<params>.json: a registered model, published once and never overwritten."""

    model_id: str
    name: str
    metrics: Metrics
    params: Params
    outputs: str
    log: str
    env: str
    artifacts: list[str] = []
    train_seconds: float | None = None
    env_parameters: dict[str, str] = {}
    lineage: Lineage
    registered_at: float


# -- the run record: _results.json in UiPath AI Center's shape (register step -> CLI, operators, UI) ---------------
class RunRecordInputs(Part):
    package: str | None = None
    version: str | None = None  # the package version the run started from
    train_data: str | None = None
    source: str
    data: str
    params: dict[str, Any] = {}  # the grid
    gpu: int = 0
    cpu: str | None = None
    memory: str | None = None
    timeout: int | None = None


class RunEnv(Part):
    runner: str
    image: str
    no_cache: bool = False
    save_training_data: bool = False
    artifacts_directory: str = "artifacts"
    parameters: dict[str, str] = {}  # the variables the best model's code saw (AI Center packages)


class RunParameters(Part):
    pipeline: str
    pipeline_name: str
    run_id: str
    inputs: RunRecordInputs
    env: RunEnv


class BestModel(Part):
    model_id: str
    label: str
    value: float | int | str | None = None


class RegistryRef(Part):
    name: str
    version: str


class ArtifactsData(Part):
    model_id: str
    paths: list[str] = []


class RunOutputs(Part):
    package: str | None = None
    version: str | None = None  # the new package version
    train_data: str | None = None  # the data commit, when the run kept it
    artifacts_data: ArtifactsData | None = None
    model_ids: list[str] = []
    best: BestModel | None = None
    registry: RegistryRef | None = None
    artifacts: dict[str, list[str]] = {}
    failures: list[Failure] = []


class RunSummary(Part):
    state: Literal["success", "partial", "failed"]
    start_time: float
    end_time: float
    start_at: float
    end_at: float
    start: str
    end: str
    execution_time: float
    cached: bool = False
    metric: str | None = None
    score: float | int | str | None = None
    outputs: RunOutputs


class RunModel(Part):
    """One model of the run, as the run record lists it."""

    model_id: str
    label: str
    hyper: Params = {}
    cached: bool = False
    metrics: Metrics = {}
    params: Params = {}
    artifacts: list[str] = []
    train_seconds: float | None = None
    env_parameters: dict[str, str] = {}
    best: bool = False


class TrainingData(Part):
    source: str
    data: str


class RunRecord(Record):
    """runs/<pipeline>/<run>/_results.json: what a run was given, what it trained and what it registered."""

    OMIT_WHEN_NONE = ("training_data",)

    parameters: RunParameters
    run_summary: RunSummary
    models: list[RunModel] = []
    training_data: TrainingData | None = None

    @classmethod
    def upgrade(cls, data: dict[str, Any], version: int) -> dict[str, Any]:
        # Before AI Center's fields: no pipeline, package, train_data, start_at/end_at or score.
        params = data.get("parameters")
        summary = data.get("run_summary")
        if isinstance(params, dict):
            params = data["parameters"] = dict(params)
            params.setdefault("pipeline", params.get("pipeline_name"))
            inputs = params.get("inputs")
            if isinstance(inputs, dict) and isinstance(inputs.get("source"), str):
                params["inputs"] = {"package": inputs["source"].partition(":")[0], "train_data": inputs.get("data"),
                                    **inputs}
        if isinstance(summary, dict):
            summary = data["run_summary"] = dict(summary)
            summary.setdefault("start_at", summary.get("start_time"))
            summary.setdefault("end_at", summary.get("end_time"))
            best = (summary.get("outputs") or {}).get("best")
            summary.setdefault("score", best.get("value") if isinstance(best, dict) else None)
        return data

    @property
    def run_id(self) -> str:
        return self.parameters.run_id

    @property
    def state(self) -> str:
        return self.run_summary.state

    @property
    def failures(self) -> list[Failure]:
        return self.run_summary.outputs.failures

    @property
    def best(self) -> RunModel | None:
        """The best model of the run by its metric (the first when it has none), or None when nothing trained."""
        chosen = self.run_summary.outputs.best
        return next((m for m in self.models if chosen and m.model_id == chosen.model_id), None)


# -- the model registry (register step -> CLI, operators, UI) ------------------------------------------------------
class RegistryVersion(Part):
    """One version of a registered model: the run's best model, with its metrics."""

    version: str
    model_id: str
    metrics: Metrics = {}
    run_id: str
    pipeline: str
    models: list[str] = []
    registered_at: float | None = None
    parent: str | None = None
    parent_model_id: str | None = None


class RegistryEntry(Record):
    """registry/<name>.json: a model's versions (1.0, 1.1 ...) and its aliases (latest, best)."""

    name: str
    metric: str | None = None
    versions: list[RegistryVersion] = []
    aliases: dict[str, str] = {}


# -- datum steps (datum and pps steps -> collect, CLI) -------------------------------------------------------------
class InputRef(Part):
    """An input commit a datum step read: its name (/pfs/<name> or the step's input), repo and commit."""

    name: str | None = None
    repo: str
    commit: str | None = None


class DatumRecord(Record):
    """datums/<pipeline>/<step>/<key>.json: a processed datum's outputs; later runs skip the datum on it."""

    datum: str  # the datum's path, or for a Pachyderm pipeline its label (name:path, ...)
    datum_id: str
    key: str | None = None
    code: str
    params: Params = {}
    inputs: list[InputRef] | None = None  # the first datum steps recorded one `input` as repo:commit instead
    outputs: Manifest
    attempts: int = 1
    seconds: float | None = None
    log: str | None = None


class DatumBatch(Record):
    """datums/<pipeline>/<step>/batches/<id>.json: the records of the datums one task processed, written once, after
    their outputs are stored (a million datums make a few hundred objects, not a million)."""

    pipeline: str
    step: str
    records: list[DatumRecord]


class DatumKeys(Record):
    """datums/<pipeline>/<step>/keys/<id>.json: the datum keys of batch <id>, written after it; a plan reads these
    (or an index) instead of asking for one record per datum."""

    batch: str
    keys: list[str]


class DatumIndex(Record):
    """datums/<pipeline>/<step>/index/<generation>-<id>.json: the keys of every batch and per-datum record in one
    object, written by collect; a plan reads the newest index plus the key lists it does not cover."""

    batches: dict[str, list[str]] = {}  # batch id -> the datum keys it holds
    records: list[str] = []  # datum keys with a per-datum record (written before batches)


class ProvenanceFile(Part):
    datum: str
    key: str


class Provenance(Record):
    """provenance/<repo>/<commit>.json: which datum (and so which inputs) made each file of a datum step's commit."""

    pipeline: str
    step: str
    inputs: list[InputRef] = []
    files: dict[str, ProvenanceFile]


class PpsJob(Record):
    """pps/jobs/<name>/<job>.json and pps/state/<name>.json: what one job of a Pachyderm pipeline processed."""

    pipeline: str
    job: str
    inputs: list[dict[str, Any]] = []  # each {"name", "repo", "ref", "commit"}; commit None for an empty repo
    output: str | None = None
    changed: bool = False
    datums: int = 0
    files: int = 0
    version: str | None = None
    time: float | None = None


class DatumStats(Record):
    """pps/stats/<name>/<job>/<datum>.json: one datum of a job with enable_stats: state, tries and timing."""

    pipeline: str
    job: str
    datum: str
    label: str
    state: Literal["success", "failed"]
    inputs: list[InputRef] = []
    time: float
    files: int = 0
    attempts: int = 0
    seconds: float = 0.0
    log: str | None = None
    error: str | None = None
    download_seconds: float | None = None
    process_seconds: float | None = None
    upload_seconds: float | None = None
    download_bytes: int | None = None
    upload_bytes: int | None = None
