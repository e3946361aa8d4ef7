"""Pachyderm pipeline specs: the typed spec, its validation, the stored pipelines and their translation to datums."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from trainyard.datums import (
    Combined,
    GlobError,
    PfsSource,
    compile_pfs_glob,
    template_groups,
)
from trainyard.errors import NotFound, ResourceError, TrainyardError
from trainyard.records import DatumStats, PpsJob
from trainyard.resources import Resources
from trainyard.store import keys
from trainyard.store.versioned import REPO_NAME, Store, canonical_json, sha256_bytes

SCHEMA_VERSION = 1
DAG_PREFIX = "pps_"
# Pachyderm's default branch is master; a store branch of the same role is `latest`.
DEFAULT_BRANCHES = ("", "master", "latest")
# The step of a pipeline's DAG whose datum records make runs incremental (datums/<dag id>/<step>/<key>.json).
TRANSFORM_STEP = "transform"
GPU_TYPES = ("nvidia.com/gpu",)
SPEC_SUFFIXES = (".json", ".yaml", ".yml")

# A pipeline names its output repo and its DAG, so it must be both a Pachyderm name and a store repo name.
PIPELINE_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9_-]{0,61}[a-z0-9])?$")
INPUT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}

# Fields of Pachyderm's spec that trainyard knows but does not run; naming them makes the error clearer.
PACHYDERM_ONLY = {
    "": {"metadata", "hashtree_spec", "sidecar_resource_limits", "s3_out", "output_branch", "egress", "cache_size",
         "service", "spout", "max_queue_size", "chunk_spec", "scheduling_spec", "pod_spec", "pod_patch",
         "reprocess_spec", "autoscaling", "datum_set_spec", "tolerations", "salt", "spec_commit", "tf_job",
         "determined"},
    "transform": {"err_cmd", "err_stdin", "image_pull_secrets", "accept_return_code", "debug", "user", "working_dir",
                  "dockerfile", "memory_volume", "datum_batching"},
    "pipeline": {"project"},
    "input": {"cron", "git"},
    "pfs": {"empty_files", "s3", "project", "commit", "trigger"},
    "parallelism_spec": {"coefficient"},
    "resources": {"disk"},
}


class SpecError(TrainyardError):
    """A pipeline spec is malformed or asks for something trainyard cannot run; nothing was stored."""

    exit_code = 2


def duration_seconds(text: str) -> float:
    """Seconds of a Go duration string as Pachyderm takes them: '30s', '5m', '1h30m', '1.5h', '300ms'."""
    value = str(text).strip()
    if not value or _DURATION.sub("", value) != "":
        raise ValueError(f"{text!r} is not a duration; write it like 30s, 5m, 1h30m or 1.5h")
    seconds = sum(float(number) * _UNITS[unit] for number, unit in _DURATION.findall(value))
    if seconds <= 0:
        raise ValueError(f"{text!r} must be longer than 0")
    return seconds


class _Spec(BaseModel):
    # Pachyderm 1.x writes snake_case and 2.x camelCase (both accepted by pachctl); anything else is an error.
    model_config = ConfigDict(extra="forbid", strict=True, alias_generator=to_camel, populate_by_name=True)


class PipelineName(_Spec):
    name: str

    @field_validator("name")
    @classmethod
    def _repo_name(cls, value: str) -> str:
        if not PIPELINE_NAME.match(value):
            raise ValueError(f"{value!r} is not a valid repo name: the pipeline's output repo and its DAG are named "
                             "after it, so use lowercase letters, digits, '_' and '-', starting and ending with a "
                             "letter or digit, at most 63 characters")
        return value


class Secret(_Spec):
    name: str
    mount_path: str | None = None
    env_var: str | None = None
    key: str | None = None

    @model_validator(mode="after")
    def _one_way(self) -> Secret:
        if bool(self.mount_path) == bool(self.env_var):
            raise ValueError(f"secret {self.name!r} needs either mount_path, or env_var with key (not both)")
        if self.env_var and (not self.key or not ENV_NAME.match(self.env_var)):
            raise ValueError(f"secret {self.name!r}: env_var must be a variable name and key the secret's key")
        if self.mount_path and (not self.mount_path.startswith("/") or self.mount_path.rstrip("/") in ("", "/pfs")
                                or self.mount_path.startswith("/pfs/")):
            raise ValueError(f"secret {self.name!r}: mount_path {self.mount_path!r} must be an absolute path "
                             "outside /pfs")
        return self


class Transform(_Spec):
    cmd: list[str] = Field(min_length=1)
    stdin: list[str] = []
    env: dict[str, str] = {}
    image: str | None = None
    secrets: list[Secret] = []

    @field_validator("cmd")
    @classmethod
    def _argv(cls, value: list[str]) -> list[str]:
        if not value[0].strip():
            raise ValueError("the first item of cmd is the program to run; it is empty")
        return value

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [k for k in value if not ENV_NAME.match(k)]
        if bad:
            raise ValueError(f"{bad[0]!r} is not an environment variable name")
        return value


class Pfs(_Spec):
    repo: str
    glob: str
    name: str | None = None
    branch: str | None = None
    lazy: bool = False
    join_on: str | None = None
    outer_join: bool = False
    group_by: str | None = None

    @field_validator("repo")
    @classmethod
    def _repo(cls, value: str) -> str:
        if not REPO_NAME.match(value):
            raise ValueError(f"{value!r} is not a repo name (lowercase letters, digits, '.', '_', '-')")
        return value

    @field_validator("glob")
    @classmethod
    def _glob(cls, value: str) -> str:
        try:
            compile_pfs_glob(value)
        except GlobError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None and (not INPUT_NAME.match(value) or value == "out"):
            raise ValueError(f"{value!r} cannot name an input: it becomes /pfs/<name> (and 'out' is the output)")
        return value

    @model_validator(mode="after")
    def _keys(self) -> Pfs:
        captures = compile_pfs_glob(self.glob).groups
        for field, template in (("join_on", self.join_on), ("group_by", self.group_by)):
            if template is None:
                continue
            numbers = template_groups(template)
            if not numbers:
                raise ValueError(f"{field} {template!r} names no capture group; write e.g. \"$1\" for the first "
                                 "(...) of the glob")
            if any(n < 1 or n > captures for n in numbers):
                raise ValueError(f"{field} {template!r} refers to a capture group the glob {self.glob!r} does not "
                                 f"have ({captures} group(s)); put the key in parentheses, e.g. /(*).txt with \"$1\"")
        if self.outer_join and self.join_on is None:
            raise ValueError("outer_join needs join_on: it keeps this input's datums that have no join partner")
        return self

    @property
    def input_name(self) -> str:
        return self.name or self.repo

    @property
    def ref(self) -> str:
        """The store branch this input reads: Pachyderm's master is `latest`."""
        return "latest" if (self.branch or "") in DEFAULT_BRANCHES else self.branch


class Input(_Spec):
    pfs: Pfs | None = None
    cross: list[Input] | None = None
    union: list[Input] | None = None
    join: list[Input] | None = None
    group: list[Input] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Input:
        given = [k for k in ("pfs", "cross", "union", "join", "group") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"an input is exactly one of pfs, cross, union, join or group; got "
                             f"{', '.join(given) or 'none'}")
        kind = given[0]
        children = getattr(self, kind)
        if kind in ("cross", "join") and len(children or []) < 2:
            raise ValueError(f"a {kind} combines at least two inputs, got {len(children or [])}")
        if kind in ("union", "group") and not children:
            raise ValueError(f"a {kind} needs at least one input")
        if kind in ("cross", "join"):
            seen: set[str] = set()
            for child in children:
                names = child.names()
                clash = seen & names
                if clash:
                    raise ValueError(f"two inputs of a {kind} are both named {sorted(clash)[0]!r}; they would share "
                                     f"/pfs/{sorted(clash)[0]}: give one a distinct \"name\"")
                seen |= names
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("pfs", "cross", "union", "join", "group") if getattr(self, k) is not None)

    @property
    def children(self) -> list[Input]:
        return [] if self.pfs is not None else getattr(self, self.kind)

    def names(self) -> set[str]:
        return {leaf.input_name for leaf in self.leaves()}

    def leaves(self) -> list[Pfs]:
        """Every pfs input, depth first; the order in which a plan resolves and passes their commits."""
        return [self.pfs] if self.pfs is not None else [leaf for child in self.children for leaf in child.leaves()]


class ParallelismSpec(_Spec):
    constant: int = Field(default=1, ge=1)


class Gpu(_Spec):
    type: str = "nvidia.com/gpu"
    number: int = Field(ge=0)

    @field_validator("type")
    @classmethod
    def _type(cls, value: str) -> str:
        if value not in GPU_TYPES:
            raise ValueError(f"gpu type {value!r} is not supported; use {', '.join(GPU_TYPES)}")
        return value


class ResourceSpec(_Spec):
    cpu: float | int | str | None = None
    memory: str | None = None
    gpu: Gpu | None = None


class PipelineSpec(_Spec):
    """A Pachyderm pipeline spec, restricted to the fields trainyard runs (README, "Pachyderm pipeline specs")."""

    pipeline: PipelineName
    transform: Transform
    input: Input
    description: str = ""
    parallelism_spec: ParallelismSpec = ParallelismSpec()
    resource_requests: ResourceSpec | None = None
    resource_limits: ResourceSpec | None = None
    datum_tries: int = Field(default=3, ge=1)
    datum_timeout: str | None = None
    job_timeout: str | None = None
    standby: bool = False
    enable_stats: bool = False

    @field_validator("datum_timeout", "job_timeout")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        if value is not None:
            duration_seconds(value)
        return value

    @model_validator(mode="after")
    def _keys_where_they_mean_something(self) -> PipelineSpec:
        _check_keys(self.input, "input", in_join=False, in_group=False)
        return self

    @property
    def name(self) -> str:
        return self.pipeline.name

    @property
    def dag_id(self) -> str:
        return dag_id(self.name)

    def input_repos(self) -> list[str]:
        return sorted({leaf.repo for leaf in self.input.leaves()})

    def to_json(self) -> dict[str, Any]:
        """The spec as stored: snake_case, defaults left out, so an unchanged spec stores the same bytes."""
        return self.model_dump(mode="json", exclude_defaults=True)


def _check_keys(node: Input, where: str, *, in_join: bool, in_group: bool) -> None:
    if node.pfs is not None:
        pfs = node.pfs
        if in_join and pfs.join_on is None:
            raise SpecError(f"{where}.pfs (repo {pfs.repo!r}) is inside a join but has no join_on; a join matches "
                            "datums on join_on, e.g. \"glob\": \"/(*).txt\" with \"join_on\": \"$1\"")
        if in_group and pfs.group_by is None:
            raise SpecError(f"{where}.pfs (repo {pfs.repo!r}) is inside a group but has no group_by, e.g. "
                            "\"glob\": \"/*-(*)-*.txt\" with \"group_by\": \"$1\"")
        if pfs.join_on is not None and not in_join:
            raise SpecError(f"{where}.pfs (repo {pfs.repo!r}) has join_on but is not inside a join; put it in "
                            "\"input\": {\"join\": [...]} or drop join_on")
        if pfs.group_by is not None and not in_group:
            raise SpecError(f"{where}.pfs (repo {pfs.repo!r}) has group_by but is not inside a group; put it in "
                            "\"input\": {\"group\": [...]} or drop group_by")
        return
    kind = node.kind
    for i, child in enumerate(node.children):
        _check_keys(child, f"{where}.{kind}[{i}]", in_join=in_join or kind == "join",
                    in_group=in_group or kind == "group")


def dag_id(pipeline: str) -> str:
    """The Airflow DAG of a pipeline (prefixed, so pipeline names never clash with trainyard's own DAGs)."""
    return f"{DAG_PREFIX}{pipeline}"


# -- parsing, with one-line errors -----------------------------------------------------------------------------------
def _fields(model: type[BaseModel]) -> list[str]:
    return list(model.model_fields)


_MODELS_AT = {"": PipelineSpec, "pipeline": PipelineName, "transform": Transform, "secrets": Secret, "input": Input,
              "pfs": Pfs, "parallelism_spec": ParallelismSpec, "resource_requests": ResourceSpec,
              "resource_limits": ResourceSpec, "gpu": Gpu}
_INPUT_KINDS = ("cross", "union", "join", "group")


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


_UNION_MEMBERS = re.compile(r"^(float|int|str|bool|none|[a-z-]+\[.*\])$")


def _where(loc: tuple) -> tuple[str, str]:
    """(dotted path as the user wrote it, the name of the object that holds the last item)."""
    loc = tuple(item for item in loc if not (isinstance(item, str) and _UNION_MEMBERS.match(item)))
    parts: list[str] = []
    holder = ""
    for item in loc:
        if isinstance(item, int):
            parts[-1] = f"{parts[-1]}[{item}]" if parts else f"[{item}]"
            continue
        parts.append(str(item))
    named = [str(x) for x in loc if isinstance(x, str)]
    for name in named[:-1]:
        snake = _snake(name)
        holder = "input" if snake in _INPUT_KINDS else snake
    return ".".join(parts), holder


def _describe(error: dict, source: str) -> str:
    path, holder = _where(error["loc"])
    kind = error["type"]
    if kind == "extra_forbidden":
        field = _snake(str(error["loc"][-1]))
        model = _MODELS_AT.get(holder, PipelineSpec)
        group = "resources" if holder in ("resource_requests", "resource_limits") else holder
        known = field in PACHYDERM_ONLY.get(group, set())
        what = "is a Pachyderm field trainyard does not support" if known else "is not a known field"
        place = f"in {holder}" if holder else "at the top level"
        return (f"{source}: {path} {what}; supported {place}: {', '.join(_fields(model))} "
                "(see README, \"Pachyderm pipeline specs\")")
    if kind == "missing":
        return f"{source}: {path} is required"
    if kind == "too_short":
        return f"{source}: {path} must not be empty"
    if path.endswith(".cpu"):
        return f"{source}: {path} must be a number of cores (0.5, 2) or a quantity such as \"500m\""
    if kind in ("list_type", "string_type", "int_type", "bool_type", "dict_type", "float_type", "model_type",
                "model_attributes_type"):
        expected = {"list_type": "a list", "string_type": "a string", "int_type": "a whole number",
                    "bool_type": "true or false", "dict_type": "an object", "float_type": "a number",
                    "model_type": "an object", "model_attributes_type": "an object"}[kind]
        got = error.get("input")
        hint = ""
        if path.endswith(("cmd", "stdin")) and isinstance(got, str):
            hint = (" (Pachyderm runs cmd without a shell: give the argv as a list, e.g. [\"python3\", "
                    "\"/code/main.py\"], or [\"sh\"] with the script's lines in transform.stdin)")
        return f"{source}: {path} must be {expected}, got {type(got).__name__} {json.dumps(got)[:60]}{hint}"
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{source}: {path}: {message}" if path else f"{source}: {message}"


def parse_spec(doc: Any, source: str = "spec") -> PipelineSpec:
    """Validate one spec document; a problem is a SpecError naming the spec and the field, listing what is supported."""
    if not isinstance(doc, dict):
        raise SpecError(f"{source}: a pipeline spec is a JSON object with pipeline, transform and input; got "
                        f"{type(doc).__name__}")
    try:
        return PipelineSpec.model_validate(doc)
    except SpecError as exc:
        raise SpecError(f"{source}: {exc}") from None
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        # A union tries every member; the error of the member that was meant is the one to report.
        errors.sort(key=lambda e: (e["type"] in ("union_type",), -len(e["loc"])))
        places = {_where(e["loc"])[0] for e in errors}  # a union's members fail together, at one place
        more = f" (and {len(places) - 1} more problem(s))" if len(places) > 1 else ""
        raise SpecError(_describe(errors[0], source) + more) from None


def _documents(path: Path) -> list[Any]:
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            return [d for d in yaml.safe_load_all(text) if d is not None]
        except yaml.YAMLError as exc:
            raise SpecError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    decoder, docs, at = json.JSONDecoder(), [], 0
    # pachctl accepts several specs in one file, one JSON object after another
    while True:
        while at < len(text) and text[at].isspace():
            at += 1
        if at >= len(text):
            break
        try:
            doc, at = decoder.raw_decode(text, at)
        except ValueError as exc:
            raise SpecError(f"{path}: not valid JSON ({exc})") from None
        docs.extend(doc if isinstance(doc, list) else [doc])
    if not docs:
        raise SpecError(f"{path} holds no pipeline spec")
    return docs


def load_spec_files(paths: list[str | Path]) -> list[tuple[PipelineSpec, str]]:
    """Every spec of the given files and folders (*.json, *.yaml, *.yml), validated; (spec, where it came from)."""
    specs: list[tuple[PipelineSpec, str]] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in SPEC_SUFFIXES)
            if not files:
                raise SpecError(f"{path} holds no pipeline spec (*.json, *.yaml or *.yml)")
        elif path.is_file():
            files = [path]
        else:
            raise NotFound(f"spec {path} not found; pass a spec file or a folder of specs with -f")
        for file in files:
            docs = _documents(file)
            for i, doc in enumerate(docs):
                source = str(file) if len(docs) == 1 else f"{file}[{i}]"
                specs.append((parse_spec(doc, source), source))
    names = [spec.name for spec, _ in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        where = [src for spec, src in specs if spec.name == dupes[0]]
        raise SpecError(f"pipeline {dupes[0]!r} is defined twice ({' and '.join(where)}); names must be unique")
    return specs


# -- what a spec asks of a step ---------------------------------------------------------------------------------------
def _quantity(value: float | int | str | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def step_resources(spec: PipelineSpec) -> dict[str, Any]:
    """cpu/memory requests and limits and the GPU count of the datum tasks; a limit alone is also the request."""
    req, lim = spec.resource_requests or ResourceSpec(), spec.resource_limits or ResourceSpec()
    options = {"cpu": _quantity(req.cpu if req.cpu is not None else lim.cpu),
               "memory": req.memory or lim.memory,
               "cpu_limit": _quantity(lim.cpu), "memory_limit": lim.memory,
               "gpu": max((r.gpu.number for r in (req, lim) if r.gpu), default=0)}
    return {k: v for k, v in options.items() if v not in (None, "")}


def check_resources(spec: PipelineSpec, settings, source: str) -> None:
    """Resources against this installation's maxima, before anything is stored."""
    options = step_resources(spec)
    try:
        request = Resources.parse(options.get("cpu", settings.default_cpu), options.get("memory",
                                  settings.default_memory), options.get("gpu", 0), max_cpu=settings.max_cpu,
                                  max_memory=settings.max_memory, max_gpu=settings.max_gpu)
        Resources.parse(options.get("cpu_limit", request.cpu), options.get("memory_limit", request.memory),
                        request.gpu, max_cpu=settings.max_cpu, max_memory=settings.max_memory,
                        max_gpu=settings.max_gpu)
    except ResourceError as exc:
        raise SpecError(f"{source}: resources: {exc}") from None


def timeouts(spec: PipelineSpec) -> tuple[int | None, int | None]:
    """(datum_timeout, job_timeout) in whole seconds (rounded up), None when unset."""
    def secs(value: str | None) -> int | None:
        return None if value is None else max(1, int(-(-duration_seconds(value) // 1)))

    return secs(spec.datum_timeout), secs(spec.job_timeout)


def datum_tree(node: Input, resolved: list[dict], manifests: list[dict[str, dict]]) -> PfsSource | Combined:
    """The datum model of an input tree: each pfs leaf (depth first) gets its resolved commit and manifest."""
    leaves = iter(zip(resolved, manifests, strict=True))

    def build(n: Input) -> PfsSource | Combined:
        if n.pfs is not None:
            info, manifest = next(leaves)
            return PfsSource(name=n.pfs.input_name, repo=n.pfs.repo, glob=n.pfs.glob, manifest=manifest,
                             commit=info.get("commit"), join_on=n.pfs.join_on, group_by=n.pfs.group_by,
                             outer_join=n.pfs.outer_join, lazy=n.pfs.lazy)
        return Combined(n.kind, [build(c) for c in n.children])

    return build(node)


def describe_input(node: Input) -> str:
    """A one-line summary like `pachctl list pipeline` shows: repo:glob, with ⨯ for cross and ∪ for union."""
    if node.pfs is not None:
        return f"{node.pfs.repo}:{node.pfs.glob}"
    sign = {"cross": " ⨯ ", "union": " ∪ ", "join": " ⋈ ", "group": " | "}[node.kind]
    inner = sign.join(describe_input(c) for c in node.children)
    return f"({inner})" if node.kind != "group" else f"group({inner})"


# -- stored pipelines --------------------------------------------------------------------------------------------------
class SourceRef(BaseModel):
    """The source bundle a pipeline's transform runs in locally: its repo and the commit pinned at create/update."""

    model_config = ConfigDict(extra="forbid")
    repo: str
    commit: str


class PipelineRecord(BaseModel):
    """A created pipeline, as stored at pps/pipelines/<name>.json; the DAG factory builds one DAG per record."""

    model_config = ConfigDict(extra="forbid")
    schema_version: Literal[1] = SCHEMA_VERSION
    name: str
    spec: dict[str, Any]
    spec_sha: str
    source: SourceRef | None = None
    file: str = ""
    created: float
    updated: float

    @property
    def parsed(self) -> PipelineSpec:
        return parse_spec(self.spec, f"pipeline {self.name}")

    @property
    def version(self) -> str:
        """What a datum's output depends on besides its input: the transform and the source commit it runs in.
        Changing either reprocesses every datum; parallelism, resources or timeouts reprocess nothing."""
        transform = self.parsed.transform.model_dump(mode="json", exclude_defaults=True)
        transform.pop("secrets", None)  # which secret a datum reads is not its content
        return sha256_bytes(canonical_json({"transform": transform,
                                            "source": self.source.commit if self.source else None}))


def load_pipelines(store: Store) -> dict[str, PipelineRecord]:
    """Every stored pipeline by name."""
    records = {}
    for doc in store.list_json(keys.PPS_PIPELINES):
        record = PipelineRecord.model_validate(doc)
        records[record.name] = record
    return records


def get_pipeline(store: Store, name: str) -> PipelineRecord:
    key = keys.pps_pipeline(name)
    if not store.exists(key):
        known = ", ".join(load_pipelines(store)) or "none"
        raise NotFound(f"no pipeline {name!r}; pipelines: {known} (create one with `trainyard pipeline create -f`)")
    return PipelineRecord.model_validate(store.get_json(key))


def readers(records: dict[str, PipelineRecord], repo: str) -> list[str]:
    """Pipelines with an input from `repo`."""
    return sorted(n for n, r in records.items() if repo in r.parsed.input_repos())


def find_cycle(specs: dict[str, PipelineSpec]) -> list[str] | None:
    """A cycle of pipelines (each reads the previous one's output repo), or None."""
    edges = {name: [r for r in spec.input_repos() if r in specs] for name, spec in specs.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        stack.append(name)
        for upstream in edges[name]:
            if state.get(upstream) == 1:
                return stack[stack.index(upstream):] + [upstream]
            if upstream not in state:
                found = visit(upstream)
                if found:
                    return found
        stack.pop()
        state[name] = 2
        return None

    for name in sorted(specs):
        if name not in state:
            found = visit(name)
            if found:
                return list(reversed(found))
    return None


def downstream_order(records: dict[str, PipelineRecord], repo: str) -> list[str]:
    """Every pipeline a commit to `repo` eventually reaches, upstream before downstream (a topological order)."""
    specs = {n: r.parsed for n, r in records.items()}
    reached: set[str] = set()
    frontier = [repo]
    while frontier:
        current = frontier.pop()
        for name, spec in specs.items():
            if current in spec.input_repos() and name not in reached:
                reached.add(name)
                frontier.append(name)
    order: list[str] = []
    done: set[str] = set()

    def place(name: str) -> None:
        if name in done:
            return
        done.add(name)
        for upstream in specs[name].input_repos():
            if upstream in reached:
                place(upstream)
        order.append(name)

    for name in sorted(reached):
        place(name)
    return order


def check_pipelines(store: Store, specs: list[PipelineSpec], *, update: bool) -> dict[str, PipelineRecord]:
    """The checks that need the stored pipelines: create refuses a name that exists, update one that does not, and
    either refuses a cycle between pipelines. Returns the stored pipelines."""
    existing = load_pipelines(store)
    names = [spec.name for spec in specs]
    if update:
        missing = [n for n in names if n not in existing]
        if missing:
            raise NotFound(f"no pipeline {missing[0]!r} to update; create it with `trainyard pipeline create -f`")
    else:
        taken = [n for n in names if n in existing]
        if taken:
            raise SpecError(f"pipeline {taken[0]!r} already exists; change it with `trainyard pipeline update -f` "
                            f"or delete it first")
    graph = {n: r.parsed for n, r in existing.items()}
    graph.update({spec.name: spec for spec in specs})
    cycle = find_cycle(graph)
    if cycle:
        raise SpecError(f"pipelines would form a cycle: {' -> '.join(cycle)} (each reads the output repo of the one "
                        "before it); a pipeline graph must be acyclic, so change one of their inputs")
    return existing


def save_pipelines(store: Store, specs: list[tuple[PipelineSpec, str]], *, source: SourceRef | None,
                   update: bool, keep_source: bool = True) -> list[PipelineRecord]:
    """Check the specs against the stored pipelines (check_pipelines), then store each spec; all or nothing."""
    existing = check_pipelines(store, [spec for spec, _ in specs], update=update)
    now = time.time()
    records = []
    for spec, where in specs:
        body = spec.to_json()
        old = existing.get(spec.name)
        kept = old.source if (old is not None and keep_source and source is None) else source
        records.append(PipelineRecord(name=spec.name, spec=body, spec_sha=store.put_blob_bytes(canonical_json(body)),
                                      source=kept, file=where, created=old.created if old else now, updated=now))
    for record in records:
        store.put_json(keys.pps_pipeline(record.name), record.model_dump(mode="json"))
    return records


def delete_pipelines(store: Store, names: list[str]) -> list[str]:
    """Remove pipelines (their DAGs go away; their output repos and datum records stay). A pipeline other remaining
    pipelines read cannot be deleted alone."""
    existing = load_pipelines(store)
    for name in names:
        if name not in existing:
            get_pipeline(store, name)  # raises NotFound listing the pipelines
    left = {n: r for n, r in existing.items() if n not in names}
    for name in names:
        dependents = readers(left, name)
        if dependents:
            raise SpecError(f"pipeline {name!r} cannot be deleted: {', '.join(dependents)} read(s) its output repo; "
                            f"delete them too (`trainyard pipeline delete {name} {' '.join(dependents)}`)")
    for name in names:
        store.delete(keys.pps_pipeline(name))
    return names


# -- jobs: what each run of a pipeline processed -----------------------------------------------------------------------
def save_job(store: Store, job: PpsJob) -> None:
    """Record a finished job, and make it the pipeline's state: downstream pipelines wait until it is current."""
    store.put_record(keys.pps_job(job.pipeline, job.job), job)
    store.put_record(keys.pps_state(job.pipeline), job)


def last_job(store: Store, name: str) -> PpsJob | None:
    """The pipeline's last finished job, or None when it has not finished one."""
    key = keys.pps_state(name)
    return store.get_record(key, PpsJob) if store.exists(key) else None


def save_datum_stats(store: Store, stats: DatumStats) -> None:
    store.put_record(keys.pps_stats(stats.pipeline, stats.job, stats.datum), stats)


def datum_stats(store: Store, name: str, job: str) -> list[DatumStats]:
    """The per-datum records of a job (kept when the pipeline's spec has enable_stats)."""
    return [DatumStats.load(doc, where=f"stats of pipeline {name} job {job}")
            for doc in store.list_json(keys.pps_stats_prefix(name, job))]


def resolve_inputs(store: Store, spec: PipelineSpec, pinned: dict[str, str] | None = None) -> list[dict]:
    """Each pfs input (depth first) at the head of its branch, or at the commit `pinned` names for its repo; an
    input whose repo has no commits yet resolves to None (it contributes no datums)."""
    resolved = []
    for leaf in spec.input.leaves():
        commit = (pinned or {}).get(leaf.repo) if leaf.ref == "latest" else None
        if commit is None:
            commit = store.branch_head(leaf.repo, leaf.ref)
        resolved.append({"name": leaf.input_name, "repo": leaf.repo, "ref": leaf.ref, "commit": commit})
    return resolved


def waiting_for(store: Store, records: dict[str, PipelineRecord], spec: PipelineSpec) -> str | None:
    """Why this pipeline must wait, or None: an upstream pipeline (one whose output repo it reads, at any depth) has
    not yet finished a job on the current heads of its own inputs. Like Pachyderm's provenance, a pipeline never
    joins a new commit of one input with an out-of-date output of another; the upstream job's commit triggers it."""
    seen: set[str] = set()

    def stale(name: str) -> str | None:
        if name in seen:
            return None
        seen.add(name)
        upstream = records[name].parsed
        for repo in upstream.input_repos():
            if repo in records:
                reason = stale(repo)
                if reason:
                    return reason
        heads = [(i["repo"], i["ref"], i["commit"]) for i in resolve_inputs(store, upstream)]
        if all(commit is None for _, _, commit in heads):
            return None  # nothing for it to process
        state = last_job(store, name)
        if state is None:
            return f"pipeline {name}, which has not run yet"
        done = {(i["repo"], i.get("ref", "latest")): i.get("commit") for i in state.inputs}
        for repo, ref, commit in heads:
            if done.get((repo, ref)) != commit:
                return f"pipeline {name}, which has not processed {repo}:{(commit or 'empty')[:5]} yet"
        return None

    for repo in spec.input_repos():
        if repo in records and repo != spec.name:
            reason = stale(repo)
            if reason:
                return reason
    return None
