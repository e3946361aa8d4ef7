"""Collect step: merge every datum's output into one commit of the step's output repo (Pachyderm's /pfs/out)."""

from __future__ import annotations

import argparse
import sys

from training_images.datum.inputs import add_step_arguments, load_step
from trainyard import contract
from trainyard.datums import datum_key, load_record, save_provenance
from trainyard.errors import NotFound
from trainyard.records import Provenance, ProvenanceFile


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="training_images.collect")
    add_step_arguments(parser)
    parser.add_argument("--output", required=True, help="the repo the merged output is committed to")
    parser.add_argument("--nest", action="store_true",
                        help="put each datum's outputs under a folder named after the datum (for transforms that "
                             "write the same file name for every datum)")
    args = parser.parse_args(argv)

    store = contract.store_from_env()
    step = load_step(store, args)
    units, specs, version, params = step.units, step.specs, step.version, step.params
    merged: dict[str, dict] = {}
    origin: dict[str, str] = {}
    keys: dict[str, str] = {}
    missing = []
    for datum, unit in sorted(units.items()):
        key = datum_key(unit["id"], version, params)
        keys[datum] = key
        try:
            record = load_record(store, args.pipeline, args.step, key)
        except NotFound:  # the datum failed, or its task never ran
            missing.append(datum)
            continue
        prefix = datum.strip("/").replace("/", "_").replace(" ", "") + "/" if args.nest else ""
        for rel, entry in record.outputs.items():
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
    save_provenance(store, commit, Provenance(
        pipeline=args.pipeline, step=args.step, inputs=specs,
        files={path: ProvenanceFile(datum=origin[path], key=keys[origin[path]]) for path in sorted(merged)}))
    print(f"{args.output}: {commit.ref} ({len(merged)} file(s) from {len(units)} datum(s)"
          f"{'' if created else ', unchanged'})", flush=True)
    contract.write_result({"output": f"{commit.repo}:{commit.id}", "ref": commit.ref, "files": len(merged),
                           "datums": len(units), "created": created})
    return 0


if __name__ == "__main__":
    sys.exit(main())
