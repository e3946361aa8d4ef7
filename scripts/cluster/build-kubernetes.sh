#!/usr/bin/env bash
# Build kube-apiserver, kube-controller-manager, kube-scheduler and kubelet from Debian bookworm's `kubernetes`
# source package with Debian's Go, once per machine: the binaries are cached under a key of the package version
# and this script's build recipe, and a later call with the same key does nothing.
#
# Prints the cache's bin directory on its last line. Needs root (apt-get) and about 3 GB of disk while building.
set -euo pipefail

KUBE_SRC_VERSION=${KUBE_SRC_VERSION:-1.20.5+really1.20.2-1.1+deb12u1}
CACHE=${TRAINYARD_CACHE_DIR:-$HOME/.cache/trainyard}
WHAT="cmd/kube-apiserver cmd/kube-scheduler cmd/kube-controller-manager cmd/kubelet"
# The key changes with the package version or the build recipe (the WHAT list, the Go flags, the pause binary).
key=$(printf '%s\n%s\nCGO_ENABLED=0 linux/amd64\npause gcc -static\n' "$KUBE_SRC_VERSION" "$WHAT" | sha256sum | cut -c1-12)
out="$CACHE/kubernetes/$key"
log() { echo "build-kubernetes: $*" >&2; }

if [ -x "$out/bin/kubelet" ] && [ -x "$out/bin/kube-apiserver" ] && [ -x "$out/bin/pause" ]; then
    log "cached: $out/bin (key $key)"
    echo "$out/bin"
    exit 0
fi

[ "$(id -u)" -eq 0 ] || { log "needs root to install Debian's Go and build tools"; exit 2; }
need=()
for pkg in golang-go dpkg-dev rsync gcc libc6-dev; do dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg"); done
if [ ${#need[@]} -gt 0 ]; then
    log "apt-get install ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null \
        || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null; }
fi

work="$CACHE/kubernetes/build-$key"
mkdir -p "$work"
cd "$work"
if [ ! -d tree ]; then
    # A private sources list, so the machine's apt configuration is left as it was.
    apt_dir="$work/apt"
    mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
    cat > "$apt_dir/sources.list" <<SRC
deb-src http://deb.debian.org/debian bookworm main
deb-src http://deb.debian.org/debian-security bookworm-security main
SRC
    apt_opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o "Dir::Etc::SourceParts=-"
              -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache" -o APT::Sandbox::User=root)
    log "fetching Debian's kubernetes $KUBE_SRC_VERSION source package"
    apt-get "${apt_opts[@]}" update -q >/dev/null
    rm -rf src && mkdir src
    (cd src && apt-get "${apt_opts[@]}" source --download-only "kubernetes=$KUBE_SRC_VERSION" >/dev/null)
    dsc=$(ls src/*.dsc)
    rm -rf tree.tmp
    dpkg-source --no-check -x "$dsc" tree.tmp >/dev/null
    mv tree.tmp tree
    rm -rf src "$apt_dir"
fi
# Kubernetes' Makefile expects its tree inside a GOPATH at k8s.io/kubernetes.
mkdir -p .go/src/k8s.io
ln -sfn "$work/tree" .go/src/k8s.io/kubernetes
log "building $WHAT (12-15 min cold on 2 cores)"
start=$(date +%s)
(cd .go/src/k8s.io/kubernetes && GOPATH="$work/.go" GOCACHE="$work/.gocache" GOFLAGS=-mod=vendor CGO_ENABLED=0 \
    make WHAT="$WHAT" KUBE_BUILD_PLATFORMS=linux/amd64) > "$work/make.log" 2>&1 \
    || { tail -n 30 "$work/make.log" >&2; log "make failed; full log: $work/make.log"; exit 1; }
mkdir -p "$out/bin.tmp"
# The pod sandbox's pause process, from the same tree (no registry to pull registry.k8s.io/pause from).
gcc -Os -static -DVERSION="\"v$KUBE_SRC_VERSION\"" -o "$out/bin.tmp/pause" tree/build/pause/linux/pause.c
for b in kube-apiserver kube-scheduler kube-controller-manager kubelet; do
    cp "tree/_output/local/bin/linux/amd64/$b" "$out/bin.tmp/"
done
rm -rf "$out/bin"
mv "$out/bin.tmp" "$out/bin"
log "built in $(( $(date +%s) - start )) s: $out/bin"
# The tree and Go's cache are 2.6 GB; only the binaries are kept.
cd / && rm -rf "$work"
echo "$out/bin"
