#!/usr/bin/env bash
# Sluice HTTPS_PROXY benchmark alone: `npm run bench:https` (builds dist/ first), or
# `bash bench/overhead/run-https.sh`. run.sh runs the same driver after the wrk part.
# Needs openssl and node_modules (undici); no wrk, no nginx. Settings: BENCH_SECONDS, BENCH_ROUNDS,
# BENCH_WARMUP, BENCH_CONNECTIONS, BENCH_TUNNELS, BENCH_LOAD_CPU, BENCH_SERVER_CPU,
# BENCH_HTTPS_JSON=FILE (see README.md here).
set -euo pipefail
cd "$(dirname "$0")/../.."
source bench/lib/group.sh

command -v openssl >/dev/null 2>&1 || { echo "bench: openssl is required (apt-get install -y openssl)" >&2; exit 1; }
[ -f dist/cli.js ] || { echo "bench: dist/cli.js is missing; run npx tsc -b" >&2; exit 1; }

# The driver (the load generator) runs pinned off the server core, in its own process group with
# everything it starts (upstream, gateway); on any exit the whole group is ended (bench/lib/group.sh).
if command -v taskset >/dev/null 2>&1 && [ "$(nproc)" -ge 2 ] && [ "${BENCH_NO_PIN:-}" != 1 ]; then
  run_in_group taskset -c "${BENCH_LOAD_CPU:-0}" node bench/overhead/https.mjs
else
  run_in_group node bench/overhead/https.mjs
fi
