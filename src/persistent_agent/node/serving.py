"""What the sentinel and agent processes share: settings, preflight, serving.

Both entry points stay thin: they name a root config and what to serve, and
this module loads the env file, checks storage settings before the runtime
starts, serves until SIGINT/SIGTERM, and turns any of our errors, however
deeply the runtime wrapped it, into one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from dotenv import dotenv_values, load_dotenv

from persistent_agent.errors import (
    ConfigError,
    KeyFileExposedError,
    StorageProfileError,
    StorageUnavailableError,
    find_error,
    report,
)
from persistent_agent.keys import master_key
from persistent_agent.keys.custody import PATH_SETTINGS
from persistent_agent.node import logs

ENV_FILE_VAR = "PERSISTENT_AGENT_ENV_FILE"
READY_FILE_VAR = "PERSISTENT_AGENT_READY_FILE"
PROFILE_VAR = "FAME_STORAGE_PROFILE"
LOG_LEVEL_VAR = "FAME_LOG_LEVEL"


def load_env() -> None:
    """Load the env file named by PERSISTENT_AGENT_ENV_FILE, if any.

    Variables already set in the environment win, so a Makefile or a test can
    point a generated config at another port or directory. A relative path
    named there (the key file, a key service's token or CA file) is taken from
    the env file's directory, as the admin tools take it.
    """
    env_file = os.environ.get(ENV_FILE_VAR)
    if env_file:
        path = Path(env_file)
        if not path.is_file():
            raise ConfigError(f"{ENV_FILE_VAR}={env_file}: no such file; run `make init`")
        values = dotenv_values(path, interpolate=False)
        if values.get(master_key.ENV_VAR):
            KeyFileExposedError.check(path)
        for name in PATH_SETTINGS:
            value = values.get(name)
            if value and name not in os.environ:
                os.environ[name] = str(path.parent / value)
        load_dotenv(path, override=False)


def check_storage() -> None:
    """Fail before the runtime starts if the storage settings cannot work."""
    from naylence.fame.profile import get_profile
    from naylence.fame.profile.profile_discovery import discover_profile

    from persistent_agent.storage import provider_factory as factory

    profile = os.environ.get(PROFILE_VAR, "memory")
    if get_profile(factory.PROFILE_BASE_TYPE, profile) is None:
        discover_profile(factory.PROFILE_BASE_TYPE, profile)
        if get_profile(factory.PROFILE_BASE_TYPE, profile) is None:
            raise StorageProfileError(
                f"{PROFILE_VAR}={profile!r} is not a storage profile; "
                "use encrypted-sqlite, encrypted-postgres, sqlite or memory"
            )
    if profile in (factory.PROFILE_NAME, factory.SHARED_PROFILE_NAME):
        from persistent_agent.keys.custody import key_source
        from persistent_agent.keys.master_key import NEXT_ENV_VAR
        from persistent_agent.storage.database import ensure_directory

        if os.environ.get(NEXT_ENV_VAR):
            raise ConfigError(
                f"a key rotation was interrupted ({NEXT_ENV_VAR} is set); "
                "run `make rotate-key` again to finish it"
            )
        key_source(os.environ)
        ensure_directory(Path(os.environ.get("FAME_STORAGE_DB_DIRECTORY", "./data/sqlite")))
    if profile == factory.SHARED_PROFILE_NAME:
        from persistent_agent.keys.custody import POSTGRES_DSN_VAR, POSTGRES_PASSWORD_FILE_VAR
        from persistent_agent.keys.secret_files import read_private

        if not os.environ.get(POSTGRES_DSN_VAR):
            raise ConfigError(
                f"{POSTGRES_DSN_VAR} is not set; the {profile} profile keeps the agent's "
                "state in PostgreSQL (see docs/replicas.md)"
            )
        if password_file := os.environ.get(POSTGRES_PASSWORD_FILE_VAR):
            read_private(Path(password_file), POSTGRES_PASSWORD_FILE_VAR)


def shared_state() -> bool:
    """Whether this node keeps the agent's state in PostgreSQL (``encrypted-postgres``)."""
    from persistent_agent.storage.provider_factory import SHARED_PROFILE_NAME

    return os.environ.get(PROFILE_VAR) == SHARED_PROFILE_NAME


def log_level() -> str:
    return os.environ.get(LOG_LEVEL_VAR, "warning")


HEARTBEAT_SECONDS = 2.0


async def serve(start: Callable[[Any], Awaitable[None]], root_config: dict[str, Any]) -> None:
    """Run a node with *root_config*, call *start(fabric)*, then serve until a signal.

    Once *start* returns, the node is attached and serving. The ready file (if
    PERSISTENT_AGENT_READY_FILE is set) is what health checks look at: it is
    rewritten every HEARTBEAT_SECONDS by the event loop that serves, so a
    fresh one means "serving now", not "started once". Unavailable storage
    (a full disk, say) ends the node with its error (exit code 75): the
    runtime would otherwise go on with its listener dead, answering nothing.
    """
    from naylence.fame.core import FameFabric
    from naylence.fame.util.logging import enable_logging

    from persistent_agent.storage import provider

    enable_logging(log_level=log_level())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    failures: list[StorageUnavailableError] = []

    def storage_failed(error: StorageUnavailableError) -> None:
        failures.append(error)
        loop.call_soon_threadsafe(stop.set)

    provider.on_storage_failure(storage_failed)
    ready_file = Path(os.environ[READY_FILE_VAR]) if os.environ.get(READY_FILE_VAR) else None
    async with FameFabric.get_or_create(root_config=root_config) as fabric:
        logs.drop_noop_tracing(fabric.node)
        await start(fabric)
        try:
            while not failures:
                if ready_file:
                    ready_file.write_text(str(os.getpid()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), HEARTBEAT_SECONDS)
                if stop.is_set():
                    break
        finally:
            if ready_file:
                ready_file.unlink(missing_ok=True)
    if failures:
        raise failures[0]


async def _as_coroutine(main: Callable[[], Awaitable[None]]) -> None:
    await main()


def run(
    name: str,
    main: Callable[[], Awaitable[None]],
    preflight: Callable[[], None] | None = None,
) -> int:
    """Check settings (and *preflight*), run *main*; our errors become one line, exit 2."""
    try:
        logs.install()  # before the preflight below can use a runtime logger
        load_env()
        check_storage()
        if preflight is not None:
            preflight()
        asyncio.run(_as_coroutine(main))
    except KeyboardInterrupt:
        return 0
    except BaseException as exc:  # anything not ours is re-raised
        error = find_error(exc)
        if error is None:
            raise
        return report(name, error)
    return 0
