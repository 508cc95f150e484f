#!/usr/bin/env bash
# Checks keyward.service: `systemd-analyze verify` must print nothing (it only warns about an
# unknown or misspelt setting, so any output fails here), and `systemd-analyze security`
# must rate the unit's exposure at most MAX_EXPOSURE (README: systemd).
# verify needs ExecStart's binary to exist: the unit is checked with its path replaced by
# KEYWARD_BINARY (default target/debug/keyward).
set -euo pipefail
cd "$(dirname "$0")/../.."
MAX_EXPOSURE=1.5
command -v systemd-analyze >/dev/null 2>&1 || {
    echo "systemd-verify: FAILED: systemd-analyze not found: install it with apt-get install systemd" >&2
    exit 1
}
binary=$(realpath "${KEYWARD_BINARY:-target/debug/keyward}")
[[ -x $binary ]] || { echo "systemd-verify: FAILED: $binary not found: build it first" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
sed "s#^ExecStart=/usr/local/bin/keyward #ExecStart=$binary #" deploy/systemd/keyward.service >"$work/keyward.service"
grep -q "^ExecStart=$binary serve" "$work/keyward.service" || { echo "systemd-verify: FAILED: no ExecStart=/usr/local/bin/keyward serve" >&2; exit 1; }
if ! out=$(systemd-analyze verify --man=no "$work/keyward.service" 2>&1) || [[ -n $out ]]; then
    echo "systemd-verify: FAILED: systemd-analyze verify: $out" >&2
    exit 1
fi
echo "systemd-verify: ok: systemd-analyze verify keyward.service"
score=$(systemd-analyze security --offline=true "$work/keyward.service" 2>&1 | sed -n 's/.*Overall exposure level for keyward.service: \([0-9.]*\).*/\1/p')
[[ -n $score ]] || { echo "systemd-verify: FAILED: no exposure level from systemd-analyze security" >&2; exit 1; }
awk -v s="$score" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(s <= m) }' ||
    { echo "systemd-verify: FAILED: exposure level $score is above $MAX_EXPOSURE" >&2; exit 1; }
echo "systemd-verify: ok: systemd-analyze security: exposure level $score (at most $MAX_EXPOSURE)"
