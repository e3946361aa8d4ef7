"""Run options: one typed model of what a training run is given and how it trains.

`trainyard deploy`'s flags, train_pipeline's Params (their JSON schema), the settings a pipeline remembers and the
resolve step's keys are all derived from the fields below: an option is added here, once, with its type, its
description, its deploy flag (Flag) and whether it is remembered (REMEMBERED).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from trainyard.config import airflow_option
from trainyard.errors import ConfigError, ResourceError
from trainyard.grids import validate_grid
from trainyard.metrics import SPEC_PATTERN, parse_spec
from trainyard.resources import CPU_PATTERN, MEMORY_PATTERN, Resources, cpu_cores, memory_bytes
from trainyard.store.versioned import REPO_NAME

SCHEMA_VERSION = 1
REPO_PATTERN = REPO_NAME.pattern
# A ref: the branch `latest`, a branch name, or a commit id prefix of 5 to 64 hex characters.
REF_PATTERN = rf"^(latest|{REPO_PATTERN.strip('^$')}|[0-9a-f]{{5,64}})$"
# Sane bounds for numbers a pipeline remembers: a value past them is a typo, and once remembered it would come back
# on every later deploy (20 digits of --timeout overflowed the step's watchdog timer).
MAX_TIMEOUT = 30 * 24 * 3600  # 30 days, in seconds
MAX_GPU = 64
MIN_CPU = "1m"  # Kubernetes' smallest CPU unit
MIN_MEMORY = "1Mi"
MAX_PARALLELISM = 1024  # Airflow's default [core] max_map_length: no run has more training tasks than that


@dataclasses.dataclass(frozen=True)
class Flag:
    """How a run option is spelled on `trainyard deploy` (kaos's short flags included), and its value's shape."""

    names: tuple[str, ...]
    metavar: str | None = None

    @property
    def long(self) -> str:
        return self.names[-1]


class Remembered:
    """Marks a run option a pipeline keeps per source repo until a deploy changes it (kaos reset them each time)."""


REMEMBER = Remembered()
Scalar = str | int | float | bool | None
Grid = dict[str, Annotated[list[Scalar], Field(min_length=1)]]


class RunInputs(BaseModel):
    """The commits a run trains on: source and data repos, each at `latest` or a commit id (prefix)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: Annotated[str, Field(pattern=REPO_PATTERN, description="source repo (the bundle's name)")]
    source_ref: Annotated[str, Field(pattern=REF_PATTERN, description="'latest' or a commit short id")] = "latest"
    data: Annotated[str, Field(pattern=REPO_PATTERN, description="data repo")]
    data_ref: Annotated[str, Field(pattern=REF_PATTERN, description="'latest' or a commit short id")] = "latest"


class RunOptions(BaseModel):
    """How one run trains: the grid, the resources of each training task, the metric and the registry choices.

    Options left out (None) are chosen later: the remembered ones from what the pipeline remembered for the source
    repo, then from the DAG's or `[trainyard]` defaults.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = SCHEMA_VERSION
    hyperparams: Annotated[Grid, Flag(("-h", "--hyperparams"), "JSON|FILE")] = Field(
        default_factory=dict, description="hyperparameter grid: a JSON object of lists, merged over params.json; "
                                          "one model per combination")
    metric: Annotated[Annotated[str, Field(pattern=SPEC_PATTERN)] | None, Flag(("--metric",), "NAME[:max|min]"),
                      REMEMBER] = Field(
        None, description="metric that picks the best model, e.g. accuracy_test:max or loss:min (default: "
                          "remembered, else a *test* metric)")
    cpu: Annotated[Annotated[str, Field(pattern=CPU_PATTERN)] | None, Flag(("--cpu",), "CORES"), REMEMBER] = Field(
        None, description="CPU per training task: 0.5, 2, 500m (default: remembered)")
    memory: Annotated[Annotated[str, Field(pattern=MEMORY_PATTERN)] | None, Flag(("--memory",), "QUANTITY"),
                      REMEMBER] = Field(None, description="memory per training task: 512Mi, 2Gi, 1G (default: "
                                                          "remembered)")
    gpu: Annotated[Annotated[int, Field(ge=0, le=MAX_GPU)] | None, Flag(("--gpu",), "N"), REMEMBER] = Field(
        None, description="GPUs per training task (default: remembered, else 0)")
    timeout: Annotated[Annotated[int, Field(ge=1, le=MAX_TIMEOUT)] | None, Flag(("--timeout",), "SECONDS"),
                       REMEMBER] = Field(
        None, description=f"seconds a training task may run, at most {MAX_TIMEOUT} (30 days) (default: "
                          "remembered, else none)")
    no_cache: Annotated[bool, Flag(("--no-cache",))] = Field(
        False, description="train again even when the model already exists")
    major: Annotated[bool, Flag(("--major",))] = Field(
        False, description="register as a new major version (2.0, ...) instead of 1.x")
    save_training_data: Annotated[bool, Flag(("--save-training-data",))] = Field(
        False, description="record the exact input commits with the run (a reference, no copy)")

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """Every option, in declaration order (the record's schema_version is not an option)."""
        return tuple(name for name in cls.model_fields if name != "schema_version")

    @classmethod
    def remembered(cls) -> tuple[str, ...]:
        """The options a pipeline remembers per source repo."""
        return tuple(n for n in cls.names() if any(isinstance(m, Remembered) for m in cls.model_fields[n].metadata))

    @classmethod
    def flag(cls, name: str) -> Flag:
        return next(m for m in cls.model_fields[name].metadata if isinstance(m, Flag))

    @classmethod
    def parse(cls, values: Mapping[str, Any], settings, *, spell: Callable[[str], str] = str) -> RunOptions:
        """Check options before anything is stored or planned and build the record; one-line errors (exit 2).

        The grid's shape and its size against `[trainyard] max_combinations`, the resources given against the
        configured maxima, the metric, then every field's type. `spell` names an option in errors (a CLI flag).
        """
        unknown = set(values) - set(cls.names())
        if unknown:
            raise ConfigError(f"unknown run option(s) {', '.join(sorted(unknown))}; known: {', '.join(cls.names())}")
        validate_grid(values.get("hyperparams") or {}, cap=settings.combination_cap,
                      ceiling=airflow_option("core", "max_map_length", 1024))
        cpu, memory, gpu = values.get("cpu"), values.get("memory"), values.get("gpu")
        if cpu or memory or gpu is not None:
            Resources.parse(cpu or settings.default_cpu, memory or settings.default_memory, gpu or 0,
                            max_cpu=settings.max_cpu, max_memory=settings.max_memory, max_gpu=settings.max_gpu)
        if cpu and cpu_cores(cpu) < cpu_cores(MIN_CPU):
            raise ResourceError(f"{spell('cpu')} {cpu} is below the minimum {MIN_CPU} (0.001 cores); give at least "
                                f"{MIN_CPU}")
        if memory and memory_bytes(memory) < memory_bytes(MIN_MEMORY):
            raise ResourceError(f"{spell('memory')} {memory} is below the minimum {MIN_MEMORY}; give e.g. 512Mi or 2Gi")
        if values.get("metric") is not None:  # '' too: an empty metric is a typo, not "no metric"
            parse_spec(values["metric"])
        try:
            return cls(**{k: v for k, v in values.items() if v is not None})
        except ValidationError as exc:
            error = exc.errors(include_url=False)[0]
            where = spell(str(error["loc"][0]))
            if error["type"] == "greater_than_equal":
                raise ConfigError(f"{where} must be at least {error['ctx']['ge']}, got {error['input']}") from None
            if error["type"] == "less_than_equal":
                raise ConfigError(f"{where} must be at most {error['ctx']['le']}, got {error['input']}") from None
            raise ConfigError(f"{where}: {error['msg']} (got {error['input']!r})") from None

    def given(self) -> dict[str, Any]:
        """The remembered options this run was given (the others are None)."""
        return {name: getattr(self, name) for name in self.remembered()}

    def conf(self) -> dict[str, Any]:
        """The options as a run's conf (train_pipeline's Params)."""
        return self.model_dump(include=set(self.names()))


class RunConf(RunOptions, RunInputs):
    """A train_pipeline run's conf: its inputs and its options, one Param each."""


def param_specs(model: type[BaseModel] = RunConf) -> dict[str, dict[str, Any]]:
    """{name: {"default", "description", "schema"}} per field of the model (a run's conf: inputs first, then
    options), for Airflow Params. The schema is the field's JSON schema as Airflow's trigger form reads it."""
    properties = model.model_json_schema()["properties"]
    specs = {}
    for name, field in model.model_fields.items():
        if name != "schema_version":
            default = None if field.is_required() else field.get_default(call_default_factory=True)
            specs[name] = {"default": default, "description": field.description, "schema": _plain(properties[name])}
    return specs


def _plain(schema: dict[str, Any]) -> dict[str, Any]:
    """A pydantic field schema without titles, defaults and descriptions, where `anyOf` plain types become one list
    of types ("null" first), as Airflow's Params and trigger form expect."""
    plain = {k: v for k, v in schema.items() if k not in ("title", "default", "description")}
    members = plain.get("anyOf", [])
    if members and all(isinstance(m.get("type"), str) for m in members):
        del plain["anyOf"]
        types = [m["type"] for m in members]
        merged: dict[str, Any] = {"type": sorted(types, key=lambda t: t != "null")}
        for member in members:
            merged.update({k: v for k, v in member.items() if k != "type"})
        plain = {**merged, **plain}
    for key in ("items", "additionalProperties"):
        if isinstance(plain.get(key), dict):
            plain[key] = _plain(plain[key])
    return plain
