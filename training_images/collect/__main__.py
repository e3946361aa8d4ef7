"""Collect step: merge every datum's output into one commit of the step's output repo (Pachyderm's /pfs/out)."""

from __future__ import annotations

import argparse
import sys

from training_images.datum.inputs import add_step_arguments, load_step
from trainyard import contract
from trainyard.datums import (
    compact_records,
    datum_keys,
    datum_records,
    has_provenance,
    merge_records,
    save_provenance,
)
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
    specs, count = step.specs, len(step.units)
    datums_of: dict[str, list[str]] = {}  # datum key -> its datums (two with the same content share a record)
    for datum, key in zip(step.units, datum_keys((u["id"] for u in step.units.values()), step.version, step.params)):
        datums_of.setdefault(key, []).append(datum)
    del step  # a million units' file lists are not needed past this point
    recorded = datum_records(store, args.pipeline, args.step)
    located = recorded.locate(datums_of)
    missing = sorted(datum for key, datums in datums_of.items() if key not in located for datum in datums)
    # --nest: each datum's outputs under a folder named after it
    nest = (lambda datum: datum.strip("/").replace("/", "_").replace(" ", "") + "/") if args.nest else (lambda _: "")
    merged, origin, migrated = merge_records(
        store, recorded, located, datums_of, path_of=lambda datum, rel: nest(datum) + rel,
        conflict=lambda first, second, path: f"datums {first} and {second} both wrote {path!r} with different "
                                             "content; each datum must write distinct output paths")
    del located, datums_of
    if missing:
        print(f"{len(missing)} datum(s) have no output: {', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}",
              file=sys.stderr)
        return 1
    if not merged:
        raise SystemExit(f"step {args.step} produced no output files from {count} datum(s)")
    over = ", ".join(f"{s['repo']}:{s['commit'][:5]}" for s in specs)
    commit, created = store.commit(args.output, merged,
                                   message=f"{args.pipeline}.{args.step} over {over} ({count} datums)")
    files = len(merged)
    del merged
    # Which datum (and so which inputs) produced each output file: what `trainyard info --file` reads. The same
    # commit already has it, unless the collect that made it stopped before writing it.
    if created or not has_provenance(store, commit):
        save_provenance(store, commit, Provenance(
            pipeline=args.pipeline, step=args.step, inputs=specs,
            files={path: ProvenanceFile(datum=datum, key=key) for path, (datum, key) in sorted(origin.items())}))
    del origin
    compact_records(store, recorded, migrated)
    print(f"{args.output}: {commit.ref} ({files} file(s) from {count} datum(s){'' if created else ', unchanged'})",
          flush=True)
    contract.write_result({"output": f"{commit.repo}:{commit.id}", "ref": commit.ref, "files": files,
                           "datums": count, "created": created})
    return 0


if __name__ == "__main__":
    sys.exit(main())
