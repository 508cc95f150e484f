#!/usr/bin/env bash
# keyward's benchmark (never part of `cargo test`): builds the release server, starts it on a
# fresh database, drives load over loopback with wrk for a bounded time, stops everything
# it started, and prints one table. See README "Performance".
#   DURATION=10 CONNECTIONS=64 bash bench/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v wrk >/dev/null 2>&1; then
    echo "installing wrk" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi
cargo build --release --locked --bin keyward --example sign_loop >&2
exec python3 bench/run.py
