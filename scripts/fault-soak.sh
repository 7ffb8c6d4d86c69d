#!/usr/bin/env bash
# Long fault run: the SIGKILL-under-load test, many times (default 50), stopping at the first
# failure. Each run kills tallyd at four random moments under checkout load and checks every
# acknowledged lease against the server. Usage: scripts/fault-soak.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-50}"
cargo nextest run --workspace --no-run
for i in $(seq 1 "$runs"); do
  echo "run $i of $runs"
  cargo nextest run --workspace --no-fail-fast -E 'test(sigkill_under_checkout_load)' --status-level fail --final-status-level fail
done
echo "$runs runs, $((runs * 4)) kills: every acknowledged lease survived"
