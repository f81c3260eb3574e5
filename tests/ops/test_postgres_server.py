"""The project's PostgreSQL server speaks TLS only, and the shared state insists on it
across a network: a real server, real certificates, real connections."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from persistent_agent.access import pki
from persistent_agent.demo.postgres_server import PostgresServer
from persistent_agent.errors import ConfigError, LocalNodeError
from persistent_agent.keys.custody import KeySource
from persistent_agent.keys.master_key import MasterKey
from persistent_agent.storage.shared_state import SharedState, check_tls


def _with(dsn: str, **changes: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    info.update(changes)
    return psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in info.items()})


def test_logins_come_over_tls_1_3_with_the_server_verified(
    postgres: PostgresServer, shared_dsn: str
) -> None:
    with psycopg.connect(shared_dsn, password=postgres.password()) as conn:
        row = conn.execute(
            "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
        ).fetchone()
        assert row == (True, "TLSv1.3")
        assert conn.info.get_parameters()  # a working session
        assert psycopg.conninfo.conninfo_to_dict(conn.info.dsn)["sslmode"] == "verify-full"


def test_a_plaintext_login_is_rejected_by_the_server(
    postgres: PostgresServer, shared_dsn: str
) -> None:
    """Even on loopback and with the right password: pg_hba admits TLS only."""
    with pytest.raises(psycopg.OperationalError, match="no encryption"):
        psycopg.connect(
            _with(shared_dsn, sslmode="disable"), password=postgres.password(), connect_timeout=5
        )


def test_a_client_pinning_another_ca_refuses_the_server(
    postgres: PostgresServer, shared_dsn: str, tmp_path: Path
) -> None:
    pki.ensure_ca(tmp_path / "other")
    other = tmp_path / "other" / "ca.crt"
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        psycopg.connect(
            _with(shared_dsn, sslrootcert=str(other)),
            password=postgres.password(),
            connect_timeout=5,
        )


def test_a_name_the_certificate_does_not_carry_is_refused(
    postgres: PostgresServer, shared_dsn: str
) -> None:
    """verify-full checks the name: the server's certificate is for localhost, loopback
    and "postgres", so the same server reached under another name does not pass."""
    with pytest.raises(psycopg.OperationalError, match="does not match host name"):
        psycopg.connect(
            _with(shared_dsn, host="db.example.net", hostaddr="127.0.0.1"),
            password=postgres.password(),
            connect_timeout=5,
        )


@pytest.mark.parametrize(
    ("dsn", "says"),
    [
        (
            "host=db.example.net user=u dbname=d",
            "reaches db.example.net with sslmode=prefer, which does not verify the server",
        ),
        (
            "host=10.0.0.5 user=u dbname=d sslmode=require",
            "reaches 10.0.0.5 with sslmode=require, which does not verify the server",
        ),
        (
            "host=db.example.net user=u dbname=d sslmode=verify-full",
            "asks for sslmode=verify-full but names no CA",
        ),
        ("host db user=u", "not a valid PostgreSQL connection"),
    ],
)
def test_a_dsn_that_would_cross_a_network_unverified_is_refused_in_one_line(
    dsn: str, says: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("PGSSLMODE", "PGSSLROOTCERT", "PGHOST"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ConfigError) as refused:
        check_tls(dsn)
    assert says in str(refused.value)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize(
    "dsn",
    [
        "host=127.0.0.1 user=u dbname=d sslmode=disable",
        "host=localhost,::1 user=u dbname=d",
        "host=/run/postgresql user=u dbname=d",
        "host=db.example.net user=u dbname=d sslmode=verify-full sslrootcert=system",
    ],
)
def test_loopback_sockets_and_verified_servers_pass(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("PGSSLMODE", "PGSSLROOTCERT", "PGHOST"):
        monkeypatch.delenv(var, raising=False)
    check_tls(dsn)


async def test_the_shared_state_refuses_before_connecting(
    postgres: PostgresServer, master_key: MasterKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A DSN naming the server by an address other than loopback, without
    verify-full: refused at open, before any connection is made."""
    monkeypatch.delenv("PGSSLMODE", raising=False)
    dsn = f"host=192.0.2.1 port={postgres.port} user=postgres dbname=postgres sslmode=require"
    with pytest.raises(ConfigError, match="which does not verify the server"):
        await SharedState.open(dsn, postgres.password(), KeySource.local(master_key))


def test_a_cluster_of_another_major_version_is_refused_untouched(tmp_path: Path) -> None:
    server = PostgresServer.scratch(tmp_path)
    cluster = tmp_path / "pg" / "cluster"
    cluster.mkdir(parents=True)
    (cluster / "PG_VERSION").write_text("16\n")
    before = sorted(p.name for p in cluster.iterdir())
    with pytest.raises(LocalNodeError, match=r"made by PostgreSQL 16 .* nothing was changed"):
        server.start()
    assert sorted(p.name for p in cluster.iterdir()) == before
    assert (cluster / "PG_VERSION").read_text() == "16\n"
