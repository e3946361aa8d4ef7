"""Collect step: merge every datum's output into one commit of the step's output repo (Pachyderm's /pfs/out)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from training_images.datum.inputs import load_units
from trainyard import contract
from trainyard.datums import datum_key, provenance_key, record_key, transform_version
from trainyard.errors import NotFound
from trainyard.store import parse_ref


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="training_images.collect")
    parser.add_argument("--inputs", required=True, help="the step's resolved inputs, as the datum step takes them")
    parser.add_argument("--combine", default="single")
    parser.add_argument("--code", default="", help="source commit holding the transform, as repo:id (none for builtin:)")
    parser.add_argument("--code-version", default="", help="the code version the plan computed (keys outputs)")
    parser.add_argument("--transform", required=True)
    parser.add_argument("--step", required=True)
    parser.add_argument("--pipeline", default=os.environ.get("TRAINYARD_DAG_ID", "datums"))
    parser.add_argument("--params", default="{}")
    parser.add_argument("--output", required=True, help="the repo the merged output is committed to")
    parser.add_argument("--nest", action="store_true",
                        help="put each datum's outputs under a folder named after the datum (for transforms that "
                             "write the same file name for every datum)")
    args = parser.parse_args(argv)

    params = json.loads(args.params)
    store = contract.store_from_env()
    units, specs = load_units(store, args.inputs, args.combine)
    code = store.resolve(*parse_ref(args.code)) if args.code else None
    # The plan's version is authoritative, so every task of a run keys outputs the same way.
    version = args.code_version or transform_version(args.transform, code.manifest if code else None)
    merged: dict[str, dict] = {}
    origin: dict[str, str] = {}
    keys: dict[str, str] = {}
    missing = []
    for datum, unit in sorted(units.items()):
        key = datum_key(unit["id"], version, params)
        keys[datum] = key
        try:
            record = store.get_json(record_key(args.pipeline, args.step, key))
        except NotFound:  # the datum failed, or its task never ran
            missing.append(datum)
            continue
        prefix = datum.strip("/").replace("/", "_").replace(" ", "") + "/" if args.nest else ""
        for rel, entry in record["outputs"].items():
            path = prefix + rel
            if path in merged and merged[path]["sha256"] != entry["sha256"]:
                raise SystemExit(f"datums {origin[path]} and {datum} both wrote {path!r} with different content; "
                                 "each datum must write distinct output paths")
            merged[path], origin[path] = entry, datum
    if missing:
        print(f"{len(missing)} datum(s) have no output: {', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}",
              file=sys.stderr)
        return 1
    if not merged:
        raise SystemExit(f"step {args.step} produced no output files from {len(units)} datum(s)")
    over = ", ".join(f"{s['repo']}:{s['commit'][:5]}" for s in specs)
    commit, created = store.commit(args.output, merged,
                                   message=f"{args.pipeline}.{args.step} over {over} ({len(units)} datums)")
    # Which datum (and so which inputs) produced each output file: what `trainyard info --file` reads.
    store.put_json(provenance_key(commit.repo, commit.id), {
        "pipeline": args.pipeline, "step": args.step, "inputs": specs,
        "files": {path: {"datum": origin[path], "key": keys[origin[path]]} for path in sorted(merged)}})
    print(f"{args.output}: {commit.ref} ({len(merged)} file(s) from {len(units)} datum(s)"
          f"{'' if created else ', unchanged'})", flush=True)
    contract.write_result({"output": f"{commit.repo}:{commit.id}", "ref": commit.ref, "files": len(merged),
                           "datums": len(units), "created": created})
    return 0


if __name__ == "__main__":
    sys.exit(main())
