"""The compose replicas variant (docker-compose.replicas.yml, `make start-replicas`)
against a real engine: a PostgreSQL service and two agent replicas, each in a
container of its own (separate network namespaces, PostgreSQL over the compose
network), sharing one encrypted state behind the one sentinel.

Same bare copy, image and project as the other Docker tests (conftest.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from ..conftest import plaintext_hits
from .conftest import (
    PROJECT_NAME,
    client_lines,
    compose_command,
    compose_env,
    container,
    docker,
    leaked,
    make,
    run,
    secret_values,
)

pytestmark = pytest.mark.docker

REPLICAS = ("replica-1", "replica-2")
SERVICES = ("postgres", "issuer", "sentinel", *REPLICAS)
SECRET_FILE = Path("config", "postgres.password")


def _replicas_compose(project: Path) -> list[str]:
    """Compose on both files, as the Makefile runs it for the replicas."""
    files = ["-f", "docker-compose.yml", "-f", "docker-compose.replicas.yml"]
    return [*compose_command(project), *files]


def _compose(project: Path, *argv: str) -> None:
    run([*_replicas_compose(project), *argv], project, env_vars=compose_env(), timeout=300)


def _wait_healthy(project: Path, *services: str) -> None:
    """scripts/wait_healthy.sh, as `make start-replicas` runs it."""
    subprocess.run(
        ["scripts/wait_healthy.sh", "120", *services],
        cwd=project,
        env={**compose_env(), "COMPOSE": " ".join(_replicas_compose(project))},
        check=True,
        timeout=180,
    )


def _increments(project: Path, calls: int, concurrency: int = 16) -> dict[str, Any]:
    """`make run-increments`: the client's JSON summary, every call acknowledged."""
    out = make(project, "run-increments", f"CALLS={calls}", f"CONCURRENCY={concurrency}").stdout
    summary: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    assert summary["acknowledged"] == calls, summary
    return summary


def test_replicas_keep_one_exact_count_through_a_killed_replica(project: Path) -> None:
    """start-replicas; 200 concurrent increments through the sentinel: every call
    acknowledged, both replicas served some, the count is exactly 200; `make run`
    works unchanged. docker kill replica-2, start it again by service name: it
    rejoins (serves again) and the count goes on exactly; it survives stop and start."""
    started = make(project, "start-replicas")
    assert f"healthy: {' '.join(SERVICES)}" in started.stdout

    first = _increments(project, 200)
    assert first["highest"] == 200, first
    assert all(first["served"].get(r, 0) > 0 for r in REPLICAS), first
    print(f"conflict retries: {first['conflict_retries']}, client retries: "
          f"{first['client_retries']}")  # fmt: skip

    seed = client_lines(make(project, "run"))
    assert seed[0] == "Previous state: null"
    assert seed[1].startswith('Updated state: {"value":"')

    victim = container("replica-2")
    docker("kill", victim)
    assert container("replica-2") == ""
    _compose(project, "start", "replica-2")
    _wait_healthy(project, "replica-2")
    assert container("replica-2") == victim  # the same container, so the same node id

    # Until replica-2 is back in the sentinel's pool its share of the calls is
    # retried on replica-1; wait for what must be seen: replica-2 serving again.
    total, deadline = 200, time.monotonic() + 120
    while True:
        batch = _increments(project, 20, concurrency=4)
        total += 20
        assert batch["highest"] == total, batch
        if batch["served"].get("replica-2", 0) > 0:
            break
        assert time.monotonic() < deadline, "replica-2 never served again after its restart"

    make(project, "stop")
    make(project, "start-replicas")
    assert _increments(project, 1, concurrency=1)["highest"] == total + 1


# Run in a replica: the TLS state of every session on the shared database, and
# what a plaintext login gets. Prints JSON; never a secret.
_TLS_PROBE = """
import json, os, psycopg
dsn = os.environ["FAME_STORAGE_POSTGRES_DSN"]
password = open(os.environ["FAME_STORAGE_POSTGRES_PASSWORD_FILE"]).read().strip()
with psycopg.connect(dsn, password=password) as conn:
    sessions = conn.execute(
        "SELECT s.ssl, s.version FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)"
        " WHERE a.datname = current_database()"
    ).fetchall()
plain = psycopg.conninfo.make_conninfo(dsn, sslmode="disable")
try:
    psycopg.connect(plain, password=password, connect_timeout=5).close()
    plaintext = "accepted"
except psycopg.OperationalError as exc:
    plaintext = str(exc).splitlines()[0]
print(json.dumps({"sessions": sessions, "plaintext": plaintext}))
"""


def test_replica_secrets_are_files_and_postgres_is_private(project: Path) -> None:
    """No secret (the PostgreSQL password, the master key, a credential, a private
    key) is in `docker inspect` of any container or in a replica's environment;
    each replica reads its own from /run/secrets, and reaches PostgreSQL over
    verified TLS. PostgreSQL runs as nobody, publishes no port, keeps its cluster in
    the named volume; each replica has its own data directory, the user's, opaque."""
    make(project, "start-replicas")
    assert (project / SECRET_FILE).stat().st_mode & 0o777 == 0o600
    assert _increments(project, 10)["highest"] == 10

    secrets = secret_values(project)
    assert {"postgres.password", "master.key", "replica-1.secret"} <= set(secrets)
    ids = docker("ps", "-q", "--filter", f"label=com.docker.compose.project={PROJECT_NAME}")
    assert len(ids.split()) == len(SERVICES)
    for cid in ids.split():
        assert leaked(docker("inspect", cid), secrets) == []
    for n, replica in enumerate(REPLICAS, 1):
        cid = container(replica)
        environ = docker("exec", cid, "cat", "/proc/1/environ")
        assert "FAME_STORAGE_POSTGRES_PASSWORD_FILE=/run/secrets/postgres_password" in environ
        assert f"FAME_NODE_ID={replica}" in environ
        # Its own credential (client id = node id).
        assert f"FAME_ADMISSION_CLIENT_ID={replica}" in environ
        assert leaked(environ, secrets) == []
        mounted = set(docker("exec", cid, "ls", "/run/secrets").split())
        assert mounted == {"master_key", "postgres_password", "ca_cert", f"replica_{n}_secret"}

    # Every session on the shared database is TLS 1.3; plaintext is rejected.
    seen = json.loads(docker("exec", container(REPLICAS[0]), "python", "-c", _TLS_PROBE))
    assert seen["sessions"] and set(map(tuple, seen["sessions"])) == {(True, "TLSv1.3")}, seen
    assert "no encryption" in seen["plaintext"], seen

    postgres = container("postgres")
    info = json.loads(docker("inspect", postgres))[0]
    assert not info["HostConfig"]["PortBindings"]
    assert not any(info["NetworkSettings"]["Ports"].values())
    mounts = {m["Destination"]: m for m in info["Mounts"]}
    assert mounts["/var/lib/persistent-agent/postgres"]["Type"] == "volume"
    users = docker("top", postgres, "-o", "user,pid,args").splitlines()[1:]
    assert [u for u in users if "/bin/postgres " in u and not u.startswith("nobody ")] == []
    assert any("/bin/postgres " in u for u in users), users

    make(project, "stop")
    data = project / "data" / "replicas"
    assert sorted(p.name for p in data.iterdir()) == list(REPLICAS)
    for path in [data, *data.rglob("*")]:
        assert path.stat().st_uid == os.getuid(), path
        assert path.stat().st_mode & 0o777 == (0o700 if path.is_dir() else 0o600), path
    assert plaintext_hits(data, [b"SQLite format 3", b"storage@fame.fabric"]) == []


def test_clean_removes_the_replicas_postgres_and_its_volume(project: Path) -> None:
    """make clean after start-replicas: no container, no volume, no password file left."""
    make(project, "start-replicas")
    make(project, "clean")
    label = f"label=com.docker.compose.project={PROJECT_NAME}"
    assert docker("ps", "-aq", "--filter", label) == ""
    assert docker("volume", "ls", "-q", "--filter", label) == ""
    assert not (project / SECRET_FILE).exists()
    assert not (project / "data").exists()
