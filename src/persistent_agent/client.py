"""The client side of the demo: call the agent through the sentinel, patiently.

Prints the seed's two lines, ``Previous state: …`` and ``Updated state: …``,
with the state as compact JSON (``null`` before anything was stored). While
the sentinel is unreachable or the agent not yet attached it retries, but only
until a deadline, then says so in one line: it never hangs.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import Callable
from typing import Any

from persistent_agent import AGENT_ADDR
from persistent_agent.errors import ServiceUnavailableError
from persistent_agent.logs import filter_disabled_levels

TIMEOUT_VAR = "CLIENT_TIMEOUT_SECONDS"
DEFAULT_TIMEOUT = 30.0
_RETRY_PAUSE = 0.5
# A call sent while the sentinel still routes to an agent's previous, dead
# connection is lost rather than refused; without a per-call limit it would
# wait out the runtime's 30 s RPC timeout and use up the whole budget.
_CALL_TIMEOUT = 5.0


def use_unique_node_id() -> None:
    """Give this client process its own node id, unless the user chose one.

    The runtime derives a client's id from host + script + flags, so two
    clients run at once from one machine get the same id, and the sentinel
    rebinds the route to whichever attached last: the other's replies go astray
    and its calls time out. FAME_NODE_ID_SALT is the runtime's knob for this.
    """
    os.environ.setdefault("FAME_NODE_ID_SALT", f"client-{uuid.uuid4().hex}")


def format_state(state: Any) -> str:
    """``null`` when no value is stored yet, else ``{"value":"…"}``.

    Only ``value`` is shown, as in the seed, whatever else the state carries.
    """
    if not isinstance(state, dict) or state.get("value") is None:
        return "null"
    return json.dumps({"value": state["value"]}, separators=(",", ":"), ensure_ascii=False)


def now_millis() -> str:
    return str(int(time.time() * 1000))


def timeout_seconds() -> float:
    raw = os.environ.get(TIMEOUT_VAR, "")
    try:
        return float(raw) if raw else DEFAULT_TIMEOUT
    except ValueError:
        raise ServiceUnavailableError(f"{TIMEOUT_VAR} must be a number of seconds") from None


async def _session(value: str, deadline: float) -> tuple[Any, Any]:
    """One connection: retrieve, then store *value*; each call bounded in time."""
    from naylence.agent import Agent, configs
    from naylence.fame.core import FameFabric

    def limit() -> float:
        return max(min(_CALL_TIMEOUT, deadline - time.monotonic()), 0.1)

    async with FameFabric.create(root_config=configs.CLIENT_CONFIG):
        agent = Agent.remote_by_address(AGENT_ADDR)
        previous = await asyncio.wait_for(agent.retrieve_value(), limit())
        updated = await asyncio.wait_for(agent.store_value(value), limit())
        return previous, updated


async def run(value: str | None = None, out: Callable[[str], None] = print) -> None:
    """Retrieve the previous state, store *value* (default: now in ms), print both."""
    use_unique_node_id()
    filter_disabled_levels()
    timeout = timeout_seconds()
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    # Chosen once: a retried store writes the same value (storing is idempotent).
    new_value = value if value is not None else now_millis()

    from naylence.fame.errors.errors import FameConnectError, FameTransportClose

    while time.monotonic() < deadline:
        try:
            previous, updated = await asyncio.wait_for(
                _session(new_value, deadline), deadline - time.monotonic()
            )
            out(f"Previous state: {format_state(previous)}")
            out(f"Updated state: {format_state(updated)}")
            return
        except (Exception, FameConnectError, FameTransportClose) as exc:
            # An unreachable sentinel raises FameConnectError (a BaseException
            # in the runtime); an agent that is not attached yet answers
            # "Envelope nacked: Unroutable" as a RuntimeError. Both pass.
            last_error = exc
        await asyncio.sleep(min(_RETRY_PAUSE, max(deadline - time.monotonic(), 0)))

    url = os.environ.get("FAME_DIRECT_ADMISSION_URL", "<FAME_DIRECT_ADMISSION_URL not set>")
    reason = f"{type(last_error).__name__}: {last_error}"[:240] if last_error else "no answer"
    raise ServiceUnavailableError(
        f"no answer from {AGENT_ADDR} via {url} within {timeout:g}s ({reason}); "
        "is the sentinel running and the agent attached? (make status / make logs)"
    )
