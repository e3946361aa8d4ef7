"""Collect step: merge every datum's output into one commit of the step's output repo (Pachyderm's /pfs/out)."""

from __future__ import annotations

import argparse
import sys

from training_images.datum.inputs import add_step_arguments, load_step
from trainyard import contract
from trainyard.datums import (
    DatumRecords,
    RecordWriter,
    compact_records,
    datum_keys,
    datum_records,
    has_provenance,
    load_records,
    save_provenance,
)
from trainyard.records import Provenance, ProvenanceFile
from trainyard.store.versioned import Store


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
    merged, origin, migrated = _merge(store, args, recorded, located, datums_of)
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


def _merge(store: Store, args: argparse.Namespace, recorded: DatumRecords, located: dict[str, str | None],
           datums_of: dict[str, list[str]]) -> tuple[dict[str, dict], dict[str, tuple[str, str]], list[str]]:
    """Every datum's outputs in one manifest, and which datum (and key) wrote each path; per-datum records read on
    the way are copied into batches (their keys returned), so later collects read a few objects.

    Records come batch by batch, in no datum order; the merge keeps what a walk in datum order kept (the last datum
    in that order names a file several wrote alike), so the commit and provenance do not depend on the order.
    """
    merged: dict[str, dict] = {}
    origin: dict[str, tuple[str, str]] = {}
    migrated: list[str] = []
    with RecordWriter(store, args.pipeline, args.step) as rewrite:
        for record in load_records(store, recorded, located):
            if located[record.key] is None:  # a per-datum record: kept in a batch from now on
                rewrite.add(record)
                migrated.append(record.key)
            for datum in datums_of[record.key]:
                prefix = datum.strip("/").replace("/", "_").replace(" ", "") + "/" if args.nest else ""
                for rel, entry in record.outputs.items():
                    path = prefix + rel
                    seen = merged.get(path)
                    if seen is not None and seen["sha256"] != entry["sha256"]:
                        first, second = sorted((origin[path][0], datum))
                        raise SystemExit(f"datums {first} and {second} both wrote {path!r} with different content; "
                                         "each datum must write distinct output paths")
                    if seen is None or datum > origin[path][0]:
                        merged[path], origin[path] = entry, (datum, record.key)
    return merged, origin, migrated


if __name__ == "__main__":
    sys.exit(main())
