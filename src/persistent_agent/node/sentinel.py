"""Entry point: the sentinel node, on the storage selected by FAME_STORAGE_*.

The demo has no authentication (the runtime's ``open`` security profile), so
the sentinel listens on loopback unless told otherwise: the runtime's own
default host is 0.0.0.0. ``FAME_LISTENER_HOST`` sets it; the local launcher
passes the user's ``SENTINEL_HOST`` (default 127.0.0.1), and the compose file
sets 0.0.0.0 inside the container, whose port it publishes on the host's
``SENTINEL_HOST`` only.
"""

from __future__ import annotations

import copy
import sys
from typing import Any

from persistent_agent.node import serving

HOST_VAR = "FAME_LISTENER_HOST"
DEFAULT_HOST = "127.0.0.1"


def sentinel_config() -> dict[str, Any]:
    """The SDK's sentinel config, with every listener bound to FAME_LISTENER_HOST."""
    # Imported here: the launcher reads this module's constants without the runtime.
    from naylence.agent import configs
    from naylence.fame.factory import Expressions

    config: dict[str, Any] = copy.deepcopy(configs.SENTINEL_CONFIG)
    for listener in config["node"]["listeners"]:
        listener["host"] = Expressions.env(HOST_VAR, DEFAULT_HOST)
    return config


async def _nothing_to_serve(_fabric: Any) -> None:
    """The sentinel routes; it hosts no agent of its own."""


async def _main() -> None:
    await serving.serve(_nothing_to_serve, sentinel_config())


def main() -> None:
    sys.exit(serving.run("sentinel", _main))


if __name__ == "__main__":
    main()
