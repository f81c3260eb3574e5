"""Entry point: the sentinel node, on the storage selected by FAME_STORAGE_*.

It serves HTTPS and ``wss://`` only, with the certificate the project's CA
issued it, and admits a node only with a token from the project's issuer,
then lets it do only what its role allows (access/authorizer.py). It listens
on loopback unless told otherwise (the runtime's own default host is
0.0.0.0): ``FAME_LISTENER_HOST`` sets it; the local launcher passes the user's
``SENTINEL_HOST`` (default 127.0.0.1), and the compose file sets 0.0.0.0
inside the container, whose port it publishes on the host's ``SENTINEL_HOST``.
With ``PERSISTENT_AGENT_FABRIC_SECURITY=off`` (docs/security.md) it refuses any
host but loopback.
"""

from __future__ import annotations

import copy
import errno
import socket
import sys
from typing import Any

from persistent_agent import settings
from persistent_agent.errors import ConfigError
from persistent_agent.node import serving

HOST_VAR = settings.FAME_LISTENER_HOST.name
DEFAULT_HOST = settings.FAME_LISTENER_HOST.default
PORT_VAR = settings.FAME_LISTENER_PORT.name
DEFAULT_PORT = settings.FAME_LISTENER_PORT.default  # the SDK's SENTINEL_PORT


def check_port() -> None:
    """Fail with one line if the sentinel's address is taken, before the runtime starts
    (whose own failure is a bare ``SystemExit: 1`` from the web server)."""
    from persistent_agent.access import fabric

    host = settings.FAME_LISTENER_HOST.value()
    port = settings.FAME_LISTENER_PORT.value()
    fabric.check_insecure_host(host, HOST_VAR)
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        # As the web server does: a port left in TIME_WAIT is free to use.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            why = "already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
            raise ConfigError(
                f"cannot listen on {host}:{port}: {why}; stop what uses it, or choose "
                "another port with SENTINEL_PORT=<port>"
            ) from None


def sentinel_config() -> dict[str, Any]:
    """The SDK's sentinel config, with every listener bound to FAME_LISTENER_HOST."""
    # Imported here: the launcher reads this module's constants without the runtime.
    from naylence.agent import configs
    from naylence.fame.factory import Expressions

    from persistent_agent.access import fabric
    from persistent_agent.node.listener import GATEWAY_LISTENER_TYPE, bounded

    config: dict[str, Any] = copy.deepcopy(configs.SENTINEL_CONFIG)
    tls = fabric.server_tls()
    listening = {"tls_cert_file": tls[0], "tls_key_file": tls[1]} if tls else {}
    # Our listener types: the runtime's listeners on a web server that refuses
    # websocket frames over the envelope limit (node/listener.py). The SDK's
    # agent HTTP gateway (off by default, unused here) would start the runtime's
    # own server on the same port, so it is left out.
    config["node"]["listeners"] = [
        {**bounded(listener), "host": Expressions.env(HOST_VAR, DEFAULT_HOST), **listening}
        for listener in config["node"]["listeners"]
        if listener["type"] != GATEWAY_LISTENER_TYPE
    ]
    # Agent replicas (encrypted-postgres) share one address in a pool: take
    # turns rather than the default hash, so each gets its share of the calls.
    config["node"]["security"] = fabric.sentinel_security()
    config["node"]["load_balancing"] = {"type": "LoadBalancingProfile", "profile": "round_robin"}
    return config


async def _nothing_to_serve(_fabric: Any) -> None:
    """The sentinel routes; it hosts no agent of its own."""


async def _main() -> None:
    await serving.serve(_nothing_to_serve, sentinel_config())


def main() -> None:
    sys.exit(serving.run("sentinel", _main, preflight=check_port))


if __name__ == "__main__":
    main()
