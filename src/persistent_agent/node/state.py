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

Adding a migration: raise ``SCHEMA_VERSION`` by one and add a function from
the previous version to ``MIGRATIONS`` (keyed by the version it upgrades
*from*) that takes and returns the raw dict. Old documents are upgraded when
read and written back in the new shape on the next save.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Any, ClassVar, Generic, TypeVar, cast

from naylence.agent import BaseAgent, BaseAgentState
from pydantic import model_validator

from persistent_agent.errors import StateVersionError

Migration = Callable[[dict[str, Any]], dict[str, Any]]


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

    async def __aenter__(self) -> StateT:
        await self._agent._state_lock.acquire()
        try:
            self._draft = _copy(cast(StateT, await self._agent._load_state()))
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
            if exc_type is None and self._draft is not None:
                # Re-validate the whole draft (assignments are not validated),
                # then persist it; the SDK's _save_state publishes it to the
                # in-memory cache only after the store accepted it.
                await self._agent._save_state(_copy(self._draft))
        finally:
            self._draft = None
            self._agent._state_lock.release()


class TransactionalAgent(BaseAgent[StateT]):
    """A ``BaseAgent`` whose ``async with self.state`` is all-or-nothing."""

    @property
    def state(self) -> _Transaction[StateT]:
        if self._state_model is None:
            raise RuntimeError("No state model configured")
        return _Transaction(self)

    async def get_state(self) -> StateT:
        """A copy of the current state: mutating it changes nothing stored."""
        async with self._state_lock:
            return _copy(cast(StateT, await self._load_state()))
