"""The counters and histograms a node feeds as things happen, in one registry.

Built from the declarations in ``series``; each node process makes one
:class:`Instruments` when it serves metrics (``endpoint.start``), and a test
makes its own, in a registry of its own.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from persistent_agent.metrics import series


class Instruments:
    """What the storage listener, the agent's calls and the sentinel's refusals count."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.operations = _counter(series.STORAGE_OPERATIONS, registry)
        self.operation_seconds = _histogram(
            series.STORAGE_OPERATION_SECONDS, registry, series.STORAGE_BUCKETS
        )
        self.failures = _counter(series.STORAGE_FAILURES, registry)
        self.rpc_calls = _counter(series.RPC_CALLS, registry)
        self.rpc_seconds = _histogram(series.RPC_SECONDS, registry, series.RPC_BUCKETS)
        self.refusals = _counter(series.REFUSALS, registry)


def _counter(declared: series.Series, registry: CollectorRegistry) -> Counter:
    return Counter(declared.family, declared.help, declared.labels, registry=registry)


def _histogram(
    declared: series.Series, registry: CollectorRegistry, buckets: tuple[float, ...]
) -> Histogram:
    return Histogram(
        declared.family, declared.help, declared.labels, registry=registry, buckets=buckets
    )
