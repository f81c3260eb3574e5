"""One client session held open across faults: `python -m tests.e2e.session_client`.

Reads one value per line on stdin and calls ``store_value`` with it at once,
in the same fabric session each time, without waiting for earlier calls: a
call lost with a killed agent does not hold up the next. Prints one JSON line
per finished call, ``{"value": ..., "ok": reply}`` or ``{"value": ...,
"error": type}``. At the end of stdin it leaves, whatever is still pending.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

os.environ.setdefault("FAME_LOG_LEVEL", "critical")

from naylence.agent import Agent
from naylence.fame.core import FameFabric

from persistent_agent import AGENT_ADDR
from persistent_agent.access.fabric import client_config
from persistent_agent.client.caller import use_unique_node_id
from persistent_agent.node import logs

CALL_TIMEOUT = 60.0  # a deadline for a broken run; a lost call is simply never answered


async def call(agent: object, value: str) -> None:
    try:
        reply = await asyncio.wait_for(agent.store_value(value), CALL_TIMEOUT)  # type: ignore[attr-defined]
        print(json.dumps({"value": value, "ok": reply}), flush=True)
    except Exception as exc:  # what the tests look at is the logs, not this
        print(json.dumps({"value": value, "error": type(exc).__name__}), flush=True)


async def main() -> None:
    logs.install()
    use_unique_node_id()
    loop = asyncio.get_running_loop()
    async with FameFabric.create(root_config=client_config()):
        agent = Agent.remote_by_address(AGENT_ADDR)
        print(json.dumps({"ready": True}), flush=True)
        pending = set()
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            pending.add(asyncio.create_task(call(agent, line.strip())))
        for task in pending:
            task.cancel()


if __name__ == "__main__":
    asyncio.run(main())
