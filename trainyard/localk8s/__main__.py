"""`python -m trainyard.localk8s [STATE_DIR]`: start the local cluster, print how to use it, stop it on Ctrl-C."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from trainyard.localk8s.cluster import ClusterError, ClusterUnavailable, LocalCluster, leftovers
from trainyard.localk8s.images import OPTIONAL


def _stop_on_sigterm(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainyard.localk8s", description=__doc__)
    parser.add_argument("state", nargs="?", default="/tmp/trainyard-cluster",
                        help="state directory (recreated); default /tmp/trainyard-cluster")
    parser.add_argument("--with", dest="optional", action="append", default=[], choices=OPTIONAL,
                        help="also build an optional base-image stand-in (tensorflow: for the lstm and captioning "
                             "templates; large)")
    args = parser.parse_args(argv)
    state = Path(args.state)
    cluster = LocalCluster(state)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    print(f"starting a local Kubernetes in {state} (the first start builds it: about 5-15 minutes) ...",
          file=sys.stderr)
    try:
        cluster.start()
        if args.optional:
            cluster.add_images(args.optional)
    except ClusterUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except ClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 5
    env = cluster.write_env()
    try:
        print(f"Kubernetes API:  {cluster.api_url}  (kubeconfig {cluster.kubeconfig})")
        print(f"image registry:  {cluster.registry}")
        print(f"use it:          source {env}   # then trainyard and Airflow run steps as pods here")
        print("store Secret:    kubectl create secret generic trainyard-store --from-literal=AWS_ACCESS_KEY_ID=... "
              "--from-literal=AWS_SECRET_ACCESS_KEY=... --from-literal=AWS_ENDPOINT_URL=...")
        print("stop it:         Ctrl-C", flush=True)
        while True:
            time.sleep(5)
            cluster.check_alive()
    except KeyboardInterrupt:
        print("stopping", file=sys.stderr)
    except ClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 5
    finally:
        # A second Ctrl-C (or a TERM from a wrapper) must not cut the teardown short and leave mounts behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        cluster.stop(cleanup=True)
        left = {k: v for k, v in leftovers(state).items() if v}
        if left:
            print(f"warning: left behind: {left}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
