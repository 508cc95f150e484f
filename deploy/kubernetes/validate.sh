#!/usr/bin/env bash
# Renders the overlays (and each overlay with the commented PKCS#11 patch applied) with
# `kubectl kustomize`, validates every object offline against the Kubernetes schemas of the
# oldest and newest versions kubernetes-validate knows, strictly (an unknown field fails),
# checks keyward's own rules on them (check.py), and checks base/keys.toml with
# `keyward check-config` (KEYWARD_BINARY, default target/debug/keyward).
set -euo pipefail
cd "$(dirname "$0")/../.."
VERSIONS=(1.25.0 1.37.0)
fail() {
    echo "kubernetes-validate: FAILED: $*" >&2
    exit 1
}
command -v kubectl >/dev/null 2>&1 ||
    fail "kubectl not found: install it with apt-get install kubernetes-client"
command -v kubernetes-validate >/dev/null 2>&1 ||
    fail "kubernetes-validate not found: install it with pip install kubernetes-validate==1.37.0"
binary=${KEYWARD_BINARY:-target/debug/keyward}
[[ -x $binary ]] || fail "$binary not found: build it first"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
render() { # kustomization folder, output file
    kubectl kustomize "$1" >"$2" 2>"$work/stderr" || fail "kubectl kustomize $1: $(cat "$work/stderr")"
    # Deprecation notices about bases/patchesStrategicMerge (kept for kubectl 1.20) are fine.
    if grep -v "is deprecated" "$work/stderr" | grep -q .; then fail "kubectl kustomize $1: $(cat "$work/stderr")"; fi
}
for overlay in sqlite postgres; do
    render "deploy/kubernetes/overlays/$overlay" "$work/$overlay.yaml"
    mkdir "$work/$overlay-pkcs11"
    cp deploy/kubernetes/variants/pkcs11.yaml "$work/$overlay-pkcs11/"
    printf 'bases:\n  - %s\npatchesStrategicMerge:\n  - pkcs11.yaml\n' \
        "$(realpath --relative-to="$work/$overlay-pkcs11" "deploy/kubernetes/overlays/$overlay")" \
        >"$work/$overlay-pkcs11/kustomization.yaml"
    render "$work/$overlay-pkcs11" "$work/$overlay-pkcs11.yaml"
    for file in "$work/$overlay.yaml" "$work/$overlay-pkcs11.yaml"; do
        for version in "${VERSIONS[@]}"; do
            kubernetes-validate --strict --quiet -k "$version" "$file" || fail "$(basename "$file") against Kubernetes $version"
        done
    done
    python3 deploy/kubernetes/check.py "$overlay" "$work/$overlay.yaml" || fail "$overlay: keyward's rules"
    echo "kubernetes-validate: ok: overlays/$overlay (and with variants/pkcs11.yaml) valid for Kubernetes ${VERSIONS[*]}"
done
cp deploy/kubernetes/base/keys.toml "$work/keys.toml"
"$binary" check-config --config "$work/keys.toml" >/dev/null 2>&1 ||
    fail "base/keys.toml: $("$binary" check-config --config "$work/keys.toml" 2>&1)"
echo "kubernetes-validate: ok: base/keys.toml passes keyward check-config"
