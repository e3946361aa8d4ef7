"""docker-compose.yaml passes the Compose Specification schema and wires Airflow 3, Postgres, MinIO and trainyard.

No Docker engine runs here, so this is what `docker compose config` would check, done in-process: the file is
parsed, interpolated the way Compose does (`$VAR`, `${VAR:-default}` ...), validated with jsonschema against the
Compose Specification's JSON schema, and then checked service by service.

tests/fixtures/compose-spec.json is the Compose Specification schema shipped by Docker's own `docker-compose`
package, version 1.29.2 on PyPI (file `compose/config/compose_spec.json` of docker-compose-1.29.2.tar.gz,
licence Apache-2.0), vendored byte for byte: sha256 below.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import shutil
import subprocess
import tomllib
from urllib.parse import urlparse

import jsonschema
import pytest
import yaml

from tests.conftest import REPO
from trainyard import config

SCHEMA_PATH = REPO / "tests/fixtures/compose-spec.json"
SCHEMA_SHA256 = "0dc04bd346dcfee1b1419628fff79937bbf076925f298f272a2b490e2b112bac"
COMPOSE_TEXT = (REPO / "docker-compose.yaml").read_text()
DOCKERFILE = (REPO / "Dockerfile").read_text()
RAW = yaml.safe_load(COMPOSE_TEXT)
AIRFLOW_SERVICES = ["airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer",
                    "airflow-init"]
KUBERNETES_SERVICES = ["airflow-scheduler-k8s", "airflow-dag-processor-k8s"]
KUBECONFIG_TARGET = "/home/airflow/.kube/config"


# --- Compose variable interpolation (compose-spec "Interpolation"), applied to values after YAML parsing ---------

class InterpolationError(ValueError):
    """A template Compose would refuse: `$` before something that is not a name, `{` or `$`; `${` unclosed; a
    required variable (`${VAR:?err}`) unset; or, in strict mode, a variable with no value and no default."""


NAME = re.compile(r"[_a-zA-Z][_a-zA-Z0-9]*")
OPERATORS = (":-", ":?", ":+", "-", "?", "+")


def interpolate(text: str, env: dict[str, str], *, strict: bool = False) -> str:
    """Substitute `$VAR`, `${VAR}`, `${VAR:-d}`, `${VAR-d}`, `${VAR:?e}`, `${VAR?e}`, `${VAR:+r}`, `${VAR+r}` and
    `$$` as Compose does; defaults and replacements may themselves hold variables. strict: an unset variable
    without a default is an error (Compose warns and uses "")."""
    out, i = [], 0
    while i < len(text):
        if text[i] != "$":
            out.append(text[i])
            i += 1
        elif text.startswith("$$", i):
            out.append("$")
            i += 2
        elif text.startswith("${", i):
            end = _closing_brace(text, i + 2)
            out.append(_braced(text[i + 2:end], env, strict))
            i = end + 1
        elif match := NAME.match(text, i + 1):
            out.append(_lookup(match.group(), env, strict))
            i = match.end()
        else:
            raise InterpolationError(f"invalid interpolation format in {text!r} at offset {i}; write $$ for a $")
    return "".join(out)


def _closing_brace(text: str, start: int) -> int:
    depth, i = 1, start
    while i < len(text):
        if text.startswith("$$", i):
            i += 2
            continue
        if text.startswith("${", i):
            depth, i = depth + 1, i + 2
            continue
        if text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise InterpolationError(f"unclosed ${{ in {text!r}")


def _lookup(name: str, env: dict[str, str], strict: bool) -> str:
    if name not in env and strict:
        raise InterpolationError(f"variable {name} is not set and has no default")
    return env.get(name, "")


def _braced(expr: str, env: dict[str, str], strict: bool) -> str:
    match = NAME.match(expr)
    if not match:
        raise InterpolationError(f"invalid interpolation format: ${{{expr}}}")
    name, rest = match.group(), expr[match.end():]
    if not rest:
        return _lookup(name, env, strict)
    op = next((op for op in OPERATORS if rest.startswith(op)), None)
    if op is None:
        raise InterpolationError(f"invalid interpolation format: ${{{expr}}}")
    arg = rest[len(op):]
    # With a colon the variable must be set and non-empty; without, set is enough.
    present = bool(env.get(name)) if op.startswith(":") else name in env
    if op.endswith("-"):
        return env[name] if present else interpolate(arg, env, strict=strict)
    if op.endswith("+"):
        return interpolate(arg, env, strict=strict) if present else ""
    if not present:
        raise InterpolationError(f"required variable {name} is missing a value: {interpolate(arg, env)}")
    return env[name]


def interpolate_tree(node, env: dict[str, str], *, strict: bool = False):
    """Interpolate every string value (not mapping keys, as Compose does) of a parsed compose file."""
    if isinstance(node, dict):
        return {key: interpolate_tree(value, env, strict=strict) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate_tree(value, env, strict=strict) for value in node]
    if isinstance(node, str):
        return interpolate(node, env, strict=strict)
    return node


# With no variable set: what `docker compose up` without an .env file runs.
COMPOSE = interpolate_tree(RAW, {}, strict=True)
SERVICES = COMPOSE["services"]


@pytest.mark.parametrize(("template", "env", "expected"), [
    ("$A-${A}", {"A": "x"}, "x-x"),
    ("${A:-d}|${A-d}", {}, "d|d"),
    ("${A:-d}|${A-d}", {"A": ""}, "d|"),
    ("${A:+r}|${A+r}", {"A": ""}, "|r"),
    ("${A:+r}|${A+r}", {}, "|"),
    ("${A:-${B:-inner}}", {}, "inner"),
    ("$${HOSTNAME} costs $$5", {"HOSTNAME": "h"}, "${HOSTNAME} costs $5"),
    ("${A:?set A}", {"A": "ok"}, "ok"),
    ("${A_1}${_b}", {"A_1": "1", "_b": "2"}, "12"),
])
def test_interpolation_follows_the_compose_spec(template, env, expected):
    assert interpolate(template, env) == expected


@pytest.mark.parametrize(("template", "error"), [("${A:?set A please}", "set A please"), ("${A?}", "A"),
                                                 ("cost $5", "invalid interpolation"), ("${A", "unclosed"),
                                                 ("${A:x}", "invalid interpolation"), ("${1A}", "invalid")])
def test_interpolation_errors_are_the_ones_compose_raises(template, error):
    with pytest.raises(InterpolationError, match=re.escape(error)):
        interpolate(template, {})


# --- The Compose Specification schema ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def validator():
    assert hashlib.sha256(SCHEMA_PATH.read_bytes()).hexdigest() == SCHEMA_SHA256, "compose-spec.json was changed"
    schema = json.loads(SCHEMA_PATH.read_text())
    assert schema["title"] == "Compose Specification"
    # The schema declares draft 2019-09 under a URI jsonschema does not recognise; use that draft explicitly.
    jsonschema.Draft201909Validator.check_schema(schema)
    return jsonschema.Draft201909Validator(schema)


def _errors(validator, document) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]


def test_the_raw_file_is_valid_compose(validator):
    assert _errors(validator, RAW) == []


def test_the_interpolated_file_is_valid_compose_with_and_without_variables(validator):
    assert _errors(validator, COMPOSE) == []
    env = {"MINIO_ROOT_USER": "ci", "MINIO_ROOT_PASSWORD": "ci-secret-123", "TRAINYARD_RETRAIN_SCHEDULE": "@daily",
           "KUBECONFIG_PATH": "/etc/kube/config", "TRAINYARD_STORE": "s3://other/prefix"}
    custom = interpolate_tree(RAW, env, strict=True)
    assert _errors(validator, custom) == []
    apiserver = custom["services"]["airflow-apiserver"]["environment"]
    assert json.loads(apiserver["AIRFLOW_CONN_TRAINYARD_STORE"])["password"] == "ci-secret-123"
    assert apiserver["AIRFLOW__TRAINYARD__RETRAIN_SCHEDULE"] == "@daily"
    assert "/etc/kube/config:/home/airflow/.kube/config:ro" in custom["services"]["airflow-scheduler-k8s"]["volumes"]


@pytest.mark.parametrize(("mutate", "where"), [
    (lambda c: c["services"]["postgres"].update(helthcheck={}), "services/postgres"),
    (lambda c: c["services"]["airflow-init"]["depends_on"]["postgres"].update(condition="service_ready"),
     "services/airflow-init/depends_on"),
    (lambda c: c["services"]["airflow-apiserver"].update(ports="8080:8080"), "services/airflow-apiserver/ports"),
    (lambda c: c.update(volume={}), ""),
], ids=["misspelt-key", "unknown-condition", "ports-not-a-list", "unknown-top-level-key"])
def test_the_schema_check_catches_mistakes(validator, mutate, where):
    broken = copy.deepcopy(COMPOSE)
    mutate(broken)
    errors = _errors(validator, broken)
    assert errors and errors[0].startswith(f"{where}:")


def _compose_cli() -> list[str] | None:
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], check=False, capture_output=True, timeout=60)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return ["docker-compose"] if shutil.which("docker-compose") else None


@pytest.mark.skipif(_compose_cli() is None, reason="no docker compose / docker-compose CLI here")
def test_the_compose_cli_agrees_with_this_interpolation(tmp_path):
    """Where a Compose CLI is installed, its own `config` (no engine needed) accepts the file and resolves every
    service's environment and command exactly as the interpolation above does."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path), "MINIO_ROOT_PASSWORD": "from-env"}
    proc = subprocess.run([*_compose_cli(), "-f", str(REPO / "docker-compose.yaml"), "--profile", "kubernetes",
                           "config"], check=False, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    # `config` prints `$` escaped as `$$` again; interpolating with no variables undoes just that.
    resolved = interpolate_tree(yaml.safe_load(proc.stdout), {})["services"]
    ours = interpolate_tree(RAW, {k: v for k, v in env.items() if k != "PATH"})["services"]
    assert set(resolved) == set(ours)
    for name, service in ours.items():
        assert {k: str(v) for k, v in service.get("environment", {}).items()} == resolved[name].get("environment", {})
        assert service.get("command") == resolved[name].get("command"), name


# --- What the issue asks of the file -----------------------------------------------------------------------------

def _env(name: str) -> dict[str, str]:
    return SERVICES[name]["environment"]


def _depends(service: dict) -> dict[str, dict]:
    deps = service.get("depends_on", {})
    return {d: {"condition": "service_started"} for d in deps} if isinstance(deps, list) else deps


def test_the_airflow_services_share_one_image_built_from_the_dockerfile():
    services = [SERVICES[name] for name in AIRFLOW_SERVICES + KUBERNETES_SERVICES]
    assert {s["build"] if isinstance(s["build"], str) else s["build"]["context"] for s in services} == {"."}
    assert len({s["image"] for s in services}) == 1
    assert [s["command"][0] for s in services[:4]] == ["api-server", "scheduler", "dag-processor", "triggerer"]
    assert "db migrate" in SERVICES["airflow-init"]["command"][0]
    assert all(s.get("user") == "50000:0" for s in services)  # the image's airflow user, group root


def test_the_dockerfile_is_the_official_image_plus_pinned_requirements():
    (base,) = re.findall(r"^FROM\s+(\S+)", DOCKERFILE, flags=re.MULTILINE)
    assert base == "apache/airflow:3.3.2-python3.11"
    airflow_pin = re.search(r"^apache-airflow==(\S+)", (REPO / "requirements.txt").read_text(), flags=re.MULTILINE)
    assert base.split(":")[1].startswith(f"{airflow_pin.group(1)}-"), "the image and requirements.txt disagree"
    assert re.search(r"pip install [^\n]*-r /opt/trainyard/requirements\.txt -c /opt/trainyard/constraints\.txt",
                     DOCKERFILE)
    assert "_PIP_ADDITIONAL_REQUIREMENTS" not in DOCKERFILE + COMPOSE_TEXT
    # The metadata DB driver named in the connection URL is pinned, so the image has it.
    driver = SERVICES["airflow-scheduler"]["environment"]["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].split("://")[0]
    assert driver == "postgresql+psycopg2"
    assert re.search(r"^psycopg2(-binary)?==", (REPO / "requirements.txt").read_text(), flags=re.MULTILINE)


def test_the_build_context_holds_the_packages_and_requirements_and_nothing_else():
    ignore = [ln for ln in (REPO / ".dockerignore").read_text().splitlines() if ln and not ln.startswith("#")]
    assert ignore[0] == "*"  # everything out (.venv, .airflow, .git) unless named
    included = {ln[1:].rstrip("/") for ln in ignore if ln.startswith("!")}
    # Every package `pip install /opt/trainyard` installs (the UI plugin comes with the mounted plugins folder), and the files it reads.
    find = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    packages = {pattern.rstrip("*") for pattern in find["include"]}
    assert included == packages | {"requirements.txt", "constraints.txt", "pyproject.toml", "README.md"}
    copied = {src for line in re.findall(r"^COPY\s+(?:--\S+\s+)*(.+)$", DOCKERFILE, flags=re.MULTILINE)
              for src in line.split()[:-1]}
    assert copied - {"."} <= included
    assert all((REPO / name).exists() for name in included)


def test_postgres_is_healthchecked_and_the_airflow_services_wait_for_it():
    assert "pg_isready" in SERVICES["postgres"]["healthcheck"]["test"]
    for name in AIRFLOW_SERVICES:
        assert _depends(SERVICES[name])["postgres"]["condition"] == "service_healthy", name
        assert urlparse(_env(name)["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]).hostname == "postgres"
        assert _env(name)["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    for name in AIRFLOW_SERVICES[:4] + KUBERNETES_SERVICES:
        assert _depends(SERVICES[name])["airflow-init"]["condition"] == "service_completed_successfully", name


def test_minio_is_the_store_and_its_bucket_is_created_before_airflow_starts():
    minio, init = SERVICES["minio"], SERVICES["minio-init"]
    assert minio["image"].startswith("minio/minio:") and minio["healthcheck"]
    assert _depends(init)["minio"]["condition"] == "service_healthy"
    store = urlparse(_env("airflow-scheduler")["AIRFLOW__TRAINYARD__STORE"])
    assert store.scheme == "s3"
    script = " ".join(init["command"])
    assert f"mc mb --ignore-existing local/{store.hostname}" in script
    assert f"mc version enable local/{store.hostname}" in script
    for name in AIRFLOW_SERVICES + KUBERNETES_SERVICES:
        assert _depends(SERVICES[name])["minio-init"]["condition"] == "service_completed_successfully", name


def test_store_credentials_are_only_an_airflow_connection_pointing_at_minio():
    minio_env = SERVICES["minio"]["environment"]
    secret = minio_env["MINIO_ROOT_PASSWORD"]
    for name in AIRFLOW_SERVICES + KUBERNETES_SERVICES:
        env = _env(name)
        conn = json.loads(env["AIRFLOW_CONN_TRAINYARD_STORE"])
        assert conn["conn_type"] == "aws"
        assert (conn["login"], conn["password"]) == (minio_env["MINIO_ROOT_USER"], secret)
        endpoint = urlparse(conn["extra"]["endpoint_url"])
        assert (endpoint.hostname, str(endpoint.port)) == ("minio", SERVICES["minio"]["ports"][0].split(":")[-1])
        assert env["AIRFLOW__TRAINYARD__STORE_CONN_ID"] == "trainyard_store"
        assert not [k for k in env if k.startswith("AWS_")], f"{name} passes AWS_* variables"
        others = {k: v for k, v in env.items() if k != "AIRFLOW_CONN_TRAINYARD_STORE"}
        assert secret not in json.dumps(others) + json.dumps(SERVICES[name].get("command")), name


def test_trainyard_settings_of_every_airflow_service_are_valid():
    """The [trainyard] env of each service resolves through trainyard.config: known names, a valid combination."""
    for name in AIRFLOW_SERVICES + KUBERNETES_SERVICES:
        settings = {k.removeprefix("AIRFLOW__TRAINYARD__").lower(): v for k, v in _env(name).items()
                    if k.startswith("AIRFLOW__TRAINYARD__")}
        resolved = config.load(**settings).checked()
        expected = "kubernetes" if name in KUBERNETES_SERVICES else "local"
        assert resolved.runner == expected, name
        assert resolved.store.startswith("s3://")


def test_the_kubernetes_profile_runs_steps_as_pods_with_a_read_only_kubeconfig():
    profiled = {name for name, s in SERVICES.items() if s.get("profiles")}
    assert profiled == set(KUBERNETES_SERVICES)
    raw = RAW["services"]
    for name in KUBERNETES_SERVICES:
        assert SERVICES[name]["profiles"] == ["kubernetes"]
        assert _env(name)["KUBECONFIG"] == KUBECONFIG_TARGET
        assert f"${{KUBECONFIG_PATH:-~/.kube/config}}:{KUBECONFIG_TARGET}:ro" in raw[name]["volumes"]
    assert {SERVICES[n]["command"][0] for n in KUBERNETES_SERVICES} == {"scheduler", "dag-processor"}
    # The default services never see a kubeconfig.
    for name in AIRFLOW_SERVICES:
        assert not any(".kube" in v for v in SERVICES[name]["volumes"]) and "KUBECONFIG" not in _env(name)
    assert "--scale airflow-scheduler=0 --scale airflow-dag-processor=0" in COMPOSE_TEXT  # documented


def test_named_volumes_are_declared_and_dependencies_exist_without_cycles():
    declared = set(COMPOSE["volumes"])
    used = set()
    for name, service in SERVICES.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source", "")
            if source and not source.startswith(("/", ".", "~")):
                used.add(source)
        for dep in _depends(service):
            assert dep in SERVICES, f"{name} depends on unknown service {dep}"
            # a service outside a profile cannot depend on one inside it: `docker compose up` would fail
            assert not SERVICES[dep].get("profiles") or SERVICES[dep]["profiles"] == service.get("profiles"), name
    assert used == declared  # every used volume declared, none declared in vain
    for name in SERVICES:  # walk every dependency chain: no cycles (and no self-dependency)
        seen, stack = set(), list(_depends(SERVICES[name]))
        while stack:
            dep = stack.pop()
            assert dep != name, f"dependency cycle through {name}"
            if dep not in seen:
                seen.add(dep)
                stack.extend(_depends(SERVICES[dep]))


def test_the_api_server_is_published_and_healthchecked_and_components_share_secrets():
    api = SERVICES["airflow-apiserver"]
    assert "8080:8080" in api["ports"]
    assert "http://localhost:8080/api/v2/monitor/health" in api["healthcheck"]["test"]
    for name in AIRFLOW_SERVICES[1:4]:
        assert SERVICES[name]["healthcheck"]["test"], name
    execution = urlparse(_env("airflow-scheduler")["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"])
    assert (execution.hostname, execution.port, execution.path) == ("airflow-apiserver", 8080, "/execution/")
    airflow = AIRFLOW_SERVICES + KUBERNETES_SERVICES
    for key in ("AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API__SECRET_KEY", "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"):
        assert len({_env(name)[key] for name in airflow}) == 1, f"{key} differs between Airflow services"
    assert len(_env("airflow-scheduler")["AIRFLOW__API_AUTH__JWT_SECRET"].encode()) >= 64  # HS512


def test_dags_and_the_trainyard_plugin_are_mounted_where_airflow_looks():
    for name in AIRFLOW_SERVICES + KUBERNETES_SERVICES:
        env, volumes = _env(name), SERVICES[name]["volumes"]
        assert f"./dags:{env['AIRFLOW__CORE__DAGS_FOLDER']}:ro" in volumes, name
        assert f"./plugins:{env['AIRFLOW__CORE__PLUGINS_FOLDER']}:ro" in volumes, name
    assert (REPO / "dags/train_pipeline.py").is_file() and (REPO / "plugins").is_dir()
