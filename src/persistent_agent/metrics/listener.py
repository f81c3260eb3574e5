"""The storage metrics: one listener on the storage-events hook, and nothing else.

Every store operation a node makes is one :class:`~persistent_agent.storage.events.Observation`;
:class:`StorageMetrics` counts it and times it by namespace, operation and
outcome, and counts a failure by its kind (:func:`failure_kind`: a wrong key
or a row that does not decrypt is ``decrypt``, a damaged page ``integrity``).

Label values stay bounded whatever the data (:class:`Namespaces`): the
runtime's own namespaces (``__*``) are one value, and past
:data:`MAX_NAMESPACES` names, any further one is ``other``. No key, value or
error text becomes a label.
"""

from __future__ import annotations

import bisect
import itertools
import threading
from collections.abc import Iterator
from typing import Any

from persistent_agent.errors import (
    DatabaseBusyError,
    DatabaseDamagedError,
    SharedRowError,
    SharedStateConflictError,
    SharedStateUnavailableError,
    StorageUnavailableError,
    WrongKeyError,
)
from persistent_agent.metrics import series
from persistent_agent.metrics.instruments import Instruments
from persistent_agent.storage import events

INTERNAL = "__internal"  # every namespace of the runtime's own (``__*``)
OTHER = "other"  # every namespace past the first MAX_NAMESPACES
MAX_NAMESPACES = 32

# Most specific first: an error is the first kind it is an instance of.
_KINDS: tuple[tuple[type[BaseException], str], ...] = (
    (WrongKeyError, "decrypt"),
    (SharedRowError, "decrypt"),
    (DatabaseDamagedError, "integrity"),
    (StorageUnavailableError, "unavailable"),
    (SharedStateUnavailableError, "unavailable"),
    (DatabaseBusyError, "busy"),
    (SharedStateConflictError, "busy"),
    (KeyError, "not_found"),  # update of a key that is not there
)


def failure_kind(error: BaseException) -> str:
    """The bounded kind of a storage *error*: decrypt, integrity, unavailable, busy,
    not_found or other."""
    for cls, kind in _KINDS:
        if isinstance(error, cls):
            return kind
    return "other"


class Namespaces:
    """Namespace names as label values: bounded, however many namespaces the data makes."""

    def __init__(self, limit: int = MAX_NAMESPACES) -> None:
        self._limit = limit
        self._admitted: set[str] = set()  # the user's names that are label values
        self._lock = threading.Lock()

    def label(self, namespace: str) -> str:
        if namespace in self._admitted:
            return namespace
        if namespace.startswith("__"):
            return INTERNAL
        with self._lock:
            if len(self._admitted) < self._limit:
                self._admitted.add(namespace)
                return namespace
        return OTHER


class StorageMetrics(events.StorageListener):
    """Counts and times every storage operation; register it with :func:`events.listen`.

    It is also the collector of the storage series: an operation adds to plain
    tallies (no lock, no prometheus-client call on the storage path), and a
    scrape reads them (:meth:`collect`). Only the event loop that runs the
    stores adds; a scrape, on the endpoint's thread, copies what it reads.
    """

    def __init__(self, instruments: Instruments, namespaces: Namespaces | None = None) -> None:
        self.namespaces = namespaces or Namespaces()
        self._bounds = series.STORAGE_BUCKETS
        # (namespace label, operation, outcome) -> [count, sum of seconds, per-bucket counts]
        self._tallies: dict[tuple[str, str, str], list[Any]] = {}
        # (namespace label, operation, kind) -> count
        self._failures: dict[tuple[str, str, str], int] = {}
        instruments.registry.register(self)

    def observed(self, event: events.Observation) -> None:
        namespace = self.namespaces.label(event.namespace)
        key = (namespace, event.operation, event.outcome)
        tally = self._tallies.get(key)
        if tally is None:
            tally = self._tallies[key] = [0, 0.0, [0] * (len(self._bounds) + 1)]
        tally[0] += 1
        tally[1] += event.duration
        tally[2][bisect.bisect_left(self._bounds, event.duration)] += 1
        if event.error is not None:
            failed = (namespace, event.operation, failure_kind(event.error))
            self._failures[failed] = self._failures.get(failed, 0) + 1

    def describe(self) -> list[Any]:
        return []  # no families until collected: a registry need not scrape to register us

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

        operations = series.STORAGE_OPERATIONS
        seconds = series.STORAGE_OPERATION_SECONDS
        failures = series.STORAGE_FAILURES
        counts = CounterMetricFamily(operations.family, operations.help, labels=operations.labels)
        timed = HistogramMetricFamily(seconds.family, seconds.help, labels=seconds.labels)
        failed = CounterMetricFamily(failures.family, failures.help, labels=failures.labels)
        bounds = [*(f"{bound}" for bound in self._bounds), "+Inf"]
        for key, (count, total, per_bucket) in list(self._tallies.items()):
            counts.add_metric(key, count)
            cumulative = list(itertools.accumulate(list(per_bucket)))
            timed.add_metric(key, list(zip(bounds, cumulative, strict=True)), total)
        for key, count in list(self._failures.items()):
            failed.add_metric(key, count)
        yield from (counts, timed, failed)
