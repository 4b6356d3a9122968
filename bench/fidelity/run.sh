#!/usr/bin/env bash
# Sluice limit fidelity benchmark: `npm run bench:fidelity` (builds dist/ first), or
# `bash bench/fidelity/run.sh`. Installs wrk from Debian when missing (needs root), checks that
# Redis answers, then runs run.mjs, which prints the figures. Settings: see README.md here.
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! command -v wrk >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "fidelity: installing wrk from Debian" >&2
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null \
      || echo "fidelity: could not install wrk" >&2
  else
    echo "fidelity: wrk missing; install with: sudo apt-get install -y wrk" >&2
  fi
fi
if ! command -v wrk >/dev/null 2>&1 && [[ ",${FIDELITY_PARTS:-scenarios,decide,overhead}," == *",overhead,"* ]]; then
  echo "fidelity: wrk is required for the throughput part (or set FIDELITY_PARTS=scenarios,decide)" >&2
  exit 1
fi
[ -f dist/cli.js ] || { echo "fidelity: dist/cli.js is missing; run npx tsc -b" >&2; exit 1; }

# The driver runs in its own process group (set -m) with everything it starts (upstream, gateways,
# decide.mjs, the overhead driver and its wrk); on any exit the whole group is ended.
set -m
driver=""
cleanup() {
  if [ -n "$driver" ] && kill -0 "$driver" 2>/dev/null; then
    kill -TERM -- "-$driver" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$driver" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$driver" 2>/dev/null || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

node bench/fidelity/run.mjs &
driver=$!
set +e
wait "$driver"
status=$?
set -e
exit "$status"
