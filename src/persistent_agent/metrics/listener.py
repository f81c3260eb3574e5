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

import threading
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
    """Counts and times every storage operation; register it with :func:`events.listen`."""

    def __init__(self, instruments: Instruments, namespaces: Namespaces | None = None) -> None:
        self._instruments = instruments
        self.namespaces = namespaces or Namespaces()
        # (namespace label, operation, outcome) -> (counter child, histogram child)
        self._children: dict[tuple[str, str, str], tuple[Any, Any]] = {}

    def observed(self, event: events.Observation) -> None:
        namespace = self.namespaces.label(event.namespace)
        key = (namespace, event.operation, event.outcome)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self._instruments.operations.labels(*key),
                self._instruments.operation_seconds.labels(*key),
            )
        children[0].inc()
        children[1].observe(event.duration)
        if event.error is not None:
            kind = failure_kind(event.error)
            self._instruments.failures.labels(namespace, event.operation, kind).inc()
