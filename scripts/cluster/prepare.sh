#!/usr/bin/env bash
# Prepare this machine for the local cluster once: Debian's packages, then Kubernetes built from Debian's source
# package (cached; about 5 minutes the first time on 2 cores, nothing after). Images are built when a cluster
# starts. Where the machine cannot run a cluster (not root, no cgroups, no overlayfs), it says why and exits 0:
# the cluster tests then skip with the same reason.
set -uo pipefail
cd "$(dirname "$0")/../.."
reason=$(.venv/bin/python -c 'from trainyard.localk8s.cluster import unavailable; print(unavailable() or "")' 2>&1)
if [ -n "$reason" ]; then
    echo "cluster: not prepared: $reason"
    exit 0
fi
bash scripts/cluster/install-deps.sh || exit $?
echo "cluster: Kubernetes binaries in $(bash scripts/cluster/build-kubernetes.sh)"
