"""Fetch step: materialize a source commit as a build context, with the trainyard step runtime layered on."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from training_images.fetch import BUILD_FILE, BUNDLE_DIR
from trainyard.bundles import default_dockerfile, dockerfile_context
from trainyard.contract import store_from_env
from trainyard.store import parse_ref

# Appended to the bundle's Dockerfile so train pods run the same step entrypoint inside the user's image.
# The runtime is pure Python (trainyard and its pinned dependencies) installed with `pip --target` in the steps image.
RUNTIME_LAYER = """
# --- added by trainyard: the step runtime, so this image can run `python3 -m training_images.train`
COPY --from={step_image} /opt/trainyard/lib /opt/trainyard/lib
ENV PYTHONPATH=/opt/trainyard/lib
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="training_images.fetch")
    parser.add_argument("--source", required=True, help="source commit as repo:id")
    parser.add_argument("--dest", required=True, help="workspace to write the bundle, Dockerfile and build.json into")
    parser.add_argument("--step-image", required=True, help="image that carries /opt/trainyard/lib")
    parser.add_argument("--default-base-image", default="python:3.11-slim",
                        help="base of the image of a bundle without a Dockerfile (an AI Center package)")
    args = parser.parse_args(argv)
    store = store_from_env()
    commit = store.resolve(*parse_ref(args.source))
    dest = Path(args.dest)
    bundle = dest / BUNDLE_DIR
    store.materialize(commit.manifest, bundle)
    own = bundle / "Dockerfile"
    if own.is_file():
        text = own.read_text()
        # kaos builds its Dockerfile with model/ as the context; our templates with the bundle root.
        context = dockerfile_context(commit.manifest, text)
    else:
        text = default_dockerfile(commit.manifest, base_image=args.default_base_image)
        context = ""
        print(f"{commit.ref} has no Dockerfile: building the default image on {args.default_base_image}", flush=True)
    # The Dockerfile the build uses sits outside the context, so `COPY .` copies the bundle and nothing of ours.
    (dest / "Dockerfile").write_text(text + RUNTIME_LAYER.format(step_image=args.step_image))
    context_dir = f"{BUNDLE_DIR}/{context}".rstrip("/")
    (dest / BUILD_FILE).write_text(json.dumps({"source": commit.ref, "context": context_dir}))
    print(f"build context for {commit.ref} ready in {dest / context_dir}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
