#!/usr/bin/env bash
# Installs what deploy/check.sh needs and the machine lacks (CI runs it on a fresh Debian):
# podman, runc and mmdebstrap for the image tests, kubectl (Debian's kubernetes-client) and
# kubernetes-validate for the manifests, promtool for the alert rules, systemd-analyze for
# the unit. kubernetes-validate goes into a venv (target/ci-venv): Debian's Python refuses
# a system-wide pip install; its bin folder is printed for PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v podman >/dev/null 2>&1 || missing+=(podman)
command -v runc >/dev/null 2>&1 || missing+=(runc)
command -v mmdebstrap >/dev/null 2>&1 || missing+=(mmdebstrap)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v strip >/dev/null 2>&1 || missing+=(binutils)
command -v kubectl >/dev/null 2>&1 || missing+=(kubernetes-client)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
python3 -c 'import yaml' 2>/dev/null || missing+=(python3-yaml)
command -v kubernetes-validate >/dev/null 2>&1 || python3 -c 'import ensurepip' 2>/dev/null || missing+=(python3-venv)
if ((${#missing[@]})); then
    echo "installing ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
fi
if ! command -v kubernetes-validate >/dev/null 2>&1; then
    [[ -x target/ci-venv/bin/kubernetes-validate ]] || {
        python3 -m venv target/ci-venv
        target/ci-venv/bin/pip install -q kubernetes-validate==1.37.0 >&2
    }
    echo "$PWD/target/ci-venv/bin"
fi
