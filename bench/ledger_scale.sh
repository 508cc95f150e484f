#!/usr/bin/env bash
# The ledger at scale: ES256 signing with N rows in the ledger, while the first scheduler pass
# prunes the expired ones and after, on SQLite and PostgreSQL; disk bytes per million rows.
# See bench/ledger_scale.py for what it does and its environment. Needs free disk of about
# 1.5 GB per million rows on SQLite and 2 GB on PostgreSQL, under TMPDIR (/tmp).
#
#   bash bench/ledger_scale.sh                                # builds target/release/keyward
#   LEDGER_ROWS="0 10000000" BASELINE_BIN=/path/to/older/keyward bash bench/ledger_scale.sh
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
if [ ${#missing[@]} -gt 0 ]; then
    echo "bench: installing ${missing[*]}" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if [ -z "${KEYWARD_BIN:-}" ]; then
    cargo build --release --locked --bin keyward >&2
    KEYWARD_BIN=${CARGO_TARGET_DIR:-target}/release/keyward
fi
export KEYWARD_BIN
exec python3 bench/ledger_scale.py
