"""Build step (local runner): make the source bundle's Python environment, keyed by its requirements hash."""

from __future__ import annotations

import argparse
import os
import sys

from training_images.environments import ensure_venv
from trainyard import config
from trainyard.contract import requirements_path, requirements_sha, store_from_env, write_result
from trainyard.errors import BundleError
from trainyard.store import parse_ref


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="training_images.build")
    parser.add_argument("--source", required=True, help="source commit as repo:id")
    parser.add_argument("--venv-cache", default=config.load().venv_cache)
    args = parser.parse_args(argv)

    store = store_from_env()
    repo, ref = parse_ref(args.source)
    commit = store.resolve(repo, ref)
    try:
        # requirements.txt at the root or kaos's model/requirements.txt; a commit with two different ones (made
        # before deploy refused them) cannot say which environment it wants.
        path = requirements_path(commit.manifest, bundle=commit.ref)
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    requirements = store.read_entry(commit.manifest[path]) if path else None
    req_sha = requirements_sha(commit.manifest)
    print(f"requirements: {path or 'none (the runner environment only)'}", flush=True)
    reuse = os.environ.get("TRAINYARD_CACHE", "true") != "false"
    target, reused = ensure_venv(args.venv_cache, req_sha, requirements, log=lambda m: print(m, flush=True),
                                 reuse=reuse)
    print(f"environment {'reused' if reused else 'built'}: {target}", flush=True)
    write_result({"env": f"venv:{req_sha[:16]}", "requirements_sha256": req_sha, "requirements": path,
                  "reused": reused, "source": commit.id})
    return 0


if __name__ == "__main__":
    sys.exit(main())
