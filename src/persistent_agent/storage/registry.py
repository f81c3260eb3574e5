"""The storage backends by profile name: the one place that lists them.

A backend of the agent's state (``storage.backend.StateBackend``) is one
module plus one entry in :data:`BACKENDS`: the storage profile that selects it
(``FAME_STORAGE_PROFILE``), its module, the environment variables it reads,
and whether replicas share it. Everything else finds it here by the profile
name:

* ``storage.provider_factory`` registers one runtime storage profile per entry,
  served by ``SharedStateStorageProvider`` (the node's own ``__*`` namespaces
  in local SQLCipher files, the agent's state in the backend);
* the operator tools (``ops.shared_tools``) open it from ``config/.env.agent``
  for verify, inspect, backup, restore, rotate-key and migrate-state;
* a node on a ``shared`` backend joins the agent's pool (``node.serving.shared_state``);
* the docs list it: the backends table of docs/architecture.md and its
  settings in docs/operations.md are generated from here (``make docs``), and
  the package's module lists take a registered backend's module as listed.

The module is imported only when its profile is used, so no driver loads in a
node that does not use it. It provides what :class:`BackendModule` names.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from persistent_agent import settings as declared
from persistent_agent.errors import StorageProfileError
from persistent_agent.keys.custody import KeySource
from persistent_agent.settings import Setting, Source
from persistent_agent.storage.backend import StateBackend


@dataclass(frozen=True)
class BackendEntry:
    """One backend: where its code is, and which settings it reads."""

    module: str
    # Its environment variables, as settings: the PostgreSQL ones are declared in
    # persistent_agent.settings; a new backend may declare its own here, in its entry
    # (declared.text(...), declared.path(...): this module imports settings as
    # ``declared``), so that they stay beside it; they are read through values().
    settings: tuple[Setting[Any], ...]
    about: str  # one line, for messages and docs
    # Replicas share it: several nodes run against it at once, and each joins the
    # agent's pool (one address, calls taken in turns); else one node at a time.
    shared: bool = field(kw_only=True)

    def names(self) -> tuple[str, ...]:
        return tuple(setting.name for setting in self.settings)

    def values(self, env: Source | None = None) -> dict[str, str]:
        """The backend's settings by name, as set in *env* (default: the process
        environment); an unset one is empty."""
        return {setting.name: setting.raw(env) or "" for setting in self.settings}


BACKENDS: dict[str, BackendEntry] = {
    declared.SHARED_STATE_PROFILE: BackendEntry(
        "persistent_agent.storage.shared_state",
        (declared.FAME_STORAGE_POSTGRES_DSN, declared.FAME_STORAGE_POSTGRES_PASSWORD_FILE),
        "PostgreSQL shared by replicas, rows sealed before they leave the node",
        shared=True,
    ),
}

# How long opening a backend may take, by default, before it is unavailable.
OPEN_TIMEOUT = 10.0


class BackendModule(Protocol):
    """What a backend's module provides (``shared_state`` is the example)."""

    def check_settings(self, settings: Mapping[str, str]) -> None:
        """Refuse, in one line and before connecting, settings that cannot work."""
        ...

    def describe_settings(self, settings: Mapping[str, str]) -> str:
        """Where the backend keeps the state, for messages: no password, no key."""
        ...

    async def open_backend(
        self,
        settings: Mapping[str, str],
        source: KeySource,
        *,
        replica: bool = True,
        timeout: float = OPEN_TIMEOUT,
    ) -> StateBackend:
        """Open it with the node's key; *replica* False for a tool (it holds no
        replica's lock). Fails with one line after *timeout* seconds unreachable."""
        ...


def profiles() -> list[str]:
    """Every registered backend profile, sorted."""
    return sorted(BACKENDS)


def entry(profile: str) -> BackendEntry | None:
    return BACKENDS.get(profile)


def markdown_table() -> str:
    """The registered backends as a markdown table (docs/architecture.md, ``make docs``)."""
    lines = [
        "| profile | module | what it is | replicas share it | its settings |",
        "| --- | --- | --- | --- | --- |",
    ]
    for profile in profiles():
        found = BACKENDS[profile]
        module = "src/" + found.module.replace(".", "/") + ".py"
        names = ", ".join(f"`{name}`" for name in found.names()) or "none"
        shared = "yes" if found.shared else "no"
        lines.append(f"| `{profile}` | `{module}` | {found.about} | {shared} | {names} |")
    return "\n".join(lines)


def backend_module(profile: str) -> BackendModule:
    """The module of the backend *profile* selects, imported now."""
    found = BACKENDS.get(profile)
    if found is None:
        raise StorageProfileError(
            f"{profile!r} is not a storage backend; registered: {', '.join(profiles())}"
        )
    return cast(BackendModule, importlib.import_module(found.module))
