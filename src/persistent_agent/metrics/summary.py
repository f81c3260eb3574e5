"""A scrape, told in a few lines a person reads: what ``make metrics`` prints per node.

Operations and failures, p50/p99 latency (estimated from the histogram's
buckets, as Prometheus' ``histogram_quantile`` does), sizes, the keyring's
key count and age, key custody, certificate expiry, backup age, and refusals.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable

from prometheus_client.parser import text_string_to_metric_families

from persistent_agent.metrics import series

Sample = tuple[str, dict[str, str], float]


def parse(text: str) -> list[Sample]:
    """Every sample of a scrape's text: (name, labels, value)."""
    return [
        (sample.name, dict(sample.labels), sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def _sum(samples: Iterable[Sample], name: str, **labels: str) -> float:
    return sum(v for n, lab, v in samples if n == name and labels.items() <= lab.items())


def _present(samples: Iterable[Sample], name: str) -> bool:
    return any(n == name for n, _, _ in samples)


def quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """The *q* quantile from cumulative (upper bound, count) buckets, interpolated
    linearly within a bucket; None without observations."""
    ordered = sorted(buckets)
    if not ordered or ordered[-1][1] == 0:
        return None
    rank = q * ordered[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in ordered:
        if count >= rank:
            if math.isinf(bound):
                return lower  # beyond the largest finite bucket: its bound, as Prometheus
            return lower + (bound - lower) * (
                (rank - below) / (count - below) if count > below else 1
            )
        lower, below = bound, count
    return lower


def _buckets(samples: Iterable[Sample], histogram: str) -> list[tuple[float, float]]:
    merged: dict[float, float] = defaultdict(float)
    for name, labels, value in samples:
        if name == f"{histogram}_bucket":
            merged[float(labels["le"])] += value
    return list(merged.items())


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.2f} ms"


def _bytes(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"  # pragma: no cover


def _age(seconds: float) -> str:
    for unit, length in (("d", 86400), ("h", 3600), ("min", 60)):
        if abs(seconds) >= length:
            return f"{seconds / length:.1f} {unit}"
    return f"{seconds:.0f} s"


def _latency(samples: list[Sample], histogram: str) -> str:
    buckets = _buckets(samples, histogram)
    return f"p50 {_ms(quantile(0.5, buckets))}, p99 {_ms(quantile(0.99, buckets))}"


def summary(role: str, text: str) -> list[str]:
    """The lines ``make metrics`` prints for the node *role* whose scrape is *text*."""
    found = parse(text)
    ops = _sum(found, series.STORAGE_OPERATIONS.name)
    failed = _sum(found, series.STORAGE_FAILURES.name)
    lines = [
        f"{role}: storage {ops:.0f} operations ({failed:.0f} failed), "
        + _latency(found, series.STORAGE_OPERATION_SECONDS.name)
    ]
    if _present(found, series.RPC_CALLS.name):
        calls = _sum(found, series.RPC_CALLS.name)
        errors = _sum(found, series.RPC_CALLS.name, outcome="error")
        lines.append(
            f"  calls: {calls:.0f} ({errors:.0f} answered with an error), "
            + _latency(found, series.RPC_SECONDS.name)
        )
    lines.append(
        f"  size: databases {_bytes(_sum(found, series.DATABASE_BYTES.name))}, "
        f"write-ahead logs {_bytes(_sum(found, series.WAL_BYTES.name))}"
    )
    custody = next((lab["custody"] for n, lab, _ in found if n == series.KEY_CUSTODY.name), "?")
    if _present(found, series.KEYRING_DATA_KEYS.name):
        keys = _sum(found, series.KEYRING_DATA_KEYS.name)
        age = _age(_sum(found, series.KEYRING_AGE.name))
        lines.append(f"  keys: {keys:.0f} data keys, keyring written {age} ago; custody: {custody}")
    else:
        lines.append(f"  keys: no keyring; custody: {custody}")
    certificates = [
        f"{lab['certificate']} in {_age(v)}"
        for n, lab, v in found
        if n == series.CERTIFICATE_EXPIRY.name
    ]
    if certificates:
        lines.append(f"  certificates expire: {', '.join(certificates)}")
    if _present(found, series.BACKUP_AGE.name):
        lines.append(f"  backup: newest {_age(_sum(found, series.BACKUP_AGE.name))} old")
    else:
        lines.append("  backup: none found (make backup)")
    if role == "sentinel" or _present(found, series.REFUSALS.name):
        reasons = [
            f"{lab['reason']} {v:.0f}" for n, lab, v in found if n == series.REFUSALS.name and v
        ]
        total = _sum(found, series.REFUSALS.name)
        lines.append(f"  refusals: {total:.0f}" + (f" ({', '.join(reasons)})" if reasons else ""))
    return lines
