"""The agent's line of waiting calls, and the calls that waited in it too long.

The agent handles its calls one at a time, in the order they arrived; the
runtime keeps the rest in an unbounded queue in front of it. Under a flood
(thousands of calls at once) a call near the end of that line would be served
long after its caller gave up. So the node notes when each call reaches it
(:class:`ArrivalClock`, a node event listener: this node's own clock, whatever
the caller's) and an operation reached after PERSISTENT_AGENT_MAX_WAIT_SECONDS
in line is refused at once, before it touches the state, with
:class:`AgentOverloadedError`. Refusing costs little, so the line drains fast
and every caller hears back, served or refused, well within its timeout.
"""

from __future__ import annotations

import contextvars
import time
from typing import Any

from naylence.fame.node.node_event_listener import NodeEventListener

from persistent_agent import settings
from persistent_agent.errors import AgentOverloadedError

MAX_WAIT_VAR = settings.PERSISTENT_AGENT_MAX_WAIT_SECONDS.name
DEFAULT_MAX_WAIT = settings.PERSISTENT_AGENT_MAX_WAIT_SECONDS.default
# A bound on the calls remembered, should envelopes that are never handled
# (not for an operation of the agent) arrive in great numbers.
_REMEMBERED = 200_000

_waited: contextvars.ContextVar[float] = contextvars.ContextVar("waited", default=0.0)


def max_wait_seconds() -> float:
    return settings.PERSISTENT_AGENT_MAX_WAIT_SECONDS.value()


class ArrivalClock(NodeEventListener):
    """Remembers when each envelope reached this node for local delivery."""

    def __init__(self) -> None:
        self._arrived: dict[str, float] = {}

    async def on_deliver_local(
        self, node: Any, address: Any, envelope: Any, context: Any = None
    ) -> Any:
        if len(self._arrived) >= _REMEMBERED:
            self._arrived.clear()
        self._arrived[envelope.id] = time.monotonic()
        return envelope

    def waited(self, envelope: Any) -> float:
        """Seconds *envelope* has been in line here (0 if it was not seen arriving)."""
        arrived = self._arrived.pop(getattr(envelope, "id", ""), None)
        return 0.0 if arrived is None else time.monotonic() - arrived


class Line:
    """What the agent's operations check first: did this call wait too long?"""

    def __init__(self, clock: ArrivalClock, limit: float) -> None:
        self.clock = clock
        self.limit = limit

    def arrived(self, envelope: Any) -> contextvars.Token[float]:
        """Note how long *envelope* waited, for :meth:`admit` in the operation it calls."""
        return _waited.set(self.clock.waited(envelope))

    def admit(self) -> None:
        waited = _waited.get()
        if waited > self.limit:
            raise AgentOverloadedError(
                f"{AgentOverloadedError.PREFIX}: this call waited {waited:.1f}s in line "
                f"(more than {MAX_WAIT_VAR}={self.limit:g}); nothing was done, try again"
            )


def done(token: contextvars.Token[float]) -> None:
    _waited.reset(token)
