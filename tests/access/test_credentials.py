"""Client credentials and their registry: real files, atomic writes, one-line refusals."""

from __future__ import annotations

import base64
import json
import time
from datetime import timedelta
from pathlib import Path

import pytest

from persistent_agent.access import credentials, pki
from persistent_agent.access.credentials import ensure_access, ensure_client, rotate
from persistent_agent.errors import ConfigError


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def registry(access: Path) -> credentials.Registry:
    return credentials.load_registry(access / credentials.REGISTRY)


def test_a_client_gets_a_secret_and_an_entry(tmp_path: Path) -> None:
    access = tmp_path / "access"
    before = time.time()
    path = ensure_client(access, "agent-1", "agent")
    assert path == access / "agent-1.secret"
    secret = credentials.read_secret(path)
    assert len(base64.urlsafe_b64decode(secret + "=")) == 32
    assert path.read_text() == secret + "\n"
    assert (mode(access), mode(path), mode(access / "clients.json")) == (0o700, 0o600, 0o600)
    raw = json.loads((access / "clients.json").read_text())
    assert raw["version"] == 1
    assert set(raw["clients"]["agent-1"]) == {"role", "secret_sha256", "not_before"}
    assert secret not in (access / "clients.json").read_text()
    client = registry(access).check("agent-1", secret)
    assert client is not None and client.role == "agent" and client.not_before >= before
    assert registry(access).check("agent-1", secret + "x") is None
    assert registry(access).check("nobody", secret) is None


def test_an_existing_client_is_kept(tmp_path: Path) -> None:
    access = tmp_path / "access"
    ensure_client(access, "agent-1", "agent")
    files = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in access.iterdir()}
    ensure_client(access, "agent-1", "agent")
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in access.iterdir()} == files


@pytest.mark.parametrize("client_id", ["Agent", "-agent", "a_b", "", "a" * 64, "../x"])
def test_bad_client_ids_are_refused(tmp_path: Path, client_id: str) -> None:
    with pytest.raises(ConfigError, match=r"client id .* is not usable"):
        ensure_client(tmp_path, client_id, "agent")


def test_unknown_role_and_role_change_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="role 'admin' is not one of agent, client, sentinel"):
        ensure_client(tmp_path, "agent-1", "admin")
    ensure_client(tmp_path, "agent-1", "agent")
    with pytest.raises(ConfigError, match="registered as 'agent', not 'sentinel'"):
        ensure_client(tmp_path, "agent-1", "sentinel")


def test_rotate_replaces_the_secret_and_revokes_earlier_tokens(tmp_path: Path) -> None:
    path = ensure_client(tmp_path, "client-1", "client")
    old = credentials.read_secret(path)
    first = registry(tmp_path).clients["client-1"].not_before
    rotate(tmp_path, "client-1")
    new = credentials.read_secret(path)
    assert new != old
    after = registry(tmp_path)
    assert after.check("client-1", old) is None
    client = after.check("client-1", new)
    assert client is not None and client.role == "client" and client.not_before > first
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_rotating_an_unknown_client_is_one_line(tmp_path: Path) -> None:
    ensure_client(tmp_path, "client-1", "client")
    with pytest.raises(ConfigError, match=r"no client 'ghost' in .*clients\.json"):
        rotate(tmp_path, "ghost")


def test_a_rotation_cut_short_after_the_secret_is_finished(tmp_path: Path) -> None:
    """rotate writes the secret file first; a crash then leaves the registry behind it."""
    path = ensure_client(tmp_path, "agent-1", "agent")
    first = registry(tmp_path).clients["agent-1"].not_before
    path.write_text("a-new-secret-written-before-the-crash\n")
    assert registry(tmp_path).check("agent-1", "a-new-secret-written-before-the-crash") is None
    ensure_client(tmp_path, "agent-1", "agent")
    client = registry(tmp_path).check("agent-1", "a-new-secret-written-before-the-crash")
    assert client is not None and client.not_before > first


def test_a_lost_secret_of_a_registered_client_is_refused(tmp_path: Path) -> None:
    path = ensure_client(tmp_path, "agent-1", "agent")
    path.unlink()
    with pytest.raises(ConfigError, match=r"agent-1\.secret: no such file, but .* has client"):
        ensure_client(tmp_path, "agent-1", "agent")


def test_a_secret_others_can_read_is_refused_without_showing_it(tmp_path: Path) -> None:
    path = ensure_client(tmp_path, "agent-1", "agent")
    secret = credentials.read_secret(path)
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by group or others") as caught:
        credentials.read_secret(path)
    assert secret not in str(caught.value)


@pytest.mark.parametrize(
    "text",
    [
        "{",
        "[]",
        '{"version": 2, "clients": {}}',
        '{"version": 1}',
        '{"version": 1, "clients": {"a": {"role": "agent"}}}',
        '{"version": 1, "clients": {"a": {"role": "boss", "secret_sha256": "' + "0" * 64
        + '", "not_before": 1}}}',
    ],
)  # fmt: skip
def test_a_malformed_registry_is_one_line_naming_it(tmp_path: Path, text: str) -> None:
    path = tmp_path / "clients.json"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        credentials.load_registry(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


CLIENTS = {"agent-1": "agent", "client-1": "client", "sentinel-1": "sentinel"}
SERVERS: dict[str, list[str]] = {"sentinel": ["sentinel.internal"], "issuer": []}


def test_ensure_access_makes_everything_then_changes_nothing(tmp_path: Path) -> None:
    access = tmp_path / "config" / "access"
    ensure_access(access, clients=CLIENTS, server_names=SERVERS)
    names = {p.name for p in access.iterdir()}
    assert names == {
        "ca.crt", "ca.key", "sentinel.crt", "sentinel.key", "issuer.crt", "issuer.key",
        "issuer-signing.key", "clients.json",
        "agent-1.secret", "client-1.secret", "sentinel-1.secret",
    }  # fmt: skip
    for path in access.iterdir():
        assert mode(path) == (0o644 if path.suffix == ".crt" else 0o600), path.name
    assert mode(access) == 0o700
    assert set(registry(access).clients) == set(CLIENTS)
    files = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in access.iterdir()}
    dir_mtime = access.stat().st_mtime_ns
    ensure_access(access, clients=CLIENTS, server_names=SERVERS)
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in access.iterdir()} == files
    assert access.stat().st_mtime_ns == dir_mtime


def test_ensure_access_checks_everything_before_writing(tmp_path: Path) -> None:
    access = tmp_path / "access"
    with pytest.raises(ConfigError, match="role"):
        ensure_access(access, clients={"agent-1": "root"}, server_names=SERVERS)
    with pytest.raises(ConfigError, match="neither an IP address"):
        ensure_access(access, clients=CLIENTS, server_names={"sentinel": ["no way"]})
    assert not access.exists()
    ensure_access(access, clients=CLIENTS, server_names=SERVERS)
    with pytest.raises(ConfigError, match="registered as 'agent'"):
        ensure_access(access, clients={"agent-1": "client"}, server_names={"postgres": []})
    assert not (access / "postgres.crt").exists()
    assert pki.expiring(access, timedelta(days=1)) == []
