"""An agent at storage@fame.fabric without the demo's operations.

What our client meets when the agent behind the sentinel is not ours (or is
older): every call is answered with JSON-RPC "Method not found".
``python -m tests.e2e.bare_agent``, started like the real agent.
"""

from __future__ import annotations

import sys
from typing import Any

from naylence.agent import BaseAgent

from persistent_agent import AGENT_ADDR
from persistent_agent.access import fabric
from persistent_agent.node import serving


def serve_as_the_agent(name: str, agent: Any) -> int:
    """Serve *agent* at the demo's agent address, as the real agent's entry point does."""

    async def main() -> None:
        async def start(fabric: Any) -> None:
            await fabric.serve(agent, AGENT_ADDR)

        await serving.serve(start, fabric.node_config())

    return serving.run(name, main)


if __name__ == "__main__":
    sys.exit(serve_as_the_agent("bare-agent", BaseAgent()))
