"""Every metric a node serves, declared once: its name, type, help and labels.

The instruments (``instruments``) and the gauges read on scrape (``gauges``)
take their names and help from here, and docs/metrics.md's reference table is
generated from :data:`SERIES` (``make docs``; tests/test_docs.py checks it).

Names follow Prometheus' habits: ``persistent_agent_<subsystem>_<name>_<unit>``,
``_total`` for counters, ``_seconds`` and ``_bytes`` for units. Label values
are bounded (docs/metrics.md, "What stays out"): never a key, a stored value,
key material or a credential.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from persistent_agent.access.authorizer import REASONS

Kind = Literal["counter", "histogram", "gauge"]
Node = Literal["both", "sentinel", "agent"]
PREFIX = "persistent_agent"

# Storage operations take microseconds to milliseconds; calls through the
# fabric milliseconds to seconds.
STORAGE_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
)  # fmt: skip
RPC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


@dataclass(frozen=True)
class Series:
    """One metric: *name* as scraped (a counter's with ``_total``), what it means, its labels."""

    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()
    node: Node = "both"
    source: str = "storage listener"

    @property
    def family(self) -> str:
        """The name prometheus-client is given: a counter's without ``_total``."""
        return self.name.removesuffix("_total") if self.kind == "counter" else self.name


STORAGE_OPERATIONS = Series(
    f"{PREFIX}_storage_operations_total",
    "counter",
    "Storage operations (get, set, update, delete, list) that ended, by outcome",
    ("namespace", "operation", "outcome"),
)
STORAGE_OPERATION_SECONDS = Series(
    f"{PREFIX}_storage_operation_duration_seconds",
    "histogram",
    "How long each storage operation took",
    ("namespace", "operation", "outcome"),
)
STORAGE_FAILURES = Series(
    f"{PREFIX}_storage_failures_total",
    "counter",
    "Storage operations that failed, by kind: decrypt, integrity, unavailable, busy, "
    "not_found, other",
    ("namespace", "operation", "kind"),
)
DATABASE_BYTES = Series(
    f"{PREFIX}_storage_database_bytes",
    "gauge",
    "Size of the node's encrypted database files",
    ("namespace",),
    source="scrape: the data directory",
)
WAL_BYTES = Series(
    f"{PREFIX}_storage_wal_bytes",
    "gauge",
    "Size of the write-ahead logs beside the node's database files",
    ("namespace",),
    source="scrape: the data directory",
)
KEYRING_DATA_KEYS = Series(
    f"{PREFIX}_keyring_data_keys",
    "gauge",
    "Data keys in the node's keyring (one per database file)",
    source="scrape: `keyring.json`",
)
KEYRING_AGE = Series(
    f"{PREFIX}_keyring_age_seconds",
    "gauge",
    "Seconds since the keyring was last written: a data key wrapped, or a rotation",
    source="scrape: `keyring.json`'s modification time",
)
KEY_CUSTODY = Series(
    f"{PREFIX}_key_custody_info",
    "gauge",
    "Where the master key comes from (always 1): file, inline, vault, or none",
    ("custody",),
    source="scrape: the node's settings",
)
CERTIFICATE_EXPIRY = Series(
    f"{PREFIX}_certificate_expiry_seconds",
    "gauge",
    "Seconds until a certificate the node uses expires (negative: expired)",
    ("certificate",),
    source="scrape: the CA and server certificate files",
)
BACKUP_AGE = Series(
    f"{PREFIX}_backup_age_seconds",
    "gauge",
    "Seconds since the newest backup was taken (absent: no backup found)",
    source="scrape: the newest `backups/<time>/manifest.json`",
)
RPC_CALLS = Series(
    f"{PREFIX}_rpc_calls_total",
    "counter",
    "Calls the agent answered, by operation and outcome",
    ("operation", "outcome"),
    node="agent",
    source="the agent's calls",
)
RPC_SECONDS = Series(
    f"{PREFIX}_rpc_duration_seconds",
    "histogram",
    "How long the agent took to answer a call",
    ("operation", "outcome"),
    node="agent",
    source="the agent's calls",
)
REFUSALS = Series(
    f"{PREFIX}_access_refusals_total",
    "counter",
    f"Attaches and frames the sentinel refused, by reason: {', '.join(REASONS)}",
    ("reason",),
    node="sentinel",
    source="the sentinel's authorizer",
)

SERIES: tuple[Series, ...] = (
    STORAGE_OPERATIONS,
    STORAGE_OPERATION_SECONDS,
    STORAGE_FAILURES,
    DATABASE_BYTES,
    WAL_BYTES,
    KEYRING_DATA_KEYS,
    KEYRING_AGE,
    KEY_CUSTODY,
    CERTIFICATE_EXPIRY,
    BACKUP_AGE,
    RPC_CALLS,
    RPC_SECONDS,
    REFUSALS,
)


def markdown_table(selected: Iterable[Series] = SERIES) -> str:
    """The reference table of docs/metrics.md (cog)."""
    lines = [
        "| series | type | labels | served by | from | what it is |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for each in selected:
        labels = ", ".join(f"`{label}`" for label in each.labels) or "none"
        node = "sentinel and agent" if each.node == "both" else each.node
        lines.append(
            f"| `{each.name}` | {each.kind} | {labels} | {node} | {each.source} | {each.help} |"
        )
    return "\n".join(lines)
