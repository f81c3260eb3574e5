"""The client side of the demo: call the agent through the sentinel, patiently.

Prints the seed's two lines, ``Previous state: …`` and ``Updated state: …``,
with the state as compact JSON (``null`` before anything was stored). It
retries only what retrying can fix, the agent (re)attaching behind a running
sentinel, and only until a deadline; everything else is one line at once
(see :func:`run`). It never hangs.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

from persistent_agent import AGENT_ADDR
from persistent_agent.access.fabric import refusal
from persistent_agent.errors import (
    AccessRefusedError,
    AgentOverloadedError,
    ClientCallError,
    ConfigError,
    NothingRunningError,
    PersistentAgentError,
    SentinelRefusedError,
    ServiceUnavailableError,
    TransportError,
    find_cause,
)

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
        raise ConfigError(f"{TIMEOUT_VAR} must be a number of seconds") from None


# The operation names of the upstream Python example (ours), then of the
# TypeScript original: an agent that answers "Method not found" to the first
# is asked with the second.
OPERATION_NAMES = (("retrieve_value", "store_value"), ("retrieveValue", "storeValue"))
METHOD_NOT_FOUND = -32601  # JSON-RPC


def method_not_found(exc: BaseException) -> bool:
    """Whether *exc* is a JSON-RPC "method not found" reply.

    The runtime hands the caller only the error's message (its code is
    dropped), so the standard message for -32601 is what identifies it.
    """
    code = getattr(exc, "code", None)
    return code == METHOD_NOT_FOUND or str(exc).startswith("Method not found")


async def _session(value: str, deadline: float) -> tuple[Any, Any]:
    """One connection: retrieve, then store *value*; each call bounded in time.

    Tries the Python operation names, and on "method not found" the
    TypeScript ones (an agent of the original example).
    """
    from naylence.agent import Agent
    from naylence.fame.core import FameFabric

    from persistent_agent.access.fabric import client_config

    def limit() -> float:
        return max(min(_CALL_TIMEOUT, deadline - time.monotonic()), 0.1)

    from persistent_agent.node.logs import drop_noop_tracing

    async with FameFabric.create(root_config=client_config()) as fabric:
        drop_noop_tracing(fabric.node)
        agent = Agent.remote_by_address(AGENT_ADDR)
        for i, (retrieve, store) in enumerate(OPERATION_NAMES):
            try:
                previous = await asyncio.wait_for(getattr(agent, retrieve)(), limit())
            except Exception as exc:
                if i + 1 < len(OPERATION_NAMES) and method_not_found(exc):
                    continue
                raise
            updated = await asyncio.wait_for(getattr(agent, store)(value), limit())
            return previous, updated
        raise AssertionError("unreachable")  # pragma: no cover


START_HINT_VAR = "PERSISTENT_AGENT_START_HINT"


def start_hint() -> str:
    """The command that starts the nodes this client talks to (set by the launchers)."""
    return os.environ.get(START_HINT_VAR) or "make start (Docker) or make local-start"


def retryable(exc: BaseException) -> bool:
    """Worth another try: the agent is (re)attaching behind a sentinel that is up.

    The sentinel nacks a call to an address with no live route as
    "Unroutable"; a call sent to an agent's previous, dead connection times
    out instead; the attach handshake itself can time out on a loaded machine;
    and a sentinel restarting closes the connection. Anything else (a JSON-RPC
    error such as "Method not found", a bug) will not go away by retrying.
    A handshake answered with an HTTP status is decided by :func:`refused_status`
    and the sentinel's readiness, not here.
    """
    from naylence.fame.errors import FameConnectError, FameTransportClose

    if isinstance(exc, TimeoutError | FameConnectError | FameTransportClose):
        return True
    if type(exc) is Exception and str(exc).startswith(AgentOverloadedError.PREFIX):
        return True  # refused undone, from the back of a long line
    return _nack_reason(exc).startswith("Unroutable")


def _nack_reason(exc: BaseException) -> str:
    """The reason of a nack by the sentinel (the runtime's "Envelope nacked: …"), or ""."""
    text = str(exc)
    if isinstance(exc, RuntimeError) and text.startswith(_NACKED):
        return text.removeprefix(_NACKED)
    return ""


_NACKED = "Envelope nacked: "


def refused_status(exc: BaseException) -> int | None:
    """The HTTP status that answered the client's websocket handshake, if that is what failed."""
    from websockets.exceptions import InvalidStatus

    refused = find_cause(exc, InvalidStatus)
    return None if refused is None else int(refused.response.status_code)


def nothing_running(exc: BaseException, url: str) -> tuple[str, str] | None:
    """Where nothing can be reached at all and why (refused, unknown host), or None.

    Secured, the client asks the token issuer first, so with nothing started
    it is the issuer that cannot be reached: the answer names it, not *url*
    (the sentinel's).
    """
    from aiohttp import ClientConnectorError
    from naylence.fame.errors import FameConnectError

    cause: BaseException | None
    if (issuer := find_cause(exc, ClientConnectorError)) is not None:
        cause, url = issuer.os_error, f"https://{issuer.host}:{issuer.port}"
    elif isinstance(exc, FameConnectError):
        cause = exc.__cause__ or exc.__context__
    else:
        return None
    if isinstance(cause, ConnectionRefusedError):
        return url, "connection refused"
    if isinstance(cause, socket.gaierror):
        return url, "unknown host"
    return None


def labelled(exc: BaseException, url: str) -> PersistentAgentError:
    """*exc*, which retrying will not mend, as one line that says where it came from.

    Only a JSON-RPC error reply is the agent's answer (the runtime raises it as
    a bare ``Exception`` carrying the reply's message); a nack is the
    sentinel's; anything else happened on the way, or in this client.
    """
    if type(exc) is Exception:
        return ClientCallError(f"{AGENT_ADDR} answered: {exc}")
    if reason := _nack_reason(exc):
        return ClientCallError(f"the sentinel at {url} refused the call to {AGENT_ADDR}: {reason}")
    hint = ""
    if url.startswith("ws://") and "did not receive a valid HTTP response" in str(exc):
        hint = " (a sentinel that serves TLS only answers ws:// so: use wss://, docs/security.md)"
    return TransportError(f"cannot call {AGENT_ADDR} via {url}: {_brief(exc)}{hint}")


async def run(
    value: str | None = None,
    out: Callable[[str], None] = print,
    note: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
) -> None:
    """Retrieve the previous state, store *value* (default: now in ms), print both.

    The retry policy: no sentinel at all on the first try (refused, unknown
    host) fails at once, naming the target that starts one; a sentinel that
    is up but has no agent attached yet, or that is still starting (its
    readiness check says so, :func:`link.sentinel_readiness`), is retried
    until CLIENT_TIMEOUT_SECONDS, with one *note* saying so; a handshake
    refused by a sentinel that is ready fails at once; anything else fails at
    once with its own message, labelled by where it came from.
    """
    from persistent_agent.node import link

    use_unique_node_id()
    timeout = timeout_seconds()
    deadline = time.monotonic() + timeout
    url = os.environ.get(link.ADMISSION_URL_VAR, "")
    if not url:
        raise ConfigError(
            f"{link.ADMISSION_URL_VAR} is not set; it names the sentinel to call "
            "(config/.env.client sets it: run `make init`)"
        )
    last_error: BaseException | None = None
    # Chosen once: a retried store writes the same value (storing is idempotent).
    new_value = value if value is not None else now_millis()

    attempt = 0
    while time.monotonic() < deadline:
        attempt += 1
        try:
            previous, updated = await asyncio.wait_for(
                _session(new_value, deadline), deadline - time.monotonic()
            )
            out(f"Previous state: {format_state(previous)}")
            out(f"Updated state: {format_state(updated)}")
            return
        except BaseException as exc:  # the runtime's connection errors are BaseExceptions
            if not isinstance(exc, Exception) and not retryable(exc):
                raise
            if (why_not := refusal(exc)) is not None:
                raise AccessRefusedError(f"{why_not} (at {url})") from None
            if attempt == 1 and (unreached := nothing_running(exc, url)):
                where, why = unreached
                raise NothingRunningError(
                    f"nothing is running at {where} ({why}); start it with `{start_hint()}`"
                ) from None
            if (status := refused_status(exc)) is not None:
                readiness = await link.sentinel_readiness(url)
                if readiness is link.Readiness.READY:
                    raise SentinelRefusedError(
                        f"the sentinel at {url} refused the connection (HTTP {status}); it is up "
                        "and ready for attaches, so check the client's credentials and address"
                    ) from None
            elif not retryable(exc):
                raise labelled(exc, url) from None
            if last_error is None:
                note(
                    f"client: {AGENT_ADDR} is not reachable yet ({_brief(exc)}); "
                    f"retrying for up to {timeout:g}s"
                )
            last_error = exc
        await asyncio.sleep(min(_RETRY_PAUSE, max(deadline - time.monotonic(), 0)))

    reason = _brief(last_error) if last_error else "no answer"
    raise ServiceUnavailableError(
        f"no answer from {AGENT_ADDR} via {url} within {timeout:g}s ({reason}); "
        f"is the agent attached? (`{start_hint()}` starts it)"
    )


def _brief(exc: BaseException) -> str:
    text = str(exc)
    return (f"{type(exc).__name__}: {text}" if text else type(exc).__name__)[:240]
