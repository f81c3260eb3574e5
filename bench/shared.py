"""The shared state (encrypted-postgres): increments through sentinel and replicas.

Rows, in one run against one PostgreSQL server of the project's own:

* ``shared state, 1 replica`` and ``… 2 replicas``: ``increment(1, id)``
  through the sentinel, sequential and 32 concurrent (p50, p99, increments/s,
  and the replicas' conflict retries);
* ``raw psycopg round trip (limit)``: the same compare-and-set ``UPDATE`` of
  one row (its version), straight from psycopg on a pool of 4, without the
  runtime, the encryption or the sentinel: what the server itself allows.

A call the agent refuses as overloaded (it waited in line longer than
PERSISTENT_AGENT_MAX_WAIT_SECONDS; nothing was done) is sent again, as the
project's client does, and counted: on a loaded machine the 32-concurrent rows
can reach that limit, and a row's latency then includes the retries.

The sentinel and the replicas run secured, as the other stacks of the run do
(each replica with a credential of its own, in the stack's config/access).
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Each replica's credential (role agent), as access/project.py names them.
REPLICA_CREDENTIALS = {"replica-1": "agent", "replica-2": "agent"}
# Added to a reply here: how often the agent refused the call as overloaded first.
REFUSED = "overload_retries"


def _stats(
    latencies: list[float], elapsed: float, retries: int = 0, refused: int = 0
) -> dict[str, float]:
    ordered = sorted(latencies)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000

    return {
        "p50_ms": pick(0.5),
        "p99_ms": pick(0.99),
        "req_per_s": len(latencies) / elapsed,
        "conflict_retries": float(retries),
        "overload_retries": float(refused),
    }


async def _batch(call: Any, calls: int, concurrency: int) -> tuple[list[float], float, int, int]:
    """Latencies, seconds, the replicas' conflict retries and the overload retries."""
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    retries = refused = 0

    async def one() -> None:
        nonlocal retries, refused
        async with gate:
            started = time.perf_counter()
            reply = await call()
            latencies.append(time.perf_counter() - started)
            if isinstance(reply, dict):
                retries += int(reply.get("retries", 0))
                refused += int(reply.get(REFUSED, 0))

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(calls)))
    return latencies, time.perf_counter() - started, retries, refused


async def _raw(dsn: str, password: str, calls: int) -> dict[str, dict[str, float]]:
    from psycopg_pool import AsyncConnectionPool

    rows: dict[str, dict[str, float]] = {}
    async with AsyncConnectionPool(
        dsn, kwargs={"password": password, "autocommit": True}, min_size=4, max_size=4
    ) as pool:
        async with pool.connection() as conn:
            await conn.execute("CREATE TABLE IF NOT EXISTS bench (id int PRIMARY KEY, v bigint)")
            await conn.execute("INSERT INTO bench VALUES (1, 0) ON CONFLICT DO NOTHING")

        async def cas() -> dict[str, int]:
            async with pool.connection() as conn:
                while True:
                    cur = await conn.execute("SELECT v FROM bench WHERE id = 1")
                    found = await cur.fetchone()
                    version = int(found[0]) if found else 0
                    cur = await conn.execute(
                        "UPDATE bench SET v = %s WHERE id = 1 AND v = %s", (version + 1, version)
                    )
                    if cur.rowcount == 1:
                        return {}

        for concurrency in (1, 32):
            label = "sequential" if concurrency == 1 else "32 concurrent"
            latencies, elapsed, _, _ = await _batch(cas, calls, concurrency)
            rows[f"raw psycopg round trip (limit), {label}"] = _stats(latencies, elapsed)
    return rows


async def _through_sentinel(nodes: Any, replicas: int, calls: int) -> dict[str, dict[str, float]]:
    from naylence.agent import Agent
    from naylence.fame.core import FameFabric

    from persistent_agent import AGENT_ADDR
    from persistent_agent.access.fabric import client_config
    from persistent_agent.errors import AgentOverloadedError

    rows: dict[str, dict[str, float]] = {}
    async with FameFabric.create(root_config=client_config()):
        agent = Agent.remote_by_address(AGENT_ADDR)

        async def call() -> Any:
            request_id, refused = uuid.uuid4().hex, 0
            while True:
                try:
                    reply = await asyncio.wait_for(agent.increment(n=1, request_id=request_id), 30)
                except Exception as exc:  # the RPC layer raises a plain Exception
                    if not str(exc).startswith(AgentOverloadedError.PREFIX):
                        raise
                    refused += 1  # nothing was done: the same call again
                    continue
                return {**reply, REFUSED: refused}

        # Wait until every replica answers (the pool fills as they attach).
        seen: set[str] = set()
        deadline = time.monotonic() + 120
        while len(seen) < replicas:
            with contextlib.suppress(Exception):
                seen.add(str((await call())["replica"]))
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {sorted(seen)} of {replicas} replicas answered")
        for _ in range(20):  # warm up
            await call()
        name = f"shared state, {replicas} replica{'s' if replicas > 1 else ''}"
        for concurrency in (1, 32):
            label = "sequential" if concurrency == 1 else "32 concurrent"
            latencies, elapsed, retries, refused = await _batch(call, calls, concurrency)
            rows[f"{name}, {label}"] = _stats(latencies, elapsed, retries, refused)
    return rows


def bench_shared(
    quick: bool, make_nodes: Callable[[Path], Any], client_env: Callable[[Any], None]
) -> dict[str, dict[str, float]]:
    """All the shared-state rows.

    *make_nodes(root)* gives an initialised LocalNodes root (with its access
    material); *client_env(nodes)* makes this process a client of its sentinel.
    """
    from persistent_agent.access import project
    from persistent_agent.access.project import access_dir, replica_ids
    from persistent_agent.demo.postgres_server import PostgresServer, ServerTls
    from persistent_agent.demo.replicas import LocalReplicas

    calls = 160 if quick else 640
    rows: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base = make_nodes(root / "stack")
        project.ensure(base.config_dir, REPLICA_CREDENTIALS)  # kept if already there
        server = PostgresServer(
            root / "pg",
            root / "pg" / "superuser.password",
            ServerTls.in_access_dir(access_dir(base.config_dir)),
        )
        server.start()
        nodes: LocalReplicas | None = None
        try:
            nodes = LocalReplicas(
                base.config_dir, base.data_dir, base.run_dir, port=base.port,
                issuer_port=base.issuer_port, secure=base.secure, extra_env=base.extra_env,
                dsn=server.create_database("bench"), password_file=server.password_file,
                replicas=replica_ids(2),
            )  # fmt: skip
            rows |= asyncio.run(_raw(server.create_database("raw"), server.password(), calls))
            client_env(nodes)
            nodes.start("sentinel")
            nodes.start_replica("replica-1")
            rows |= asyncio.run(_through_sentinel(nodes, 1, calls))
            nodes.start_replica("replica-2")
            rows |= asyncio.run(_through_sentinel(nodes, 2, calls))
        finally:
            if nodes is not None:
                nodes.stop_all()
            server.stop()
    return rows
