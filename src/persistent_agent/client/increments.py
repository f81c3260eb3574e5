"""Calling ``increment`` so that every call ends acknowledged, exactly once.

Each call gets a request id, chosen once. A try that fails in a way the retry
policy (:mod:`persistent_agent.client.retry`) calls retryable (a timeout, an
unroutable nack because a replica that died is still in the sentinel's pool,
the shared state unavailable or busy) is tried again with the same id until
the policy's deadline; the agent applies an id at most once and answers a
repeat with the first result, so a retry never counts twice.

``persistent-agent-client increment --calls N --concurrency C`` runs N calls,
C at a time, over one connection, and prints a one-line JSON summary: how
many were acknowledged, which replica served how many, the client's retries
and the agent's conflict retries, and the highest total seen.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from persistent_agent import AGENT_ADDR, settings
from persistent_agent.client import failures
from persistent_agent.client.caller import use_unique_node_id
from persistent_agent.client.retry import Attempt, RetriesExhausted, RetryPolicy, increment_policy
from persistent_agent.errors import ServiceUnavailableError


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


async def increment(agent: Any, n: int, tally: Tally, policy: RetryPolicy | None = None) -> int:
    """One acknowledged increment of *n*; returns the new total. Retries with one id."""
    policy = policy or increment_policy()
    request_id = uuid.uuid4().hex

    async def once(attempt: Attempt) -> Any:
        return await asyncio.wait_for(
            agent.increment(n=n, request_id=request_id), attempt.call_limit()
        )

    async def count(exc: BaseException, _attempt: Attempt) -> None:
        tally.errors[failures.brief(exc)[:160]] += 1

    def retried(_exc: BaseException, _attempt: Attempt) -> None:
        tally.client_retries += 1

    try:
        result = await policy.run(once, screen=count, on_retry=retried)
    except RetriesExhausted as exhausted:
        raise ServiceUnavailableError(
            f"increment {request_id} not acknowledged within {policy.deadline:g}s "
            f"(last: {failures.brief(exhausted.last)})"
        ) from None
    except Exception as exc:
        url = settings.FAME_DIRECT_ADMISSION_URL.value() or "the sentinel"
        raise failures.label(exc, url) from None
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
    from persistent_agent.node.logs import drop_noop_tracing

    use_unique_node_id()
    policy = increment_policy()
    tally = Tally()
    gate = asyncio.Semaphore(concurrency)
    async with FameFabric.create(root_config=client_config()) as fabric:
        drop_noop_tracing(fabric.node)
        agent = Agent.remote_by_address(AGENT_ADDR)

        async def one() -> None:
            async with gate:
                await increment(agent, n, tally, policy)

        await asyncio.gather(*(one() for _ in range(calls)))
    return tally


async def main(calls: int, concurrency: int, n: int) -> None:
    """Run the increments and print their summary as one line of JSON."""
    tally = await run(calls, concurrency, n)
    print(json.dumps(tally.summary(), separators=(",", ":")), flush=True)
