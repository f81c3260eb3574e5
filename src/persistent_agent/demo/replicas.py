"""Agent replicas sharing one state in PostgreSQL, as local processes (`make demo-replicas`).

:class:`LocalReplicas` runs the sentinel and N replicas of the agent, each
with its own data directory (``data/demo-replicas/<id>`` in the demo) and a node id that stays
the same across restarts, all on the ``encrypted-postgres`` profile against
one database. :func:`demo` adds a throwaway PostgreSQL server of the
project's own (``data/postgres``), several client processes firing
``increment(1)``, and a kill -9 of one replica in the middle.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from persistent_agent import settings
from persistent_agent.access import project
from persistent_agent.access.project import access_dir, replica_ids
from persistent_agent.demo.local_nodes import LocalNodes, free_port
from persistent_agent.demo.postgres_server import PostgresServer, ServerTls
from persistent_agent.errors import DEBUG_VAR, LocalNodeError, debugging
from persistent_agent.keys.custody import POSTGRES_DSN_VAR, POSTGRES_PASSWORD_FILE_VAR
from persistent_agent.node.serving import READY_FILE_VAR

SHARED_PROFILE = settings.SHARED_STATE_PROFILE
# The demo's scratch space under data/ and run/ (the compose variant's
# replicas keep their data in data/replicas, which is not scratch).
DEMO_DIR = "demo-replicas"
DATABASE = "persistent_agent"
AGENT_MODULE = "persistent_agent"


@dataclass
class LocalReplicas(LocalNodes):
    """The sentinel plus replicas ``replica-1`` … on one shared PostgreSQL state."""

    dsn: str = ""
    password_file: Path | None = None
    replicas: list[str] = field(default_factory=lambda: replica_ids(2))
    # Per role, a command to run it under, e.g. ["ip", "netns", "exec", "host-2"],
    # and settings of its own (how that host reaches the sentinel and the server).
    hosts: dict[str, list[str]] = field(default_factory=dict)
    host_env: dict[str, dict[str, str]] = field(default_factory=dict)

    def command_prefix(self, role: str) -> list[str]:
        return self.hosts.get(role, [])

    def env(self, role: str) -> dict[str, str]:
        if role not in self.replicas:
            return super().env(role)
        env = super().env("agent")
        # Each replica holds a credential of its own (role agent), named as it is.
        env.update(self.access_env("agent", client_id=role))
        env[settings.FAME_STORAGE_DB_DIRECTORY.name] = str((self.data_dir / role).resolve())
        env[READY_FILE_VAR] = str(self.ready_file(role).resolve())
        # Stable across restarts: the sentinel's pool keeps a dead replica's
        # entry, and the same id coming back heals it.
        env[settings.FAME_NODE_ID.name] = role
        env[settings.FAME_STORAGE_PROFILE.name] = SHARED_PROFILE
        env[POSTGRES_DSN_VAR] = self.dsn
        if self.password_file is not None:
            env[POSTGRES_PASSWORD_FILE_VAR] = str(self.password_file.resolve())
        env.update(self.host_env.get(role, {}))
        return env

    def start_replica(self, role: str, timeout: float = 120.0) -> int:
        return self.start(role, timeout=timeout, module=AGENT_MODULE)

    def start_all(self) -> None:
        for role in self.roles():
            if role != "agent":
                self.start(role)
        for role in self.replicas:
            self.start_replica(role)

    def stop_all(self) -> list[str]:
        return [role for role in (*self.replicas, "sentinel", "issuer") if self.stop(role)]

    def increments(self, calls: int, concurrency: int, by: int = 1) -> subprocess.Popen[str]:
        """A client process running *calls* increments; its last line is a JSON summary."""
        argv, env = self.client_command()
        return subprocess.Popen(
            [*argv, "increment", "--calls", str(calls), "--concurrency", str(concurrency),
             "--by", str(by)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip


def summary_of(process: subprocess.Popen[str], timeout: float = 300.0) -> dict[str, Any]:
    """Wait for an increments client; its summary, or LocalNodeError with its last line."""
    out, err = process.communicate(timeout=timeout)
    if process.returncode != 0:
        last = (err.strip().splitlines() or ["(no output)"])[-1]
        raise LocalNodeError(f"an increments client failed: {last}")
    return dict(json.loads(out.strip().splitlines()[-1]))


def state_version(server: PostgresServer, dsn: str) -> int:
    """How many writes the shared state has taken (the row's version; no decryption)."""
    import psycopg

    with psycopg.connect(dsn, password=server.password(), autocommit=True) as conn:
        if conn.execute("SELECT to_regclass('pa_state')").fetchone() == (None,):
            return 0
        found = conn.execute("SELECT coalesce(max(version), 0) FROM pa_state").fetchone()
    return int(found[0]) if found else 0


def demo(
    config_dir: Path,
    data_dir: Path,
    run_dir: Path,
    *,
    replicas: int = 2,
    clients: int = 4,
    calls_per_client: int = 75,
    concurrency: int = 8,
    out: Any = print,
    port: int | None = None,
    issuer_port: int | None = None,
) -> int:
    """The demo: returns 0 when every check held, 1 (naming the check) otherwise.

    *port* and *issuer_port* are the user's (SENTINEL_PORT, ISSUER_PORT); each
    left unset is a free port, so that the demo runs beside ``make local-start``.
    """
    total = clients * calls_per_client
    project.ensure(config_dir, {replica: "agent" for replica in replica_ids(replicas)})
    server = PostgresServer(
        data_dir / "postgres",
        data_dir / "postgres" / "superuser.password",
        ServerTls.in_access_dir(access_dir(config_dir)),
    )
    nodes = LocalReplicas(
        config_dir,
        data_dir / DEMO_DIR,
        run_dir / DEMO_DIR,
        port=port or free_port(),
        issuer_port=issuer_port or free_port(),
        python=sys.executable,
        replicas=replica_ids(replicas),
        # The launcher drops inherited PERSISTENT_AGENT_* settings; this one is handed on.
        extra_env={DEBUG_VAR: "1"} if debugging() else {},
    )
    victim = nodes.replicas[-1]
    # The demo's replicas start afresh, like its database: their directories
    # are the demo's own scratch space (nothing else writes there).
    shutil.rmtree(nodes.data_dir, ignore_errors=True)
    try:
        server.start()
        nodes.dsn = server.create_database(DATABASE, fresh=True)
        nodes.password_file = server.password_file
        out(
            f"== PostgreSQL on {server.host}:{server.port}, TLS only (data in {server.data_dir}), "
            f"fresh database {DATABASE}"
        )
        out(
            f"== starting the token issuer (127.0.0.1:{nodes.issuer_port}), the sentinel "
            f"(127.0.0.1:{nodes.port}) and "
            f"{', '.join(nodes.replicas)}"
        )
        nodes.start_all()
        out(f"== {clients} clients x {calls_per_client} increment(1) calls, "
            f"{concurrency} at a time each")  # fmt: skip
        running = [nodes.increments(calls_per_client, concurrency) for _ in range(clients)]
        # Kill once a third of the calls went through: mid-stream, whatever the speed.
        deadline = time.monotonic() + 300
        while state_version(server, nodes.dsn) < total // 3:
            if all(p.poll() is not None for p in running) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        out(f"== kill -9 {victim} after {state_version(server, nodes.dsn)} increments")
        nodes.kill(victim)
        out(f"== restarting {victim} with the same node id")
        nodes.start_replica(victim)
        tallies = [summary_of(p) for p in running]
        final = summary_of(nodes.increments(1, 1, by=0))["highest"]
    finally:
        stopped = nodes.stop_all()
        server.stop()
        out(f"== stopped {', '.join([*stopped, 'PostgreSQL'])}")
    served: Counter[str] = Counter()
    for tally in tallies:
        served.update(tally["served"])
    acknowledged = sum(t["acknowledged"] for t in tallies)
    for replica in nodes.replicas:
        out(f"   {replica} served {served.get(replica, 0)} calls")
    out(
        f"   retries: {sum(t['client_retries'] for t in tallies)} by the clients (timeouts, "
        f"unroutable), {sum(t['conflict_retries'] for t in tallies)} by the replicas "
        "(conflicting writes)"
    )
    failed = [
        check
        for check, held in (
            (f"only {acknowledged} of {total} calls were acknowledged", acknowledged == total),
            (f"the final count is {final}, not {total}", final == total),
            (
                "a replica served no calls: "
                + ", ".join(r for r in nodes.replicas if not served.get(r)),
                all(served.get(r) for r in nodes.replicas),
            ),
        )
        if not held
    ]
    if failed:
        out("demo-replicas: check failed: " + "; ".join(failed))
        return 1
    replicas_run = len(nodes.replicas)
    out(f"demo-replicas: {total} increments over {replicas_run} replicas, final count {final}")
    return 0
