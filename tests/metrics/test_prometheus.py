"""A real Prometheus server (Debian's package) with the shipped config and rules.

One Prometheus process serves the module: the shipped ``prometheus.yml`` and
``rules.yml``, copied with 1s intervals, the file_sd paths pointed at this
module's run directories, and the backup-age threshold set to 0. Real nodes
started by the local launcher write those targets files; the tests read what
Prometheus scraped, recorded and alerted through its HTTP API, and wait for
it, never for a time.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from persistent_agent import settings
from persistent_agent.access import project
from persistent_agent.demo.local_nodes import TARGETS_FILE, LocalNodes, free_port
from persistent_agent.demo.postgres_server import PostgresServer
from persistent_agent.demo.replicas import SHARED_PROFILE
from persistent_agent.keys.custody import POSTGRES_DSN_VAR, POSTGRES_PASSWORD_FILE_VAR
from persistent_agent.ops import config_files
from tests.conftest import REPO, wait_until
from tests.e2e.conftest import run_client, stored_value

from .conftest import samples, scrape, total

SHIPPED = REPO / "config" / "prometheus"
ALERTS = {
    "PersistentAgentDecryptFailures",
    "PersistentAgentStorageUnavailable",
    "PersistentAgentNodeDown",
    "PersistentAgentKeyTooOld",
    "PersistentAgentBackupTooOld",
    "PersistentAgentNoBackup",
    "PersistentAgentCertificateExpiring",
    "PersistentAgentRefusedAttachBurst",
}
BACKUP_THRESHOLD = "> 26 * 3600"  # the shipped threshold; the copy here fires at > 0
RUNS = 3


def tool(name: str) -> str:
    """Debian's prometheus package's *name*; required, never skipped (CI installs it)."""
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: apt-get install prometheus (.ci/run does)")
    return found


def test_promtool_accepts_the_shipped_config_and_rules_and_their_unit_tests() -> None:
    """`promtool check` on both files, and `promtool test rules` on rules_test.yml: each
    alert's threshold on both sides, a first failure alerting at once, resolution."""
    promtool = tool("promtool")
    for command in (
        ["check", "config", "prometheus.yml"],
        ["check", "rules", "rules.yml"],
        ["test", "rules", "rules_test.yml"],
    ):
        result = subprocess.run(
            [promtool, *command], cwd=SHIPPED, capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, result.stdout + result.stderr
    rules = yaml.safe_load((SHIPPED / "rules.yml").read_text())
    alerts = {
        rule["alert"] for group in rules["groups"] for rule in group["rules"] if "alert" in rule
    }
    assert alerts == ALERTS
    unit_tests = yaml.safe_load((SHIPPED / "rules_test.yml").read_text())["tests"]
    tested = {
        case["alertname"]
        for test in unit_tests
        for case in test["alert_rule_test"]
        if case.get("exp_alerts")
    }
    assert tested == ALERTS  # every alert is seen firing in a unit test
    config = yaml.safe_load((SHIPPED / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["file_sd_configs"] == [{"files": [f"../../run/{TARGETS_FILE}"]}]


# ---------------------------------------------------------------- the real server


@dataclass
class Prometheus:
    url: str
    runs: dict[str, Path]  # the run directories whose targets files it reads
    root: Path

    def api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=10) as response:  # noqa: S310 - loopback
            reply = json.load(response)
        assert reply["status"] == "success", reply
        return reply["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api("query", query=expr)["result"]
        return result

    def value(self, expr: str) -> float | None:
        """The single value of *expr* now, or None when it has none."""
        found = self.query(expr)
        assert len(found) <= 1, found
        return float(found[0]["value"][1]) if found else None

    def targets(self) -> dict[str, dict[str, Any]]:
        """The active targets by instance (host:port)."""
        active = self.api("targets", state="active")["activeTargets"]
        return {target["labels"]["instance"]: target for target in active}

    def firing(self, alert: str) -> list[dict[str, Any]]:
        return [
            each
            for each in self.api("alerts")["alerts"]
            if each["labels"]["alertname"] == alert and each["state"] == "firing"
        ]


def config_copy(root: Path, runs: dict[str, Path]) -> Path:
    """The shipped config and rules, with 1s intervals, these paths and a backup threshold of 0."""
    config = yaml.safe_load((SHIPPED / "prometheus.yml").read_text())
    rules = yaml.safe_load((SHIPPED / "rules.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(root / "rules.yml")]
    (job,) = config["scrape_configs"]
    job["file_sd_configs"] = [{"files": [str(run / TARGETS_FILE) for run in runs.values()]}]
    (backup_age,) = [
        rule
        for group in rules["groups"]
        for rule in group["rules"]
        if rule.get("alert") == "PersistentAgentBackupTooOld"
    ]
    assert backup_age["expr"].endswith(BACKUP_THRESHOLD), backup_age
    backup_age["expr"] = backup_age["expr"].removesuffix(BACKUP_THRESHOLD) + "> 0"
    (root / "rules.yml").write_text(yaml.safe_dump(rules))
    (root / "prometheus.yml").write_text(yaml.safe_dump(config))
    return root / "prometheus.yml"


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    """One Prometheus for the module, on a free loopback port, with a storage dir of its own."""
    binary = tool("prometheus")
    root = tmp_path_factory.mktemp("prometheus")
    runs = {name: root / f"{name}-run" for name in ("flow", "shared")}
    for run in runs.values():  # there before it starts, so that it watches them
        run.mkdir(mode=0o700)
    config = config_copy(root, runs)
    port = free_port()
    log = (root / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={root / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    server = Prometheus(f"http://127.0.0.1:{port}", runs, root)

    def ready() -> bool:
        if process.poll() is not None:
            pytest.fail(f"prometheus exited: {(root / 'prometheus.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{server.url}/-/ready", timeout=5) as response:  # noqa: S310
                return bool(response.status == 200)
        except OSError:
            return False

    try:
        wait_until(ready, "prometheus ready")
        yield server
    finally:
        process.terminate()
        process.wait(60)
        log.close()


def project_root(root: Path) -> Path:
    """A project root after `make init` and `make access` (as tests/conftest.py's
    ``initialised``, for a module)."""
    config = root / "config"
    config.mkdir(parents=True)
    for example in (REPO / "config").glob(".env.*.example"):
        shutil.copy(example, config / example.name)
    config_files.init(config, root / "data")
    project.ensure(config)
    return root


@pytest.fixture(scope="module")
def flow(prometheus: Prometheus, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNodes]:
    """The local flow's nodes (encrypted-sqlite), started once for the module."""
    root = project_root(tmp_path_factory.mktemp("flow"))
    nodes = LocalNodes(
        root / "config", root / "data", prometheus.runs["flow"],
        port=free_port(), issuer_port=free_port(),
    )  # fmt: skip
    nodes.start_all()
    yield nodes
    nodes.stop_all()


def instance(nodes: LocalNodes, role: str) -> str:
    url = nodes.metrics_url(role)
    assert url is not None, role
    return url.removeprefix("http://").removesuffix("/metrics")


def scraped(prometheus: Prometheus, nodes: LocalNodes, *roles: str) -> None:
    """Wait until Prometheus scrapes *roles* of *nodes*, found through the targets file."""

    def up() -> bool:
        targets = prometheus.targets()
        return all(
            targets.get(instance(nodes, role), {}).get("health") == "up"
            and targets[instance(nodes, role)]["labels"]["role"] == role
            for role in roles
        )

    try:
        wait_until(up, f"prometheus scraping {roles}")
    except pytest.fail.Exception:
        listed = nodes.targets_file().read_text() if nodes.targets_file().exists() else "none"
        pytest.fail(
            f"prometheus does not scrape {roles}: targets file {listed}; "
            f"its targets {prometheus.targets()}"
        )


@pytest.mark.e2e
def test_prometheus_counts_the_storage_operations_of_real_runs(
    prometheus: Prometheus, flow: LocalNodes
) -> None:
    scraped(prometheus, flow, "sentinel", "agent")
    agent, sentinel = instance(flow, "agent"), instance(flow, "sentinel")
    sets = (
        f'sum(persistent_agent_storage_operations_total{{instance="{agent}",'
        'namespace="agent_state",operation="set",outcome="ok"})'
    )
    assert run_client(flow).returncode == 0  # the agent's state exists; then count
    counted = "persistent_agent_storage_operations_total"
    ours = {"namespace": "agent_state", "operation": "set", "outcome": "ok"}
    before = total(samples(scrape(str(flow.metrics_url("agent")))), counted, **ours)
    for _ in range(RUNS):
        result = run_client(flow)
        assert result.returncode == 0, result.stderr
    # Each run stores the value once: one set in the agent's own namespace.
    wait_until(lambda: prometheus.value(sets) == before + RUNS, f"{RUNS} more sets scraped")
    assert total(samples(scrape(str(flow.metrics_url("agent")))), counted, **ours) == before + RUNS
    calls = f'persistent_agent_rpc_calls_total{{instance="{agent}",outcome="ok"}}'

    def answered() -> dict[str, float]:
        return {
            each["metric"]["operation"]: float(each["value"][1]) for each in prometheus.query(calls)
        }

    # A call is counted once its answer is sent, after its storage operations: a
    # scrape may fall between the last set and the last store_value's count.
    wait_until(
        lambda: answered().get("store_value", 0) == answered().get("retrieve_value", -1),
        "every call of the runs counted",
    )
    found = answered()
    assert found["store_value"] == found["retrieve_value"] >= RUNS
    assert not prometheus.query(
        f'persistent_agent_storage_operations_total{{instance="{agent}",outcome="error"}}'
    )
    # The sentinel keeps only the runtime's namespaces; the recording rules run.
    assert prometheus.query(
        f'persistent_agent_storage_operations_total{{instance="{sentinel}",namespace="__internal"}}'
    )
    assert not prometheus.query(
        f'persistent_agent_storage_operations_total{{instance="{sentinel}",namespace="agent_state"}}'
    )
    p99 = (
        f'role:persistent_agent_storage_operation_duration_seconds:p99_5m{{instance="{agent}",'
        'role="agent",namespace="agent_state",operation="set"}'
    )
    wait_until(lambda: (prometheus.value(p99) or 0) > 0, "the recorded p99 of the agent's sets")
    assert (prometheus.value(p99) or 0) <= 1.0
    print(f"\nprometheus: {json.dumps(prometheus.query(sets.removeprefix('sum(')[:-1]))}")
    assert stored_value(result.stdout)


@pytest.mark.e2e
def test_a_real_backup_fires_the_backup_age_alert_at_a_low_threshold(
    prometheus: Prometheus, flow: LocalNodes
) -> None:
    scraped(prometheus, flow, "sentinel", "agent")
    nodes = {instance(flow, role) for role in ("sentinel", "agent")}

    def firing() -> set[str]:
        alerts = prometheus.firing("PersistentAgentBackupTooOld")
        return {each["labels"]["instance"] for each in alerts} & nodes

    # No backup yet: no backup age, so nothing fires (its rule is evaluated every second).
    assert not prometheus.query(
        f'persistent_agent_backup_age_seconds{{instance=~"{"|".join(nodes)}"}}'
    )
    assert firing() == set()
    root = flow.config_dir.parent
    made = subprocess.run(
        [sys.executable, "-m", "persistent_agent.ops.admin", "--config-dir", str(flow.config_dir),
         "--data-dir", str(flow.data_dir), "--backups-dir", str(root / "backups"), "backup"],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    wait_until(lambda: firing() == nodes, "the backup-age alert firing for both nodes")
    (alert,) = [
        each
        for each in prometheus.firing("PersistentAgentBackupTooOld")
        if each["labels"]["role"] == "agent" and each["labels"]["instance"] in nodes
    ]
    assert alert["labels"]["severity"] == "warning"
    assert "the newest backup is" in alert["annotations"]["summary"]
    print(f"\nfiring: {json.dumps(alert)}")


@dataclass
class SharedStateNodes(LocalNodes):
    """The local flow with the agent's state in PostgreSQL (the encrypted-postgres profile)."""

    dsn: str = ""
    password_file: Path = Path()

    def env(self, role: str) -> dict[str, str]:
        env = super().env(role)
        if role == "agent":
            env[settings.FAME_STORAGE_PROFILE.name] = SHARED_PROFILE
            env[POSTGRES_DSN_VAR] = self.dsn
            env[POSTGRES_PASSWORD_FILE_VAR] = str(self.password_file)
        return env


@pytest.fixture
def shared(
    prometheus: Prometheus, initialised: Path, postgres: PostgresServer, shared_dsn: str
) -> Iterator[SharedStateNodes]:
    """The sentinel and an agent whose state is the shared state in the session's server."""
    nodes = SharedStateNodes(
        initialised / "config", initialised / "data", prometheus.runs["shared"],
        port=free_port(), issuer_port=free_port(), dsn=shared_dsn,
        password_file=postgres.password_file,
    )  # fmt: skip
    yield nodes
    nodes.stop_all()


@pytest.mark.e2e
def test_a_tampered_row_is_a_decrypt_failure_in_prometheus(
    prometheus: Prometheus, shared: SharedStateNodes, postgres: PostgresServer, shared_dsn: str
) -> None:
    """A running agent reads a row altered in PostgreSQL: its decrypt failure is counted,
    scraped, and alerted on; the node keeps serving."""
    shared.start_all()
    first = run_client(shared)
    assert first.returncode == 0, first.stderr
    scraped(prometheus, shared, "agent")
    agent = instance(shared, "agent")
    decrypt = f'sum(persistent_agent_storage_failures_total{{instance="{agent}",kind="decrypt"}})'
    assert prometheus.value(decrypt) is None  # no failure of that kind yet: no series
    with psycopg.connect(shared_dsn, password=postgres.password(), autocommit=True) as conn:
        altered = conn.execute(
            "UPDATE pa_state SET sealed = set_byte(sealed, length(sealed) / 2,"
            " get_byte(sealed, length(sealed) / 2) # 1)"
        ).rowcount
    assert altered >= 1
    failed = run_client(shared)
    assert failed.returncode != 0
    assert "does not decrypt" in failed.stderr, failed.stderr
    assert json.loads(stored_value(first.stdout))["value"] not in failed.stdout + failed.stderr
    wait_until(lambda: (prometheus.value(decrypt) or 0) >= 1, "the decrypt failure scraped")
    wait_until(
        lambda: any(
            each["labels"]["instance"] == agent
            for each in prometheus.firing("PersistentAgentDecryptFailures")
        ),
        "the decrypt-failure alert firing",
    )
    assert shared.serving("agent")
