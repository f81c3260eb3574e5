"""Entry point: the persistent-agent node, serving PersistentAgent at storage@fame.fabric."""

from __future__ import annotations

import sys
from typing import Any

from naylence.agent import configs

from persistent_agent import AGENT_ADDR
from persistent_agent.node import serving
from persistent_agent.node.agent import PersistentAgent


async def _main() -> None:
    async def start(fabric: Any) -> None:
        agent = PersistentAgent()
        # Load the state before attaching: a state this version cannot read
        # (a newer schema) stops the node here, untouched, not at the first call.
        await agent.get_state()
        await fabric.serve(agent, AGENT_ADDR)

    await serving.serve(start, configs.NODE_CONFIG)


def main() -> None:
    sys.exit(serving.run("persistent-agent", _main))


if __name__ == "__main__":
    main()
