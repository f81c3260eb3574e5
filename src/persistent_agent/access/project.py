"""The project's own access material in ``config/access``: which credentials
and certificates it holds, and making what is missing (``make access``).

``config/access`` holds the project CA, a certificate for each server
(:data:`SERVERS`), the issuer's signing key and one credential per process
that joins the fabric (:data:`CLIENTS`; each agent replica adds its own,
:func:`replica_ids`). :mod:`.pki` and :mod:`.credentials` write the files;
this module says which ones this project wants. Nothing here prints a secret.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from persistent_agent import settings
from persistent_agent.access import credentials, pki
from persistent_agent.addresses import loopback

# Each local process's credential (config/access/<id>.secret), by role.
CLIENT_IDS = {"agent": "persistent-agent", "client": "client"}
# One credential per process, with its role; replicas add theirs (replica_ids).
CLIENTS = {CLIENT_IDS["agent"]: "agent", CLIENT_IDS["client"]: "client", "sentinel": "sentinel"}
SERVERS = ("sentinel", "issuer", "postgres")
# Names the servers are reached by besides localhost, loopback and their compose
# service names: the user's SENTINEL_HOST, and any listed in PERSISTENT_AGENT_TLS_NAMES.
TLS_NAMES_VAR = settings.PERSISTENT_AGENT_TLS_NAMES.name
WARN_BEFORE = timedelta(days=30)


def access_dir(config_dir: Path) -> Path:
    """Where the CA, the certificates, the credentials and the issuer's keys live."""
    return config_dir / "access"


def replica_ids(count: int) -> list[str]:
    """The agent replicas' credentials (role agent) and node ids: replica-1 … replica-N."""
    return [f"replica-{i}" for i in range(1, count + 1)]


def extra_names() -> list[str]:
    """The names the servers' certificates carry besides the usual ones (see TLS_NAMES_VAR)."""
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
    extra = extra_names()
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
