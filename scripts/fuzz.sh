#!/usr/bin/env bash
# Fuzzes every protocol decoder for a bounded time (default 60 s): scripts/fuzz.sh [SECONDS]
# cargo-fuzz needs a nightly compiler feature; on stable Rust, RUSTC_BOOTSTRAP=1 allows it.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs="${1:-60}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
mkdir -p corpus/decode
RUSTC_BOOTSTRAP=1 cargo fuzz run decode corpus/decode -- -max_total_time="$secs" -max_len=65536
