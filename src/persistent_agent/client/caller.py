"""The seed's calls: retrieve the agent's state, store a new value, print both.

Prints the seed's two lines, ``Previous state: …`` and ``Updated state: …``,
with the state as compact JSON (``null`` before anything was stored). The
session is retried as :mod:`persistent_agent.client.retry` says, with what
only this flow knows added on top (:func:`run`); every failure is reported
as one line that says where it came from (:mod:`persistent_agent.client.failures`).
It never hangs.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

from persistent_agent import AGENT_ADDR, settings
from persistent_agent.access.fabric import refusal
from persistent_agent.client import failures
from persistent_agent.client.failures import Kind
from persistent_agent.client.retry import Attempt, RetriesExhausted, call_policy
from persistent_agent.errors import (
    AccessRefusedError,
    ConfigError,
    NothingRunningError,
    SentinelRefusedError,
    ServiceUnavailableError,
)
from persistent_agent.node import link

# The operation names of the upstream Python example (ours), then of the
# TypeScript original: an agent that answers "Method not found" to the first
# is asked with the second.
OPERATION_NAMES = (("retrieve_value", "store_value"), ("retrieveValue", "storeValue"))


def use_unique_node_id() -> None:
    """Give this client process its own node id, unless the user chose one.

    The runtime derives a client's id from host + script + flags, so two
    clients run at once from one machine get the same id, and the sentinel
    rebinds the route to whichever attached last: the other's replies go astray
    and its calls time out. FAME_NODE_ID_SALT is the runtime's knob for this.
    """
    os.environ.setdefault(settings.FAME_NODE_ID_SALT.name, f"client-{uuid.uuid4().hex}")


def format_state(state: Any) -> str:
    """``null`` when no value is stored yet, else ``{"value":"…"}``.

    Only ``value`` is shown, as in the seed, whatever else the state carries.
    """
    if not isinstance(state, dict) or state.get("value") is None:
        return "null"
    return json.dumps({"value": state["value"]}, separators=(",", ":"), ensure_ascii=False)


def now_millis() -> str:
    return str(int(time.time() * 1000))


def admission_url() -> str:
    """The sentinel's address, FAME_DIRECT_ADMISSION_URL: a local setting, checked first."""
    url = settings.FAME_DIRECT_ADMISSION_URL.value()
    if not url:
        raise ConfigError(
            f"{link.ADMISSION_URL_VAR} is not set; it names the sentinel to call "
            "(config/.env.client sets it: run `make init`)"
        )
    return url


async def _session(value: str, attempt: Attempt) -> tuple[Any, Any]:
    """One connection: retrieve, then store *value*; each call bounded in time.

    Tries the Python operation names, and on "method not found" the
    TypeScript ones (an agent of the original example).
    """
    from naylence.agent import Agent
    from naylence.fame.core import FameFabric

    from persistent_agent.access.fabric import client_config
    from persistent_agent.node.logs import drop_noop_tracing

    async with FameFabric.create(root_config=client_config()) as fabric:
        drop_noop_tracing(fabric.node)
        agent = Agent.remote_by_address(AGENT_ADDR)
        for i, (retrieve, store) in enumerate(OPERATION_NAMES):
            try:
                previous = await asyncio.wait_for(getattr(agent, retrieve)(), attempt.call_limit())
            except Exception as exc:
                if i + 1 < len(OPERATION_NAMES) and _method_not_found(exc):
                    continue
                raise
            updated = await asyncio.wait_for(getattr(agent, store)(value), attempt.call_limit())
            return previous, updated
        raise AssertionError("unreachable")  # pragma: no cover


def _method_not_found(exc: BaseException) -> bool:
    return failures.classify(exc).kind is Kind.METHOD_NOT_FOUND


async def run(
    value: str | None = None,
    out: Callable[[str], None] = print,
    note: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
) -> None:
    """Retrieve the previous state, store *value* (default: now in ms), print both.

    On top of the retry policy, what this flow knows: no sentinel at all on
    the first try (refused, unknown host) fails at once, naming the target
    that starts one; a refused credential or token fails at once; a handshake
    answered with an HTTP status is retried only while the sentinel is still
    starting (its readiness check, :func:`link.sentinel_readiness`). The first
    retry is announced with one *note*.
    """
    use_unique_node_id()
    policy = call_policy()
    url = admission_url()
    # Chosen once: a retried store writes the same value (storing is idempotent).
    new_value = value if value is not None else now_millis()

    async def screen(exc: BaseException, attempt: Attempt) -> None:
        if (why_not := refusal(exc)) is not None:
            raise AccessRefusedError(f"{why_not} (at {url})") from None
        if attempt.number == 1 and (unreached := failures.nothing_running(exc, url)):
            where, why = unreached
            raise NothingRunningError(
                f"nothing is running at {where} ({why}); start it with {failures.start_hint()}"
            ) from None
        status = failures.refused_status(exc)
        if status is not None and await link.sentinel_readiness(url) is link.Readiness.READY:
            raise SentinelRefusedError(
                f"the sentinel at {url} refused the connection (HTTP {status}); it is up "
                "and ready for attaches, so check the client's credentials and address"
            ) from None

    def announce(exc: BaseException, attempt: Attempt) -> None:
        if attempt.number == 1:
            note(
                f"client: {AGENT_ADDR} is not reachable yet ({failures.brief(exc)}); "
                f"retrying for up to {policy.deadline:g}s"
            )

    try:
        previous, updated = await policy.run(
            lambda attempt: _session(new_value, attempt), screen=screen, on_retry=announce
        )
    except RetriesExhausted as exhausted:
        raise ServiceUnavailableError(
            f"no answer from {AGENT_ADDR} via {url} within {policy.deadline:g}s "
            f"({failures.brief(exhausted.last)}); is the agent attached? "
            f"({failures.start_hint()} starts it)"
        ) from None
    except Exception as exc:
        raise failures.label(exc, url) from None
    out(f"Previous state: {format_state(previous)}")
    out(f"Updated state: {format_state(updated)}")
