#!/bin/sh
# Make sure the base image IMAGE is on this machine before `docker build`, so
# that a machine without a registry gets one line saying what to do instead of
# Docker's raw "no such host". Usage: ensure_base_image.sh IMAGE [LOCAL_TAG]
image=$1
local_tag=${2:-persistent-agent-base:trixie}
docker image inspect "$image" >/dev/null 2>&1 && exit 0
if ! why=$(docker pull --quiet "$image" 2>&1 >/dev/null); then
    why=$(printf '%s\n' "$why" | tail -n 1 | sed 's/^Error response from daemon: //')
    echo "error: the base image $image could not be pulled ($why); without a registry," \
         "build one with \`sudo make base-image\`, then \`make start PYTHON_IMAGE=$local_tag\`" >&2
    exit 1
fi
