"""A scriptable client for the fault tests: `python -m tests.e2e.driver CMD ARG`.

Talks to storage@fame.fabric through the sentinel named by
FAME_DIRECT_ADMISSION_URL and prints one JSON document per result, so the
tests can see exactly which writes were acknowledged.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("FAME_LOG_LEVEL", "critical")

from naylence.agent import Agent
from naylence.fame.core import FameFabric

from persistent_agent import AGENT_ADDR
from persistent_agent.access.fabric import client_config
from persistent_agent.client.caller import use_unique_node_id
from persistent_agent.node import logs


def emit(doc: Any) -> None:
    print(json.dumps(doc, ensure_ascii=False), flush=True)


async def main(command: str, arg: str) -> None:
    logs.install()
    use_unique_node_id()
    # Many drivers starting at once on two cores can miss the attach deadline;
    # attaching is retried (like the real client does), the calls never are.
    for attempt in range(20):
        try:
            async with FameFabric.create(root_config=client_config()):
                await run(command, arg)
            return
        except TimeoutError as exc:
            if "NodeAttachAck" not in str(exc) or attempt == 19:
                raise


async def run(command: str, arg: str) -> None:
    agent = Agent.remote_by_address(AGENT_ADDR)
    if command == "retrieve":
        emit(await agent.retrieve_value())
    elif command == "store":  # ARG is JSON, or @FILE holding JSON
        value = json.loads(Path(arg[1:]).read_text() if arg.startswith("@") else arg)
        try:
            emit({"ok": await agent.store_value(value)})
        except Exception as exc:  # the error text is what the test checks
            emit({"error": str(exc)})
    elif command == "stream":
        i = int(arg)
        while True:
            await agent.store_value(str(i))
            emit(i)  # printed only once the write was acknowledged
            i += 1
    elif command == "burst":
        tag = f"{os.getpid()}"
        values = [f"{tag}-{i}" for i in range(int(arg))]
        results = await asyncio.gather(
            *(agent.store_value(v) for v in values), return_exceptions=True
        )
        emit(
            {
                "acked": [
                    v
                    for v, r in zip(values, results, strict=True)
                    if not isinstance(r, BaseException)
                ],
                "errors": [str(r) for r in results if isinstance(r, BaseException)],
            }
        )
    elif command == "flood":  # ARG: "<calls> <seconds each call may take>"
        await flood(agent, *map(float, arg.split()))


async def flood(agent: Any, calls: float, patience: float) -> None:
    """*calls* store_value calls at once over this one session; how each ended.

    Served, refused as overloaded, or anything else (a timeout after
    *patience* seconds included); and the slowest call's seconds.
    """
    ends: dict[str, int] = {"served": 0, "overloaded": 0}
    slowest = 0.0

    async def one(i: int) -> None:
        nonlocal slowest
        started = time.monotonic()
        try:
            await asyncio.wait_for(agent.store_value(f"flood-{i}"), patience)
            end = "served"
        except BaseException as exc:  # the runtime's connection errors are BaseExceptions
            text = str(exc).split(":")[0]
            end = "overloaded" if text == "agent overloaded" else f"{type(exc).__name__}: {text}"
        ends[end] = ends.get(end, 0) + 1
        slowest = max(slowest, time.monotonic() - started)

    await asyncio.gather(*(one(i) for i in range(int(calls))))
    emit({"ends": ends, "slowest": round(slowest, 2)})
    # Calls that timed out may still be queued in this session: leave without
    # waiting for the runtime to drain them.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else ""))
