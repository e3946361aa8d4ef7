"""Build step (local runner): make the source bundle's Python environment, keyed by its requirements hash."""

from __future__ import annotations

import argparse
import os
import sys

from training_images.environments import ensure_venv
from trainyard import config
from trainyard.contract import REQUIREMENTS_FILE, requirements_sha, store_from_env, write_result
from trainyard.store import parse_ref


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="training_images.build")
    parser.add_argument("--source", required=True, help="source commit as repo:id")
    parser.add_argument("--venv-cache", default=config.load().venv_cache)
    args = parser.parse_args(argv)

    store = store_from_env()
    repo, ref = parse_ref(args.source)
    commit = store.resolve(repo, ref)
    entry = commit.manifest.get(REQUIREMENTS_FILE)
    requirements = store.get_blob_bytes(entry["sha256"]) if entry else None
    req_sha = requirements_sha(commit.manifest)
    reuse = os.environ.get("TRAINYARD_CACHE", "true") != "false"
    target, reused = ensure_venv(args.venv_cache, req_sha, requirements, log=lambda m: print(m, flush=True),
                                 reuse=reuse)
    print(f"environment {'reused' if reused else 'built'}: {target}", flush=True)
    write_result({"env": f"venv:{req_sha[:16]}", "requirements_sha256": req_sha, "reused": reused,
                  "source": commit.id})
    return 0


if __name__ == "__main__":
    sys.exit(main())
