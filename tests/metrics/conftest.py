"""What the metrics tests share: scraping a /metrics endpoint and reading its samples."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import nodes  # noqa: F401 - the same real local nodes

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - our loopback URL
        text: str = response.read().decode()
    return text


def samples(text: str) -> Samples:
    """Every sample of a scrape: (name, sorted labels) -> value."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def total(found: Samples, name: str, **labels: str) -> float:
    """The sum of *name*'s samples whose labels include *labels*."""
    return sum(
        value
        for (sample, sample_labels), value in found.items()
        if sample == name and labels.items() <= dict(sample_labels).items()
    )
