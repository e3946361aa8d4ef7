#!/usr/bin/env bash
# Install the Debian packages the local cluster runs on, when missing (idempotent):
#   etcd-server                    the cluster's datastore
#   containerd runc                the node's container runtime (runc: crun fails on hybrid cgroups here)
#   containernetworking-plugins    CNI bridge/host-local/loopback, which the kubelet needs to call the node Ready
#   kubernetes-client              kubectl for people poking at the cluster, unless one is installed already
#                                  (tests use the Python client)
#   docker-registry                an OCI registry on 127.0.0.1 that the node pulls from and builds push to
#   buildah skopeo                 the image builder (on the node and in build pods) and registry inspection
#   debootstrap busybox-static     Debian root filesystems for the base images, and a tiny XCom sidecar image
#   iproute2                       to remove the CNI bridge when the cluster stops
# Exit 0 when everything is there; 3 when it cannot install (not root, no apt-get), with the reason.
set -euo pipefail
pkgs=(etcd-server containerd runc containernetworking-plugins docker-registry buildah skopeo debootstrap
      busybox-static iproute2)
command -v kubectl >/dev/null || pkgs+=(kubernetes-client)
missing=()
for pkg in "${pkgs[@]}"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
    echo "cluster: cannot install ${missing[*]}: needs root (run: sudo apt-get install ${missing[*]})" >&2
    exit 3
fi
command -v apt-get >/dev/null || { echo "cluster: apt-get is missing; install ${missing[*]} by hand" >&2; exit 3; }
echo "cluster: apt-get install ${missing[*]}" >&2
log=$(mktemp -t trainyard-cluster-apt.XXXXXX)
# policy-rc.d 101: Debian's packages must not start their own containerd/etcd/registry services; the cluster
# starts its own, with its own state directory.
policy=/usr/sbin/policy-rc.d
own_policy=0
if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; own_policy=1; fi
inst() { DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >>"$log" 2>&1; }
if inst || { apt-get update -q >>"$log" 2>&1 && inst; }; then status=0; else status=3; fi
[ $own_policy -eq 1 ] && rm -f "$policy"
if [ $status -ne 0 ]; then tail -n 5 "$log" >&2; echo "cluster: apt-get failed (log: $log)" >&2; exit 3; fi
rm -f "$log"
