#!/usr/bin/env bash
# Build a Python >= 3.12 base image with no container registry at all:
# debootstrap Debian trixie (minbase) with python3, python3-venv,
# ca-certificates and the libraries PostgreSQL needs, then `docker import` it. For air-gapped or proxied machines:
#
#   scripts/build_base_image.sh [TAG]          # default TAG: persistent-agent-base:trixie
#   make build PYTHON_IMAGE=TAG
#
# Environment:
#   DEBIAN_MIRROR   Debian mirror URL (default: the first one in this host's apt sources)
#   HOST_CA_BUNDLE  CA bundle copied into the image so pip works behind a
#                   TLS-intercepting proxy (default: /etc/ssl/certs/ca-certificates.crt;
#                   set it empty to keep Debian's own bundle)
#   REBUILD=1       rebuild even if TAG exists
# Needs root (debootstrap), debootstrap and a running Docker engine.
set -euo pipefail

tag=${1:-persistent-agent-base:trixie}
suite=trixie
ca_bundle=${HOST_CA_BUNDLE-/etc/ssl/certs/ca-certificates.crt}

die() { echo "build_base_image: error: $*" >&2; exit 1; }

# What the image carries besides minbase; an image of this tag built with
# another list (an older checkout's) is rebuilt.
packages=python3,python3-venv,ca-certificates,libxml2,libgssapi-krb5-2,libzstd1,liblz4-1
list_file=/etc/persistent-agent-base-packages

if [ -z "${REBUILD:-}" ] && docker image inspect "$tag" >/dev/null 2>&1; then
    has=$(docker run --rm "$tag" cat "$list_file" 2>/dev/null || true)
    if [ "$has" = "$packages" ]; then
        echo "base image $tag already exists (REBUILD=1 to rebuild)"
        exit 0
    fi
    echo "base image $tag lacks packages of this checkout's list; rebuilding it"
fi
command -v debootstrap >/dev/null || die "debootstrap is not installed (apt-get install debootstrap)"
[ "$(id -u)" = 0 ] || die "debootstrap needs root; run with sudo"
docker info >/dev/null 2>&1 || die "no Docker engine answers (is dockerd running?)"

mirror=${DEBIAN_MIRROR:-}
if [ -z "$mirror" ]; then
    # The host already knows a reachable Debian mirror: reuse it rather than
    # naming one here (deb822 "URIs:" lines, then one-line "deb" entries).
    mirror=$(grep -hsE '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | grep -vi security | head -n1 || true)
    [ -n "$mirror" ] || mirror=$(grep -hsE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list | awk '{print $2}' | grep -i debian | grep -vi security | head -n1 || true)
fi
[ -n "$mirror" ] || die "no Debian mirror found in /etc/apt; set DEBIAN_MIRROR"

rootfs=$(mktemp -d)
trap 'rm -rf "$rootfs"' EXIT
echo "debootstrap $suite (minbase) from $mirror ..."
debootstrap --variant=minbase --include="$packages" \
    "$suite" "$rootfs" "$mirror" >"$rootfs.log" 2>&1 \
    || { tail -n 20 "$rootfs.log" >&2; die "debootstrap failed (log above)"; }
rm -f "$rootfs.log"

if [ -n "$ca_bundle" ]; then
    [ -f "$ca_bundle" ] || die "HOST_CA_BUNDLE $ca_bundle does not exist"
    cp "$ca_bundle" "$rootfs/etc/ssl/certs/ca-certificates.crt"
fi
echo "$packages" >"$rootfs$list_file"
# Keep the image small: package caches and docs are not needed at run time.
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
       "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/*

tar -C "$rootfs" -c . | docker import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["python3"]' \
    - "$tag" >/dev/null
echo "built base image $tag ($(docker run --rm "$tag" python3 --version))"
