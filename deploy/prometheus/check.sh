#!/usr/bin/env bash
# Checks the alert rules: promtool check and unit tests (keyward.rules.test.yml), every alert
# with a case that fires it and one that does not and a runbook in the README, and every
# keyward metric the rules use present on a running server's /metrics (KEYWARD_BINARY,
# default target/debug/keyward, started here on free loopback ports, with TLS, a partner,
# a rate-limited client and a ledger made to fail so that every family has a sample).
set -euo pipefail
cd "$(dirname "$0")/../.."
fail() {
    echo "prometheus-rules: FAILED: $*" >&2
    exit 1
}
command -v promtool >/dev/null 2>&1 || fail "promtool not found: install it with apt-get install prometheus"
command -v openssl >/dev/null 2>&1 || fail "openssl not found: install it with apt-get install openssl"
command -v curl >/dev/null 2>&1 || fail "curl not found: install it with apt-get install curl"
python3 -c 'import yaml' 2>/dev/null || fail "python3 with PyYAML not found: install it with apt-get install python3-yaml"
binary=$(realpath "${KEYWARD_BINARY:-target/debug/keyward}")
[[ -x $binary ]] || fail "$binary not found: build it first"

promtool check rules deploy/prometheus/keyward.rules.yml >/dev/null || fail "promtool check rules"
promtool test rules deploy/prometheus/keyward.rules.test.yml >/dev/null ||
    fail "promtool test rules: $(promtool test rules deploy/prometheus/keyward.rules.test.yml 2>&1)"
python3 deploy/prometheus/cases.py deploy/prometheus/keyward.rules.yml deploy/prometheus/keyward.rules.test.yml README.md ||
    fail "an alert without both cases or without its runbook"
echo "prometheus-rules: ok: promtool check and test rules; each alert fires in one case and not in another, and has a runbook"

work=$(mktemp -d)
server=
cleanup() {
    if [[ -n $server ]]; then kill "$server" 2>/dev/null && wait "$server" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT
read -r public internal < <(python3 -c 'import socket
s = [socket.socket() for _ in range(2)]
for x in s: x.bind(("127.0.0.1", 0))
print(*(x.getsockname()[1] for x in s))')
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 5 -subj /CN=localhost \
    -keyout "$work/tls.key" -out "$work/tls.crt" 2>/dev/null
chmod 600 "$work/tls.key"
sed -e "s/^public_addr = .*/public_addr = \"127.0.0.1:$public\"/" \
    -e "s/^internal_addr = .*/internal_addr = \"127.0.0.1:$internal\"/" \
    -e "s|^# public_tls = .*|public_tls = { cert_file = \"tls.crt\", key_file = \"tls.key\" }|" keys.example >"$work/keys.toml"
cat >>"$work/keys.toml" <<'TOML'

[[partner]]
name = "npm"
key_sets = ["npm"]
match = { user_agent = "^npm-partner-auth/" }
expect_fetch_every = "1h"
TOML
cd "$work"
KEYWARD_DEV=1 "$binary" serve >serve.log 2>&1 &
server=$!
for _ in $(seq 100); do
    curl -sfk "https://127.0.0.1:$public/healthz" >/dev/null 2>&1 && break
    sleep 0.2
done
curl -sfk "https://127.0.0.1:$public/healthz" >/dev/null || fail "keyward did not start: $(tail -5 serve.log)"
token=$(KEYWARD_DEV=1 "$binary" clients add billing --profiles npm-sandbox --rate 1 --burst 1 2>/dev/null)
curl -sfk -A npm-partner-auth/1 "https://127.0.0.1:$public/.well-known/jwks.json" >/dev/null
sign() {
    curl -s -o /dev/null -w '%{http_code}\n' -X POST "http://127.0.0.1:$internal/v1/profiles/npm-sandbox/sign" \
        -H "Authorization: Bearer $token" -H 'Content-Type: application/json' -d '{"sub": "acct-42"}'
}
statuses=$(sign; sign; sign)
grep -q 200 <<<"$statuses" && grep -q 429 <<<"$statuses" || fail "expected a 200 and a 429, got $statuses"
# The ledger made to fail, so that a 503 is counted.
python3 -c 'import sqlite3, sys; sqlite3.connect(sys.argv[1]).execute("DROP TABLE issuance")' data/keyward.db
sleep 1.1
[[ $(sign) == 503 ]] || fail "no 503 with the ledger's table gone"
curl -sf "http://127.0.0.1:$internal/metrics" >metrics.txt || fail "no /metrics"
cd - >/dev/null
python3 - deploy/prometheus/keyward.rules.yml "$work/metrics.txt" <<'PY' || fail "the rules use metrics the server does not export"
import re, sys, yaml
rules = yaml.safe_load(open(sys.argv[1]))
exported = {line.split("{")[0].split(" ")[0] for line in open(sys.argv[2]) if line.strip() and not line.startswith("#")}
used = set()
for group in rules["groups"]:
    for rule in group["rules"]:
        used |= set(re.findall(r"\bkeyward_[a-z_]+", rule["expr"]))
missing = sorted(used - exported)
for name in missing:
    print(f"not on /metrics: {name}", file=sys.stderr)
print(f"prometheus-rules: ok: the {len(used)} metrics the rules use are on a running server's /metrics")
sys.exit(1 if missing else 0)
PY
