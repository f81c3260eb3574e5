"""The agent's calls, by operation and outcome: one mixin in the agent's bases.

:class:`MeteredCalls` goes first in the bases of an agent (node/agent.py). It
times each JSON-RPC call the agent answers and counts it as ``ok`` or
``error`` (the reply carries a JSON-RPC error, or the handler raised). The
operation label is the method's name only if the agent declares that
operation; anything else a caller sends is ``other``, so a caller cannot grow
the label set. While the node serves no metrics (:data:`RECORDER` is None), a
call costs one attribute check.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # prometheus-client is imported only by a node that serves metrics
    from persistent_agent.metrics.instruments import Instruments

OTHER = "other"


class Recorder:
    """Where the calls are counted: the node's :class:`Instruments`."""

    def __init__(self, instruments: Instruments) -> None:
        self._instruments = instruments

    def record(self, operation: str, outcome: str, seconds: float) -> None:
        self._instruments.rpc_calls.labels(operation, outcome).inc()
        self._instruments.rpc_seconds.labels(operation, outcome).observe(seconds)


RECORDER: Recorder | None = None  # set by endpoint.start while the node serves metrics


def _method(envelope: Any) -> str | None:
    payload = getattr(getattr(envelope, "frame", None), "payload", None)
    if isinstance(payload, dict) and "method" in payload and "id" in payload:
        return str(payload["method"])
    return None


def _outcome(result: Any) -> str:
    payload = getattr(getattr(getattr(result, "envelope", None), "frame", None), "payload", None)
    return "error" if isinstance(payload, dict) and payload.get("error") else "ok"


class MeteredCalls:
    """Put first in the bases of an agent: its calls become ``persistent_agent_rpc_*``."""

    async def handle_message(self, envelope: Any, context: Any = None) -> Any:
        recorder = RECORDER
        method = _method(envelope) if recorder is not None else None
        if recorder is None or method is None:
            return await super().handle_message(envelope, context)  # type: ignore[misc]
        # The SDK's declared operations (no public API; tests/node/test_sdk_contract.py)
        operations = getattr(type(self), "_rpc_registry", {})
        operation = method if method in operations else OTHER
        started = time.perf_counter()
        try:
            result = await super().handle_message(envelope, context)  # type: ignore[misc]
        except Exception:
            recorder.record(operation, "error", time.perf_counter() - started)
            raise
        recorder.record(operation, _outcome(result), time.perf_counter() - started)
        return result
