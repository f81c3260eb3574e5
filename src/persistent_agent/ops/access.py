"""The operator's side of the secured fabric: `make access`, `rotate-credentials`, `reissue-certs`.

Everything lives in ``config/access`` (access/pki.py and access/credentials.py
write it; ``make clean`` removes it): the project CA, the sentinel's and the
issuer's certificates, the issuer's signing key, and one credential per
process that joins the fabric. Nothing here prints a secret.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from persistent_agent import settings
from persistent_agent.access import credentials, pki
from persistent_agent.addresses import loopback
from persistent_agent.errors import ConfigError
from persistent_agent.ops.local_nodes import CLIENT_IDS, LocalNodes, access_dir

# One credential per process, with its role; replicas add theirs (ops/replicas.py).
CLIENTS = {CLIENT_IDS["agent"]: "agent", CLIENT_IDS["client"]: "client", "sentinel": "sentinel"}
SERVERS = ("sentinel", "issuer", "postgres")
# Names the servers are reached by besides localhost, loopback and their compose
# service names: the user's SENTINEL_HOST, and any listed in PERSISTENT_AGENT_TLS_NAMES.
TLS_NAMES_VAR = settings.PERSISTENT_AGENT_TLS_NAMES.name
WARN_BEFORE = timedelta(days=30)


def _extra_names() -> list[str]:
    listed = settings.PERSISTENT_AGENT_TLS_NAMES.value() or ""
    names = [n.strip() for n in listed.split(",") if n.strip()]
    host = settings.SENTINEL_HOST.raw() or ""
    if host not in ("", "0.0.0.0", "::") and not loopback(host):  # noqa: S104
        names.append(host)
    return names


def ensure(config_dir: Path, clients: dict[str, str] | None = None) -> str:
    """Create what is missing (keeps what exists); one line saying what is there."""
    directory = access_dir(config_dir)
    wanted = {**CLIENTS, **(clients or {})}
    extra = _extra_names()
    credentials.ensure_access(
        directory, clients=wanted, server_names={name: extra for name in SERVERS}
    )
    return (
        f"access: {directory} holds the project CA, certificates for {', '.join(SERVERS)} "
        f"and credentials for {', '.join(sorted(wanted))}"
    )


def expiry_warnings(config_dir: Path) -> list[str]:
    """A line per certificate that expires within 30 days (`make reissue-certs` renews them)."""
    now = datetime.now(UTC)
    return [
        f"access: warning: {name} expires on {when:%Y-%m-%d} (in {(when - now).days} days); "
        "run `make reissue-certs`"
        for name, when in pki.expiring(access_dir(config_dir), WARN_BEFORE)
    ]


def _holder(client_id: str) -> str | None:
    """The local role whose process holds *client_id*'s credential, if a long-lived one does."""
    return next(
        (role for role, cid in CLIENT_IDS.items() if cid == client_id and role != "client"), None
    )


def rotate_credential(config_dir: Path, client_id: str, nodes: LocalNodes) -> str:
    """New secret for *client_id*; tokens issued before now are refused, live links closed.

    The sentinel learns it from the issuer within seconds and closes the
    credential's live links; the local process that holds it is restarted so
    that it reads the new secret. Nothing else restarts, and no data is touched.
    """
    directory = access_dir(config_dir)
    if not (directory / credentials.REGISTRY).is_file():
        raise ConfigError(f"{directory} has no credentials; run `make access` first")
    credentials.rotate(directory, client_id)
    role = _holder(client_id)
    restarted = ""
    if role is not None and nodes.pid(role) is not None:
        nodes.stop(role)
        nodes.start(role)
        restarted = f"; restarted the local {role}"
    return (
        f"rotate-credentials: {client_id} has a new secret; tokens issued before now are "
        f"refused and its live links closed{restarted}"
    )


def reissue(config_dir: Path, nodes: LocalNodes) -> str:
    """New server certificates (same CA, so no client changes); restart local servers."""
    directory = access_dir(config_dir)
    pki.ensure_ca(directory)
    extra = _extra_names()
    for name in SERVERS:
        pki.reissue_server_cert(directory, name, extra)
    restarted = [role for role in ("issuer", "sentinel") if nodes.pid(role) is not None]
    for role in restarted:
        nodes.stop(role)
        nodes.start(role)
    until = min(pki.expiry(directory / f"{name}.crt") for name in SERVERS)
    tail = f"; restarted the local {' and '.join(restarted)}" if restarted else ""
    names = ", ".join(SERVERS)
    return f"reissue-certs: new certificates for {names}, valid until {until:%Y-%m-%d}{tail}"
