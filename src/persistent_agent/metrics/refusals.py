"""The sentinel's refused attaches and frames, by reason, with no change to the authorizer.

The authorizer (access/authorizer.py) logs every refusal it makes, once, on
the ``persistent_agent.access`` logger, with the :class:`Refused` reason as a
log argument. :class:`RefusalCounter` is a logging handler on that logger: it
counts each record carrying a ``Refused`` by its bounded reason code
(``Refused.reason``), and never keeps the text, which can name a credential id.

Counted while the logger takes warnings: at the nodes' default log level
(``FAME_LOG_LEVEL=warning``) and below; a node set to ``error`` or quieter
logs no refusal, and counts none (docs/metrics.md).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from persistent_agent.access.authorizer import Refused
from persistent_agent.metrics.instruments import Instruments

LOGGER = "persistent_agent.access"


class RefusalCounter(logging.Handler):
    """Counts the authorizer's refusals as they are logged; prints nothing."""

    def __init__(self, instruments: Instruments) -> None:
        super().__init__(logging.WARNING)
        self._instruments = instruments

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args if isinstance(record.args, tuple) else ()
        for arg in args:
            if isinstance(arg, Refused):
                self._instruments.refusals.labels(arg.reason).inc()
                return


def count_refusals(instruments: Instruments) -> Callable[[], None]:
    """Attach a :class:`RefusalCounter` to the authorizer's logger; returns what detaches it."""
    handler = RefusalCounter(instruments)
    logger = logging.getLogger(LOGGER)
    logger.addHandler(handler)
    return lambda: logger.removeHandler(handler)
