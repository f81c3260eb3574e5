"""Agent replicas on one shared PostgreSQL state: real sentinel, replicas, clients and server.

Every test fires concurrent ``increment(1)`` calls from several client
processes and checks the one thing a lost or doubled update would break: the
final count equals the number of acknowledged calls, and every call was
acknowledged.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from persistent_agent.access import fabric, pki, project
from persistent_agent.access.project import access_dir, replica_ids
from persistent_agent.demo.postgres_server import PostgresServer, ServerTls
from persistent_agent.demo.replicas import LocalReplicas, state_version, summary_of
from persistent_agent.errors import LocalNodeError
from persistent_agent.keys.master_key import generate_master_key, write_key_file

from ..conftest import pg_dump, wait_until
from .conftest import free_port

pytestmark = pytest.mark.e2e


def make_replicas(
    root: Path, server: PostgresServer, dsn: str, count: int, **kwargs: Any
) -> LocalReplicas:
    """*count* replicas on *dsn*, each with a credential of its own in config/access."""
    project.ensure(root / "config", {replica: "agent" for replica in replica_ids(count)})
    return LocalReplicas(
        root / "config", root / "data", root / "run", port=free_port(),
        issuer_port=free_port(), dsn=dsn,
        password_file=server.password_file, replicas=replica_ids(count), **kwargs,
    )  # fmt: skip


@pytest.fixture
def replicas(
    initialised: Path, postgres: PostgresServer, shared_dsn: str
) -> Iterator[LocalReplicas]:
    nodes = make_replicas(initialised, postgres, shared_dsn, 3)
    yield nodes
    nodes.stop_all()


def fire(nodes: LocalReplicas, clients: int, calls: int, concurrency: int = 8) -> list[Any]:
    return [nodes.increments(calls, concurrency) for _ in range(clients)]


def collect(running: list[Any]) -> tuple[int, Counter[str], int, Counter[str]]:
    """Acknowledged calls, calls per replica, conflict retries, errors the clients saw."""
    served: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    acknowledged = conflicts = 0
    for tally in (summary_of(p) for p in running):
        acknowledged += tally["acknowledged"]
        served.update(tally["served"])
        errors.update(tally["errors"])
        conflicts += tally["conflict_retries"]
    return acknowledged, served, conflicts, errors


def final_count(nodes: LocalReplicas) -> int:
    return int(summary_of(nodes.increments(1, 1, by=0))["highest"])


def test_replicas_serve_concurrent_increments_exactly(replicas: LocalReplicas) -> None:
    """3 replicas x 3 clients x 100 calls: all acknowledged, count exact, every replica served."""
    replicas.start_all()
    acknowledged, served, conflicts, _ = collect(fire(replicas, clients=3, calls=100))
    print(f"served {dict(served)}, {conflicts} conflicting writes retried")
    assert acknowledged == 300
    assert final_count(replicas) == 300
    assert set(served) == set(replicas.replicas) and all(served.values())


def test_a_replica_killed_mid_stream_loses_nothing_and_rejoins(
    replicas: LocalReplicas, postgres: PostgresServer, shared_dsn: str
) -> None:
    replicas.start_all()
    running = fire(replicas, clients=3, calls=100)
    wait_until(lambda: state_version(postgres, shared_dsn) >= 60, "60 increments")
    victim = replicas.replicas[0]
    replicas.kill(victim)
    replicas.start_replica(victim)  # the same node id: it takes its place in the pool again
    acknowledged, served, _, errors = collect(running)
    print(f"served {dict(served)}; client retries for {dict(errors)}")
    assert acknowledged == 300
    assert final_count(replicas) == 300
    # Rejoined: the restarted replica serves calls again.
    again, served_after, _, _ = collect(fire(replicas, clients=1, calls=60))
    assert again == 60 and served_after[victim] > 0
    assert final_count(replicas) == 360


def test_a_postgres_outage_gives_clear_errors_and_service_resumes(
    replicas: LocalReplicas, postgres: PostgresServer, shared_dsn: str
) -> None:
    replicas.start_all()
    running = fire(replicas, clients=2, calls=100)
    wait_until(lambda: state_version(postgres, shared_dsn) >= 40, "40 increments")
    postgres.stop()
    try:
        # While it is down, a call fails with the outage named, not a hang.
        argv, env = replicas.client_command()
        env["INCREMENT_DEADLINE_SECONDS"] = "10"
        probe = subprocess.run(
            [*argv, "increment", "--calls", "1"], env=env, capture_output=True, text=True,
            timeout=120, check=False,
        )  # fmt: skip
    finally:
        postgres.start()
    assert probe.returncode != 0
    assert "shared state unavailable: PostgreSQL at 127.0.0.1" in probe.stderr, probe.stderr
    assert len(probe.stderr.strip().splitlines()) == 1
    acknowledged, _, _, errors = collect(running)
    print(f"errors the clients retried: {dict(errors)}")
    assert acknowledged == 200
    assert final_count(replicas) == 200
    assert all(replicas.pid(r) for r in replicas.replicas)  # no replica died of it


def test_a_replica_with_the_wrong_master_key_refuses_and_writes_nothing(
    replicas: LocalReplicas, postgres: PostgresServer, shared_dsn: str, initialised: Path
) -> None:
    replicas.replicas = replica_ids(1)
    replicas.start_all()
    assert collect(fire(replicas, clients=1, calls=5))[0] == 5
    before = pg_dump(postgres, shared_dsn)
    wrong = initialised / "config" / "other.key"
    write_key_file(wrong, generate_master_key())
    replicas.replicas = replica_ids(2)
    replicas.extra_env["FAME_STORAGE_MASTER_KEY_FILE"] = str(wrong)
    with pytest.raises(LocalNodeError, match="was made under master key") as refused:
        replicas.start_replica("replica-2")
    assert wrong.read_text().strip() not in str(refused.value)
    assert pg_dump(postgres, shared_dsn) == before


def test_a_replica_refuses_a_shared_state_whose_keyring_was_deleted(
    replicas: LocalReplicas, postgres: PostgresServer, shared_dsn: str
) -> None:
    """Rows with no keyring stop a restarted replica with one line; no new keys, no writes."""
    replicas.replicas = replica_ids(1)
    replicas.start_all()
    assert collect(fire(replicas, clients=1, calls=5))[0] == 5
    replicas.stop("replica-1")
    with psycopg.connect(shared_dsn, password=postgres.password(), autocommit=True) as conn:
        conn.execute("DELETE FROM pa_keyring")
    before = pg_dump(postgres, shared_dsn)
    with pytest.raises(LocalNodeError, match=r"holds rows \(1 in pa_state, 5 in pa_requests\)"):
        replicas.start_replica("replica-1")
    assert pg_dump(postgres, shared_dsn) == before


# ---------------------------------------------------------------- separate hosts


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def hosts() -> Iterator[list[tuple[str, str]]]:
    """Two network namespaces, each a host on its own veth link to this one.

    Returns (namespace, this host's address on that link) per host.
    """
    if os.geteuid() != 0 or shutil.which("ip") is None:
        if os.environ.get("CI"):
            pytest.fail("CI runs as root with iproute2: the separate-hosts test must run there")
        pytest.skip("network namespaces need root and iproute2")
    made: list[tuple[str, str]] = []
    tag = f"{os.getpid() % 10000}"
    try:
        for i in (1, 2):
            ns, outside, inside = f"pa-h{i}-{tag}", f"pa{i}o{tag}", f"pa{i}i{tag}"
            subnet = f"10.{200 + i}.{int(tag) % 250}"
            _ip("netns", "add", ns)
            made.append((ns, f"{subnet}.1"))
            _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
            _ip("link", "set", inside, "netns", ns)
            _ip("addr", "add", f"{subnet}.1/24", "dev", outside)
            _ip("link", "set", outside, "up")
            _ip("-n", ns, "addr", "add", f"{subnet}.2/24", "dev", inside)
            _ip("-n", ns, "link", "set", inside, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        yield made
    finally:
        for i, (ns, _) in enumerate(made, start=1):
            subprocess.run(["ip", "link", "del", f"pa{i}o{tag}"], capture_output=True, check=False)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def test_replicas_on_separate_hosts_reach_postgres_over_the_network(
    initialised: Path, tmp_path: Path, hosts: list[tuple[str, str]]
) -> None:
    """Each replica in its own network namespace: PostgreSQL, the sentinel and the token
    issuer only over veth.

    The sentinel's and the issuer's certificates are the project's (config/access,
    as in the demo), issued for the veth addresses too: each replica verifies them
    by the address it reaches them at.
    """
    addresses = [address for _, address in hosts]
    listen = ",".join(["127.0.0.1", *addresses])
    access_files = access_dir(initialised / "config")
    for reached in ("sentinel", "issuer", "postgres"):
        pki.ensure_server_cert(access_files, reached, addresses)
    server = PostgresServer(
        tmp_path / "pg",
        tmp_path / "pg" / "superuser.password",
        ServerTls.in_access_dir(access_files),
        host=listen,
    )
    server.start()
    nodes: LocalReplicas | None = None
    try:
        dsn = server.create_database("hosts")
        nodes = make_replicas(initialised, server, dsn, 2, host="0.0.0.0")  # noqa: S104
        for replica, (ns, address) in zip(nodes.replicas, hosts, strict=True):
            nodes.hosts[replica] = ["ip", "netns", "exec", ns]
            # This replica's way to the others: its veth link.
            nodes.host_env[replica] = {
                fabric.ADMISSION_URL_VAR: (
                    f"wss://{address}:{nodes.port}/fame/v1/attach/ws/downstream"
                ),
                fabric.TOKEN_URL_VAR: f"https://{address}:{nodes.issuer_port}/oauth/token",
                "FAME_STORAGE_POSTGRES_DSN": server.dsn("hosts", host=address),
            }
        nodes.start_all()
        acknowledged, served, _, _ = collect(fire(nodes, clients=2, calls=60))
        assert acknowledged == 120 and final_count(nodes) == 120
        assert set(served) == set(nodes.replicas) and all(served.values())
        # Over the network: the server saw each replica from its own link's address.
        import psycopg

        with psycopg.connect(server.dsn(host="127.0.0.1"), password=server.password()) as conn:
            links = conn.execute(
                "SELECT DISTINCT a.client_addr, s.ssl, s.version FROM pg_stat_activity a "
                "JOIN pg_stat_ssl s USING (pid) WHERE a.datname = 'hosts'"
            ).fetchall()
        peers = {str(addr) for addr, _, _ in links}
        assert {address.rsplit(".", 1)[0] + ".2" for _, address in hosts} <= peers, peers
        # ...and over TLS 1.3, every one of them.
        assert {(ssl, version) for _, ssl, version in links} == {(True, "TLSv1.3")}, links
    finally:
        if nodes is not None:
            nodes.stop_all()
        server.stop()
