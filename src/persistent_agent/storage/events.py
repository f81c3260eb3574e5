"""The storage-events hook: one place to listen to what storage does, in two streams.

The storage layer is the one place that knows each operation's namespace,
duration and outcome, and each commit's changes. Anything that wants to know
(the node's exit on unavailable storage, metrics, continuous backup) is a
:class:`StorageListener` registered with :func:`listen`, and no other code
needs to know about it.

* **Observations** (:class:`Observation`): one per store operation (``get``,
  ``set``, ``update``, ``delete``, ``list``) with its namespace, duration,
  outcome and, for an error, its kind. Delivered synchronously, after the
  operation; a listener that raises is logged and skipped, never the
  operation's failure.
* **Change records** (:class:`ChangeBatch`): one batch per commit, in commit
  order (``sequence`` grows by one per batch), delivered *before* the call
  that committed is acknowledged. A listener's :meth:`StorageListener.committed`
  is awaited: holding it back holds the acknowledgement back (a synchronous
  backup), and what it raises is what the caller gets; the commit itself stands.
  Batches reach listeners one at a time, in ``sequence`` order.

Where the hook sits: every storage operation of a running node passes through
one of two key-value stores, ``storage.provider.SQLCipherKeyValueStore`` (the
``encrypted-sqlite`` profile, and a replica's own ``__*`` namespaces) and
``storage.backend.BackendKeyValueStore`` (any :class:`StateBackend`: the
``encrypted-postgres`` shared state, and any new backend, with no code of its
own). Both are :func:`observable` and call :func:`committed` here. The operator tools,
which call a backend directly, are not observed.

**No listener, no cost.** A store class is :func:`observable`: while nobody
observes, its methods are the ones as written (:func:`listen` swaps in the
observed ones, and back), and a store checks ``HOOK.recorders`` before it
makes a change record; ``bench/events.py`` measures it.

Change records carry stored values (JSON text) in this process only; a
listener must not log them.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import time
import weakref
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, TypeVar

from naylence.fame.util.logging import getLogger

logger = getLogger(__name__)

Operation = Literal["get", "set", "update", "delete", "list"]
Outcome = Literal["ok", "error"]


class Observation(NamedTuple):
    """One store operation as it went: what, where, how long, and how it ended.

    *error* is the exception the caller got (for a listener that acts on it,
    such as the node's exit on unavailable storage); *error_kind* its class name.
    A named tuple, immutable like a frozen dataclass at a third of its cost to
    make: one is made per operation while anyone observes (bench/metrics_cost.py).
    """

    operation: Operation
    namespace: str
    duration: float  # seconds
    outcome: Outcome
    error: BaseException | None = None

    @property
    def error_kind(self) -> str | None:
        return None if self.error is None else type(self.error).__name__


@dataclass(frozen=True)
class Change:
    """One row as a commit left it: *value* (JSON text) None when deleted.

    *version* is the row's new version where the store keeps versions (a
    :class:`~persistent_agent.storage.backend.StateBackend`), None otherwise;
    *request_id* the idempotent call recorded in the same commit, if any.
    """

    namespace: str
    key: str
    value: str | None
    version: int | None = None
    request_id: str | None = None


@dataclass(frozen=True)
class ChangeBatch:
    """What one commit changed; *sequence* is its place in this process's commit order."""

    sequence: int
    changes: tuple[Change, ...]


class StorageListener:
    """Override either method, or both; the defaults do nothing."""

    def observed(self, event: Observation) -> None:
        """An operation ended (called in the operation's task, after it)."""

    async def committed(self, batch: ChangeBatch) -> None:
        """A commit happened; the call that made it waits until this returns."""


class _Hook:
    """Who listens; the tuples are empty (and falsy) when nobody does."""

    def __init__(self) -> None:
        self.observers: tuple[StorageListener, ...] = ()
        self.recorders: tuple[StorageListener, ...] = ()
        self._sequence = itertools.count(1)
        # Batches are delivered one at a time, in sequence order, per event loop.
        self._gates: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary()
        )

    def next_sequence(self) -> int:
        return next(self._sequence)

    def gate(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        gate = self._gates.get(loop)
        if gate is None:
            gate = self._gates[loop] = asyncio.Lock()
        return gate


HOOK = _Hook()


# ---------------------------------------------------------------- listening


def _overrides(listener: StorageListener, name: str) -> bool:
    return getattr(type(listener), name) is not getattr(StorageListener, name)


def listen(listener: StorageListener) -> Callable[[], None]:
    """Register *listener* for the streams it overrides; returns what unregisters it."""
    if _overrides(listener, "observed"):
        HOOK.observers = (*HOOK.observers, listener)
    if _overrides(listener, "committed"):
        HOOK.recorders = (*HOOK.recorders, listener)
    _install()

    def stop() -> None:
        HOOK.observers = tuple(each for each in HOOK.observers if each is not listener)
        HOOK.recorders = tuple(each for each in HOOK.recorders if each is not listener)
        _install()

    return stop


# ---------------------------------------------------------------- observations

F = TypeVar("F", bound=Callable[..., Coroutine[Any, Any, Any]])
C = TypeVar("C", bound=type)
_OPERATION = "__storage_operation__"
# (class, method name, the method as written, the method observed)
_observable: list[tuple[type, str, Callable[..., Any], Callable[..., Any]]] = []


def observed(operation: Operation) -> Callable[[F], F]:
    """Mark a store's async method as one *operation*: see :func:`observable`."""

    def mark(method: F) -> F:
        setattr(method, _OPERATION, operation)
        return method

    return mark


def observable(cls: C) -> C:
    """Make the marked methods of store class *cls* one :class:`Observation` per call.

    The class holds the methods as written while nobody observes, and their
    observed versions while someone does (:func:`listen` swaps them): with no
    observer a call is exactly the method's own, at no cost at all.
    Instances need a ``namespace`` attribute.
    """
    for name, member in list(vars(cls).items()):
        operation = getattr(member, _OPERATION, None)
        if operation is not None:
            _observable.append((cls, name, member, _watching(member, operation)))
    _install()
    return cls


def _install() -> None:
    watching = bool(HOOK.observers)
    for cls, name, bare, watched in _observable:
        setattr(cls, name, watched if watching else bare)


def _watching(method: Callable[..., Any], operation: Operation) -> Callable[..., Any]:
    @functools.wraps(method)
    async def call(store: Any, /, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            result = await method(store, *args, **kwargs)
        except Exception as error:
            took = time.perf_counter() - started
            _tell(Observation(operation, store.namespace, took, "error", error))
            raise
        _tell(Observation(operation, store.namespace, time.perf_counter() - started, "ok"))
        return result

    return call


def _tell(event: Observation) -> None:
    for listener in HOOK.observers:
        try:
            listener.observed(event)
        except Exception as exc:  # a listener's bug is not the operation's failure
            logger.warning(
                "storage_listener_failed",
                listener=type(listener).__name__,
                error=type(exc).__name__,
            )


# ---------------------------------------------------------------- change records


async def committed(*changes: Change) -> None:
    """Deliver one commit's *changes* to every change listener, in commit order.

    Call it right after the commit, with no ``await`` in between (that is what
    makes the order the commit order), and only when ``HOOK.recorders``.
    """
    # The sequence is taken, and the gate queued for, before this coroutine
    # first yields: batches wait in the order their commits happened.
    batch = ChangeBatch(HOOK.next_sequence(), changes)
    async with HOOK.gate():
        for listener in HOOK.recorders:
            await listener.committed(batch)
