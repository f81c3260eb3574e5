"""Real local nodes serve /metrics on loopback: storage, keys, certificates, calls."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error

import pytest

from persistent_agent.access.project import access_dir
from persistent_agent.demo.local_nodes import LocalNodes
from persistent_agent.errors import LocalNodeError
from tests.conftest import wait_until
from tests.e2e.conftest import run_client, stored_value
from tests.e2e.test_access import attach

from .conftest import samples, scrape, total

pytestmark = pytest.mark.e2e
RUNS = 3


def test_both_nodes_serve_their_storage_and_the_agent_its_calls(nodes: LocalNodes) -> None:
    nodes.start_all()
    assert run_client(nodes).returncode == 0
    urls = {role: nodes.metrics_url(role) for role in ("sentinel", "agent")}
    assert all(url and url.startswith("http://127.0.0.1:") for url in urls.values()), urls
    before = samples(scrape(str(urls["agent"])))
    for _ in range(RUNS):
        result = run_client(nodes)
        assert result.returncode == 0, result.stderr
    # A call is counted once its answer is sent: the client may have its answer
    # (and exit) a moment before the agent counts it.
    calls = "persistent_agent_rpc_calls_total"
    wait_until(
        lambda: (
            total(samples(scrape(str(urls["agent"]))), calls, operation="store_value")
            - total(before, calls, operation="store_value")
            == RUNS
        ),
        "every call of the runs counted",
    )
    agent = samples(scrape(str(urls["agent"])))
    sentinel = samples(scrape(str(urls["sentinel"])))

    def grew(name: str, **labels: str) -> float:
        return total(agent, name, **labels) - total(before, name, **labels)

    # Each run reads the value (from the agent's copy), then stores it: one set.
    ops = "persistent_agent_storage_operations_total"
    assert grew(ops, namespace="agent_state", operation="set", outcome="ok") == RUNS
    assert grew(ops, namespace="agent_state", outcome="error") == 0
    for operation in ("store_value", "retrieve_value"):
        assert grew(calls, operation=operation, outcome="ok") == RUNS, operation
    # The histogram counts what the counter counts.
    assert total(
        agent, "persistent_agent_storage_operation_duration_seconds_count", namespace="agent_state"
    ) == total(agent, "persistent_agent_storage_operations_total", namespace="agent_state")
    # The sentinel keeps only the runtime's own namespaces: one label value.
    assert total(sentinel, "persistent_agent_storage_operations_total", namespace="__internal") > 0
    assert not total(sentinel, "persistent_agent_storage_operations_total", namespace="agent_state")
    for found in (agent, sentinel):
        assert total(found, "persistent_agent_storage_database_bytes") > 0
        assert total(found, "persistent_agent_keyring_data_keys") >= 1
        assert total(found, "persistent_agent_key_custody_info", custody="file") == 1
        assert total(found, "persistent_agent_certificate_expiry_seconds", certificate="ca") > 0
    assert total(sentinel, "persistent_agent_certificate_expiry_seconds", certificate="server") > 0
    # No backup yet: no backup age.
    assert not any(name == "persistent_agent_backup_age_seconds" for name, _ in agent)
    assert stored_value(result.stdout)


def test_only_metrics_answers_and_a_backup_shows_its_age(nodes: LocalNodes) -> None:
    backups = nodes.data_dir.parent / "backups" / "20260101T000000000000Z"
    backups.mkdir(parents=True)
    (backups / "manifest.json").write_text(json.dumps({"created_at": "2026-01-01T00:00:00+00:00"}))
    nodes.start("sentinel")
    url = str(nodes.metrics_url("sentinel"))
    age = total(samples(scrape(url)), "persistent_agent_backup_age_seconds")
    assert age > 0
    with pytest.raises(urllib.error.HTTPError) as refused:
        scrape(url.removesuffix("/metrics") + "/")
    refused.value.close()
    assert refused.value.code == 404


def test_a_metrics_host_off_loopback_is_refused_in_one_line(nodes: LocalNodes) -> None:
    nodes.extra_env["PERSISTENT_AGENT_METRICS_HOST"] = "0.0.0.0"  # noqa: S104 - what is refused
    with pytest.raises(LocalNodeError, match="exited with code 2"):
        nodes.start("sentinel")
    line = nodes.last_line("sentinel")
    assert "PERSISTENT_AGENT_METRICS_HOST='0.0.0.0'" in line
    assert "loopback only" in line


def test_without_local_metrics_a_node_serves_none(nodes: LocalNodes) -> None:
    nodes.metrics = False
    nodes.start("sentinel")
    assert nodes.metrics_url("sentinel") is None


def test_refused_attaches_are_counted_by_reason_and_no_secret_is_scraped(
    nodes: LocalNodes,
) -> None:
    nodes.start_all()
    result = run_client(nodes)
    assert result.returncode == 0, result.stderr
    for token in ("", "not-a-token", "not-a-token"):
        ack, _code = attach(nodes, token)
        assert not ack["ok"]
    url = str(nodes.metrics_url("sentinel"))
    refusals = "persistent_agent_access_refusals_total"
    wait_until(lambda: total(samples(scrape(url)), refusals) == 3, "three refusals counted")
    found = samples(scrape(url))
    assert total(found, refusals, reason="no_token") == 1
    assert total(found, refusals, reason="bad_token") == 2
    # Nothing secret in either node's scrape: the stored value, the master key,
    # a credential's secret or the issuer's signing key.
    access = access_dir(nodes.config_dir)
    forbidden = [
        json.loads(stored_value(result.stdout))["value"],
        (nodes.config_dir / "master.key").read_text().strip(),
        *(path.read_text().strip() for path in access.glob("*.secret")),
        *(line for path in access.glob("*.key") for line in path.read_text().splitlines()[1:-1]),
    ]
    assert len(forbidden) > 4
    for role in ("sentinel", "agent"):
        text = scrape(str(nodes.metrics_url(role)))
        assert [each for each in forbidden if each and each in text] == [], role
    # `make metrics`: the URLs, one per line, then the summary.
    root = nodes.config_dir.parent
    shown = subprocess.run(
        [sys.executable, "-m", "persistent_agent.ops.admin", "--config-dir", str(nodes.config_dir),
         "--data-dir", str(root / "data"), "--run-dir", str(nodes.run_dir), "metrics"],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[:2] == [nodes.metrics_url("sentinel"), nodes.metrics_url("agent")]
    assert "  refusals: 3 (no_token 1, bad_token 2)" in lines
    assert any(line.startswith("  calls: 2 (0 answered with an error)") for line in lines)
