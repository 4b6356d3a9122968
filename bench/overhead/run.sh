#!/usr/bin/env bash
# Sluice overhead benchmark: `npm run bench:overhead` (builds dist/ first), or `bash bench/overhead/run.sh`.
# Installs wrk and nginx from Debian when missing (needs root), then runs bench.mjs, which prints
# the figures. Settings: BENCH_SECONDS, BENCH_ROUNDS, BENCH_WARMUP, BENCH_CONNECTIONS, BENCH_TARGETS,
# BENCH_LOAD_CPU, BENCH_SERVER_CPU, BENCH_PROFILE=1, BENCH_JSON=FILE, and for the HTTPS_PROXY part
# (https.mjs) BENCH_HTTPS=0 to skip it, BENCH_TUNNELS, BENCH_HTTPS_JSON=FILE (see README.md here).
set -euo pipefail
cd "$(dirname "$0")/../.."
# install_missing and run_in_group, shared with bench/fidelity/run.sh.
source bench/lib/debian.sh
source bench/lib/group.sh

missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
[ ${#missing[@]} -eq 0 ] || install_missing bench "${missing[@]}"
export PATH="$PATH:/usr/sbin"
command -v wrk >/dev/null 2>&1 || { echo "bench: wrk is required" >&2; exit 1; }
[ -f dist/cli.js ] || { echo "bench: dist/cli.js is missing; run npx tsc -b" >&2; exit 1; }
[ -d node_modules/http-proxy ] || echo "bench: node_modules/http-proxy missing (npm ci); the http-proxy forwarder will be skipped" >&2

# The drivers run in their own process group, with everything they start (upstream, gateway, nginx,
# forwarders, wrk); on any exit the whole group is ended (bench/lib/group.sh). After the wrk part,
# https.mjs measures the HTTPS_PROXY path (alone: run-https.sh); BENCH_HTTPS=0 skips it.
# The sh in between outlives a signal (its trap runs once the node in front has exited), so the group
# cleanup waits for that driver to stop its children instead of killing everything at once.
drivers='node bench/overhead/bench.mjs'
[ "${BENCH_HTTPS:-1}" = 0 ] || drivers="$drivers && node bench/overhead/https.mjs"
if command -v taskset >/dev/null 2>&1 && [ "$(nproc)" -ge 2 ]; then
  run_in_group taskset -c "${BENCH_LOAD_CPU:-0}" sh -c "trap : INT TERM HUP; $drivers"   # the drivers stay off the server core
else
  run_in_group sh -c "trap : INT TERM HUP; $drivers"
fi
