"""One call to an address that is not the agent's, with the client's credential.

``python -m tests.e2e.other_call ADDRESS``: prints ``ok <reply>`` or
``error <type> <message>``. The sentinel must refuse it at once.
"""

from __future__ import annotations

import asyncio
import os
import sys

os.environ.setdefault("FAME_LOG_LEVEL", "critical")

from naylence.agent import Agent
from naylence.fame.core import FameFabric

from persistent_agent.access.fabric import client_config
from persistent_agent.node import logs

DEADLINE = 60.0  # a broken run's limit; a refusal comes at once


async def main(address: str) -> None:
    logs.install()
    async with FameFabric.create(root_config=client_config()):
        try:
            reply = await asyncio.wait_for(
                Agent.remote_by_address(address).retrieve_value(), DEADLINE
            )
            print("ok", reply)
        except Exception as exc:
            print("error", type(exc).__name__, exc)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
