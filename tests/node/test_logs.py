"""Disabled log levels are dropped before the runtime renders them."""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from naylence.fame.util.logging import getLogger

from persistent_agent.node import logs, serving


def _spy_chain() -> list[str]:
    """Start the chain with a processor that records each event it sees and stops it."""
    seen: list[str] = []

    def spy(_logger: object, _method: str, event_dict: Any) -> Any:
        seen.append(str(event_dict["event"]))
        raise structlog.DropEvent

    processors = [
        p for p in structlog.get_config()["processors"] if p is not structlog.stdlib.filter_by_level
    ]
    structlog.configure(processors=[spy, *processors])
    return seen


def test_install_puts_structlogs_filter_first_once() -> None:
    """structlog's own filter_by_level heads the chain, and installing again does not stack it."""
    logs.install()
    logs.install()
    processors = structlog.get_config()["processors"]
    assert processors[0] is structlog.stdlib.filter_by_level
    assert processors.count(structlog.stdlib.filter_by_level) == 1


def test_a_logger_obtained_before_startup_is_filtered(monkeypatch: Any) -> None:
    """A runtime logger made at import time, before node startup, skips every processor
    for a disabled level once the node runs; an enabled level still goes through."""
    early = getLogger("naylence.fame.test_early")  # like a runtime module's global
    seen = _spy_chain()
    monkeypatch.setenv("FAME_STORAGE_PROFILE", "memory")
    monkeypatch.delenv(serving.ENV_FILE_VAR, raising=False)
    logging.getLogger("naylence").setLevel(logging.WARNING)

    async def main() -> None:
        early.debug("quiet_event")
        early.trace("trace_event")
        early.warning("loud_event")

    run: Callable[[], Awaitable[None]] = main
    assert serving.run("test", run) == 0
    assert seen == ["loud_event"]
    assert structlog.get_config()["processors"][0] is structlog.stdlib.filter_by_level
    assert os.environ["FAME_STORAGE_PROFILE"] == "memory"


def test_a_disabled_level_never_reaches_the_processors() -> None:
    """Loggers ask the standard-library level first (LevelFirstBoundLogger): with
    filter_by_level taken out of the chain, a disabled debug or trace call still reaches
    no processor, and an enabled one goes through the whole chain."""
    logs.install()
    assert structlog.get_config()["wrapper_class"] is logs.LevelFirstBoundLogger
    logger = getLogger("naylence.fame.test_level_first")
    seen = _spy_chain()  # without filter_by_level: only the logger's own check remains
    naylence = logging.getLogger("naylence")
    before = naylence.level
    try:
        naylence.setLevel(logging.INFO)
        logger.debug("quiet_debug")
        logger.trace("quiet_trace")
        logger.info("info_event")
        naylence.setLevel(logs.TRACE)
        logger.debug("debug_event")
        logger.trace("trace_event")
    finally:
        naylence.setLevel(before)
        logs.install()
    assert seen == ["info_event", "debug_event", "trace_event"]
