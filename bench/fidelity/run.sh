#!/usr/bin/env bash
# Sluice limit fidelity benchmark: `npm run bench:fidelity` (builds dist/ first), or
# `bash bench/fidelity/run.sh`. Installs wrk from Debian when missing (needs root), checks that
# Redis answers, then runs run.mjs, which prints the figures. Settings: see README.md here.
set -euo pipefail
cd "$(dirname "$0")/../.."
# install_missing and run_in_group, shared with bench/overhead/run.sh.
source bench/lib/debian.sh
source bench/lib/group.sh

command -v wrk >/dev/null 2>&1 || install_missing fidelity wrk
if ! command -v wrk >/dev/null 2>&1 && [[ ",${FIDELITY_PARTS:-scenarios,decide,overhead}," == *",overhead,"* ]]; then
  echo "fidelity: wrk is required for the throughput part (or set FIDELITY_PARTS=scenarios,decide)" >&2
  exit 1
fi
[ -f dist/cli.js ] || { echo "fidelity: dist/cli.js is missing; run npx tsc -b" >&2; exit 1; }

# The driver runs in its own process group with everything it starts (upstream, gateways,
# decide.mjs, the overhead driver and its wrk); on any exit the whole group is ended
# (bench/lib/group.sh).
run_in_group node bench/fidelity/run.mjs
