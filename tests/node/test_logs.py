"""Disabled log levels are dropped before the runtime renders them; what is rendered
holds no payload, argument or reply."""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
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


MARKER = "TOPSECRET-in-a-test"


def _envelope() -> Any:
    from naylence.fame.core import DataFrame, create_fame_envelope

    payload = {"jsonrpc": "2.0", "method": "store_value", "params": {"args": [MARKER]}}
    return create_fame_envelope(frame=DataFrame(payload=payload), to="storage@fame.fabric")


def _fail_forwarding(envelope: Any) -> None:
    """Raise with *envelope* in a local variable and in the message, as the runtime does."""
    raise RuntimeError(f"cannot forward {envelope}")


def test_a_traceback_has_frames_and_message_but_no_locals_or_payload(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An error logged with exc_info renders as Python's traceback: the event, the frames,
    the exception's type and message up to the payload; no local variable, no payload."""
    logs.install()
    logger = getLogger("naylence.fame.test_traceback")
    envelope = _envelope()
    try:
        _fail_forwarding(envelope)
    except RuntimeError:
        logger.error("transport_closed", exc_info=True)
    assert "transport_closed" in caplog.text
    assert "Traceback (most recent call last):" in caplog.text
    assert "in _fail_forwarding" in caplog.text
    assert f"RuntimeError: cannot forward version='1.0' id='{envelope.id}'" in caplog.text
    assert MARKER not in caplog.text


def test_envelopes_frames_and_bytes_in_fields_keep_only_their_identifiers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Fields holding an envelope, a frame, a JSON-RPC message or raw bytes are logged as
    the envelope's id, address and frame type, the frame's type, and the byte count."""
    logs.install()
    logger = getLogger("naylence.fame.test_fields")
    envelope = _envelope()
    raw = envelope.model_dump_json().encode()
    logger.warning(
        "forwarding",
        envelope=envelope,
        frame=envelope.frame,
        message=envelope.frame.payload,
        raw=raw,
    )
    logger.error(f"Invalid envelope: {raw!r}, error: bad")  # the runtime's own f-string
    assert f"<envelope id={envelope.id} to=storage@fame.fabric frame_type=Data>" in caplog.text
    assert "<Data frame>" in caplog.text
    assert f"Invalid envelope: <{len(raw)} bytes>, error: bad" in caplog.text
    assert "'method': 'store_value'" in caplog.text
    assert MARKER not in caplog.text


def test_a_validation_error_keeps_its_reason_not_its_input() -> None:
    """pydantic quotes the input it refused (input_value=...): that goes, the reason stays."""
    from naylence.fame.core import FameEnvelope
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as refused:
        FameEnvelope.model_validate_json(f'{{"frame": {{"payload": "{MARKER}'.encode())
    text = logs.format_exception(refused.value)
    assert "Invalid JSON: EOF while parsing a string" in text
    assert "input_value=<redacted>, input_type=bytes" in text
    assert MARKER not in text


def test_other_libraries_records_are_redacted_at_the_handler() -> None:
    """What uvicorn or asyncio log through the standard library (message, arguments and
    exception) passes the same redaction on the root logger's handlers."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        logs.install()
        try:
            _fail_forwarding(_envelope())
        except RuntimeError:
            logging.getLogger("uvicorn.error").exception("Exception in ASGI app: %s", b"\x00" * 7)
    finally:
        root.removeHandler(handler)
    text = stream.getvalue()
    assert "Exception in ASGI app: <7 bytes>" in text
    assert "RuntimeError: cannot forward" in text
    assert MARKER not in text
