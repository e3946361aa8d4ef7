"""A stage's params: the JSON object in the file named by ``$TRAINYARD_PARAMS``, over the stage's defaults."""

from __future__ import annotations

import json
import os


class ParamsError(ValueError):
    pass


def load(defaults: dict, fallback: str | None = None) -> dict:
    """defaults, updated with $TRAINYARD_PARAMS (else the fallback file, if given and present).

    Keys the stage does not know are ignored, so one params file can serve every stage; a known key keeps the type
    of its default (an int default accepts only integers, a float default any number).
    """
    path = os.environ.get("TRAINYARD_PARAMS") or fallback
    merged = dict(defaults)
    if not path or (path == fallback and not os.path.exists(path)):
        return merged
    try:
        with open(path) as fh:
            given = json.load(fh)
    except (OSError, ValueError) as exc:
        raise ParamsError(f"cannot read params from {path}: {exc}") from None
    if not isinstance(given, dict):
        raise ParamsError(f"params in {path} must be a JSON object, got {type(given).__name__}")
    for key, default in defaults.items():
        if key not in given:
            continue
        value = given[key]
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            value = float(value) if ok else value
        else:
            ok = isinstance(value, type(default))
        if not ok:
            kind = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
                type(default), type(default).__name__)
            raise ParamsError(f"param {key!r} in {path} must be {kind}, got {value!r}")
        merged[key] = value
    return merged
