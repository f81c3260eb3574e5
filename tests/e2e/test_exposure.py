"""Who can reach the nodes: the sentinel listens on loopback unless told otherwise.

Read from the kernel's socket table (psutil reads /proc/net), never by
connecting from another address.
"""

from __future__ import annotations

import psutil
import pytest

from persistent_agent.demo.local_nodes import LocalNodes

from .conftest import run_client

pytestmark = pytest.mark.e2e


def listening(pid: int | None) -> set[tuple[str, int]]:
    """The (address, port) pairs *pid* accepts TCP connections on."""
    assert pid is not None
    return {
        (c.laddr.ip, c.laddr.port)
        for c in psutil.Process(pid).net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    }


def metrics_port(nodes: LocalNodes, role: str) -> int:
    """The port *role* serves /metrics on (always loopback: docs/metrics.md)."""
    url = nodes.metrics_url(role)
    assert url is not None
    return int(url.rsplit(":", 1)[1].split("/")[0])


def test_local_nodes_listen_on_loopback_only(nodes: LocalNodes) -> None:
    """The local sentinel listens on 127.0.0.1 alone, the agent only for its /metrics
    on loopback; the demo works."""
    nodes.start_all()
    assert listening(nodes.pid("sentinel")) == {
        ("127.0.0.1", nodes.port),
        ("127.0.0.1", metrics_port(nodes, "sentinel")),
    }
    assert listening(nodes.pid("agent")) == {("127.0.0.1", metrics_port(nodes, "agent"))}
    assert run_client(nodes).returncode == 0


def test_sentinel_host_is_the_one_setting_that_exposes_it(nodes: LocalNodes) -> None:
    """SENTINEL_HOST=0.0.0.0 (asked for explicitly) makes it listen on every address;
    its /metrics stays on loopback."""
    nodes.host = "0.0.0.0"  # noqa: S104 - the point of this test
    nodes.start("sentinel")
    assert listening(nodes.pid("sentinel")) == {
        ("0.0.0.0", nodes.port),  # noqa: S104
        ("127.0.0.1", metrics_port(nodes, "sentinel")),
    }
