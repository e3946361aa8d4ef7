#!/usr/bin/env bash
# Install the optional Debian packages trainyard's local runner and its server-mode tests use, when missing:
#   bubblewrap  kaos bundles' hard-coded /pfs paths on the local runner (bwrap)
#   postgresql  Airflow's metadata DB for the server-mode e2e tests and bench/server (started per test session)
#   chromium    the headless browser the Airflow UI test drives with Playwright (no browser download)
# Idempotent and never fails its caller: without a package, trainyard still runs; the tests that need it skip,
# printing the reason.
set -u

note() { echo "install-system-deps: $*"; }

declare -A provides=([bubblewrap]=bwrap [postgresql]=/usr/lib/postgresql/*/bin/initdb [chromium]=chromium)
missing=()
for pkg in bubblewrap postgresql chromium; do
    probe=${provides[$pkg]}
    # shellcheck disable=SC2086  # the probe may be a glob
    if command -v $probe >/dev/null 2>&1 || compgen -G "$probe" >/dev/null; then
        note "$pkg present"
    else
        missing+=("$pkg")
    fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

skip() { note "not installed: ${missing[*]} ($*); the tests that need them will skip"; exit 0; }
command -v apt-get >/dev/null 2>&1 || skip "apt-get is not available; install them with your package manager"
if [ "$(id -u)" -eq 0 ]; then
    as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true >/dev/null 2>&1; then
    as_root=(sudo -n)  # -n: never stop a `make setup` to prompt for a password
else
    skip "installing them needs root; run: sudo apt-get install -y ${missing[*]}"
fi

aptlog="$(mktemp -t trainyard-apt.XXXXXX)"
root() { ${as_root[@]+"${as_root[@]}"} "$@"; }
install() { root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"; }

note "installing ${missing[*]} with apt-get"
# A fresh container often has no package lists; refresh them only when the plain install cannot find a package.
if install >"$aptlog" 2>&1 || { root apt-get update -q >>"$aptlog" 2>&1 && install >>"$aptlog" 2>&1; }; then
    rm -f "$aptlog"
    note "installed ${missing[*]}"
else
    tail -n 5 "$aptlog" | sed 's/^/  apt-get: /'
    skip "apt-get failed (full log: $aptlog)"
fi
exit 0
