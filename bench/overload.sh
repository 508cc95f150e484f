#!/usr/bin/env bash
# keyward under overload on the release build (never part of `cargo test`): 2,000
# connections signing for 20 s while one client fetches the JWKS; checks that every sign
# answer comes within the request deadline and that the JWKS keeps its latency (see
# bench/overload.py). Takes about 30 s plus the build. Installs wrk when missing.
#
#   bash bench/overload.sh                                  # builds target/release/keyward
#   KEYWARD_BIN=/path/to/keyward CONNS=2000 DURATION=20 bash bench/overload.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v wrk >/dev/null 2>&1; then
    echo "bench: installing wrk" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi
if [ -z "${KEYWARD_BIN:-}" ]; then
    cargo build --release --locked --bin keyward >&2
    KEYWARD_BIN=${CARGO_TARGET_DIR:-target}/release/keyward
fi
export KEYWARD_BIN
exec python3 bench/overload.py
