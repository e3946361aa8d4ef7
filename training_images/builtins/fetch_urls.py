"""Built-in transform `builtin:fetch-urls`: download the URLs of a datum's TSV lines, through the URL policy."""

from __future__ import annotations

import os
import posixpath
import sys
from pathlib import Path
from urllib.parse import urlsplit

from trainyard import config
from trainyard.manifests import ManifestEntry, ManifestError, fetch
from trainyard.urlpolicy import UrlPolicy, UrlPolicyError


def main(argv: list[str] | None = None) -> int:
    """IN_DIR OUT_DIR: every `...<TAB>url` line of every file under IN_DIR; the URL is the last column."""
    in_dir, out_dir = (Path(a) for a in (argv or sys.argv[1:]))
    # Outputs sit under the datum's own name, so the datums of a split file land in distinct folders.
    folder = out_dir / posixpath.basename(os.environ.get("TRAINYARD_DATUM", "datum").strip("/"))
    policy = UrlPolicy.from_settings(config.load())
    fetched = 0
    for file in sorted(p for p in in_dir.rglob("*") if p.is_file()):
        for number, line in enumerate(file.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            url = line.rsplit("\t", 1)[-1].strip()
            name = posixpath.basename(urlsplit(url).path)
            if not name:
                raise SystemExit(f"{file.name}:{number}: URL {url!r} names no file to save")
            entry = ManifestEntry(line=number, url=url, path=name)
            try:
                policy.check(url)
                fetch(entry, folder / name, policy)
            except (UrlPolicyError, ManifestError) as exc:
                raise SystemExit(f"{file.name}:{number}: {exc}") from None
            fetched += 1
    print(f"fetched {fetched} URL(s) into {folder.name}/", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
