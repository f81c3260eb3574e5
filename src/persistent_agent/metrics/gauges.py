"""The gauges read on scrape: sizes, the keyring, key custody, certificates, backups.

Nothing feeds them; each scrape reads them from disk (:class:`NodeGauges`, a
prometheus-client custom collector), so they cost nothing between scrapes:

* database and WAL bytes per database file of the node's data directory
  (``FAME_STORAGE_DB_DIRECTORY``), by namespace (the runtime's ``__*`` ones
  summed as one);
* the number of data keys in the node's ``keyring.json``, and the seconds since
  that file was last written (a data key wrapped for a new file, or a rotation);
* which key custody the node's settings name (file, inline, vault, none);
* the seconds until the CA certificate and the server certificate expire
  (``PERSISTENT_AGENT_CA_FILE``, ``PERSISTENT_AGENT_TLS_CERT_FILE``);
* the seconds since the newest backup, from the ``created_at`` of the newest
  ``<time>/manifest.json`` under ``PERSISTENT_AGENT_BACKUPS_DIR`` (the local
  launcher: backups/). The node reads the manifest only: it does not verify the
  backup (``make restore`` does).

A file that cannot be read leaves its series out of that scrape; no value,
key or key material is ever read into a label.
"""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from persistent_agent import settings
from persistent_agent.metrics import series
from persistent_agent.metrics.listener import INTERNAL
from persistent_agent.storage import layout

MANIFEST = "manifest.json"  # as ops/backup.py writes it


def custody(env: Mapping[str, str | None] | None = None) -> str:
    """Where the node's master key comes from, by its settings: vault, file, inline or none."""
    if settings.FAME_STORAGE_KEY_SERVICE.is_set(env):
        return "vault"
    if settings.FAME_STORAGE_MASTER_KEY_FILE.is_set(env):
        return "file"
    if settings.FAME_STORAGE_MASTER_KEY.is_set(env):
        return "inline"
    return "none"


@dataclass(frozen=True, eq=False)  # hashed by identity, as a registry keys collectors
class NodeGauges(Collector):
    """What one node's scrape reads from disk; see the module docstring."""

    data_dir: Path | None
    custody: str
    certificates: dict[str, Path] = field(default_factory=dict)
    backups_dir: Path | None = None

    @classmethod
    def from_settings(cls) -> NodeGauges:
        certificates = {
            name: found
            for name, found in (
                ("ca", settings.PERSISTENT_AGENT_CA_FILE.value()),
                ("server", settings.PERSISTENT_AGENT_TLS_CERT_FILE.value()),
            )
            if found is not None
        }
        return cls(
            settings.FAME_STORAGE_DB_DIRECTORY.value(),
            custody(),
            certificates,
            settings.PERSISTENT_AGENT_BACKUPS_DIR.value(),
        )

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield from self._sizes()
        yield from self._keyring()
        info = _gauge(series.KEY_CUSTODY)
        info.add_metric([self.custody], 1)
        yield info
        yield from self._certificates()
        yield from self._backup()

    def _sizes(self) -> Iterator[GaugeMetricFamily]:
        databases: dict[str, int] = {}
        wals: dict[str, int] = {}
        for path in layout.database_files(self.data_dir) if self.data_dir else []:
            namespace = layout.namespace_of(path)
            label = INTERNAL if namespace.startswith("__") else namespace
            databases[label] = databases.get(label, 0) + _size(path)
            wal = path.with_name(path.name + "-wal")
            wals[label] = wals.get(label, 0) + _size(wal)
        for declared, sizes in ((series.DATABASE_BYTES, databases), (series.WAL_BYTES, wals)):
            family = _gauge(declared)
            for label, size in sorted(sizes.items()):
                family.add_metric([label], size)
            yield family

    def _keyring(self) -> Iterator[GaugeMetricFamily]:
        if self.data_dir is None:
            return
        path = self.data_dir / layout.KEYRING_FILE
        try:
            written = path.stat().st_mtime
            keys = json.loads(path.read_text()).get("keys", {})
        except (OSError, ValueError, AttributeError):
            return
        count = _gauge(series.KEYRING_DATA_KEYS)
        count.add_metric([], len(keys) if isinstance(keys, dict) else 0)
        age = _gauge(series.KEYRING_AGE)
        age.add_metric([], max(time.time() - written, 0.0))
        yield count
        yield age

    def _certificates(self) -> Iterator[GaugeMetricFamily]:
        from cryptography import x509

        family = _gauge(series.CERTIFICATE_EXPIRY)
        now = datetime.datetime.now(datetime.UTC)
        for name, path in sorted(self.certificates.items()):
            try:
                certificate = x509.load_pem_x509_certificate(path.read_bytes())
            except (OSError, ValueError):
                continue
            family.add_metric([name], (certificate.not_valid_after_utc - now).total_seconds())
        yield family

    def _backup(self) -> Iterator[GaugeMetricFamily]:
        newest = newest_backup(self.backups_dir) if self.backups_dir else None
        if newest is None:
            return
        family = _gauge(series.BACKUP_AGE)
        family.add_metric([], max(time.time() - newest, 0.0))
        yield family


def newest_backup(backups_dir: Path) -> float | None:
    """The Unix time of the newest backup under *backups_dir* (its manifest's
    ``created_at``), or None if there is none."""
    newest: float | None = None
    for manifest in backups_dir.glob(f"*/{MANIFEST}"):
        if manifest.parent.name.startswith((".", "replaced-")):
            continue
        try:
            created = json.loads(manifest.read_text())["created_at"]
            stamp = datetime.datetime.fromisoformat(created).timestamp()
        except (OSError, ValueError, KeyError, TypeError):
            continue
        newest = stamp if newest is None else max(newest, stamp)
    return newest


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _gauge(declared: series.Series) -> GaugeMetricFamily:
    return GaugeMetricFamily(declared.name, declared.help, labels=declared.labels)
