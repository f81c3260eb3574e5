"""Agent state that is all-or-nothing and knows its schema version.

Two things the SDK's ``BaseAgent``/``BaseAgentState`` leave to us:

* **Transactions.** ``async with self.state as s`` in the SDK hands out the
  cached state object itself; if the block raises, the save is skipped but
  the half-made changes stay in memory, and the next read returns data that
  was never persisted. :class:`TransactionalAgent` keeps the same API but
  gives the block a deep copy and swaps it in only after it was saved.
* **Versions.** :class:`VersionedAgentState` stamps ``schema_version`` on what
  it saves and migrates older documents on load, one step at a time; a
  document from a newer, unknown version is refused and never overwritten.

* **Shared state.** With the ``encrypted-postgres`` profile the state lives
  in PostgreSQL and other replicas change it too, so nothing is cached: each
  transaction reads the current row and commits with compare-and-set on the
  version it read. :meth:`TransactionalAgent.update_state` retries a change
  that lost the race (reading again) up to :data:`MAX_ATTEMPTS` times.
  ``async with self.state`` is one attempt.
* **Request ids.** :meth:`TransactionalAgent.update_state` can record its
  result, with a digest of the call's arguments, under a request id in the
  same transaction as the change (in PostgreSQL, or in the SQLCipher file of
  the state), so that a repeated call returns the first result instead of
  applying twice, and an id reused with other arguments is refused.

Adding a migration: raise ``SCHEMA_VERSION`` by one and add a function from
the previous version to ``MIGRATIONS`` (keyed by the version it upgrades
*from*) that takes and returns the raw dict. Old documents are upgraded when
read and written back in the new shape on the next save.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
from collections.abc import Callable
from types import TracebackType
from typing import Any, ClassVar, Generic, TypeVar, cast

from naylence.agent import BaseAgent, BaseAgentState
from pydantic import model_validator

from persistent_agent.errors import (
    RequestIdReusedError,
    SharedStateConflictError,
    StateVersionError,
)
from persistent_agent.storage.backend import Request, RequestLog, VersionedStore
from persistent_agent.storage.provider import SQLCipherKeyValueStore

# How often a change to the shared state is tried against other replicas'
# writes before the call fails (each retry reads the row again).
MAX_ATTEMPTS = 20

Migration = Callable[[dict[str, Any]], dict[str, Any]]


def arguments_digest(arguments: object) -> str:
    """SHA-256 of *arguments* as canonical JSON: what a request id is recorded with."""
    text = json.dumps(arguments, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class VersionedAgentState(BaseAgentState):
    """Base for state models with a schema version and forward migrations."""

    SCHEMA_VERSION: ClassVar[int] = 1
    MIGRATIONS: ClassVar[dict[int, Migration]] = {}

    schema_version: int = 0  # set to SCHEMA_VERSION by the validator below

    @model_validator(mode="before")
    @classmethod
    def _migrate(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        # Documents written before versioning existed are version 1.
        version = int(data.get("schema_version", 1))
        if version > cls.SCHEMA_VERSION:
            # Not a ValueError, so pydantic lets it through unwrapped.
            raise StateVersionError(
                f"stored agent state has schema_version {version}, newer than this agent's "
                f"{cls.SCHEMA_VERSION}; upgrade persistent-agent (the state was left untouched)"
            )
        while version < cls.SCHEMA_VERSION:
            data = cls.MIGRATIONS[version](data)
            version += 1
        data["schema_version"] = cls.SCHEMA_VERSION
        return data


StateT = TypeVar("StateT", bound=BaseAgentState)


def _copy(state: StateT) -> StateT:
    """A detached, validated copy: fields only, none of the SDK's private links."""
    # warnings=False: a wrong-typed assignment is reported by the validation
    # that follows, as an error, rather than as a serializer warning first.
    return cast(StateT, type(state).model_validate(state.model_dump(warnings=False)))


class _Transaction(Generic[StateT]):
    """``async with agent.state as s``: a private draft, saved then published."""

    def __init__(self, agent: TransactionalAgent[StateT]) -> None:
        self._agent = agent
        self._draft: StateT | None = None
        self._version = 0

    async def __aenter__(self) -> StateT:
        await self._agent._state_lock.acquire()
        try:
            state, self._version = await self._agent._read()
            self._draft = _copy(state)
        except BaseException:
            self._agent._state_lock.release()
            raise
        return self._draft

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            # Re-validate the whole draft (assignments are not validated),
            # then persist it; a local state is published to the SDK's
            # in-memory cache only after the store accepted it.
            if (
                exc_type is None
                and self._draft is not None
                and not await self._agent._commit(_copy(self._draft), self._version)
            ):
                raise SharedStateConflictError(
                    f"{SharedStateConflictError.PREFIX}: another replica changed the "
                    "agent's state during this call; nothing was written, try again"
                )
        finally:
            self._draft = None
            self._agent._state_lock.release()


R = TypeVar("R")


class TransactionalAgent(BaseAgent[StateT]):
    """A ``BaseAgent`` whose ``async with self.state`` is all-or-nothing."""

    # Whether the state store is the shared one, decided once per store
    # (a runtime protocol check would cost on every call).
    _shared_for: object = None
    _shared_store: VersionedStore | None = None

    @property
    def state(self) -> _Transaction[StateT]:
        if self._state_model is None:
            raise RuntimeError("No state model configured")
        return _Transaction(self)

    async def _shared(self) -> VersionedStore | None:
        """The store as a versioned one (``storage.backend``: encrypted-postgres, or any
        backend's store), or None for the SDK's node-local path (encrypted-sqlite)."""
        if self._state_model is None:
            raise RuntimeError("No state model configured")
        await self._ensure_state_store(self._state_model)
        store = self._state_store
        if self._shared_for is not store:
            self._shared_for = store
            self._shared_store = store if isinstance(store, VersionedStore) else None
        return self._shared_store

    async def _read(self) -> tuple[StateT, int]:
        """The current state and its version (0 for a local state, or none stored yet)."""
        shared = await self._shared()
        if shared is None:
            return cast(StateT, await self._load_state()), 0
        text, version = await shared.read_versioned(self._state_key)
        model = cast(type[StateT], self._state_model)
        return (model() if text is None else model.model_validate_json(text)), version

    async def _commit(self, state: StateT, version: int, request: Request | None = None) -> bool:
        """Save *state*; for the shared state only if it is still at *version*.

        *request* is recorded in the same transaction where the store keeps
        request ids; False when its id was recorded first.
        """
        shared = await self._shared()
        if shared is not None:
            return await shared.write_versioned(
                self._state_key, state.model_dump_json(by_alias=True), version, request
            )
        store = self._state_store
        if request is not None and isinstance(store, SQLCipherKeyValueStore):
            if not await store.set_recording(self._state_key, state, request):
                return False
            self._state_cache = state
            return True
        await self._save_state(state)
        return True

    async def _request_log(self) -> RequestLog | None:
        """The state's store if it records request ids (both of ours do)."""
        shared = await self._shared()
        if shared is not None:
            return shared
        store = self._state_store
        return store if isinstance(store, SQLCipherKeyValueStore) else None

    async def update_state(
        self,
        change: Callable[[StateT], R],
        *,
        request_id: str | None = None,
        arguments: object = None,
    ) -> tuple[R, int]:
        """Apply *change* to the state and save it; returns its result and how many retries.

        For the shared state a change that lost the race to another replica is
        applied again to the state read afresh, up to MAX_ATTEMPTS times. With
        *request_id* the result (JSON) and a digest of *arguments* are recorded
        with the change; a repeated id returns the recorded result without
        applying *change*, and raises :class:`RequestIdReusedError` if its
        arguments differ (a record from before digests were kept is answered).
        """
        digest = arguments_digest(arguments)
        async with self._state_lock:
            log = None if request_id is None else await self._request_log()
            for attempt in range(MAX_ATTEMPTS):
                if log is not None and request_id is not None:
                    recorded = await log.request_record(request_id)
                    if recorded is not None:
                        if recorded.arguments not in (None, digest):
                            raise RequestIdReusedError(request_id)
                        return cast(R, json.loads(recorded.result)), attempt
                state, version = await self._read()
                draft = _copy(state)
                result = change(draft)
                request = (
                    None if request_id is None else Request(request_id, json.dumps(result), digest)
                )
                if await self._commit(_copy(draft), version, request):
                    return result, attempt
                # Another replica wrote first: back off a little, then read again.
                await asyncio.sleep(random.uniform(0, 0.002 * (attempt + 1)))  # noqa: S311
        raise SharedStateConflictError(
            f"{SharedStateConflictError.PREFIX}: the agent's state kept changing under "
            f"{MAX_ATTEMPTS} tries of this call; nothing was written, try again"
        )

    async def get_state(self) -> StateT:
        """A copy of the current state: mutating it changes nothing stored."""
        async with self._state_lock:
            state, _ = await self._read()
            return _copy(state)
