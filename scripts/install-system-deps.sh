#!/usr/bin/env bash
# Install optional system packages: bubblewrap (bwrap) gives kaos bundles their /pfs paths on the local runner.
# Idempotent and never fails its caller: without bwrap, trainyard still runs; only hard-coded /pfs paths break.
set -u

note() { echo "install-system-deps: $*"; }
skip() { note "kaos /pfs paths will not be available locally: $*"; exit 0; }

if command -v bwrap >/dev/null 2>&1; then
    note "bubblewrap present ($(command -v bwrap))"
    exit 0
fi
command -v apt-get >/dev/null 2>&1 || skip "bwrap is not installed and apt-get is not available; install bubblewrap with your package manager"

if [ "$(id -u)" -eq 0 ]; then
    as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true >/dev/null 2>&1; then
    as_root=(sudo -n)  # -n: never stop a `make setup` to prompt for a password
else
    skip "bwrap is not installed and installing it needs root; run: sudo apt-get install -y bubblewrap"
fi

aptlog="$(mktemp -t trainyard-apt.XXXXXX)"
root() { ${as_root[@]+"${as_root[@]}"} "$@"; }
install() { root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends bubblewrap; }

note "installing bubblewrap with apt-get"
# A fresh container often has no package lists; refresh them only when the plain install cannot find the package.
if install >"$aptlog" 2>&1 || { root apt-get update -q >>"$aptlog" 2>&1 && install >>"$aptlog" 2>&1; }; then
    rm -f "$aptlog"
    note "bubblewrap installed ($(command -v bwrap))"
else
    tail -n 5 "$aptlog" | sed 's/^/  apt-get: /'
    skip "apt-get could not install bubblewrap (full log: $aptlog)"
fi
exit 0
