#!/usr/bin/env bash
# Builds the image from the repository's Dockerfile and checks the running container: uid/gid
# 10001 on a read-only root filesystem, healthy, JWKS served, a client added through exec, a
# token signed and verified against the JWKS, no start without a master key, data kept in the
# volume across containers, SIGTERM ends with exit 0 and every token handed out in the
# ledger, the volume's files 0600 and folders 0700.
#
# The base image is Debian bookworm made from Debian's archive (mmdebstrap --variant=minbase,
# then imported), so no container registry is needed; it is kept as
# localhost/keyward-base:bookworm and reused by later runs (remove it to refresh it). The
# Dockerfile's build stage is replaced by an already built binary (--build-context build=...):
# KEYWARD_IMAGE_BINARY, by default target/debug/keyward from `cargo test`, stripped.
#
# Engine: podman (with runc), or docker where the daemon answers; KEYWARD_IMAGE_ENGINE picks.
# Everything the test creates (containers, volumes, its image, temporary files) is removed
# at the end, whether it passes or fails.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() {
    echo "image-test: FAILED: $*" >&2
    exit 1
}
ok() { echo "image-test: ok: $*"; }
need() { # command, Debian package
    command -v "$1" >/dev/null 2>&1 || fail "$1 not found: install it with apt-get install $2"
}

engine=${KEYWARD_IMAGE_ENGINE:-}
if [[ -z $engine ]]; then
    if command -v podman >/dev/null 2>&1; then
        engine=podman
    elif command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
        engine=docker
    else
        fail "podman not found (and no docker daemon answers): install it with apt-get install podman runc"
    fi
fi
case $engine in
podman) need podman podman && need runc runc ;;
docker)
    need docker docker.io
    # --build-context (the prebuilt binary in place of the build stage) needs BuildKit.
    docker buildx version >/dev/null 2>&1 ||
        fail "docker buildx not found: install Docker's buildx plugin (docker-buildx-plugin), or use podman"
    ;;
*) fail "KEYWARD_IMAGE_ENGINE must be podman or docker, not $engine" ;;
esac
need curl curl
need openssl openssl
need python3 python3
need strip binutils

binary=${KEYWARD_IMAGE_BINARY:-target/debug/keyward}
[[ -x $binary ]] || fail "$binary not found: build it first (cargo build, or cargo test as CI does)"
base=${KEYWARD_BASE_IMAGE:-localhost/keyward-base:bookworm}
run=kwtest-$$
image=localhost/keyward-test:$run
label=keyward.image-test=$run
work=$(mktemp -d)
check() { python3 deploy/jwt_check.py "$@"; }

cleanup() {
    local ids
    ids=$($engine ps -aq --filter "label=$label" 2>/dev/null || true)
    if [[ -n $ids ]]; then $engine rm -f $ids >/dev/null 2>&1 || true; fi
    $engine volume rm -f "$run-data" "$run-empty" >/dev/null 2>&1 || true
    $engine rmi -f "$image" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

# Runtime options. runc refuses podman's default open-files limit on hosts whose own hard
# limit is lower, and its default process limit: give both explicitly. (crun, podman's
# other runtime, fails on cgroup v1 hosts such as this CI's.)
run_opts=(--label "$label")
if [[ $engine == podman ]]; then
    run_opts+=(--runtime runc --ulimit "nofile=$(ulimit -Sn):$(ulimit -Hn)" --ulimit nproc=4096:4096)
else
    run_opts+=(--health-interval 2s --health-start-period 20s)
fi

# --- The base image -------------------------------------------------------------------------
deploy/base-image.sh "$engine" "$base"

# --- The image, from the repository's Dockerfile ---------------------------------------------
mkdir -p "$work/build/src/target/release"
strip -o "$work/build/src/target/release/keyward" "$binary"
build_opts=(--build-arg "BASE_IMAGE=$base" --build-context "build=$work/build" -t "$image")
if [[ $engine == podman ]]; then
    build_opts+=(--format docker --pull=never --runtime runc)
fi
$engine build --quiet "${build_opts[@]}" . >/dev/null || fail "$engine build"
ok "image built from the Dockerfile on $base with $binary"

openssl rand -base64 32 >"$work/master.key"
chmod 0400 "$work/master.key"
chown 10001:10001 "$work/master.key" 2>/dev/null || fail "cannot give the master key file to uid 10001 (run as root)"
key_opts=(-v "$work/master.key:/run/secrets/keyward_master_key:ro" -e KEYWARD_MASTER_KEY_FILE=/run/secrets/keyward_master_key)
$engine volume create "$run-data" >/dev/null
$engine volume create "$run-empty" >/dev/null

# --- No master key: refused -------------------------------------------------------------------
set +e
$engine run --name "$run-nokey" "${run_opts[@]}" --read-only -v "$run-empty:/data" "$image" >"$work/nokey.out" 2>&1
code=$?
set -e
[[ $code -eq 1 ]] || fail "without a master key the container exited with $code, not 1: $(cat "$work/nokey.out")"
grep -q "no master key" "$work/nokey.out" || fail "without a master key, no message saying so: $(cat "$work/nokey.out")"
ok "without a master key: exit 1, \"$(grep -o 'no master key.*does not exist' "$work/nokey.out" | head -1)\""

# --- The server -------------------------------------------------------------------------------
start() { # container name
    $engine run -d --name "$1" "${run_opts[@]}" --read-only -v "$run-data:/data" "${key_opts[@]}" \
        -p 127.0.0.1::8080 -p 127.0.0.1::8081 "$image" >/dev/null
    local i
    for i in $(seq 60); do
        if [[ $engine == podman ]]; then
            podman healthcheck run "$1" >/dev/null 2>&1 && break
        else
            [[ $(docker inspect --format '{{.State.Health.Status}}' "$1") == healthy ]] && break
        fi
        [[ $i -lt 60 ]] || fail "$1 never became healthy: $($engine logs "$1" 2>&1 | tail -20)"
        sleep 0.5
    done
    public=$($engine port "$1" 8080 | head -1)
    internal=$($engine port "$1" 8081 | head -1)
}
sign() { # client token
    curl -sf -X POST "http://$internal/v1/profiles/npm-sandbox/sign" -H "Authorization: Bearer $1" \
        -H 'Content-Type: application/json' -d '{"sub": "acct-42", "claims": {"obo_user": "user@example.com"}}'
}

start "$run-1"
ok "healthy by the image's health check (keyward healthcheck)"
status=$($engine exec "$run-1" grep -E '^(Uid|Gid):' /proc/1/status)
[[ $(echo "$status" | awk '{print $2 $3 $4 $5}' | sort -u) == 10001100011000110001 ]] ||
    fail "the server does not run as uid/gid 10001: $status"
ok "the server runs as uid 10001, gid 10001"
[[ $($engine inspect --format '{{.HostConfig.ReadonlyRootfs}}' "$run-1") == true ]] || fail "root filesystem not read-only"
# As root, whom only a read-only file system stops.
if written=$($engine exec --user 0 "$run-1" touch /etc/keyward/probe 2>&1); then fail "the root filesystem is writable"; fi
grep -q "Read-only file system" <<<"$written" || fail "writing to the root filesystem failed otherwise: $written"
ok "read-only root filesystem"

curl -sf "http://$public/.well-known/jwks.json" >"$work/jwks.json" || fail "no JWKS on the public listener"
kids=$(check kids "$work/jwks.json")
ok "JWKS served with $(echo "$kids" | wc -l) keys"

client=$($engine exec "$run-1" keyward clients add billing --profiles npm-sandbox 2>/dev/null) ||
    fail "clients add through $engine exec"
ok "clients add through $engine exec"
sign "$client" >"$work/signed.json" || fail "signing with the new client"
token=$(check field "$work/signed.json" token)
kid=$(check verify "$work/jwks.json" "$token") || fail "the token does not verify against the JWKS"
ok "a token signed by $kid verifies against the JWKS (RS256, checked in Python)"

modes=$($engine exec "$run-1" find /data -mindepth 1 -printf '%y %m %u %p\n')
echo "$modes" | sed 's/^/image-test:     /'
bad=$(echo "$modes" | awk '($1 == "d" && $2 != "700") || ($1 == "f" && $2 != "600") || $3 != "keyward"')
[[ -z $bad ]] || fail "files in the volume not 0600 (folders 0700) or not keyward's: $bad"
[[ $($engine exec "$run-1" stat -c '%a %u:%g' /data) == "700 10001:10001" ]] || fail "/data is not 0700 10001:10001"
ok "the volume's files are 0600 and its folders 0700, owned by keyward"

# --- Data kept across containers --------------------------------------------------------------
$engine stop -t 30 "$run-1" >/dev/null
$engine rm "$run-1" >/dev/null
start "$run-2"
curl -sf "http://$public/.well-known/jwks.json" >"$work/jwks2.json" || fail "no JWKS after the restart"
[[ $(check kids "$work/jwks2.json") == "$kids" ]] || fail "the keys changed across a new container on the same volume"
sign "$client" >/dev/null || fail "the client's token is refused after the restart"
ok "a new container on the same volume serves the same keys and knows the client"

# --- SIGTERM under load -----------------------------------------------------------------------
mkdir "$work/tokens"
for i in $(seq 200); do
    echo "$i"
done | xargs -P 4 -I{} sh -c "curl -sf --max-time 10 -X POST 'http://$internal/v1/profiles/npm-sandbox/sign' \
    -H 'Authorization: Bearer $client' -H 'Content-Type: application/json' \
    -d '{\"sub\": \"acct-42\", \"claims\": {\"obo_user\": \"user@example.com\"}}' >'$work/tokens/{}' \
    || rm -f '$work/tokens/{}'" &
load=$!
for i in $(seq 100); do
    [[ $(ls "$work/tokens" | wc -l) -ge 20 ]] && break
    sleep 0.1
done
$engine kill --signal TERM "$run-2" >/dev/null
code=$(timeout 60 $engine wait "$run-2") || fail "the container did not stop within 60s of SIGTERM"
wait "$load" || true
[[ $code -eq 0 ]] || fail "after SIGTERM the container exited with $code, not 0"
$engine logs "$run-2" 2>&1 | grep -q "keyward::startup: stopped" || fail "no 'stopped' in the log after SIGTERM"
for f in "$work"/tokens/*; do
    [[ -s $f ]] && check jti "$(check field "$f" token)"
done | sort >"$work/handed-out"
handed_out=$(wc -l <"$work/handed-out")
[[ $handed_out -ge 20 ]] || fail "only $handed_out tokens were signed before SIGTERM"
$engine run --rm "${run_opts[@]}" --read-only -v "$run-data:/data" "${key_opts[@]}" "$image" \
    audit --client billing --since 1h --json >"$work/audit.json" || fail "keyward audit in a new container"
check jtis "$work/audit.json" >"$work/recorded"
missing=$(comm -23 "$work/handed-out" "$work/recorded" | wc -l)
[[ $missing -eq 0 ]] || fail "$missing of $handed_out tokens handed out before SIGTERM are not in the ledger"
ok "SIGTERM during signing: exit 0, all $handed_out tokens handed out are in the ledger"

echo "image-test: passed ($engine)"
