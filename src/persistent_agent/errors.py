"""Every error a user of this demo can see, in one place.

Each exception carries the single line a user reads; entry points print
``str(error)`` and exit non-zero instead of dumping a traceback. None of them
ever includes the master key.
"""

from __future__ import annotations

import os
import re
import sys
import traceback
from pathlib import Path
from typing import TypeVar

E = TypeVar("E", bound=BaseException)


class PersistentAgentError(Exception):
    """Base class: a problem a user can fix, described in one line."""

    exit_code = 2


class MasterKeyError(PersistentAgentError):
    """The master key (FAME_STORAGE_MASTER_KEY or its _FILE) is missing or not a 256-bit key."""


class KeyringError(PersistentAgentError):
    """A node's keyring is missing, damaged, or wrapped by another master key."""


class KeyServiceError(PersistentAgentError):
    """The key service (Vault/OpenBao transit) is unreachable or refuses our token."""


class WrongKeyError(PersistentAgentError):
    """A database does not decrypt with the configured master key."""

    def __init__(self, path: Path) -> None:
        self.path = path
        super().__init__(
            f"cannot decrypt {path}: the master key (FAME_STORAGE_MASTER_KEY_FILE or "
            "FAME_STORAGE_MASTER_KEY) or the keyring beside it does not match the key this "
            "database was written with, or the file is damaged; no file was changed"
        )


class DatabaseDamagedError(PersistentAgentError):
    """A database decrypts but fails its integrity checks."""

    def __init__(self, path: Path, detail: str) -> None:
        self.path = path
        super().__init__(f"{path} is damaged ({detail}); no file was changed")


class StorageDirectoryError(PersistentAgentError):
    """FAME_STORAGE_DB_DIRECTORY cannot be created or written."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        super().__init__(f"FAME_STORAGE_DB_DIRECTORY {path} is not usable: {reason}")


class StorageProfileError(PersistentAgentError):
    """FAME_STORAGE_PROFILE names no known profile."""


class StateVersionError(PersistentAgentError):
    """Stored agent state was written by a newer, unknown schema version."""


class ConfigError(PersistentAgentError):
    """A config file or setting is missing, inconsistent or unsafe to act on."""


class KeyFileExposedError(ConfigError):
    """A file holding the master key is readable by group or others."""

    def __init__(self, path: Path, mode: int) -> None:
        self.path = path
        super().__init__(
            f"{path} holds the master key but is readable by group or others "
            f"(mode {mode:o}); refusing to use it. `make init` makes it owner-only (0600)"
        )

    @classmethod
    def check(cls, path: Path) -> None:
        """Raise if *path* can be read by anyone but its owner."""
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise cls(path, mode)


class ServicesRunningError(PersistentAgentError):
    """A data directory is in use: a node (or restore, rotate-key) holds its lock."""


class BackupError(PersistentAgentError):
    """A backup is incomplete, does not verify, or cannot be restored here."""


class RestoreInterruptedError(BackupError):
    """A restore stopped half-way: its node directories are unusable until it is run again."""


class ServiceUnavailableError(PersistentAgentError):
    """The client reached the sentinel, but not the agent behind it, in time."""


class NothingRunningError(PersistentAgentError):
    """The client found no sentinel at all: connection refused or unknown host."""


class LocalNodeError(PersistentAgentError):
    """A local node process (make local-start, make demo) did not start or stop as asked."""


class ClientCallError(PersistentAgentError):
    """The agent (or the sentinel) answered a call with an error; retrying would not help."""


class SentinelRefusedError(PersistentAgentError):
    """A sentinel that is up and ready refused the client's or node's attach (HTTP 403, say)."""


class AccessRefusedError(PersistentAgentError):
    """The fabric's door said no: the issuer refused the credential, the sentinel
    refused the token or the node, or a server's certificate is not the project CA's."""


class TransportError(PersistentAgentError):
    """The connection to the sentinel failed in a way retrying will not mend."""


class AgentOverloadedError(PersistentAgentError):
    """A call waited in the agent's line longer than it may; refused undone, to be retried."""

    PREFIX = "agent overloaded"


class UpstreamLostError(PersistentAgentError):
    """A node stayed detached from a ready sentinel for longer than it may.

    Exit code 69 (EX_UNAVAILABLE): a supervisor restarts the node (compose's
    ``restart: on-failure``; locally, the node restarts itself in place).
    """

    exit_code = 69


class StorageUnavailableError(PersistentAgentError):
    """Storage failed while a node ran (full disk, read-only, I/O): it may come back.

    A node exits with 75 (EX_TEMPFAIL) on these, to be restarted once the
    storage is back, instead of staying up with the runtime's listener dead.
    """

    exit_code = 75


class StorageFullError(StorageUnavailableError):
    """A database file cannot be written because its file system is full."""

    def __init__(self, path: Path) -> None:
        self.path = path
        super().__init__(
            f"cannot write {path}: its file system is full; free some space there "
            "(df -h shows how much is left) and try again"
        )


class StorageReadOnlyError(StorageUnavailableError):
    """A database file, or the file system it is on, cannot be written to."""

    def __init__(self, path: Path) -> None:
        self.path = path
        super().__init__(
            f"cannot write {path}: it (or its file system) is read-only; make it writable "
            "(remount the file system read-write, or fix its permissions) and try again"
        )


class DatabaseBusyError(PersistentAgentError):
    """Another process kept a database locked for longer than we wait."""

    def __init__(self, path: Path) -> None:
        self.path = path
        super().__init__(
            f"{path} stayed locked by another process for longer than we wait; find what "
            "else has it open (a second node, a restore or rotate-key) and try again once "
            "it is done"
        )


class StorageIOError(StorageUnavailableError):
    """The operating system failed to open, read or write a database file."""

    def __init__(self, path: Path, detail: str) -> None:
        self.path = path
        super().__init__(
            f"cannot read or write {path} ({detail}); check the disk, how it is mounted "
            "and the file's permissions"
        )


class SharedStateError(PersistentAgentError):
    """The shared state in PostgreSQL (profile encrypted-postgres) cannot be used as configured."""


class SharedStateUnavailableError(SharedStateError):
    """PostgreSQL does not answer; the replica stays up and reconnects by itself.

    Unlike :class:`StorageUnavailableError` this does not end the node: the
    replica's own files are fine, and calls work again once the server is back.
    """

    PREFIX = "shared state unavailable"


class SharedStateConflictError(SharedStateError):
    """Other replicas kept changing the same state for longer than one call retries."""

    PREFIX = "shared state busy"


class SharedRowError(SharedStateError):
    """A row of the shared state does not decrypt: altered, or copied from another row."""


class RequestIdReusedError(PersistentAgentError):
    """A request id came again with other arguments than the call first recorded under it."""

    def __init__(self, request_id: str) -> None:
        super().__init__(
            f"request id {request_id} was already used by a call with other arguments; a new "
            "call needs a new request id (nothing was applied)"
        )


class IncrementRangeError(PersistentAgentError):
    """``increment(n)`` was called with an n outside the range it accepts."""


DEBUG_VAR = "PERSISTENT_AGENT_DEBUG"
# Values of variables with these words in their names are secrets (or, a DSN,
# may hold one): blanked out of the debug chain, as are password=…,
# scheme://user:password@ and 256-bit hex forms a library may quote from its input.
_SECRET_NAMES = ("KEY", "SECRET", "TOKEN", "PASSWORD", "DSN")
_SECRET_FORMS = (
    re.compile(r"(password\s*=\s*)('[^']*'|\S+)", re.IGNORECASE),
    re.compile(r"(://[^:/@\s]*:)[^@\s]*(?=@)"),
    re.compile(r"()\b[0-9a-fA-F]{64}\b"),  # a master key's form (a hash's too)
    # pydantic quotes what failed to validate, which may be a stored value.
    re.compile(r"(input_value=)('[^']*'|\"[^\"]*\"|\S+)"),
)
REDACTED = "<redacted>"
# Python's own words between the links of a chain.
_CAUSE = "\nThe above exception was the direct cause of the following exception:\n\n"
_CONTEXT = "\nDuring handling of the above exception, another exception occurred:\n\n"


def report(name: str, error: PersistentAgentError) -> int:
    """Print *error* as ``name: error: …`` on stderr; return the exit code to use.

    With PERSISTENT_AGENT_DEBUG=1 the exception chain comes first: what our
    one line replaced (``raise … from None`` hides it from Python's own
    printing, not from ``__context__``), with tracebacks, secrets blanked.
    """
    if debugging():
        print(debug_chain(error), file=sys.stderr, end="", flush=True)
    print(f"{name}: error: {error}", file=sys.stderr, flush=True)
    return error.exit_code


def debugging() -> bool:
    """Whether the user asked for the exception chains (PERSISTENT_AGENT_DEBUG=1)."""
    return os.environ.get(DEBUG_VAR, "").strip().lower() in ("1", "true", "yes", "on")


def debug_chain(error: BaseException) -> str:
    """Every exception *error* stands for, oldest first, each with its traceback.

    The whole chain is followed, suppressed contexts included: they are what
    a one-line error hides. Nothing of a secret reaches the text (see
    :func:`redact`); tracebacks carry source lines, never local values.
    """
    links: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and all(current is not seen for seen in links):
        links.append(current)
        current = current.__cause__ or current.__context__
    parts: list[str] = []
    for older, newer in zip(reversed(links), [*reversed(links[:-1]), None], strict=True):
        parts.extend(traceback.format_exception(older, chain=False))
        if newer is not None:
            parts.append(_CAUSE if newer.__cause__ is older else _CONTEXT)
    return redact("".join(parts))


def _secret_var(name: str) -> bool:
    """Whether variable *name* holds a secret itself (a *_FILE variable holds a path)."""
    upper = name.upper()
    return not upper.endswith("_FILE") and any(word in upper for word in _SECRET_NAMES)


def redact(text: str) -> str:
    """*text* with the values of secret-named variables and quoted passwords blanked."""
    for var, value in os.environ.items():
        if _secret_var(var) and len(value) >= 8:
            text = text.replace(value, REDACTED)
    for form in _SECRET_FORMS:
        text = form.sub(lambda match: match.group(1) + REDACTED, text)
    return text


def find_cause(exc: BaseException, kinds: type[E] | tuple[type[E], ...]) -> E | None:
    """The first exception of *kinds* in *exc*'s chain (causes, contexts, groups), or None.

    The runtime re-raises failures inside its own exceptions (and asyncio may
    group them), so what matters can sit a few links deep.
    """
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, kinds):
            return current
        if isinstance(current, BaseExceptionGroup):
            stack.extend(current.exceptions)
        for linked in (current.__cause__, current.__context__):
            if linked is not None:
                stack.append(linked)
    return None


def find_error(exc: BaseException) -> PersistentAgentError | None:
    """Return our error if *exc* is one, or wraps one anywhere in its chain."""
    return find_cause(exc, PersistentAgentError)
