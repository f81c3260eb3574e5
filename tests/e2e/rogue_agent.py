"""A node that tries to serve the agent's address and answer with forged values.

``python -m tests.e2e.rogue_agent [pool]``, started like the real agent but
with another role's credential: it binds storage@fame.fabric directly, or with
``pool`` asks for ``*.fame.fabric`` and joins the replicas' pool. The
sentinel must refuse the bind, and the node must fail at once saying why.
"""

from __future__ import annotations

import sys
from typing import Any

from naylence.agent import BaseAgent

from persistent_agent import AGENT_ADDR
from persistent_agent.access import fabric
from persistent_agent.node import serving

FORGED = {"value": "forged-by-a-rogue-node"}


class RogueAgent(BaseAgent):
    async def retrieve_value(self) -> dict[str, str]:
        return FORGED

    async def store_value(self, value: str) -> dict[str, str]:
        return FORGED


def main(pool: bool) -> int:
    config = fabric.node_config()
    if pool:
        config["node"]["requested_logicals"] = ["*.fame.fabric"]

    async def run() -> None:
        async def start(fabric_: Any) -> None:
            await fabric_.serve(RogueAgent(), AGENT_ADDR)

        await serving.serve(start, config)

    return serving.run("rogue-agent", run)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] == ["pool"]))
