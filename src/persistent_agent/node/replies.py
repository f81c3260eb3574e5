"""RPC replies without the SDK's 10 ms pause per request.

The SDK answers every JSON-RPC request with an async generator of replies,
even for a plain one-shot operation. The runtime's channel polling loop
handles such "streaming" results item by item and sleeps 10 ms after each
(``ChannelPollingManager._handle_streaming_fame_message_responses``), and it
takes the next envelope only afterwards. So every call through the agent
costs at least 10 ms of its listener's time: about 12 ms per call on loopback
and a ceiling near 83 calls/s however many clients wait.

A single reply returned as a plain ``FameMessageResponse`` takes the loop's
non-streaming path, which does not pause. This mixin unwraps one-reply
generators into exactly that; real streams pass through untouched. See
docs/performance.md for the measurements.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any


class UnaryReplyMixin:
    """Put before ``BaseAgent`` in the bases of an agent whose operations reply once."""

    async def handle_message(self, envelope: Any, context: Any = None) -> Any:
        result = await super().handle_message(envelope, context)  # type: ignore[misc]
        if not hasattr(result, "__anext__"):
            return result
        try:
            first = await result.__anext__()
        except StopAsyncIteration:
            return None
        try:
            second = await result.__anext__()
        except StopAsyncIteration:
            return first  # the common case: one reply, sent without the pause
        return _chain(first, second, result)


async def _chain(first: Any, second: Any, rest: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """A genuine stream, re-assembled after peeking at its first two replies."""
    yield first
    yield second
    async for item in rest:
        yield item
