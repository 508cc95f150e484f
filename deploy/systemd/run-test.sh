#!/usr/bin/env bash
# Runs keyward.service under a real systemd: a podman container whose PID 1 is systemd
# (Debian bookworm from Debian's archive, see deploy/base-image.sh), with the unit and its
# sysusers file installed as the unit's header says. Checks that the service starts as the
# system user keyward with the master key from LoadCredential, serves the JWKS and signs
# (the token verified against the JWKS in Python), keeps /var/lib/keyward 0700 and its
# files 0600, and stops with exit 0 and "stopped" in its log. Removes its container and
# image at the end. KEYWARD_BINARY: the binary (default target/debug/keyward, stripped).
set -euo pipefail
cd "$(dirname "$0")/../.."
fail() {
    echo "systemd-run-test: FAILED: $*" >&2
    exit 1
}
ok() { echo "systemd-run-test: ok: $*"; }
for tool in podman:podman runc:runc curl:curl strip:binutils python3:python3; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || fail "${tool%%:*} not found: install it with apt-get install ${tool#*:}"
done
binary=${KEYWARD_BINARY:-target/debug/keyward}
[[ -x $binary ]] || fail "$binary not found: build it first"
base=${KEYWARD_BASE_IMAGE:-localhost/keyward-base:bookworm}
run=kwsystemd-$$
image=localhost/keyward-systemd-test:$run
work=$(mktemp -d)
cleanup() {
    podman rm -f "$run" >/dev/null 2>&1 || true
    podman rmi -f "$image" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
check() { python3 deploy/jwt_check.py "$@"; }
inside() { podman exec "$run" "$@"; }

deploy/base-image.sh podman "$base"
strip -o "$work/keyward" "$binary"
cp deploy/systemd/keyward.service deploy/systemd/keyward.sysusers "$work/"
# Listening on every interface of the container, so that the test reaches it from outside.
sed -e 's/^public_addr = .*/public_addr = "0.0.0.0:8080"/' -e 's/^internal_addr = .*/internal_addr = "0.0.0.0:8081"/' \
    keys.example >"$work/keys.toml"
cat >"$work/Containerfile" <<'EOF'
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends systemd systemd-sysv libssl3 ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY keyward /usr/local/bin/keyward
COPY keyward.sysusers /usr/lib/sysusers.d/keyward.conf
COPY keys.toml /etc/keyward/keys.toml
COPY keyward.service /etc/systemd/system/keyward.service
CMD ["/sbin/init"]
EOF
podman build --quiet --runtime runc --pull=never --build-arg "BASE_IMAGE=$base" \
    -t "$image" "$work" >/dev/null 2>"$work/build.log" || fail "podman build: $(tail -5 "$work/build.log")"
podman run -d --name "$run" --runtime runc --systemd=always \
    --ulimit "nofile=$(ulimit -Sn):$(ulimit -Hn)" --ulimit nproc=4096:4096 \
    -p 127.0.0.1::8080 -p 127.0.0.1::8081 "$image" >/dev/null
for i in $(seq 60); do
    state=$(inside systemctl is-system-running 2>/dev/null || true)
    [[ $state == running || $state == degraded ]] && break
    [[ $i -lt 60 ]] || fail "systemd did not come up: $state"
    sleep 0.5
done
ok "systemd runs as PID 1 in the container"

# The installation steps of the unit's header.
inside systemd-sysusers
inside sh -c 'umask 077 && head -c 32 /dev/urandom | base64 > /etc/keyward/master.key'
inside systemctl start keyward || fail "systemctl start keyward: $(inside journalctl -u keyward --no-pager | tail -5)"
public=$(podman port "$run" 8080 | head -1)
internal=$(podman port "$run" 8081 | head -1)
for i in $(seq 60); do
    curl -sf "http://$public/healthz" >/dev/null 2>&1 && break
    [[ $i -lt 60 ]] || fail "keyward.service never answered: $(inside journalctl -u keyward --no-pager | tail -5)"
    sleep 0.5
done
pid=$(inside systemctl show -p MainPID --value keyward)
[[ $(inside stat -c %U "/proc/$pid") == keyward ]] || fail "the service does not run as keyward"
journal=$(inside journalctl -u keyward --no-pager)
grep -q 'master key from file.*/run/credentials/keyward.service/master_key' <<<"$journal" ||
    fail "the master key did not come from the credential: $journal"
ok "keyward.service runs as keyward, with the master key from LoadCredential"

curl -sf "http://$public/.well-known/jwks.json" >"$work/jwks.json" || fail "no JWKS"
client=$(inside runuser -u keyward -- env KEYWARD_CONFIG=/etc/keyward/keys.toml \
    KEYWARD_DATABASE_URL=sqlite:///var/lib/keyward/keyward.db keyward clients add billing --profiles npm-sandbox 2>/dev/null) ||
    fail "clients add as the user keyward"
curl -sf -X POST "http://$internal/v1/profiles/npm-sandbox/sign" -H "Authorization: Bearer $client" \
    -H 'Content-Type: application/json' -d '{"sub": "acct-42"}' >"$work/signed.json" || fail "signing"
kid=$(check verify "$work/jwks.json" "$(check field "$work/signed.json" token)") || fail "the token does not verify"
ok "JWKS served; a client added as the user keyward; a token signed by $kid verifies against the JWKS"

modes=$(inside find /var/lib/keyward -mindepth 0 -printf '%y %m %u %p\n' 2>/dev/null || true)
bad=$(awk '$4 ~ /keyward\/?$/ { if ($2 != "700") print; next } ($1 == "d" && $2 != "700") || ($1 == "f" && $2 != "600")' <<<"$modes")
grep -q 'keyward.db$' <<<"$modes" || fail "no database in /var/lib/keyward: $modes"
[[ -z $bad ]] || fail "state directory not 0700 or its files not 0600: $bad"
ok "/var/lib/keyward is 0700 and its files 0600"

inside systemctl stop keyward
[[ $(inside systemctl show -p ExecMainStatus --value keyward) == 0 ]] || fail "keyward.service did not exit 0"
# journald reads the service's output asynchronously: its last line can reach the journal a
# moment after systemctl stop returned. --sync makes journald write out what it has received;
# a line still in the stream is waited for (10 s at most).
for i in $(seq 20); do
    inside journalctl --sync >/dev/null 2>&1 || true
    inside journalctl -u keyward --no-pager | grep -q 'keyward::startup: stopped' && break
    [[ $i -lt 20 ]] || fail "no 'stopped' in the journal: $(inside journalctl -u keyward --no-pager | tail -5)"
    sleep 0.5
done
ok "systemctl stop: exit 0, stopped cleanly"
echo "systemd-run-test: passed"
