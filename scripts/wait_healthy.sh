#!/usr/bin/env bash
# Wait until compose services are healthy, with no fixed sleeps: poll each
# container's health, and fail at once with the service's last log line if it
# exits (a wrong key, say), even when compose is restarting it.
# Usage: COMPOSE="docker-compose" wait_healthy.sh SECONDS SERVICE...
set -euo pipefail
timeout=$1; shift
compose=${COMPOSE:?COMPOSE must name the compose command}
deadline=$((SECONDS + timeout))
for service in "$@"; do
    while :; do
        # -a: compose v2 lists only running containers otherwise, and an exited
        # one is exactly what must be reported.
        id=$($compose ps -a -q "$service" 2>/dev/null || true)
        if [ -n "$id" ]; then
            state=$(docker inspect -f '{{.State.Status}} {{.RestartCount}} {{if .State.Health}}{{.State.Health.Status}}{{end}}' "$id")
            # A node that exits is restarted by compose (restart: on-failure);
            # while starting, that means it failed: say why, not "not healthy".
            case "$state" in
                "running "*" healthy") break ;;
                exited*|dead*|restarting*|"running "[1-9]*)
                    echo "error: $service exited: $(docker logs --tail 1 "$id" 2>&1 | tail -n 1)" >&2
                    echo "       (make logs shows more)" >&2
                    exit 1 ;;
            esac
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "error: $service not healthy after ${timeout}s (make logs shows why)" >&2
            exit 1
        fi
        sleep 0.2
    done
done
echo "healthy: $*"
