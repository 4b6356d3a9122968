#!/usr/bin/env bash
# Sluice overhead benchmark: `npm run bench:overhead` (builds dist/ first), or `bash bench/overhead/run.sh`.
# Installs wrk and nginx from Debian when missing (needs root), then runs bench.mjs, which prints
# the figures. Settings: BENCH_SECONDS, BENCH_ROUNDS, BENCH_WARMUP, BENCH_CONNECTIONS, BENCH_TARGETS,
# BENCH_LOAD_CPU, BENCH_SERVER_CPU, BENCH_PROFILE=1, BENCH_JSON=FILE (see README.md here).
set -euo pipefail
cd "$(dirname "$0")/../.."

missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "bench: installing ${missing[*]} from Debian" >&2
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null \
      || echo "bench: could not install ${missing[*]}" >&2
  else
    echo "bench: ${missing[*]} missing; install with: sudo apt-get install -y ${missing[*]}" >&2
  fi
fi
export PATH="$PATH:/usr/sbin"
command -v wrk >/dev/null 2>&1 || { echo "bench: wrk is required" >&2; exit 1; }
[ -f dist/cli.js ] || { echo "bench: dist/cli.js is missing; run npx tsc -b" >&2; exit 1; }
[ -d node_modules/http-proxy ] || echo "bench: node_modules/http-proxy missing (npm ci); the http-proxy forwarder will be skipped" >&2

# The driver runs in its own process group (set -m), with everything it starts (upstream, gateway,
# nginx, forwarders, wrk); on any exit the whole group is ended.
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

if command -v taskset >/dev/null 2>&1 && [ "$(nproc)" -ge 2 ]; then
  taskset -c "${BENCH_LOAD_CPU:-0}" node bench/overhead/bench.mjs &   # the driver stays off the server core
else
  node bench/overhead/bench.mjs &
fi
driver=$!
set +e
wait "$driver"
status=$?
set -e
exit "$status"
