#!/bin/bash
# Usage: scripts/compose_v2.sh DIR
# Make Docker Compose v2 available as a Docker CLI plugin without touching this
# machine's apt setup, so CI can test both `docker-compose` 1.29 (bookworm's
# package) and `docker compose` v2: puts the docker-compose and docker-buildx
# plugins from Debian trixie (Go binaries needing only libc6 >= 2.34, so they
# run on bookworm) into DIR/cli-plugins/ and prints DIR's absolute path
# as the last stdout line. Use it as: DOCKER_CONFIG=$(scripts/compose_v2.sh DIR)
set -euo pipefail

# Exact trixie versions; both binaries report them, which makes re-runs no-ops.
# If a trixie point release replaces one, the download fails: bump it here.
COMPOSE_VERSION=2.26.1-4
BUILDX_VERSION=0.13.1+ds1-3
SUITE=trixie
# bookworm's keyring (2023.3+deb12u2) already holds the trixie signing keys, so
# trixie's InRelease is fully verified; no [trusted=yes] needed.
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

die() { echo "compose_v2: error: $*" >&2; exit 1; }
trap 'die "unexpected failure at line $LINENO"' ERR

[ $# -eq 1 ] || die "usage: $0 DIR"
mkdir -p "$1/cli-plugins" 2>/dev/null || die "cannot create $1/cli-plugins"
dir=$(cd "$1" && pwd -P)
plugins=$dir/cli-plugins

# Re-runs are cheap: ask the installed binaries for their version.
if [ "$("$plugins/docker-compose" version --short 2>/dev/null)" = "$COMPOSE_VERSION" ] &&
   [ "$("$plugins/docker-buildx" version 2>/dev/null | awk '{print $3}')" = "$BUILDX_VERSION" ]; then
    echo "$dir"; exit 0
fi
[ -r "$KEYRING" ] || die "$KEYRING missing (install debian-archive-keyring)"

# Reuse the host's Debian mirror (or proxy) rather than hard-coding one: first
# enabled URI from deb822 .sources or one-line `deb` entries, skipping security
# mirrors and third-party repos (those with a Signed-By other than Debian's).
mirror=$(
    {
        # One awk over the files (not cat) so stanzas never merge across files.
        awk 'BEGIN { RS = "" }
                 /(^|\n)[Ee]nabled: *no/ { next }
                 /(^|\n)[Ss]igned-[Bb]y:/ && !/debian-archive-keyring/ { next }
                 match($0, /(^|\n)URIs:[^\n]*/) {
                     s = substr($0, RSTART, RLENGTH); sub(/.*URIs:/, "", s)
                     n = split(s, u, " "); for (i = 1; i <= n; i++) print u[i] }' \
            /etc/apt/sources.list.d/*.sources 2>/dev/null
        cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
            awk '$1 == "deb" {
                     if (/signed-by=/ && !/debian-archive-keyring/) next
                     sub(/^[ \t]*deb[ \t]+(\[[^]]*\][ \t]+)?/, ""); print $1 }'
    } | grep -v security | grep -E -m1 '^[a-z0-9+]+://' || true
)
[ -n "$mirror" ] || die "no Debian mirror found in /etc/apt/sources.list{,.d/*.sources,.d/*.list}"

# Private apt state: own sources list, lists and cache under $tmp, so neither
# /etc/apt nor /var/lib/apt/lists nor /var/cache/apt change, and the system apt
# locks (held by any concurrent apt-get install) are not needed.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
chmod 755 "$tmp"  # let apt's unprivileged _apt sandbox user write its partial dirs
mkdir -p "$tmp/lists/partial" "$tmp/cache/archives/partial" "$tmp/debs" "$tmp/root"
echo "deb [signed-by=$KEYRING] $mirror $SUITE main" >"$tmp/sources.list"
apt=(-q -o Dir::Etc::sourcelist="$tmp/sources.list" -o Dir::Etc::sourceparts=-
     -o Dir::State::Lists="$tmp/lists" -o Dir::Cache="$tmp/cache" -o APT::Get::List-Cleanup=0)

# Run a step with its output in a log; on failure, say which step and apt's reason.
run() {
    local what=$1; shift
    "$@" >"$tmp/log" 2>&1 ||
        die "$what failed: $(grep -m1 '^E:' "$tmp/log" || grep -m1 '^W:' "$tmp/log" || tail -n1 "$tmp/log")"
}
# --error-on=any: a missing or unverifiable index must fail, not warn.
run "apt-get update ($mirror $SUITE)" apt-get "${apt[@]}" --error-on=any update
# apt-get download checks the .debs against the signed index and writes to cwd.
cd "$tmp/debs"
run "apt-get download (pinned version gone from $SUITE? bump it)" \
    apt-get "${apt[@]}" download "docker-compose=$COMPOSE_VERSION" "docker-buildx=$BUILDX_VERSION"

for deb in "$tmp"/debs/*.deb; do
    run "dpkg-deb -x $(basename "$deb")" dpkg-deb -x "$deb" "$tmp/root"
done
# Copy then rename so an interrupted run never leaves a truncated plugin behind.
for p in docker-buildx docker-compose; do
    src=$tmp/root/usr/libexec/docker/cli-plugins/$p
    [ -f "$src" ] || die "$p package has no /usr/libexec/docker/cli-plugins/$p"
    { install -m 0755 "$src" "$plugins/.$p.new" && mv -f "$plugins/.$p.new" "$plugins/$p"; } 2>/dev/null ||
        die "cannot write $plugins/$p"
done
echo "$dir"
