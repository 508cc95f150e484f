#!/usr/bin/env bash
# Everything in deploy/, checked: the systemd unit (verified, and run under systemd in a
# container), the Kubernetes manifests, the alert rules and the container image. Run after a cargo build (CI: after cargo test), since the
# checks use target/debug/keyward; each part fails naming what to install when a tool is
# missing.
set -euo pipefail
cd "$(dirname "$0")/.."
step() {
    local started=$SECONDS
    "$@"
    echo "deploy-check: $1 passed in $((SECONDS - started))s"
}
step deploy/systemd/verify.sh
step deploy/systemd/run-test.sh
step deploy/kubernetes/validate.sh
step deploy/prometheus/check.sh
step deploy/image-test.sh
