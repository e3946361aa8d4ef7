"""Fetch step: materialize a source commit as a Kaniko build context, with the trainyard runtime layered on."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from trainyard.contract import store_from_env
from trainyard.store import parse_ref

# Appended to the bundle's Dockerfile so train pods run the same step entrypoint inside the user's image.
# The runtime is pure Python (trainyard + boto3 + tqdm) installed with `pip --target` in the steps image.
RUNTIME_LAYER = """
# --- added by trainyard: the step runtime, so this image can run `python3 -m training_images.train`
COPY --from={step_image} /opt/trainyard/lib /opt/trainyard/lib
ENV PYTHONPATH=/opt/trainyard/lib
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="training_images.fetch")
    parser.add_argument("--source", required=True, help="source commit as repo:id")
    parser.add_argument("--dest", required=True, help="directory to write the build context into")
    parser.add_argument("--step-image", required=True, help="image that carries /opt/trainyard/lib")
    args = parser.parse_args(argv)
    store = store_from_env()
    commit = store.resolve(*parse_ref(args.source))
    dest = Path(args.dest)
    store.materialize(commit.manifest, dest)
    dockerfile = dest / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text() + RUNTIME_LAYER.format(step_image=args.step_image))
    print(f"build context for {commit.ref} ready in {dest}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
