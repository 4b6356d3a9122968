# Sourced by bench/overhead/run.sh and bench/fidelity/run.sh (bash; they run with set -euo pipefail).
#
# run_in_group CMD [ARG...]: runs CMD, the benchmark's driver, in its own process group, waits for
# it and exits the script with its status. Everything the driver starts (upstream, gateways, nginx,
# forwarders, wrk, ...) stays in that group, so on any exit of the script (the driver's end, Ctrl-C,
# SIGTERM, SIGHUP) the whole group is ended: SIGTERM first, SIGKILL after 5 s. This is the second
# net; the driver itself stops its children first (bench/lib/children.mjs).
#
# Why a separate group (set -m): Ctrl-C on a terminal reaches only this script's group, so the
# driver does not get SIGINT and SIGTERM at once, and `kill -- -PGID` can address exactly the
# driver and its children.
run_in_group() {
  set -m
  # Global, not local: the EXIT trap runs after this function has been left.
  driver=""
  trap _group_cleanup EXIT
  # `wait` returns early on a trapped signal; exiting from the trap runs the EXIT trap.
  trap 'exit 130' INT TERM HUP

  "$@" &
  driver=$!
  set +e
  wait "$driver"
  status=$?
  set -e
  exit "$status"
}

_group_cleanup() {
  if [ -n "$driver" ] && kill -0 "$driver" 2>/dev/null; then
    kill -TERM -- "-$driver" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$driver" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$driver" 2>/dev/null || true
  fi
}
