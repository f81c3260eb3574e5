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
"""

from __future__ import annotations

import logging
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


def install() -> None:
    """Drop disabled levels before any processor runs (idempotent)."""
    import naylence.fame.util.logging  # noqa: F401 - the runtime's configuration comes first

    config = structlog.get_config()
    processors = list(config["processors"])
    if structlog.stdlib.filter_by_level not in processors:
        processors = [structlog.stdlib.filter_by_level, *processors]
    structlog.configure(processors=processors, wrapper_class=LevelFirstBoundLogger)


def drop_noop_tracing(node: Any) -> int:
    """Remove the runtime's no-op trace emitter from *node*'s listeners; how many were removed."""
    from naylence.fame.telemetry.noop_trace_emitter import NoopTraceEmitter

    noop = [each for each in node.event_listeners if type(each) is NoopTraceEmitter]
    for listener in noop:
        node.remove_event_listener(listener)
    return len(noop)
