"""The counters and histograms a node feeds as things happen, in one registry.

Built from the declarations in ``series``; each node process makes one
:class:`Instruments` when it serves metrics (``endpoint.start``), and a test
makes its own, in a registry of its own.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from persistent_agent.metrics import series


class Instruments:
    """What the agent's calls and the sentinel's refusals count (the storage listener
    keeps its own tallies, collected into this registry)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry  # the storage series: listener.StorageMetrics collects them
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
