"""What `make metrics` tells a person: percentiles from buckets, and the summary lines."""

from __future__ import annotations

import math
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from persistent_agent.errors import WrongKeyError
from persistent_agent.metrics.instruments import Instruments
from persistent_agent.metrics.listener import StorageMetrics
from persistent_agent.metrics.summary import quantile, summary
from persistent_agent.storage import events


def test_quantiles_interpolate_within_a_bucket_as_prometheus_does() -> None:
    buckets = [(0.001, 50.0), (0.01, 90.0), (0.1, 100.0), (math.inf, 100.0)]
    assert quantile(0.5, buckets) == 0.001
    p99 = quantile(0.99, buckets)
    assert p99 is not None
    assert math.isclose(p99, 0.01 + (0.1 - 0.01) * 0.9)
    assert quantile(0.5, [(0.001, 0.0), (math.inf, 0.0)]) is None
    # Beyond the largest finite bucket: that bucket's bound.
    assert quantile(0.99, [(0.001, 1.0), (math.inf, 10.0)]) == 0.001


def test_the_summary_counts_operations_calls_and_refusals() -> None:
    registry = CollectorRegistry()
    counted = Instruments(registry)
    storage = StorageMetrics(counted)
    for _ in range(3):
        storage.observed(events.Observation("set", "agent_state", 0.0002, "ok"))
    storage.observed(
        events.Observation("get", "agent_state", 0.0002, "error", WrongKeyError(Path("x.db")))
    )
    counted.rpc_calls.labels("store_value", "ok").inc()
    counted.rpc_seconds.labels("store_value", "ok").observe(0.002)
    counted.refusals.labels("revoked").inc(2)
    lines = summary("agent", generate_latest(registry).decode())
    assert lines[0].startswith("agent: storage 4 operations (1 failed), p50 0.")
    assert lines[1].startswith("  calls: 1 (0 answered with an error), p50 ")
    assert "  keys: no keyring; custody: ?" in lines
    assert "  backup: none found (make backup)" in lines
    assert lines[-1] == "  refusals: 2 (revoked 2)"
