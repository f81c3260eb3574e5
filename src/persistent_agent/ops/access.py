"""The operator's side of the secured fabric: `rotate-credentials`, `reissue-certs`.

``make access`` itself is :func:`persistent_agent.access.project.ensure`. Both
tools here change files in ``config/access`` (access/pki.py and
access/credentials.py write them; ``make clean`` removes them) and restart
the local processes that use them (:class:`~persistent_agent.demo.local_nodes.LocalNodes`,
which the caller hands in; None where there are none: a deployment without
the ``demo`` extra restarts its own). Nothing here prints a secret.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from persistent_agent.access import credentials, pki
from persistent_agent.access.project import CLIENT_IDS, SERVERS, access_dir, extra_names
from persistent_agent.errors import ConfigError

if TYPE_CHECKING:
    from persistent_agent.demo.local_nodes import LocalNodes


def _holder(client_id: str) -> str | None:
    """The local role whose process holds *client_id*'s credential, if a long-lived one does."""
    return next(
        (role for role, cid in CLIENT_IDS.items() if cid == client_id and role != "client"), None
    )


def _restart(nodes: LocalNodes | None, roles: tuple[str, ...]) -> list[str]:
    """Restart those of *roles* that run as local processes; the ones restarted."""
    if nodes is None:
        return []
    running = [role for role in roles if nodes.pid(role) is not None]
    for role in running:
        nodes.stop(role)
        nodes.start(role)
    return running


def rotate_credential(config_dir: Path, client_id: str, nodes: LocalNodes | None) -> str:
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
    restarted = "".join(
        f"; restarted the local {r}" for r in _restart(nodes, (role,) if role else ())
    )
    return (
        f"rotate-credentials: {client_id} has a new secret; tokens issued before now are "
        f"refused and its live links closed{restarted}"
    )


def reissue(config_dir: Path, nodes: LocalNodes | None) -> str:
    """New server certificates (same CA, so no client changes); restart local servers."""
    directory = access_dir(config_dir)
    pki.ensure_ca(directory)
    extra = extra_names()
    for name in SERVERS:
        pki.reissue_server_cert(directory, name, extra)
    restarted = _restart(nodes, ("issuer", "sentinel"))
    until = min(pki.expiry(directory / f"{name}.crt") for name in SERVERS)
    tail = f"; restarted the local {' and '.join(restarted)}" if restarted else ""
    names = ", ".join(SERVERS)
    return f"reissue-certs: new certificates for {names}, valid until {until:%Y-%m-%d}{tail}"
