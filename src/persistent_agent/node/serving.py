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
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from dotenv import dotenv_values, load_dotenv

from persistent_agent import settings
from persistent_agent.access import fabric
from persistent_agent.errors import (
    AccessRefusedError,
    ConfigError,
    KeyFileExposedError,
    StorageProfileError,
    StorageUnavailableError,
    UpstreamLostError,
    find_cause,
    find_error,
    report,
)
from persistent_agent.keys.custody import PATH_SETTINGS
from persistent_agent.metrics import endpoint as metrics
from persistent_agent.node import logs

ENV_FILE_VAR = settings.PERSISTENT_AGENT_ENV_FILE.name
READY_FILE_VAR = settings.PERSISTENT_AGENT_READY_FILE.name
PROFILE_VAR = settings.FAME_STORAGE_PROFILE.name


def load_env() -> None:
    """Load the env file named by PERSISTENT_AGENT_ENV_FILE, if any.

    Variables already set in the environment win, so a Makefile or a test can
    point a generated config at another port or directory. A relative path
    named there (the key file, a key service's token or CA file) is taken from
    the env file's directory, as the admin tools take it.
    """
    path = settings.PERSISTENT_AGENT_ENV_FILE.value()
    if path is None:
        return
    if not path.is_file():
        raise ConfigError(f"{ENV_FILE_VAR}={path}: no such file; run `make init`")
    values = dotenv_values(path, interpolate=False)
    if settings.FAME_STORAGE_MASTER_KEY.is_set(values):
        KeyFileExposedError.check(path)
    for setting in map(settings.lookup, (*PATH_SETTINGS, *fabric.PATH_SETTINGS)):
        # Set in the environment, even blank, it wins: a test blanks one on purpose.
        value = setting.raw(values)
        if value and not setting.present():
            os.environ[setting.name] = str(path.parent / value)
    load_dotenv(path, override=False)


def check_storage() -> None:
    """Fail before the runtime starts if the storage settings cannot work."""
    from naylence.fame.profile import get_profile
    from naylence.fame.profile.profile_discovery import discover_profile

    from persistent_agent.storage import provider_factory as factory
    from persistent_agent.storage import registry

    # Not FAME_STORAGE_PROFILE.value(): its choices are the built-in profiles, and
    # a backend registered in storage/registry.py adds one; the runtime decides.
    profile = settings.FAME_STORAGE_PROFILE.raw() or settings.FAME_STORAGE_PROFILE.default
    if get_profile(factory.PROFILE_BASE_TYPE, profile) is None:
        discover_profile(factory.PROFILE_BASE_TYPE, profile)
        if get_profile(factory.PROFILE_BASE_TYPE, profile) is None:
            known = (factory.PROFILE_NAME, *registry.profiles(), "sqlite", "memory")
            raise StorageProfileError(
                f"{PROFILE_VAR}={profile!r} is not a storage profile; "
                f"use {', '.join(known[:-1])} or {known[-1]}"
            )
    backend = registry.entry(profile)
    if profile == factory.PROFILE_NAME or backend is not None:
        from persistent_agent.keys.custody import key_source
        from persistent_agent.storage.database import ensure_directory
        from persistent_agent.storage.layout import refuse_unfinished_restore

        if settings.FAME_STORAGE_MASTER_KEY_NEXT.is_set():
            raise ConfigError(
                f"a key rotation was interrupted ({settings.FAME_STORAGE_MASTER_KEY_NEXT.name} "
                "is set); run `make rotate-key` again to finish it"
            )
        key_source(os.environ)
        directory = settings.FAME_STORAGE_DB_DIRECTORY.value()
        refuse_unfinished_restore(directory)
        ensure_directory(directory)
    if backend is not None:
        registry.backend_module(profile).check_settings(backend.values())


def shared_state() -> bool:
    """Whether this node keeps the agent's state in a backend its replicas share
    (``storage.registry``: an entry with ``shared``, such as ``encrypted-postgres``),
    so that it joins the agent's pool."""
    from persistent_agent.storage import registry

    found = registry.entry(settings.FAME_STORAGE_PROFILE.raw() or "")
    return found is not None and found.shared


def log_level() -> str:
    return settings.FAME_LOG_LEVEL.value() or "warning"


HEARTBEAT_SECONDS = 2.0
DETACHED_EXIT_VAR = settings.PERSISTENT_AGENT_DETACHED_EXIT_SECONDS.name
# "exec": no supervisor is watching (the local launcher), so a node that must
# restart replaces its own process image (same pid, same log) instead of exiting.
RESTART_VAR = settings.PERSISTENT_AGENT_RESTART.name
_CHECK_SECONDS = 0.1  # how often the link is looked at
# Detached this long, the node stops waiting for the runtime's own reconnect
# (whose back-off only grows, see docs/operations.md) and opens a fresh session.
_FRESH_SESSION_AFTER = 0.5
_PROBE_PAUSE = 0.25  # between readiness probes of a sentinel that is not back yet


def detached_exit_seconds() -> float:
    return settings.PERSISTENT_AGENT_DETACHED_EXIT_SECONDS.value()


class _Health:
    """The ready file: present and fresh exactly while the node is attached and serving.

    It is rewritten every HEARTBEAT_SECONDS by the event loop that serves, so a
    fresh one means "serving now", not "started once"; it goes as soon as the
    node is detached, and comes back when it is attached again.
    """

    def __init__(self) -> None:
        self.path = settings.PERSISTENT_AGENT_READY_FILE.value()
        self._written = -HEARTBEAT_SECONDS

    def serving(self) -> None:
        now = time.monotonic()
        if self.path and now - self._written >= HEARTBEAT_SECONDS:
            self.path.write_text(str(os.getpid()))
            self._written = now

    def not_serving(self) -> None:
        if self.path:
            self.path.unlink(missing_ok=True)
        self._written = -HEARTBEAT_SECONDS


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _attach_failure(exc: BaseException) -> bool:
    """Whether *exc* (raised while creating a fabric) means "could not attach", not a bug.

    A refused connection, a closed one, a handshake answered with an HTTP
    status (a sentinel still registering its routes answers 403), a timeout.
    """
    from naylence.fame.errors import FameConnectError, FameTransportClose
    from websockets.exceptions import InvalidHandshake

    transient = (FameConnectError, FameTransportClose, InvalidHandshake, OSError, TimeoutError)
    return find_cause(exc, transient) is not None


async def serve(
    start: Callable[[Any], Awaitable[None]], root_config: dict[str, Any], *, upstream: bool = False
) -> None:
    """Run a node with *root_config*, call *start(fabric)*, then serve until a signal.

    Once *start* returns, the node is attached and serving; the ready file
    (PERSISTENT_AGENT_READY_FILE) says so while it lasts (:class:`_Health`).
    Unavailable storage (a full disk, say) ends the node with its error (exit
    code 75): the runtime would otherwise go on with its listener dead,
    answering nothing.

    A node with an *upstream* (the agent) watches its link to the sentinel.
    Detached, it opens a fresh session as soon as the sentinel answers ready
    (:func:`link.sentinel_readiness`), within a second or two of a restart,
    every time. It exits (:class:`UpstreamLostError`, code 69) only when it
    stayed detached from a sentinel that was ready to take it for
    PERSISTENT_AGENT_DETACHED_EXIT_SECONDS (10): while the sentinel is down it
    waits, not serving, rather than using up its supervisor's restarts.
    """
    from naylence.fame.core import FameFabric
    from naylence.fame.util.logging import enable_logging

    from persistent_agent.node import link
    from persistent_agent.storage import events

    enable_logging(log_level=log_level())
    limit = detached_exit_seconds() if upstream else 0.0
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    failures: list[StorageUnavailableError] = []

    class StorageFailed(events.StorageListener):
        """The node's exit on unavailable storage: one listener on the storage-events hook."""

        def observed(self, event: events.Observation) -> None:
            if isinstance(event.error, StorageUnavailableError):
                failures.append(event.error)
                loop.call_soon_threadsafe(stop.set)

    unlisten = events.listen(StorageFailed())
    health = _Health()

    async def paused(seconds: float) -> None:
        """Sleep *seconds*, or less if asked to stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)

    outage = _Outage(limit)

    async def session() -> float | None:
        """One fabric: start it, serve while attached; when the link went, or None."""
        async with FameFabric.create(root_config=root_config) as fabric:
            logs.drop_noop_tracing(fabric.node)
            await start(fabric)
            outage.over()
            detached_at: float | None = None
            try:
                while not (stop.is_set() or failures):
                    if not upstream or link.attached(fabric.node):
                        detached_at = None
                        health.serving()
                    else:
                        health.not_serving()
                        detached_at = detached_at or time.monotonic()
                        if time.monotonic() - detached_at >= _FRESH_SESSION_AFTER:
                            return detached_at
                    await paused(_CHECK_SECONDS if upstream else HEARTBEAT_SECONDS)
            finally:
                health.not_serving()
        return None

    try:
        while not (stop.is_set() or failures):
            try:
                if (went := await session()) is None:
                    break
            except BaseException as exc:
                if (why_not := fabric.refusal(exc)) is not None:
                    # Retrying with the same credential or CA cannot help.
                    raise AccessRefusedError(why_not) from None
                if not upstream or find_error(exc) is not None or not _attach_failure(exc):
                    raise
                outage.failed(exc)
                went = time.monotonic()
                await paused(_PROBE_PAUSE)
            outage.begin(went)
            # Attach again once the sentinel can take it; the time it has been
            # ready without our attach succeeding is what counts against the limit.
            while not (stop.is_set() or failures):
                if await link.sentinel_readiness() is link.Readiness.READY:
                    outage.sentinel_ready()
                    break
                outage.sentinel_not_ready()
                await paused(_PROBE_PAUSE)
    finally:
        unlisten()
    if failures:
        raise failures[0]


class _Outage:
    """A node's time detached from its sentinel, told in two log lines."""

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.since: float | None = None
        self.ready_since: float | None = None
        self.last_error = "no attach yet"

    def begin(self, went: float) -> None:
        if self.since is None:
            self.since = went
            _say("persistent-agent: the link to the sentinel is down; attaching again")

    def failed(self, exc: BaseException) -> None:
        self.last_error = type(exc).__name__

    def sentinel_not_ready(self) -> None:
        self.ready_since = None

    def sentinel_ready(self) -> None:
        now = time.monotonic()
        self.ready_since = self.ready_since or now
        if now - self.ready_since > self.limit:
            url = settings.FAME_DIRECT_ADMISSION_URL.value() or "the sentinel"
            raise UpstreamLostError(
                f"not attached to {url} for {self.limit:g}s although it is ready "
                f"(last failure: {self.last_error}); set {DETACHED_EXIT_VAR} to wait longer"
            )

    def over(self) -> None:
        if self.since is not None:
            _say(
                "persistent-agent: attached to the sentinel again, "
                f"{time.monotonic() - self.since:.1f}s after the link went"
            )
        self.since = self.ready_since = None


async def _as_coroutine(main: Callable[[], Awaitable[None]]) -> None:
    await main()


def run(
    name: str,
    main: Callable[[], Awaitable[None]],
    preflight: Callable[[], None] | None = None,
) -> int:
    """Check settings (and *preflight*), run *main*; our errors become one line, exit 2.

    A node that lost its sentinel for good (:class:`UpstreamLostError`) exits
    69 for its supervisor to restart it; with PERSISTENT_AGENT_RESTART=exec
    (the local launcher, which stays behind no process) it restarts itself in
    place: the same pid, pid file and log, a fresh process image.
    """
    restart = "exit"
    try:
        logs.install()  # before the preflight below can use a runtime logger
        load_env()
        restart = settings.PERSISTENT_AGENT_RESTART.value()
        check_storage()
        if preflight is not None:
            preflight()
        metrics.start()  # /metrics on loopback, if PERSISTENT_AGENT_METRICS_PORT is set
        asyncio.run(_as_coroutine(main))
    except KeyboardInterrupt:
        return 0
    except BaseException as exc:  # anything not ours is re-raised
        error = find_error(exc)
        if error is None:
            raise
        code = report(name, error)
        if isinstance(error, UpstreamLostError) and restart == "exec":
            _say(f"{name}: restarting in place")
            os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])  # noqa: S606
        return code
    return 0
