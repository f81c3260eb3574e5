"""Every environment variable the project reads, declared once: its type, default and doc.

Each variable is a :class:`Setting` bound to a module constant of the same
name (``settings.SENTINEL_PORT``). Readers call :meth:`Setting.value`, which
parses the text and refuses a bad one in one line naming the variable (a
:class:`~persistent_agent.errors.ConfigError`), so a name, a default or an
allowed value is spelled in one place. A setting can be read from the process
environment (the default) or from any mapping, such as an env file's values.

A blank value counts as unset, as it did for every reader before this module.
A secret is never a value: it is always a ``*_FILE`` path to an owner-only
file (the original example's inline ``FAME_STORAGE_MASTER_KEY`` is the one
exception, kept for compatibility, and its text never appears in a message).

Some variables are the runtime's own (``FAME_*``: the runtime reads them
through its config expressions) or a library's (libpq's ``PG*``, OpenSSL's
``SSL_CERT_*``); they are declared here too, with their owner, so that the
tables in README.md and docs/operations.md (generated from :func:`markdown_table`
by ``make docs``) list everything a user may meet.

Who reads each: the two nodes (``sentinel``, ``agent``), the ``client``, the
token ``issuer``, ``admin`` (persistent-agent-admin and the make targets that
call it) and ``tools`` (the helper processes, such as the compose PostgreSQL
server).

Standard library only: ``make init`` imports it on a bare host Python.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from persistent_agent.errors import ConfigError

T = TypeVar("T")
D = TypeVar("D")
V = TypeVar("V")

Process = Literal["sentinel", "agent", "client", "issuer", "admin", "tools"]
Owner = Literal["project", "runtime", "libpq", "openssl", "python"]
Source = Mapping[str, str | None]

PROCESSES: tuple[Process, ...] = ("sentinel", "agent", "client", "issuer", "admin", "tools")
NODES: tuple[Process, ...] = ("sentinel", "agent")
OWNERS: dict[Owner, str] = {
    "project": "this project",
    "runtime": "the Naylence runtime (read by it as well)",
    "libpq": "libpq (PostgreSQL's client library)",
    "openssl": "OpenSSL (set by the project to pin its CA)",
    "python": "the Python interpreter",
}
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


@dataclass(frozen=True, eq=False)
class Setting(Generic[T]):
    """One environment variable: how to parse it, what it defaults to, who reads it.

    *kind* is what the docs show (``str``, ``int``, ``port``, ``float``,
    ``seconds``, ``bool``, ``path`` or ``enum``); *parse* turns a non-blank
    text into the value or raises ConfigError; *everyday* marks the few a user
    sets by hand (the README's table).
    """

    name: str
    kind: str
    default: T
    readers: tuple[Process, ...]
    doc: str
    parse: Callable[[str], T] = field(repr=False)
    secret: bool = False
    owner: Owner = "project"
    choices: tuple[str, ...] = ()
    everyday: bool = False

    def raw(self, env: Source | None = None) -> str | None:
        """The text set in *env* (default: the process environment), stripped; None if blank."""
        text = (os.environ if env is None else env).get(self.name)
        text = (text or "").strip()
        return text or None

    def is_set(self, env: Source | None = None) -> bool:
        return self.raw(env) is not None

    def present(self, env: Source | None = None) -> bool:
        """Whether *env* names the variable at all, even blank (a blank one may be
        deliberate: an env file's value does not fill it in)."""
        return self.name in (os.environ if env is None else env)

    def value(self, env: Source | None = None) -> T:
        """The parsed value in *env* (default: the process environment), else the default."""
        text = self.raw(env)
        return self.default if text is None else self.parse(text)

    def required(self: Setting[V | None], env: Source | None = None, *, hint: str = "") -> V:
        """The value, which must be set; unset, one line naming the variable and *hint*."""
        found = self.value(env)
        if found is None:
            raise ConfigError(f"{self.name} is not set" + (f"; {hint}" if hint else ""))
        return found

    def shown(self, text: str) -> str:
        """*text* as a message may quote it: never a secret's."""
        return "<redacted>" if self.secret and not self.name.endswith("_FILE") else repr(text)


_declared: dict[str, Setting[Any]] = {}


def _declare(setting: Setting[T]) -> Setting[T]:
    if setting.name in _declared:
        raise ValueError(f"{setting.name} is declared twice")  # a programming error
    if setting.secret and setting.kind != "path" and setting.name not in _INLINE_SECRETS:
        raise ValueError(f"{setting.name}: a secret is a *_FILE path, never a value")
    _declared[setting.name] = setting
    return setting


# The original example's inline key and rotate-key 0.1's pending one: accepted
# (and refused in one line respectively), never recommended.
_INLINE_SECRETS = ("FAME_STORAGE_MASTER_KEY", "FAME_STORAGE_MASTER_KEY_NEXT")


def declared() -> tuple[Setting[Any], ...]:
    """Every declared setting, in declaration order."""
    return tuple(_declared.values())


def lookup(name: str) -> Setting[Any]:
    """The setting declared as *name*; KeyError if there is none."""
    return _declared[name]


def value(setting: Setting[T], env: Source | None = None) -> T:
    """``setting.value(env)``, for callers that prefer a function."""
    return setting.value(env)


# ---------------------------------------------------------------- kinds


def text(
    name: str,
    doc: str,
    *,
    readers: Iterable[Process],
    default: D,
    secret: bool = False,
    owner: Owner = "project",
    everyday: bool = False,
) -> Setting[str | D]:
    """A free-text setting (a URL, a name, a list)."""
    return _declare(
        Setting[str | D](
            name, "str", default, tuple(readers), doc, str, secret, owner, (), everyday
        )
    )


def integer(
    name: str,
    doc: str,
    *,
    readers: Iterable[Process],
    default: D,
    low: int,
    high: int,
    owner: Owner = "project",
    everyday: bool = False,
) -> Setting[int | D]:
    """A whole number from *low* to *high*."""

    def parse(raw: str) -> int:
        number = int(raw) if raw.lstrip("-").isdigit() else low - 1
        if not low <= number <= high:
            raise ConfigError(f"{name} must be a whole number from {low} to {high}, not {raw!r}")
        return number

    setting = Setting[int | D](
        name, "int", default, tuple(readers), doc, parse, False, owner, (), everyday
    )
    return _declare(setting)


def port(
    name: str,
    doc: str,
    *,
    readers: Iterable[Process],
    default: D,
    owner: Owner = "project",
    everyday: bool = False,
) -> Setting[int | D]:
    """A TCP port, 1 to 65535."""

    def parse(raw: str) -> int:
        if not raw.isdigit() or not 0 < int(raw) < 65536:
            raise ConfigError(f"{name}={raw!r} is not a port number (1-65535)")
        return int(raw)

    setting = Setting[int | D](
        name, "port", default, tuple(readers), doc, parse, False, owner, (), everyday
    )
    return _declare(setting)


def number(
    name: str,
    doc: str,
    *,
    readers: Iterable[Process],
    default: D,
    positive: bool = False,
    owner: Owner = "project",
    everyday: bool = False,
) -> Setting[float | D]:
    """A number of seconds; with *positive*, more than zero."""

    def parse(raw: str) -> float:
        try:
            seconds = float(raw)
        except ValueError:
            seconds = -1.0 if positive else float("nan")
        if positive and not seconds > 0:
            raise ConfigError(f"{name} must be a positive number of seconds, not {raw!r}")
        if seconds != seconds:  # NaN: not a number at all
            raise ConfigError(f"{name} must be a number of seconds, not {raw!r}")
        return seconds

    kind = "seconds" if positive else "float"
    setting = Setting[float | D](
        name, kind, default, tuple(readers), doc, parse, False, owner, (), everyday
    )
    return _declare(setting)


def flag(
    name: str,
    doc: str,
    *,
    readers: Iterable[Process],
    default: D,
    owner: Owner = "project",
    everyday: bool = False,
) -> Setting[bool | D]:
    """Yes or no: 1/true/yes/on or 0/false/no/off, in any case."""

    def parse(raw: str) -> bool:
        if raw.lower() in _TRUE:
            return True
        if raw.lower() in _FALSE:
            return False
        raise ConfigError(f"{name}={raw!r}: use one of {'/'.join(_TRUE)} or {'/'.join(_FALSE)}")

    setting = Setting[bool | D](
        name, "bool", default, tuple(readers), doc, parse, False, owner, (), everyday
    )
    return _declare(setting)


def path(
    name: str,
    doc: str,
    *,
    readers: Iterable[Process],
    default: D,
    secret: bool = False,
    owner: Owner = "project",
    everyday: bool = False,
) -> Setting[Path | D]:
    """A file or directory; a *secret* one is an owner-only file holding the secret."""
    return _declare(
        Setting[Path | D](
            name, "path", default, tuple(readers), doc, Path, secret, owner, (), everyday
        )
    )


def choice(
    name: str,
    doc: str,
    *,
    readers: Iterable[Process],
    choices: tuple[str, ...],
    default: D,
    owner: Owner = "project",
    everyday: bool = False,
) -> Setting[str | D]:
    """One of *choices* (any case; the value is the declared spelling)."""
    canonical = {allowed.lower(): allowed for allowed in choices}

    def parse(raw: str) -> str:
        found = canonical.get(raw.lower())
        if found is None:
            allowed = ", ".join(choices)
            raise ConfigError(f"{name}={raw!r} is not one of the values it takes: {allowed}")
        return found

    setting = Setting[str | D](
        name, "enum", default, tuple(readers), doc, parse, False, owner, choices, everyday
    )
    return _declare(setting)


# ---------------------------------------------------------------- storage and keys

# The storage profiles' names, spelled here once (storage/provider_factory.py
# registers the two encrypted ones with the runtime under these names).
ENCRYPTED_SQLITE_PROFILE = "encrypted-sqlite"
SHARED_STATE_PROFILE = "encrypted-postgres"

FAME_STORAGE_PROFILE = choice(
    "FAME_STORAGE_PROFILE",
    "The storage backend: this project's SQLCipher files, encrypted shared state in "
    "PostgreSQL, or the runtime's plaintext ones",
    readers=(*NODES, "admin"),
    choices=(ENCRYPTED_SQLITE_PROFILE, SHARED_STATE_PROFILE, "sqlite", "memory"),
    default="memory",
    owner="runtime",
    everyday=True,
)
FAME_STORAGE_DB_DIRECTORY = path(
    "FAME_STORAGE_DB_DIRECTORY",
    "Where a node's database files live",
    readers=NODES,
    default=Path("./data/sqlite"),
    owner="runtime",
    everyday=True,
)
FAME_STORAGE_MASTER_KEY_FILE = path(
    "FAME_STORAGE_MASTER_KEY_FILE",
    "The owner-only file holding the 256-bit master key (64 hex characters); "
    "`make init` writes config/master.key",
    readers=(*NODES, "admin"),
    default=None,
    secret=True,
    everyday=True,
)
FAME_STORAGE_MASTER_KEY = text(
    "FAME_STORAGE_MASTER_KEY",
    "The master key itself, as the original example sets it; use the _FILE form instead",
    readers=(*NODES, "admin"),
    default=None,
    secret=True,
)
FAME_STORAGE_MASTER_KEY_NEXT = text(
    "FAME_STORAGE_MASTER_KEY_NEXT",
    "Left by a rotate-key of version 0.1 that was interrupted; nodes refuse to start "
    "until `make rotate-key` finishes",
    readers=(*NODES, "admin"),
    default=None,
    secret=True,
)
FAME_STORAGE_KEY_SERVICE = choice(
    "FAME_STORAGE_KEY_SERVICE",
    "A key service holds the master key instead of a file (Vault or OpenBao transit)",
    readers=(*NODES, "admin"),
    choices=("vault",),
    default=None,
)
FAME_STORAGE_TRANSIT_KEY = text(
    "FAME_STORAGE_TRANSIT_KEY",
    "The transit key's name in the key service",
    readers=(*NODES, "admin"),
    default=None,
)
VAULT_ADDR = text(
    "VAULT_ADDR",
    "The key service's address (https://…)",
    readers=(*NODES, "admin"),
    default=None,
)
VAULT_CACERT = path(
    "VAULT_CACERT",
    "The CA certificate that signed the key service's certificate",
    readers=(*NODES, "admin"),
    default=None,
)
VAULT_TOKEN_FILE = path(
    "VAULT_TOKEN_FILE",
    "The owner-only file holding the key service's token",
    readers=(*NODES, "admin"),
    default=None,
    secret=True,
)
FAME_STORAGE_POSTGRES_DSN = text(
    "FAME_STORAGE_POSTGRES_DSN",
    "Where the shared state's PostgreSQL server is (encrypted-postgres); no password in it",
    readers=("agent", "admin"),
    default=None,
)
FAME_STORAGE_POSTGRES_PASSWORD_FILE = path(
    "FAME_STORAGE_POSTGRES_PASSWORD_FILE",
    "The owner-only file holding the PostgreSQL password",
    readers=("agent", "admin"),
    default=None,
    secret=True,
)
PGSSLMODE = text(
    "PGSSLMODE",
    "libpq's TLS mode when the DSN names none; anything but verify-full is refused",
    readers=("agent", "admin"),
    default="prefer",
    owner="libpq",
)
PGSSLROOTCERT = path(
    "PGSSLROOTCERT",
    "libpq's CA file when the DSN names none",
    readers=("agent", "admin"),
    default=None,
    owner="libpq",
)
PGHOST = text(
    "PGHOST",
    "libpq's server host when the DSN names none",
    readers=("agent", "admin"),
    default=None,
    owner="libpq",
)

# ---------------------------------------------------------------- the fabric

FAME_DIRECT_ADMISSION_URL = text(
    "FAME_DIRECT_ADMISSION_URL",
    "Where the agent and the client find the sentinel (wss://…)",
    readers=("agent", "client"),
    default=None,
    owner="runtime",
    everyday=True,
)
FAME_LISTENER_HOST = text(
    "FAME_LISTENER_HOST",
    "The address the sentinel listens on (make sets it from SENTINEL_HOST)",
    readers=("sentinel",),
    default="127.0.0.1",
    owner="runtime",
)
FAME_LISTENER_PORT = port(
    "FAME_LISTENER_PORT",
    "The port the sentinel listens on (make sets it from SENTINEL_PORT)",
    readers=("sentinel",),
    default=8000,
    owner="runtime",
)
PERSISTENT_AGENT_FABRIC_SECURITY = choice(
    "PERSISTENT_AGENT_FABRIC_SECURITY",
    "off: plain ws://, no tokens, for the unauthenticated upstream examples (loopback only)",
    readers=(*NODES, "client", "admin"),
    choices=("on", "off"),
    default="on",
)
PERSISTENT_AGENT_CA_FILE = path(
    "PERSISTENT_AGENT_CA_FILE",
    "The project CA, pinned: trusted instead of every system root",
    readers=(*NODES, "client"),
    default=None,
)
PERSISTENT_AGENT_TLS_CERT_FILE = path(
    "PERSISTENT_AGENT_TLS_CERT_FILE",
    "The sentinel's TLS certificate",
    readers=("sentinel",),
    default=None,
)
PERSISTENT_AGENT_TLS_KEY_FILE = path(
    "PERSISTENT_AGENT_TLS_KEY_FILE",
    "The sentinel's TLS private key (owner-only)",
    readers=("sentinel",),
    default=None,
    secret=True,
)
FAME_ADMISSION_TOKEN_URL = text(
    "FAME_ADMISSION_TOKEN_URL",
    "The token issuer's token endpoint (https://…/oauth/token)",
    readers=("agent", "client"),
    default=None,
    owner="runtime",
)
FAME_ADMISSION_CLIENT_ID = text(
    "FAME_ADMISSION_CLIENT_ID",
    "This node's credential id at the token issuer",
    readers=("agent", "client"),
    default=None,
    owner="runtime",
)
PERSISTENT_AGENT_CLIENT_SECRET_FILE = path(
    "PERSISTENT_AGENT_CLIENT_SECRET_FILE",
    "The owner-only file holding this node's credential secret",
    readers=("agent", "client"),
    default=None,
    secret=True,
)
FAME_JWT_TRUSTED_ISSUER = text(
    "FAME_JWT_TRUSTED_ISSUER",
    "The token issuer the sentinel trusts, and the issuer's own name (https://…)",
    readers=("sentinel", "issuer"),
    default=None,
    owner="runtime",
)
FAME_JWT_AUDIENCE = text(
    "FAME_JWT_AUDIENCE",
    "The audience tokens are issued for and checked against",
    readers=("sentinel", "agent", "client", "issuer"),
    default="fame.fabric",
    owner="runtime",
)
FAME_NODE_IDENTITY_PROFILE = text(
    "FAME_NODE_IDENTITY_PROFILE",
    "The runtime's node identity policy; the secured fabric sets token-subject itself",
    readers=(),
    default=None,
    owner="runtime",
)
FAME_NODE_ID = text(
    "FAME_NODE_ID",
    "A node's id; each agent replica has its own, stable across restarts",
    readers=("agent",),
    default=None,
    owner="runtime",
)
FAME_NODE_ID_SALT = text(
    "FAME_NODE_ID_SALT",
    "Mixed into a derived node id; each client process sets a random one of its own",
    readers=(),
    default=None,
    owner="runtime",
)
FAME_SHOW_ENVELOPES = flag(
    "FAME_SHOW_ENVELOPES",
    "Print every envelope (values included) in the log; what run-verbose sets",
    readers=(),
    default=False,
    owner="runtime",
    everyday=True,
)
FAME_LOG_LEVEL = text(
    "FAME_LOG_LEVEL",
    "Log level: warning by default for the nodes, info for the issuer, critical for the client",
    readers=(*NODES, "client", "issuer"),
    default=None,
    owner="runtime",
    everyday=True,
)
SSL_CERT_FILE = path(
    "SSL_CERT_FILE",
    "OpenSSL's trusted roots: a node sets it to the project CA",
    readers=(),
    default=None,
    owner="openssl",
)
SSL_CERT_DIR = path(
    "SSL_CERT_DIR",
    "OpenSSL's directory of roots: a node points it nowhere, so no system root is trusted",
    readers=(),
    default=None,
    owner="openssl",
)

# ---------------------------------------------------------------- the token issuer

PERSISTENT_AGENT_ACCESS_DIR = path(
    "PERSISTENT_AGENT_ACCESS_DIR",
    "The issuer's directory: its certificate, signing key and client registry",
    readers=("issuer",),
    default=None,
)
PERSISTENT_AGENT_ISSUER_HOST = text(
    "PERSISTENT_AGENT_ISSUER_HOST",
    "The address the token issuer listens on",
    readers=("issuer",),
    default="127.0.0.1",
)
PERSISTENT_AGENT_ISSUER_PORT = integer(
    "PERSISTENT_AGENT_ISSUER_PORT",
    "The port the token issuer listens on (0: any free port)",
    readers=("issuer",),
    default=8443,
    low=0,
    high=65535,
)
PERSISTENT_AGENT_TOKEN_TTL_SECONDS = integer(
    "PERSISTENT_AGENT_TOKEN_TTL_SECONDS",
    "How long an issued token is valid",
    readers=("issuer",),
    default=300,
    low=1,
    high=86400,
)

# ---------------------------------------------------------------- processes

PERSISTENT_AGENT_ENV_FILE = path(
    "PERSISTENT_AGENT_ENV_FILE",
    "The env file a node or the client loads first (variables already set win)",
    readers=(*NODES, "client"),
    default=None,
)
PERSISTENT_AGENT_READY_FILE = path(
    "PERSISTENT_AGENT_READY_FILE",
    "The file a server keeps fresh while it serves (healthchecks and local-status read it)",
    readers=(*NODES, "issuer", "tools"),
    default=None,
)
PERSISTENT_AGENT_RESTART = choice(
    "PERSISTENT_AGENT_RESTART",
    "How a node that must restart does it: exit (for a supervisor) or exec (in place)",
    readers=NODES,
    choices=("exit", "exec"),
    default="exit",
)
PERSISTENT_AGENT_DETACHED_EXIT_SECONDS = number(
    "PERSISTENT_AGENT_DETACHED_EXIT_SECONDS",
    "How long the agent may fail to attach to a ready sentinel before it restarts",
    readers=("agent",),
    default=10.0,
    positive=True,
    everyday=True,
)
PERSISTENT_AGENT_MAX_WAIT_SECONDS = number(
    "PERSISTENT_AGENT_MAX_WAIT_SECONDS",
    "How long a call may wait in the agent's line before it is refused as overloaded",
    readers=("agent",),
    default=2.5,
    positive=True,
    everyday=True,
)
PERSISTENT_AGENT_DEBUG = flag(
    "PERSISTENT_AGENT_DEBUG",
    "Print the exception chain a one-line error stands for (secrets blanked)",
    readers=PROCESSES,
    default=False,
    everyday=True,
)
PERSISTENT_AGENT_START_HINT = text(
    "PERSISTENT_AGENT_START_HINT",
    "The command the client names when no sentinel runs (the launchers set it)",
    readers=("client",),
    default=None,
)
PYTHONSAFEPATH = flag(
    "PYTHONSAFEPATH",
    "Python leaves the working directory off sys.path; the launchers set it for the nodes",
    readers=("admin",),
    default=False,
    owner="python",
)

# ---------------------------------------------------------------- metrics (docs/metrics.md)

PERSISTENT_AGENT_METRICS_PORT = port(
    "PERSISTENT_AGENT_METRICS_PORT",
    "Where a node serves Prometheus /metrics, plaintext (unset: not served); "
    "the local launcher gives each node a free port",
    readers=NODES,
    default=None,
)
PERSISTENT_AGENT_METRICS_HOST = text(
    "PERSISTENT_AGENT_METRICS_HOST",
    "The address /metrics listens on: loopback only, any other is refused",
    readers=NODES,
    default="127.0.0.1",
)
PERSISTENT_AGENT_BACKUPS_DIR = path(
    "PERSISTENT_AGENT_BACKUPS_DIR",
    "Where a node's backup-age gauge finds the newest backup manifest "
    "(the local launcher: backups/ beside data/)",
    readers=NODES,
    default=None,
)
PERSISTENT_AGENT_LOCAL_METRICS = flag(
    "PERSISTENT_AGENT_LOCAL_METRICS",
    "Whether the local launcher gives each node a /metrics port (make local-start, make demo)",
    readers=("admin",),
    default=True,
)

# ---------------------------------------------------------------- the client

CLIENT_TIMEOUT_SECONDS = number(
    "CLIENT_TIMEOUT_SECONDS",
    "How long the client retries what retrying can fix",
    readers=("client",),
    default=30.0,
    everyday=True,
)
INCREMENT_DEADLINE_SECONDS = number(
    "INCREMENT_DEADLINE_SECONDS",
    "How long one increment is retried (at most 120)",
    readers=("client",),
    default=120.0,
)

# ---------------------------------------------------------------- the operator tools

SENTINEL_HOST = text(
    "SENTINEL_HOST",
    "The address the sentinel is reachable on, local and Docker alike "
    "(see exposing the sentinel first)",
    readers=("admin",),
    default="127.0.0.1",
    everyday=True,
)
SENTINEL_PORT = port(
    "SENTINEL_PORT",
    "The sentinel's host port",
    readers=("admin",),
    default=8000,
    everyday=True,
)
ISSUER_PORT = port(
    "ISSUER_PORT",
    "The local token issuer's port (unset, demo-replicas takes a free one)",
    readers=("admin",),
    default=8443,
    everyday=True,
)
PERSISTENT_AGENT_TLS_NAMES = text(
    "PERSISTENT_AGENT_TLS_NAMES",
    "More names the servers' certificates carry, comma-separated",
    readers=("admin",),
    default=None,
)


# ---------------------------------------------------------------- the docs


def _default_text(setting: Setting[Any]) -> str:
    if setting.default is None:
        return ""
    if isinstance(setting.default, bool):
        return "`true`" if setting.default else "`false`"
    if isinstance(setting.default, float):
        return f"`{setting.default:g}`"
    if isinstance(setting.default, Path) and not setting.default.is_absolute():
        return f"`./{setting.default}`"
    return f"`{setting.default}`"


def _type_text(setting: Setting[Any]) -> str:
    if setting.choices:
        return " \\| ".join(f"`{allowed}`" for allowed in setting.choices)
    return setting.kind + (" (secret file)" if setting.secret and setting.kind == "path" else "")


def markdown_table(selected: Iterable[Setting[Any]] | None = None, *, owners: bool = True) -> str:
    """A Markdown table of *selected* settings (default: all), for the docs (cog)."""
    rows = list(declared() if selected is None else selected)
    head = ["variable", "type", "default", "read by", "what it is"]
    if owners:
        head.append("owner")
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for setting in rows:
        cells = [
            f"`{setting.name}`",
            _type_text(setting),
            _default_text(setting),
            ", ".join(setting.readers) or f"the {setting.owner} only",
            setting.doc.replace("|", "\\|"),
        ]
        if owners:
            cells.append(setting.owner)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def everyday() -> tuple[Setting[Any], ...]:
    """The settings a user sets by hand (README's table)."""
    return tuple(s for s in declared() if s.everyday)
