"""Logging and tracing that cost nothing when they are switched off.

The runtime configures structlog (when ``naylence.fame.util.logging`` is
imported) to render every event (timestamp, colours, padding) and only then
hand it to a standard-library logger that drops it by level. Its hot paths log
dozens of debug events per message, so a node at the default level would still
format them all: about half of the CPU time of a call through the sentinel.

:func:`install` puts structlog's own ``filter_by_level`` in front of that
chain, and makes the loggers ask the standard-library logger's level before
anything else (:class:`LevelFirstBoundLogger`): a disabled ``debug`` call is
then one cached level lookup, not a pass through structlog's processing (which
``filter_by_level`` ends by raising ``DropEvent``). The runtime also sets
``cache_logger_on_first_use``: a logger binds its class and processor chain
the first time it is used and keeps them. So the entry points call
:func:`install` first, before anything (the storage preflight included) can
use a runtime logger; loggers obtained earlier, at import time, are lazy and
bind the filtered chain on their first use.

Tracing: without telemetry configured, the runtime gives every node a
``NoopTraceEmitter`` and registers it as a node event listener. It records
nothing, yet at every step of every envelope (received, delivered, forwarded,
forward completed) it builds a dict of fifteen envelope attributes, opens a
no-op span and keeps it in a map until the step completes: a few per cent of
each process's CPU per call (docs/performance.md). :func:`drop_noop_tracing`
takes it off the node's listeners through ``NodeLike.remove_event_listener``;
an emitter that does record (OpenTelemetry, when configured) stays.

Nothing a caller stores or reads reaches a log (:func:`install` again). The
runtime renders exceptions with structlog's default formatter, which, with
Rich installed, prints every frame's local variables: a failed forward put
the whole envelope, stored value and all, into the sentinel's log. Some of
its events also carry envelopes, frames or raw frame bytes as fields or in
their text (``Invalid envelope: b'...'``, a validation error's
``input_value=...``, an envelope dumped at trace level). So the chain
renders tracebacks without locals, and :func:`redact` turns envelopes and
frames into their identifiers (id, address, frame type), bytes into their
length, and cuts any text at the first sign of a payload. A filter on the
standard-library handlers does the same for what other libraries log
(uvicorn, asyncio). What ``FAME_SHOW_ENVELOPES=true`` prints (``run-verbose``)
is printed by the runtime on purpose, outside logging, and stays.
"""

from __future__ import annotations

import ast
import logging
import re
import sys
import traceback
from typing import Any

import structlog

TRACE = 5  # the runtime's level below DEBUG (naylence.fame.util.logging.TRACE)


class LevelFirstBoundLogger(structlog.stdlib.BoundLogger):
    """The runtime's logger class, checking the level before doing any work.

    Only the levels the runtime's hot paths use are guarded; what is enabled
    goes on exactly as before, through the whole processor chain.
    """

    def debug(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        if not self._logger.isEnabledFor(logging.DEBUG):
            return None
        return super().debug(event, *args, **kw)

    def info(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        if not self._logger.isEnabledFor(logging.INFO):
            return None
        return super().info(event, *args, **kw)

    def trace(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        # BoundLogger.trace is the runtime's, added to the class on import.
        if not self._logger.isEnabledFor(TRACE):
            return None
        return super().trace(event, *args, **kw)  # type: ignore[misc]

    def log(self, level: int, event: str | None = None, *args: Any, **kw: Any) -> Any:
        if not self._logger.isEnabledFor(level):
            return None
        return super().log(level, event, *args, **kw)


# Where a payload starts in any rendering of an envelope, a frame or a
# JSON-RPC message: pydantic's str and repr (``payload=``), dict reprs and
# JSON (``'params':``, ``"result":``). Text is cut at the first one.
_PAYLOAD_MARKERS = (
    "payload=",
    *(
        f"{quote}{key}{quote}:"
        for key in ("payload", "params", "args", "kwargs", "result", "jsonrpc")
        for quote in ("'", '"')
    ),
)
# A validation error quotes its input: ``input_value=..., input_type=...``.
_INPUT_VALUE = re.compile(r"input_value=.*?(?=, input_type=|$)", re.MULTILINE)
# A bytes literal in text (a raw frame in an f-string): only its length is kept.
_BYTES_LITERAL = re.compile(r"""(?<![\w])b(?:'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*")""")
# Dict keys whose values are call arguments or replies, wherever they nest.
_PAYLOAD_KEYS = frozenset({"payload", "params", "args", "kwargs", "result", "data", "value"})
REDACTED = "<redacted>"


def _bytes_length(match: re.Match[str]) -> str:
    try:
        return f"<{len(ast.literal_eval(match.group()))} bytes>"
    except (ValueError, SyntaxError):  # a truncated quote: only its kind is known
        return "<bytes>"


def scrub(text: str) -> str:
    """*text* without what could be a payload: quoted inputs and bytes go, and the
    text is cut at the first payload marker (what comes before, ids and all, stays)."""
    if "input_value=" in text:
        text = _INPUT_VALUE.sub(f"input_value={REDACTED}", text)
    if "b'" in text or 'b"' in text:
        text = _BYTES_LITERAL.sub(_bytes_length, text)
    cut = min((i for m in _PAYLOAD_MARKERS if (i := text.find(m)) >= 0), default=-1)
    return text if cut < 0 else text[:cut] + REDACTED


_PRIMITIVES = (str, int, float, bool, type(None))
_ENVELOPE_TYPES: tuple[type[Any], ...] = ()  # FameEnvelope, FameFrame (set by install)


def _summary(value: Any) -> str | None:
    """An envelope or a frame as its identifiers; None for anything else."""
    if not _ENVELOPE_TYPES:
        return None
    envelope_type, frame_type = _ENVELOPE_TYPES
    envelope = getattr(value, "envelope", value)  # FameChannelMessage, FameMessageResponse
    if isinstance(envelope, envelope_type):
        kind = getattr(envelope.frame, "type", type(envelope.frame).__name__)
        return f"<envelope id={envelope.id} to={envelope.to} frame_type={kind}>"
    if isinstance(value, frame_type):
        return f"<{getattr(value, 'type', type(value).__name__)} frame>"
    return None


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, _PRIMITIVES):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(value)} bytes>"
    if isinstance(value, dict):
        return {k: REDACTED if k in _PAYLOAD_KEYS else _redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_redact_value(v) for v in value]
    if (summary := _summary(value)) is not None:
        return summary
    return scrub(str(value))


_CAUSE = "\nThe above exception was the direct cause of the following exception:\n\n"
_CONTEXT = "\nDuring handling of the above exception, another exception occurred:\n\n"


def _format_one(exc: BaseException) -> str:
    name = type(exc).__qualname__
    if type(exc).__module__ not in ("builtins", "__main__"):
        name = f"{type(exc).__module__}.{name}"
    message = scrub(str(exc))
    frames = "".join(traceback.format_tb(exc.__traceback__))
    head = "Traceback (most recent call last):\n" if frames else ""
    return f"{head}{frames}{name}: {message}\n" if message else f"{head}{frames}{name}\n"


def format_exception(exc: BaseException) -> str:
    """A traceback as Python prints it (frames and source lines, no local variables),
    causes first, with each exception's message passed through :func:`scrub`."""
    parts, seen = [], {id(exc)}
    current: BaseException | None = exc
    while current is not None:
        parts.append(_format_one(current))
        if current.__cause__ is not None:
            link, current = _CAUSE, current.__cause__
        elif current.__context__ is not None and not current.__suppress_context__:
            link, current = _CONTEXT, current.__context__
        else:
            break
        if id(current) in seen:
            break
        seen.add(id(current))
        parts.append(link)
    return "".join(reversed(parts)).rstrip("\n")


def _exception_of(exc_info: Any) -> BaseException | None:
    if isinstance(exc_info, BaseException):
        return exc_info
    if isinstance(exc_info, tuple):
        return exc_info[1] if len(exc_info) > 1 else None
    return sys.exc_info()[1] if exc_info else None


def redact(_logger: Any, _method: str, event_dict: Any) -> Any:
    """structlog processor: no payload, argument, reply or raw frame in any field, the
    event's text included; an exception becomes a traceback without locals."""
    exc = _exception_of(event_dict.pop("exc_info", None))
    for key, value in event_dict.items():
        if key in _PAYLOAD_KEYS and value is not None:
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _redact_value(value)
    if exc is not None:
        event_dict["exception"] = format_exception(exc)
    return event_dict


class _Redacted(str):
    """A line rendered from an event that :func:`redact` went through."""

    __slots__ = ()


class _Renderer(structlog.dev.ConsoleRenderer):
    """The runtime's renderer, printing the traceback :func:`redact` wrote as it is
    (its default formatter, Rich's, would print every frame's local variables)."""

    def __init__(self) -> None:
        super().__init__(
            colors=True, sort_keys=False, exception_formatter=structlog.dev.plain_traceback
        )

    def __call__(self, logger: Any, name: str, event_dict: Any) -> str:
        return _Redacted(super().__call__(logger, name, event_dict))


class RedactingFilter(logging.Filter):
    """The same for records of other libraries (uvicorn, asyncio) at the handlers."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, _Redacted):  # rendered by our chain: its fields are
            return True
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # arguments that do not fit: the text alone
            message = str(record.msg)
        if (scrubbed := scrub(message)) != message or record.args:
            record.msg, record.args = scrubbed, None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = format_exception(record.exc_info[1])
        return True


def install() -> None:
    """Drop disabled levels before any processor runs, and redact what is rendered
    (idempotent)."""
    global _ENVELOPE_TYPES
    import naylence.fame.util.logging  # noqa: F401 - the runtime's configuration comes first
    from naylence.fame.core import FameEnvelope, FameFrame

    _ENVELOPE_TYPES = (FameEnvelope, FameFrame)
    config = structlog.get_config()
    processors = [
        p for p in config["processors"] if p not in (structlog.stdlib.filter_by_level, redact)
    ]
    if processors and isinstance(processors[-1], structlog.dev.ConsoleRenderer):
        processors[-1] = _Renderer()
    structlog.configure(
        processors=[structlog.stdlib.filter_by_level, redact, *processors],
        wrapper_class=LevelFirstBoundLogger,
    )
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())


def drop_noop_tracing(node: Any) -> int:
    """Remove the runtime's no-op trace emitter from *node*'s listeners; how many were removed."""
    from naylence.fame.telemetry.noop_trace_emitter import NoopTraceEmitter

    noop = [each for each in node.event_listeners if type(each) is NoopTraceEmitter]
    for listener in noop:
        node.remove_event_listener(listener)
    return len(noop)
