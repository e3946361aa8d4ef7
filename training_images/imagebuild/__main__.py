"""Image build step (build pods): skip when the tag exists, else `buildah bud` the context and push the tag.

Runs in the builder image (training_images/builder/Dockerfile) in a privileged pod, after the fetch init container
has written the source commit into the context directory. RUN instructions run with buildah's chroot isolation on
the pod's network. Registry credentials, if any, come from a docker config.json mounted from a Kubernetes Secret
(REGISTRY_AUTH_FILE); none are ever arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from training_images.fetch import BUILD_FILE
from trainyard.k8s import registries_conf


def _run(argv: list[str]) -> int:
    print("+ " + " ".join(argv), flush=True)
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
    return proc.returncode


def tag_exists(destination: str, *, insecure: bool) -> bool:
    """Whether the registry already has `destination` (skopeo inspect; any failure means "build it")."""
    argv = ["skopeo", "inspect", "--raw", f"--tls-verify={'false' if insecure else 'true'}", f"docker://{destination}"]
    return subprocess.run(argv, capture_output=True, check=False).returncode == 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="training_images.imagebuild")
    parser.add_argument("--workspace", required=True, help="where the fetch step wrote the Dockerfile and build.json")
    parser.add_argument("--destination", required=True, help="the image tag to push, <registry>/<name>:<tag>")
    parser.add_argument("--insecure", action="store_true", help="the registry speaks plain HTTP")
    parser.add_argument("--docker-hub-mirror", default="", help="a registry serving Docker Hub's names")
    parser.add_argument("--cache", default="true", help="false: build even when the tag exists")
    args = parser.parse_args(argv)

    # The registry Secret is optional (a registry without auth); buildah and skopeo fail on a missing auth file.
    auth = os.environ.pop("TRAINYARD_REGISTRY_AUTH", "")
    if auth and Path(auth).is_file():
        os.environ["REGISTRY_AUTH_FILE"] = auth
    if args.cache != "false" and tag_exists(args.destination, insecure=args.insecure):
        print(f"image {args.destination} exists: build skipped", flush=True)
        return 0
    conf = Path(os.environ.get("TMPDIR", "/tmp")) / "registries.conf"
    registry = args.destination.split("/", 1)[0]
    conf.write_text(registries_conf(args.docker_hub_mirror,
                                    insecure=[registry, args.docker_hub_mirror] if args.insecure else []))
    os.environ["CONTAINERS_REGISTRIES_CONF"] = str(conf)
    tls = f"--tls-verify={'false' if args.insecure else 'true'}"
    workspace = Path(args.workspace)
    context = workspace / json.loads((workspace / BUILD_FILE).read_text())["context"]
    code = _run(["buildah", "bud", "--isolation", "chroot", "--network", "host", "--layers=false", tls,
                 "-f", str(workspace / "Dockerfile"), "-t", args.destination, str(context)])
    if code != 0:
        print(f"error: building {args.destination} failed (buildah exit code {code}); the Dockerfile's failing "
              "step is above", flush=True)
        return code
    code = _run(["buildah", "push", tls, args.destination, f"docker://{args.destination}"])
    if code != 0:
        print(f"error: pushing {args.destination} failed (exit code {code}); check the registry and its "
              "credentials (the trainyard-registry Secret)", flush=True)
        return code
    print(f"built and pushed {args.destination}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
