"""Calling ``increment`` so that every call ends acknowledged, exactly once.

Each call gets a request id, chosen once. A try that times out, is nacked as
unroutable (a replica that died is still in the sentinel's pool), or meets
the shared state unavailable or busy is tried again with the same id, until
:data:`INCREMENT_DEADLINE`; the agent applies an id at most once and answers a
repeat with the first result, so a retry never counts twice.

``persistent-agent-client increment --calls N --concurrency C`` runs N calls,
C at a time, over one connection, and prints a one-line JSON summary: how
many were acknowledged, which replica served how many, the client's retries
and the agent's conflict retries, and the highest total seen.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from persistent_agent import AGENT_ADDR
from persistent_agent.errors import (
    ConfigError,
    ServiceUnavailableError,
    SharedStateConflictError,
    SharedStateUnavailableError,
)
from persistent_agent.node import caller, link

# Far below the agent's request window (provider.REQUEST_WINDOW_SECONDS).
INCREMENT_DEADLINE = 120.0
DEADLINE_VAR = "INCREMENT_DEADLINE_SECONDS"
TRY_TIMEOUT = 3.0
_RETRY_PAUSE = 0.2


def deadline_seconds() -> float:
    """How long one increment is retried: INCREMENT_DEADLINE_SECONDS, at most the default."""
    raw = os.environ.get(DEADLINE_VAR, "")
    try:
        value = float(raw) if raw else INCREMENT_DEADLINE
    except ValueError:
        raise ConfigError(f"{DEADLINE_VAR} must be a number of seconds") from None
    return min(max(value, 0.1), INCREMENT_DEADLINE)


def retryable(exc: BaseException) -> bool:
    """Worth another try with the same request id."""
    text = str(exc)
    return caller.retryable(exc) or any(
        prefix in text
        for prefix in (SharedStateUnavailableError.PREFIX, SharedStateConflictError.PREFIX)
    )


@dataclass
class Tally:
    """What a run of increments saw."""

    acknowledged: int = 0
    served: Counter[str] = field(default_factory=Counter)
    client_retries: int = 0
    conflict_retries: int = 0
    highest: int = 0
    errors: Counter[str] = field(default_factory=Counter)

    def summary(self) -> dict[str, Any]:
        return {
            "acknowledged": self.acknowledged,
            "served": dict(sorted(self.served.items())),
            "client_retries": self.client_retries,
            "conflict_retries": self.conflict_retries,
            "highest": self.highest,
            "errors": dict(self.errors.most_common(5)),
        }


async def increment(agent: Any, n: int, tally: Tally, deadline: float | None = None) -> int:
    """One acknowledged increment of *n*; returns the new total. Retries with one id."""
    request_id = uuid.uuid4().hex
    allowed = deadline_seconds()
    deadline = deadline or time.monotonic() + allowed
    while True:
        left = deadline - time.monotonic()
        try:
            result = await asyncio.wait_for(
                agent.increment(n=n, request_id=request_id), max(min(TRY_TIMEOUT, left), 0.1)
            )
        except BaseException as exc:  # the runtime's connection errors are BaseExceptions
            if not retryable(exc):
                if isinstance(exc, Exception):
                    url = os.environ.get(link.ADMISSION_URL_VAR, "the sentinel")
                    raise caller.labelled(exc, url) from None
                raise
            tally.errors[_brief(exc)] += 1
            if time.monotonic() + _RETRY_PAUSE >= deadline:
                raise ServiceUnavailableError(
                    f"increment {request_id} not acknowledged within {allowed:g}s "
                    f"(last: {_brief(exc)})"
                ) from None
            tally.client_retries += 1
            await asyncio.sleep(_RETRY_PAUSE)
            continue
        tally.acknowledged += 1
        tally.served[str(result["replica"])] += 1
        tally.conflict_retries += int(result.get("retries", 0))
        tally.highest = max(tally.highest, int(result["count"]))
        return int(result["count"])


async def run(calls: int, concurrency: int, n: int = 1) -> Tally:
    """*calls* increments of *n*, *concurrency* at a time, over one client connection."""
    from naylence.agent import Agent
    from naylence.fame.core import FameFabric

    from persistent_agent.access.fabric import client_config

    caller.use_unique_node_id()
    tally = Tally()
    gate = asyncio.Semaphore(concurrency)
    from persistent_agent.node.logs import drop_noop_tracing

    async with FameFabric.create(root_config=client_config()) as fabric:
        drop_noop_tracing(fabric.node)
        agent = Agent.remote_by_address(AGENT_ADDR)

        async def one() -> None:
            async with gate:
                await increment(agent, n, tally)

        await asyncio.gather(*(one() for _ in range(calls)))
    return tally


def _brief(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return (f"{type(exc).__name__}: {text}" if text else type(exc).__name__)[:160]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="persistent-agent-client increment")
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--by", type=int, default=1, help="the n of each increment(n)")
    args = parser.parse_args(argv)
    # Imported here, not at the top: node.agent imports the runtime, whose
    # logging must first see the level the client sets (client.main).
    from persistent_agent.node.agent import INCREMENT_MAX, INCREMENT_MIN

    if args.calls < 0 or args.concurrency < 1:
        parser.error("--calls must be >= 0 and --concurrency >= 1")
    if not INCREMENT_MIN <= args.by <= INCREMENT_MAX:
        parser.error(f"--by must be from {INCREMENT_MIN} to {INCREMENT_MAX} (2**31-1)")
    return args


async def main(argv: list[str]) -> None:
    args = parse_args(argv)
    tally = await run(args.calls, args.concurrency, args.by)
    print(json.dumps(tally.summary(), separators=(",", ":")), flush=True)
