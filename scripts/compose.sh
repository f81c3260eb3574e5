#!/bin/sh
# Print this machine's compose command: `docker compose` (v2) or `docker-compose`
# (v1.29, what Debian ships). Prints nothing when neither is installed.
if docker compose version >/dev/null 2>&1; then
    echo "docker compose"
elif command -v docker-compose >/dev/null 2>&1; then
    echo "docker-compose"
fi
