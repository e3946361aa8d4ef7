#!/bin/sh
# pgrep for the XCom sidecar image. Debian's static busybox has no pgrep applet, and Airflow's provider stops the
# sidecar with `kill -2 $(pgrep -u $(id -u) -f 'sh')`; without it the provider warns on every pod and leaves the
# sidecar to the pod's deletion. Reads only -u UID and -f PATTERN (a substring of the command line), as used there.
uid=$(id -u)
pattern=
while [ $# -gt 0 ]; do
  case $1 in
    -u) uid=$2; shift 2 ;;
    -f) shift ;;
    *) pattern=$1; shift ;;
  esac
done
found=1
for dir in /proc/[0-9]*; do
  pid=${dir#/proc/}
  [ "$pid" = "$$" ] && continue
  [ "$(stat -c %u "$dir" 2>/dev/null)" = "$uid" ] || continue
  cmd=$(tr '\0' ' ' < "$dir/cmdline" 2>/dev/null)
  case $cmd in
    *"$pattern"*) echo "$pid"; found=0 ;;
  esac
done
exit $found
