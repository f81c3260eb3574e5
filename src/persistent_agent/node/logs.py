"""Logging that costs nothing when it is switched off.

The runtime configures structlog (when ``naylence.fame.util.logging`` is
imported) to render every event (timestamp, colours, padding) and only then
hand it to a standard-library logger that drops it by level. Its hot paths log
dozens of debug events per message, so a node at the default level would still
format them all: about half of the CPU time of a call through the sentinel.

:func:`install` puts structlog's own ``filter_by_level`` in front of that
chain. The runtime also sets ``cache_logger_on_first_use``: a logger binds its
processor chain the first time it is used and keeps it. So the entry points
call :func:`install` first, before anything (the storage preflight included)
can use a runtime logger; loggers obtained earlier, at import time, are lazy
and bind the filtered chain on their first use.
"""

from __future__ import annotations

import structlog


def install() -> None:
    """Drop disabled levels before any processor runs (idempotent)."""
    import naylence.fame.util.logging  # noqa: F401 - the runtime's configuration comes first

    processors = list(structlog.get_config()["processors"])
    if structlog.stdlib.filter_by_level not in processors:
        structlog.configure(processors=[structlog.stdlib.filter_by_level, *processors])
