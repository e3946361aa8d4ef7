"""Kubernetes' own validation rules for what trainyard puts in a pod: labels, quantities, names, extended resources.

The API server refuses a pod whose label value is over 63 characters, whose memory reads "2GB " or whose GPU
request differs from its limit; trainyard refuses the same things first, with one line naming the field, so a bad
value is caught before anything is uploaded or a run is recorded. The rules are apimachinery's (Kubernetes 1.20):
IsQualifiedName, IsValidLabelValue, IsDNS1123Label/Subdomain, resource.ParseQuantity, and the core validation of
container resources. tests/k8s checks each against a real API server.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from decimal import Decimal, InvalidOperation
from typing import Any

from trainyard.errors import TrainyardError

LABEL_VALUE_MAX = 63
NAME_MAX = 63
SUBDOMAIN_MAX = 253
_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
# resource.ParseQuantity: a signed decimal number, then a binary (Ki..Ei), decimal (n..E) or exponent suffix.
_QUANTITY = re.compile(r"^(?P<num>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"
                       r"(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?[0-9]+)?$")
_SCALE = {"": 0, "n": -9, "u": -6, "m": -3, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_BINARY = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
# Resources the scheduler may overcommit; every other (extended) resource needs request == limit.
NATIVE_RESOURCES = ("cpu", "memory", "ephemeral-storage")


class InvalidPodSpec(TrainyardError):
    """A pod would be refused by the Kubernetes API server; the message names the field and the rule."""

    exit_code = 2


def _short(value: str, limit: int = 40) -> str:
    return value if len(value) <= limit else value[:limit] + "..."


def label_value_error(value: str) -> str | None:
    """Why `value` cannot be a label value (IsValidLabelValue), or None."""
    if len(value) > LABEL_VALUE_MAX:
        return f"{_short(value)!r} is {len(value)} characters, over the limit of {LABEL_VALUE_MAX}"
    if value and not _NAME.match(value):
        return (f"{_short(value)!r} must start and end with a letter or digit and hold only letters, digits, "
                "'-', '_' and '.'")
    return None


def label_key_error(key: str) -> str | None:
    """Why `key` cannot be a label key (IsQualifiedName: [prefix/]name), or None."""
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > SUBDOMAIN_MAX or not _DNS1123_SUBDOMAIN.match(prefix)):
        return f"the prefix of {key!r} must be a DNS subdomain (lowercase, e.g. example.com)"
    if not name or len(name) > NAME_MAX or not _NAME.match(name):
        return (f"{key!r} must be a name of at most {NAME_MAX} letters, digits, '-', '_' or '.', starting and "
                "ending with a letter or digit, after an optional DNS-subdomain prefix and '/'")
    return None


def parse_quantity(text: Any) -> Decimal:
    """A Kubernetes quantity as a Decimal (e.g. "500m" -> 0.5, "2Gi" -> 2147483648); ValueError when malformed."""
    raw = str(text)
    match = _QUANTITY.match(raw)
    if not match:
        raise ValueError(f"{raw!r} is not a Kubernetes quantity (e.g. 500m, 2, 512Mi, 2Gi, 1G; no spaces, and "
                         "bytes are written without B)")
    try:
        number = Decimal(match["num"])
    except InvalidOperation:
        raise ValueError(f"{raw!r} is not a Kubernetes quantity") from None
    suffix = match["suffix"] or ""
    if suffix in _BINARY:
        return number * (2 ** _BINARY[suffix])
    if suffix[:1] in ("e", "E"):
        return number.scaleb(int(suffix[1:]))
    return number.scaleb(_SCALE[suffix])


def quantity_error(value: Any) -> str | None:
    try:
        parse_quantity(value)
    except ValueError as exc:
        return str(exc)
    return None


def _problems(pod: dict[str, Any]) -> Iterator[str]:
    meta = pod.get("metadata") or {}
    name = meta.get("name") or ""
    if name and (len(name) > SUBDOMAIN_MAX or not _DNS1123_SUBDOMAIN.match(name)):
        yield f"metadata.name {_short(name)!r} must be a DNS subdomain (lowercase letters, digits, '-' and '.')"
    for field in ("labels",):
        for key, value in (meta.get(field) or {}).items():
            error = label_key_error(key) or label_value_error(str(value))
            if error:
                yield f"metadata.labels[{key!r}]: {error}"
    spec = pod.get("spec") or {}
    for key, value in (spec.get("nodeSelector") or {}).items():
        error = label_key_error(key) or label_value_error(str(value))
        if error:
            yield f"spec.nodeSelector[{key!r}]: {error}"
    for kind in ("initContainers", "containers"):
        for container in spec.get(kind) or []:
            where = f"spec.{kind}[{container.get('name')!r}]"
            cname = container.get("name") or ""
            if len(cname) > NAME_MAX or not _DNS1123_LABEL.match(cname):
                yield f"{where}.name must be a DNS label (lowercase letters, digits and '-', at most 63)"
            for env in container.get("env") or []:
                if not _ENV_NAME.match(env.get("name") or ""):
                    yield f"{where}.env[{env.get('name')!r}]: not a valid environment variable name"
            yield from _resource_problems(where, container.get("resources") or {})
    for volume in spec.get("volumes") or []:
        vname = volume.get("name") or ""
        if len(vname) > NAME_MAX or not _DNS1123_LABEL.match(vname):
            yield f"spec.volumes[{vname!r}].name must be a DNS label (lowercase letters, digits and '-')"


def _resource_problems(where: str, resources: dict[str, Any]) -> Iterator[str]:
    requests, limits = resources.get("requests") or {}, resources.get("limits") or {}
    parsed: dict[str, dict[str, Decimal]] = {"requests": {}, "limits": {}}
    for kind, values in (("requests", requests), ("limits", limits)):
        for resource, value in values.items():
            try:
                amount = parse_quantity(value)
            except ValueError as exc:
                yield f"{where}.resources.{kind}[{resource!r}]: {exc}"
                continue
            if amount < 0:
                yield f"{where}.resources.{kind}[{resource!r}]: {value!r} must not be negative"
            parsed[kind][resource] = amount
    for resource in set(parsed["requests"]) | set(parsed["limits"]):
        request, limit = parsed["requests"].get(resource), parsed["limits"].get(resource)
        if resource in NATIVE_RESOURCES:
            if request is not None and limit is not None and request > limit:
                yield (f"{where}.resources: the {resource} request {requests[resource]!r} is above its limit "
                       f"{limits[resource]!r}")
            continue
        # Extended resources (nvidia.com/gpu) cannot be overcommitted: whole numbers, and request == limit.
        for kind, amount in (("requests", request), ("limits", limit)):
            if amount is not None and amount != amount.to_integral_value():
                yield f"{where}.resources.{kind}[{resource!r}]: {resource} must be a whole number"
        if request is not None and limit is None:
            yield f"{where}.resources: {resource} is requested ({requests[resource]!r}) but has no limit; set both"
        elif request is not None and request != limit:
            yield (f"{where}.resources: the {resource} request {requests[resource]!r} must equal its limit "
                   f"{limits[resource]!r}")


def check_pod(pod: dict[str, Any], *, what: str = "pod") -> None:
    """Raise InvalidPodSpec naming the first thing the API server would refuse in `pod` (its JSON form)."""
    for problem in _problems(pod):
        raise InvalidPodSpec(f"{what}: {problem}")


def check_labels(labels: dict[str, Any], *, what: str = "labels") -> None:
    for key, value in labels.items():
        error = label_key_error(str(key)) or label_value_error(str(value))
        if error:
            raise InvalidPodSpec(f"{what}[{key!r}]: {error}")


def registries_conf(docker_hub_mirror: str = "", insecure: Iterable[str] = ()) -> str:
    """containers-registries.conf(5) for buildah: Docker Hub names resolve to `docker_hub_mirror` when one is given
    (the local cluster's registry holds stand-ins under Docker Hub's names), and `insecure` registries are reached
    over plain HTTP."""
    lines = ['unqualified-search-registries = ["docker.io"]', 'short-name-mode = "permissive"', ""]
    insecure = [r for r in dict.fromkeys(insecure) if r]
    if docker_hub_mirror:
        lines += ["[[registry]]", 'prefix = "docker.io"', f'location = "{docker_hub_mirror}"',
                  f"insecure = {'true' if docker_hub_mirror in insecure else 'false'}", ""]
    for registry in insecure:
        lines += ["[[registry]]", f'location = "{registry}"', "insecure = true", ""]
    return "\n".join(lines)


def built_image(registry: str, repo: str, commit_id: str, step_image: str) -> str:
    """The image the build step makes for a source commit: `<registry>/<repo>:<commit>-<runtime>`.

    The build layers trainyard's runtime from the steps image onto the bundle's own image, so the tag names both:
    a new trainyard (another steps image) builds the bundle again instead of reusing an image whose runtime speaks
    an older step protocol."""
    import hashlib

    runtime = hashlib.sha256(step_image.encode()).hexdigest()[:8]
    return f"{registry}/{repo}:{commit_id[:12]}-{runtime}"
