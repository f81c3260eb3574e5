"""Disabled log levels are dropped before the runtime renders them."""

from __future__ import annotations

import logging

import naylence.fame.util.logging  # noqa: F401 - the runtime's structlog setup, as in a node
import structlog

from persistent_agent.logs import _drop_disabled, filter_disabled_levels


def test_filter_goes_first_once() -> None:
    """The filter heads the processor chain, and calling again does not stack it."""
    filter_disabled_levels()
    filter_disabled_levels()
    processors = structlog.get_config()["processors"]
    assert processors[0] is _drop_disabled
    assert processors.count(_drop_disabled) == 1


def test_disabled_levels_skip_every_processor() -> None:
    """At WARNING a debug event runs no processor (no rendering); a warning runs all."""
    filter_disabled_levels()
    saved = structlog.get_config()["processors"]
    seen: list[str] = []

    def spy(_logger: object, _method: str, event_dict: dict[str, object]) -> object:
        seen.append(str(event_dict["event"]))
        raise structlog.DropEvent  # stop here: this test only watches

    structlog.configure(processors=[saved[0], spy, *saved[1:]])
    logging.getLogger("naylence").setLevel(logging.WARNING)
    try:
        log = structlog.get_logger("naylence.test_logs")
        log.debug("quiet_event")
        log.warning("loud_event")
    finally:
        structlog.configure(processors=saved)
    assert seen == ["loud_event"]
