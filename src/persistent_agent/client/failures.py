"""What went wrong on a call, where it came from, and the one line that says so.

Every failure the client meets is sorted here, once, into a :class:`Kind`
and an :class:`Origin`: *local configuration* (this machine's settings),
*transport* (the way to the sentinel), *sentinel* (it refused or could not
route the call) or *agent* (its error reply). Retrying looks only at the kind
(:mod:`persistent_agent.client.retry`); the user reads a line labelled by the
origin (:func:`label`). A missing setting is therefore never reported as the
agent's answer, nor an HTTP 403 from the sentinel's door.

Structure first: exception types (the runtime's, ``websockets``'s,
``aiohttp``'s) and a JSON-RPC error code where the exception carries one. The
runtime drops the rest: a JSON-RPC error reply reaches us as a bare
``Exception`` holding only the error's message (its code and data are gone,
``rpc_client_manager.invoke``), and a sentinel's nack as a ``RuntimeError``
``"Envelope nacked: <reason>"`` (the frame's code is gone,
``DefaultDeliveryTracker.on_nack``). For those, and only those, the texts are
in :data:`RUNTIME_TEXTS`, the one table of texts the client matches.
"""

from __future__ import annotations

import enum
import socket
from dataclasses import dataclass

from persistent_agent import AGENT_ADDR, settings
from persistent_agent.errors import (
    AgentOverloadedError,
    ClientCallError,
    ConfigError,
    PersistentAgentError,
    SharedStateConflictError,
    SharedStateUnavailableError,
    TransportError,
    find_cause,
)


class Origin(enum.Enum):
    """Where a failure came from: what the user has to look at to fix it."""

    CONFIGURATION = "local configuration"
    TRANSPORT = "transport"
    SENTINEL = "sentinel"
    AGENT = "agent"


class Kind(enum.Enum):
    """What a failure is, as far as retrying and reporting it go."""

    MISSING_SETTING = "missing setting"
    TIMEOUT = "timeout"
    CONNECT_FAILED = "connect failed"
    CONNECTION_CLOSED = "connection closed"
    HANDSHAKE_REFUSED = "handshake refused"  # an HTTP status answered the websocket upgrade
    TRANSPORT_OTHER = "transport"
    UNROUTABLE = "unroutable"  # the sentinel has no live route to the agent (yet)
    NACKED = "nacked"  # any other refusal by the sentinel
    METHOD_NOT_FOUND = "method not found"
    OVERLOADED = "agent overloaded"
    SHARED_STATE_UNAVAILABLE = "shared state unavailable"
    SHARED_STATE_BUSY = "shared state busy"
    AGENT_ERROR = "agent error"

    @property
    def origin(self) -> Origin:
        return _ORIGINS[self]


_ORIGINS = {
    Kind.MISSING_SETTING: Origin.CONFIGURATION,
    Kind.TIMEOUT: Origin.TRANSPORT,
    Kind.CONNECT_FAILED: Origin.TRANSPORT,
    Kind.CONNECTION_CLOSED: Origin.TRANSPORT,
    Kind.HANDSHAKE_REFUSED: Origin.SENTINEL,
    Kind.TRANSPORT_OTHER: Origin.TRANSPORT,
    Kind.UNROUTABLE: Origin.SENTINEL,
    Kind.NACKED: Origin.SENTINEL,
    Kind.METHOD_NOT_FOUND: Origin.AGENT,
    Kind.OVERLOADED: Origin.AGENT,
    Kind.SHARED_STATE_UNAVAILABLE: Origin.AGENT,
    Kind.SHARED_STATE_BUSY: Origin.AGENT,
    Kind.AGENT_ERROR: Origin.AGENT,
}

METHOD_NOT_FOUND = -32601  # JSON-RPC's code; read where an exception still carries it
NACKED = "Envelope nacked: "


@dataclass(frozen=True)
class RuntimeText:
    """One text the runtime hands over instead of a code, and why we must match it."""

    kind: Kind
    starts: str
    why: str


# Matched against the start of an error reply's message (a bare Exception) or
# of a nack's reason (RuntimeError "Envelope nacked: <reason>"); first match wins.
RUNTIME_TEXTS: tuple[RuntimeText, ...] = (
    RuntimeText(
        Kind.METHOD_NOT_FOUND,
        "Method not found",
        "JSON-RPC -32601's standard message; the runtime drops the code",
    ),
    RuntimeText(
        Kind.OVERLOADED,
        AgentOverloadedError.PREFIX,
        "our agent's refusal of a call that waited too long (node.backlog), undone",
    ),
    RuntimeText(
        Kind.SHARED_STATE_UNAVAILABLE,
        SharedStateUnavailableError.PREFIX,
        "our agent's shared state (PostgreSQL) does not answer; the replica reconnects",
    ),
    RuntimeText(
        Kind.SHARED_STATE_BUSY,
        SharedStateConflictError.PREFIX,
        "other replicas kept changing the state for longer than the agent retries",
    ),
    RuntimeText(
        Kind.UNROUTABLE,
        "Unroutable",
        "a nack's reason: the sentinel's router has no live route to the address",
    ),
)


class LocalConfigurationError(ConfigError):
    """A setting on this machine is missing or wrong: labelled so, once."""

    def __init__(self, text: str) -> None:
        super().__init__(f"{Origin.CONFIGURATION.value}: {text}")


@dataclass(frozen=True)
class Failure:
    """A failure sorted: its kind (hence origin) and its text, for the user."""

    kind: Kind
    text: str

    @property
    def origin(self) -> Origin:
        return self.kind.origin


def classify(exc: BaseException) -> Failure:
    """Sort *exc*, by type and code first, by :data:`RUNTIME_TEXTS` where only text is left."""
    from naylence.fame.errors import FameConnectError, FameTransportClose
    from naylence.fame.factory.expression_evaluator import MissingEnvironmentVariableError

    text = str(exc)
    if isinstance(exc, ConfigError) or find_cause(exc, MissingEnvironmentVariableError):
        return Failure(Kind.MISSING_SETTING, text)
    if isinstance(exc, TimeoutError):
        return Failure(Kind.TIMEOUT, text)
    if refused_status(exc) is not None:
        return Failure(Kind.HANDSHAKE_REFUSED, text)
    if isinstance(exc, FameConnectError):
        return Failure(Kind.CONNECT_FAILED, text)
    if isinstance(exc, FameTransportClose):
        return Failure(Kind.CONNECTION_CLOSED, text)
    if isinstance(exc, RuntimeError) and text.startswith(NACKED):
        reason = text.removeprefix(NACKED)
        return Failure(_from_table(reason, Kind.NACKED), reason)
    if type(exc) is Exception:  # the runtime's JSON-RPC error reply, its message only
        if getattr(exc, "code", None) == METHOD_NOT_FOUND:
            return Failure(Kind.METHOD_NOT_FOUND, text)
        return Failure(_from_table(text, Kind.AGENT_ERROR), text)
    return Failure(Kind.TRANSPORT_OTHER, text)


def _from_table(text: str, otherwise: Kind) -> Kind:
    for entry in RUNTIME_TEXTS:
        if text.startswith(entry.starts):
            return entry.kind
    return otherwise


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


START_HINT_VAR = settings.PERSISTENT_AGENT_START_HINT.name


def start_hint() -> str:
    """The command that starts the nodes this client talks to (set by the launchers),
    each command in its own backticks."""
    hint = settings.PERSISTENT_AGENT_START_HINT.value()
    return f"`{hint}`" if hint else "`make start` (Docker) or `make local-start`"


def label(exc: BaseException, url: str) -> PersistentAgentError:
    """*exc*, which retrying will not mend, as one line that says where it came from.

    Our own errors already say it, and pass unchanged; a missing setting is
    this machine's configuration; a nack or a refused handshake is the
    sentinel's; only a JSON-RPC error reply is the agent's answer; anything
    else happened on the way.
    """
    if isinstance(exc, LocalConfigurationError):
        return exc
    if isinstance(exc, PersistentAgentError) and not isinstance(exc, ConfigError):
        return exc
    failure = classify(exc)
    match failure.origin:
        case Origin.CONFIGURATION:
            return LocalConfigurationError(_configuration_text(exc))
        case Origin.AGENT:
            return ClientCallError(f"{AGENT_ADDR} answered: {failure.text}")
        case Origin.SENTINEL if (status := refused_status(exc)) is not None:
            return ClientCallError(f"the sentinel at {url} refused the connection (HTTP {status})")
        case Origin.SENTINEL:
            return ClientCallError(
                f"the sentinel at {url} refused the call to {AGENT_ADDR}: {failure.text}"
            )
    return TransportError(f"cannot call {AGENT_ADDR} via {url}: {brief(exc)}{_tls_hint(exc, url)}")


def _configuration_text(exc: BaseException) -> str:
    """The missing setting's line; the runtime's adds a hint that means nothing to a user."""
    from naylence.fame.factory.expression_evaluator import MissingEnvironmentVariableError

    missing = find_cause(exc, MissingEnvironmentVariableError)
    if missing is None:
        return str(exc)
    name = str(missing).partition("'")[2].partition("'")[0] or "a setting"
    return f"{name} is not set (config/.env.client sets it: run `make init`)"


def _tls_hint(exc: BaseException, url: str) -> str:
    """A sentinel that serves TLS only answers a ws:// upgrade with TLS bytes, not HTTP."""
    from websockets.exceptions import InvalidMessage

    if url.startswith("ws://") and find_cause(exc, InvalidMessage) is not None:
        return " (a sentinel that serves TLS only answers ws:// so: use wss://, docs/security.md)"
    return ""


def brief(exc: BaseException) -> str:
    """``Type: first line of the message``, short enough for one line of output."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return (f"{type(exc).__name__}: {text}" if text else type(exc).__name__)[:240]
