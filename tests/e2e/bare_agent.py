"""An agent at storage@fame.fabric without the demo's operations.

What our client meets when the agent behind the sentinel is not ours (or is
older): every call is answered with JSON-RPC "Method not found".
``python -m tests.e2e.bare_agent``, started like the real agent.
"""

from __future__ import annotations

import sys
from typing import Any

from naylence.agent import BaseAgent, configs

from persistent_agent import AGENT_ADDR
from persistent_agent.node import serving


async def _main() -> None:
    async def start(fabric: Any) -> None:
        await fabric.serve(BaseAgent(), AGENT_ADDR)

    await serving.serve(start, configs.NODE_CONFIG)


if __name__ == "__main__":
    sys.exit(serving.run("bare-agent", _main))
