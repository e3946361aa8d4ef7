# Run a Pachyderm transform once per prepared datum, as Pachyderm's worker does: each datum's inputs at
# /pfs/<input name>/..., its output in /pfs/out. Runs in the transform's own image (transform.image), under the
# static busybox the prepare step copied next to this file, so the image needs no shell and no Python:
#
#     /trainyard/busybox sh /trainyard/pfs-driver.sh CMD [ARG...]      (CMD ARG... is transform.cmd, as argv)
#
# The prepare step (trainyard's own container, which holds the store's credentials; this one does not) wrote
# /data/datums/<n>/in/<input>/... and /data/datums/<n>/env, plus /data/stdin, /data/tries and /data/timeout. For
# each datum this writes out/, log, exit, attempts and seconds there; the finish step uploads them. /data/done says
# it is over, even when a datum failed.
set -u
bb=/trainyard/busybox
trap '$bb touch /data/done' EXIT
set -o pipefail
tries=$($bb cat /data/tries)
limit=$($bb cat /data/timeout)
for dir in /data/datums/*; do
    [ -d "$dir/in" ] || continue
    attempt=1
    started=$($bb date +%s)
    while :; do
        $bb rm -rf "$dir/out" /pfs/out
        $bb mkdir -p "$dir/out"
        # Only this driver's links live in /pfs; a union gives each datum its own inputs.
        $bb find /pfs -mindepth 1 -maxdepth 1 -type l -exec $bb rm -f {} +
        for input in $($bb ls "$dir/in"); do
            $bb ln -sfn "$dir/in/$input" "/pfs/$input"
        done
        $bb ln -sfn "$dir/out" /pfs/out
        echo "datum $($bb cat "$dir/label") (attempt $attempt/$tries)"
        # env holds PACH_* and <input>_COMMIT as quoted assignments written by trainyard, never user text.
        (
            set -a
            . "$dir/env"
            set +a
            if [ "$limit" -gt 0 ]; then
                exec $bb timeout "$limit" "$@"
            else
                exec "$@"
            fi
        ) < /data/stdin 2>&1 | $bb tee "$dir/log"
        code=$?
        echo "$code" > "$dir/exit"
        echo "$attempt" > "$dir/attempts"
        [ "$code" -eq 0 ] && break
        echo "datum $($bb cat "$dir/label") exited $code" >&2
        [ "$attempt" -ge "$tries" ] && break
        attempt=$((attempt + 1))
    done
    echo $(( $($bb date +%s) - started )) > "$dir/seconds"
done
exit 0
