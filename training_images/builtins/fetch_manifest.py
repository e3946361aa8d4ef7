"""Built-in transform `builtin:fetch-manifest`: download one datum (a chunk of lines) of a kaos data manifest."""

from __future__ import annotations

import os
import posixpath
import sys
from pathlib import Path

from trainyard import config
from trainyard.manifests import ManifestError, fetch, parse_manifest
from trainyard.urlpolicy import UrlPolicy, UrlPolicyError


def main(argv: list[str] | None = None) -> int:
    """IN_DIR OUT_DIR: the datum's manifest lines; each entry is saved at OUT_DIR/<its path>."""
    in_dir, out_dir = (Path(a) for a in (argv or sys.argv[1:]))
    datum = os.environ.get("TRAINYARD_DATUM", "/manifest")
    # A split file's datums are numbered; with the split size, errors name the line of the whole manifest.
    index, per_datum = posixpath.basename(datum), os.environ.get("TRAINYARD_LINES_PER_DATUM", "")
    offset = int(index) * int(per_datum) if index.isdigit() and per_datum.isdigit() else 0
    source = posixpath.dirname(datum).strip("/") or datum.strip("/")
    policy = UrlPolicy.from_settings(config.load())
    files = sorted(p for p in in_dir.rglob("*") if p.is_file())
    try:
        entries = [e for f in files for e in parse_manifest("\n" * offset + f.read_text(encoding="utf-8"),
                                                             source=source, policy=policy)]
        for entry in entries:
            fetch(entry, out_dir / entry.path, policy)
    except (ManifestError, UrlPolicyError) as exc:
        raise SystemExit(f"error: {exc}") from None
    print(f"fetched {len(entries)} file(s) of {source}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
