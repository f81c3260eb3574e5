"""The client's one retry policy: how long, how often, and what is worth another try.

Every call the client makes goes through :meth:`RetryPolicy.run`: the seed's
retrieve-and-store session (:mod:`persistent_agent.client.caller`) and each
increment (:mod:`persistent_agent.client.increments`). Everything about
retrying is in this file and nowhere else: the deadlines and their settings,
each call's time limit, the pauses (growing, with jitter so that clients
turned away together do not come back together), and which kinds of failure
(:class:`~persistent_agent.client.failures.Kind`) are worth another try.

Retried are the failures that go away by themselves: the agent (re)attaching
behind a sentinel that is up (the sentinel's "unroutable" nack, a call lost to
the agent's dead connection and timed out, a slow attach, the connection
closed by a restarting sentinel, a sentinel still starting that answers the
handshake with an HTTP status), and the agent saying "not now" (overloaded,
shared state unavailable or busy): the caller's request is idempotent, so a
repeat is harmless. Everything else (a JSON-RPC error such as "Method not
found", a missing setting, a bug) fails at once.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from persistent_agent import settings
from persistent_agent.client.failures import Kind, classify

T = TypeVar("T")

RETRYABLE: frozenset[Kind] = frozenset(
    {
        Kind.TIMEOUT,
        Kind.CONNECT_FAILED,
        Kind.CONNECTION_CLOSED,
        Kind.HANDSHAKE_REFUSED,
        Kind.UNROUTABLE,
        Kind.OVERLOADED,
        Kind.SHARED_STATE_UNAVAILABLE,
        Kind.SHARED_STATE_BUSY,
    }
)


def is_retryable(exc: BaseException) -> bool:
    """Worth another try: a failure of a :data:`RETRYABLE` kind.

    Only exceptions, and the runtime's connection errors (which it raises as
    ``BaseException``): never a cancellation, an exit or Ctrl-C.
    """
    from naylence.fame.errors import FameConnectError, FameTransportClose

    if not isinstance(exc, Exception | FameConnectError | FameTransportClose):
        return False
    return classify(exc).kind in RETRYABLE


@dataclass(frozen=True)
class Attempt:
    """One try: its number (from 1) and the time limits it must keep."""

    number: int
    deadline: float  # time.monotonic() by which the whole run ends
    call_timeout: float

    def remaining(self) -> float:
        return max(self.deadline - time.monotonic(), 0.0)

    def call_limit(self) -> float:
        """How long one call of this try may take: the call limit, within the deadline."""
        return max(min(self.call_timeout, self.remaining()), 0.1)


class RetriesExhausted(Exception):
    """The deadline (or the number of tries) ran out; *last* is the last failure."""

    def __init__(self, last: BaseException, attempts: int) -> None:
        super().__init__(f"{attempts} tries, the last failed with {type(last).__name__}")
        self.last = last
        self.attempts = attempts


Screen = Callable[[BaseException, Attempt], Awaitable[None]]
Notice = Callable[[BaseException, Attempt], None]


@dataclass(frozen=True)
class RetryPolicy:
    """When to try a call again, and how long to wait before it.

    The pause before try *n* + 1 is ``pause * backoff**(n-1)``, at most
    *max_pause*, of which a random share up to *jitter* is taken off.
    """

    deadline: float  # seconds from the first try to the last
    attempts: int | None = None  # most tries in all; None: as many as the deadline allows
    call_timeout: float = 5.0  # longest one call may take
    pause: float = 0.2
    backoff: float = 2.0
    max_pause: float = 1.0
    jitter: float = 0.5
    retryable: Callable[[BaseException], bool] = is_retryable
    draw: Callable[[], float] = field(default=random.random, repr=False)  # in [0, 1)

    def __post_init__(self) -> None:
        if not (self.deadline > 0 and self.call_timeout > 0 and self.pause >= 0):
            raise ValueError("a retry policy needs a positive deadline and call timeout")
        if self.backoff < 1 or not 0 <= self.jitter <= 1 or self.max_pause < self.pause:
            raise ValueError("backoff must be >= 1, jitter in [0, 1], max_pause >= pause")
        if self.attempts is not None and self.attempts < 1:
            raise ValueError("attempts must be at least 1")

    def pause_after(self, attempt: int) -> float:
        """Seconds to wait after failed try number *attempt* (from 1)."""
        base = min(self.pause * self.backoff ** (attempt - 1), self.max_pause)
        return base * (1.0 - self.jitter * self.draw())

    async def run(
        self,
        operation: Callable[[Attempt], Awaitable[T]],
        *,
        screen: Screen | None = None,
        on_retry: Notice | None = None,
    ) -> T:
        """Await ``operation(attempt)`` until it returns, bounded by the deadline.

        A failure that is not :attr:`retryable` is raised as it is. *screen*
        sees each failure first and may raise an error of its own to end the
        run at once (the caller knows what a refusal means for it); *on_retry*
        hears of each failure that is retried. When the deadline or the
        number of tries runs out: :class:`RetriesExhausted`.
        """
        deadline = time.monotonic() + self.deadline
        number = 0
        while True:
            number += 1
            attempt = Attempt(number, deadline, self.call_timeout)
            try:
                return await asyncio.wait_for(operation(attempt), max(attempt.remaining(), 0.1))
            except BaseException as exc:  # the runtime's connection errors are BaseExceptions
                if not isinstance(exc, Exception) and not self.retryable(exc):
                    raise
                if screen is not None:
                    await screen(exc, attempt)
                if not self.retryable(exc):
                    raise
                pause = self.pause_after(number)
                out_of_tries = self.attempts is not None and number >= self.attempts
                if out_of_tries or time.monotonic() + pause >= deadline:
                    raise RetriesExhausted(exc, number) from exc
                if on_retry is not None:
                    on_retry(exc, attempt)
            await asyncio.sleep(pause)


CLIENT_TIMEOUT_VAR = settings.CLIENT_TIMEOUT_SECONDS.name
DEFAULT_CLIENT_TIMEOUT = settings.CLIENT_TIMEOUT_SECONDS.default
# A call sent while the sentinel still routes to an agent's previous, dead
# connection is lost rather than refused; without a per-call limit it would
# wait out the runtime's 30 s RPC timeout and use up the whole budget.
CALL_TIMEOUT = 5.0

INCREMENT_DEADLINE_VAR = settings.INCREMENT_DEADLINE_SECONDS.name
# Far below the agent's request window (storage.provider.REQUEST_WINDOW_SECONDS):
# a retry must reach the agent while it still remembers the request id.
INCREMENT_DEADLINE = settings.INCREMENT_DEADLINE_SECONDS.default
INCREMENT_CALL_TIMEOUT = 3.0


def call_policy() -> RetryPolicy:
    """The seed's session: retried until CLIENT_TIMEOUT_SECONDS (default 30)."""
    return RetryPolicy(deadline=settings.CLIENT_TIMEOUT_SECONDS.value(), call_timeout=CALL_TIMEOUT)


def increment_policy() -> RetryPolicy:
    """One increment: retried until INCREMENT_DEADLINE_SECONDS, at most the default."""
    allowed = min(max(settings.INCREMENT_DEADLINE_SECONDS.value(), 0.1), INCREMENT_DEADLINE)
    return RetryPolicy(deadline=allowed, call_timeout=INCREMENT_CALL_TIMEOUT)
