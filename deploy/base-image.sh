#!/usr/bin/env bash
# base-image.sh ENGINE IMAGE: makes IMAGE (Debian bookworm, minbase) from Debian's archive
# with mmdebstrap and imports it into ENGINE (podman or docker), unless it exists already:
# the image tests need no container registry, and later runs reuse the image (remove it to
# refresh it).
set -euo pipefail
engine=$1
image=$2
if "$engine" image inspect "$image" >/dev/null 2>&1; then
    exit 0
fi
command -v mmdebstrap >/dev/null 2>&1 || {
    echo "base-image: FAILED: mmdebstrap not found: install it with apt-get install mmdebstrap" >&2
    exit 1
}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "base-image: making $image from Debian's archive (mmdebstrap --variant=minbase bookworm)"
mmdebstrap --quiet --variant=minbase bookworm "$work/base.tar"
"$engine" import "$work/base.tar" "$image" >/dev/null 2>&1
