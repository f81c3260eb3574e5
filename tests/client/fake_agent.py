"""An in-process stand-in for the agent behind a sentinel, failing as the real one does.

It answers ``increment`` as :class:`persistent_agent.node.agent.PersistentAgent`
does (a request id applied at most once, a repeat answered with the first
result) and, before that, fails each call with the next of a script of
failures, raised exactly as the runtime raises them to a caller: a sentinel's
nack as ``RuntimeError("Envelope nacked: …")``, an agent's JSON-RPC error
reply as a bare ``Exception`` with its message, a call lost to a dead
connection as no answer at all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from persistent_agent import AGENT_ADDR

UNROUTABLE = RuntimeError(f"Envelope nacked: Unroutable to {AGENT_ADDR}")
METHOD_NOT_FOUND = Exception("Method not found")
OVERLOADED = Exception("agent overloaded: this call waited 9.0s in line")
BUSY = Exception("shared state busy: another replica changed the state")
UNAVAILABLE = Exception("shared state unavailable: PostgreSQL at 127.0.0.1 does not answer")
LOST = "lost"  # the call is never answered, as one sent to an agent's dead connection


class FakeAgent:
    """Fails the first calls as *script* says, then answers; counts what it applied."""

    def __init__(self, script: Iterable[BaseException | str] = ()) -> None:
        self.script = list(script)
        self.calls = 0
        self.count = 0
        self.request_ids: list[str] = []
        self._applied: dict[str, dict[str, Any]] = {}

    async def increment(self, n: int, request_id: str) -> dict[str, Any]:
        self.calls += 1
        self.request_ids.append(request_id)
        if self.script:
            failure = self.script.pop(0)
            if failure == LOST:
                await asyncio.Event().wait()  # never set: no answer ever comes
            assert isinstance(failure, BaseException)
            raise failure
        if request_id not in self._applied:
            self.count += n
            self._applied[request_id] = {"count": self.count, "replica": "fake-1", "retries": 0}
        return self._applied[request_id]
