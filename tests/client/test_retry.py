"""The one retry policy, against an in-process agent that fails as the real one does."""

from __future__ import annotations

import asyncio
import time

import pytest

from persistent_agent.client import increments
from persistent_agent.client.failures import Kind, classify
from persistent_agent.client.retry import (
    Attempt,
    RetriesExhausted,
    RetryPolicy,
    increment_policy,
    is_retryable,
)
from persistent_agent.errors import ClientCallError, ServiceUnavailableError

from .fake_agent import BUSY, LOST, METHOD_NOT_FOUND, OVERLOADED, UNAVAILABLE, UNROUTABLE, FakeAgent


def quick(deadline: float, attempts: int | None = None) -> RetryPolicy:
    """The policy with pauses and call limits short enough for a unit test."""
    return RetryPolicy(deadline, attempts, call_timeout=0.2, pause=0.01, max_pause=0.04)


def test_pauses_grow_to_the_maximum_and_jitter_only_shortens_them() -> None:
    """0.2, 0.4, 0.8, then 1 s; a draw of d takes jitter·d of each pause off."""
    steady = RetryPolicy(deadline=10, draw=lambda: 0.0)
    assert [steady.pause_after(n) for n in range(1, 6)] == [0.2, 0.4, 0.8, 1.0, 1.0]
    jittered = RetryPolicy(deadline=10, jitter=0.5, draw=lambda: 0.5)
    assert [jittered.pause_after(n) for n in (1, 4)] == pytest.approx([0.15, 0.75])


def test_a_nonsensical_policy_is_refused() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(deadline=0)
    with pytest.raises(ValueError):
        RetryPolicy(deadline=1, backoff=0.5)
    with pytest.raises(ValueError):
        RetryPolicy(deadline=1, jitter=2)
    with pytest.raises(ValueError):
        RetryPolicy(deadline=1, attempts=0)


async def test_transient_failures_are_retried_with_one_request_id_and_count_once() -> None:
    """Unroutable, overloaded, busy, unavailable, a lost call: retried; applied once."""
    agent = FakeAgent([UNROUTABLE, OVERLOADED, BUSY, UNAVAILABLE, LOST])
    tally = increments.Tally()
    policy = quick(10)
    assert await increments.increment(agent, 1, tally, policy) == 1
    assert agent.calls == 6
    assert len(set(agent.request_ids)) == 1
    assert (tally.acknowledged, tally.client_retries, agent.count) == (1, 5, 1)
    assert "TimeoutError" in tally.errors  # the lost call, cut at the call limit


async def test_an_error_reply_fails_at_once_as_the_agents_answer() -> None:
    """Method not found will not go away: one try, labelled as the agent's answer."""
    agent = FakeAgent([METHOD_NOT_FOUND])
    with pytest.raises(ClientCallError, match=r"^storage@fame.fabric answered: Method not found$"):
        await increments.increment(agent, 1, increments.Tally(), quick(10))
    assert agent.calls == 1


async def test_an_agent_that_never_attaches_ends_at_the_deadline() -> None:
    """Unroutable for ever: given up within the deadline, with the last failure named."""
    agent = FakeAgent([UNROUTABLE] * 1000)
    started = time.monotonic()
    with pytest.raises(ServiceUnavailableError, match=r"not acknowledged within 0\.5s.*Unroutable"):
        await increments.increment(agent, 1, increments.Tally(), quick(0.5))
    assert time.monotonic() - started < 0.5 + 0.2
    assert agent.calls > 3  # it did retry, more than a couple of times
    assert agent.count == 0


async def test_attempts_bound_the_tries() -> None:
    agent = FakeAgent([UNROUTABLE] * 10)
    policy = quick(10, attempts=3)
    with pytest.raises(RetriesExhausted) as caught:
        await policy.run(lambda attempt: agent.increment(n=1, request_id="r"))
    assert (caught.value.attempts, agent.calls) == (3, 3)
    assert caught.value.last is UNROUTABLE


async def test_a_screen_ends_the_run_with_its_own_error() -> None:
    """What only the caller knows (a sentinel ready yet refusing) stops the retries."""
    agent = FakeAgent([UNROUTABLE, UNROUTABLE])

    async def screen(exc: BaseException, attempt: Attempt) -> None:
        if attempt.number == 2:
            raise ClientCallError("stopped by the caller")

    policy = quick(10)
    with pytest.raises(ClientCallError, match="stopped by the caller"):
        await policy.run(lambda attempt: agent.increment(n=1, request_id="r"), screen=screen)
    assert agent.calls == 2


async def test_cancellation_is_never_retried() -> None:
    """A cancelled run ends at once: the policy retries failures, not the user's Ctrl-C."""
    agent = FakeAgent([LOST])
    policy = RetryPolicy(deadline=30, call_timeout=30)
    task = asyncio.ensure_future(policy.run(lambda a: agent.increment(n=1, request_id="r")))
    while agent.calls == 0:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert agent.calls == 1
    assert not is_retryable(asyncio.CancelledError())
    assert not is_retryable(KeyboardInterrupt())


def test_which_kinds_are_retried() -> None:
    """The policy's one list: transient trouble yes; answers and bugs no."""
    assert [is_retryable(e) for e in (UNROUTABLE, OVERLOADED, BUSY, UNAVAILABLE)] == [True] * 4
    assert is_retryable(TimeoutError())
    assert not is_retryable(METHOD_NOT_FOUND)
    assert not is_retryable(Exception("increment takes an integer n from 0 to 2147483647"))
    assert not is_retryable(RuntimeError("Envelope nacked: access refused: no"))
    assert not is_retryable(ValueError("a bug"))
    assert classify(RuntimeError("Envelope nacked: access refused: no")).kind is Kind.NACKED


def test_the_increment_deadline_is_capped_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    """INCREMENT_DEADLINE_SECONDS shortens the deadline, never lengthens it past 120 s."""
    monkeypatch.setenv("INCREMENT_DEADLINE_SECONDS", "10")
    assert increment_policy().deadline == 10
    monkeypatch.setenv("INCREMENT_DEADLINE_SECONDS", "1000")
    assert increment_policy().deadline == 120
    monkeypatch.setenv("INCREMENT_DEADLINE_SECONDS", "soon")
    with pytest.raises(Exception, match="INCREMENT_DEADLINE_SECONDS must be a number"):
        increment_policy()
