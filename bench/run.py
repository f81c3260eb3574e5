"""`make bench`: our SQLCipher provider side by side with the runtime's, in one run.

Prints a markdown table and writes the same figures as JSON under
bench-results/. Shared, noisy machines make absolute numbers drift, so the
figures that matter are the ratios, all measured in this one run.

The stacks run secured, as users run them (wss://, tokens from their own
issuer, the project CA pinned), beside one with PERSISTENT_AGENT_FABRIC_SECURITY
=off and a relay floor both with and without TLS, so that each is measured
against the floor that pays for what it does.

Last, the cost of metrics on and off (bench/metrics_cost.py), in a section of its own.

    python bench/run.py [--quick] [--out bench-results] [--metrics-rounds 9]
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import datetime
import functools
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))  # relay.py, beside this file
os.environ.setdefault("FAME_LOG_LEVEL", "critical")


class Record(BaseModel):
    value: str


KEYS = [f"key-{i:03d}" for i in range(100)]
VALUE = "v" * 100


# ---------------------------------------------------------------- storage
async def _time_ops(n: int, op: Callable[[int], Awaitable[Any]]) -> float:
    started = time.perf_counter()
    for i in range(n):
        await op(i)
    return n / (time.perf_counter() - started)


async def _bench_store(store: Any, n_set: int, n_get: int) -> dict[str, float]:
    records = [Record(value=f"{VALUE}{i}") for i in range(len(KEYS))]
    for key, record in zip(KEYS, records, strict=True):  # warm up: every key exists
        await store.set(key, record)
    sets = await _time_ops(n_set, lambda i: store.set(KEYS[i % 100], records[i % 100]))
    gets = await _time_ops(n_get, lambda i: store.get(KEYS[i % 100]))
    return {"set_per_s": sets, "get_per_s": gets}


async def _raw_sqlcipher(directory: Path, n_set: int, n_get: int) -> dict[str, float]:
    """The physical limit: one persistent connection, same statements and pragmas."""
    import sqlcipher3.dbapi2 as sqlcipher

    conn = sqlcipher.connect(str(directory / "raw.db"), isolation_level=None)
    conn.execute("PRAGMA cipher_log_level = NONE")
    conn.execute("PRAGMA key = \"x'" + "ab" * 32 + "'\"")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT NOT NULL, updated_at REAL)")
    docs = [Record(value=f"{VALUE}{i}").model_dump_json() for i in range(100)]
    upsert = (
        "INSERT INTO kv (key, value, updated_at) VALUES (?, ?, ?) ON CONFLICT(key) "
        "DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at"
    )
    for key, doc in zip(KEYS, docs, strict=True):
        conn.execute(upsert, (key, doc, 0.0))

    async def put(i: int) -> None:
        conn.execute(upsert, (KEYS[i % 100], docs[i % 100], time.time()))

    async def get(i: int) -> None:
        conn.execute("SELECT value FROM kv WHERE key = ?", (KEYS[i % 100],)).fetchone()

    result = {"set_per_s": await _time_ops(n_set, put), "get_per_s": await _time_ops(n_get, get)}
    conn.close()
    return result


async def bench_storage(quick: bool) -> dict[str, dict[str, float]]:
    from naylence.fame.factory import create_resource
    from naylence.fame.storage import storage_profile_factory as builtin
    from naylence.fame.storage.storage_provider_factory import StorageProviderFactory

    from persistent_agent.keys.master_key import generate_master_key, parse_master_key
    from persistent_agent.storage.provider import SQLCipherStorageProvider

    n_set, n_get = (1000, 3000) if quick else (4000, 12000)
    results: dict[str, dict[str, float]] = {}
    key_hex = generate_master_key()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ["FAME_STORAGE_MASTER_KEY"] = key_hex

        ours = SQLCipherStorageProvider(root / "ours", parse_master_key(key_hex))
        results["ours (SQLCipher)"] = await _bench_store(
            await ours.get_kv_store(Record, "bench"), n_set, n_get
        )
        ours.close()

        # The runtime's providers exactly as its stock profiles configure them
        # (the encrypted one with its value cache on), built from its own dicts.
        uncached = {**builtin.ENCRYPTED_SQLITE_PROFILE, "is_cached": False}
        for label, profile, sub in (
            ("runtime encrypted-sqlite", builtin.ENCRYPTED_SQLITE_PROFILE, "builtin-enc"),
            ("runtime encrypted-sqlite, cache off", uncached, "builtin-enc-nocache"),
            ("runtime sqlite (plain)", builtin.SQLITE_PROFILE, "builtin-plain"),
        ):
            os.environ["FAME_STORAGE_DB_DIRECTORY"] = str(root / sub)
            if "plain" in sub:
                os.environ.pop("FAME_STORAGE_MASTER_KEY", None)
            provider = await create_resource(StorageProviderFactory, dict(profile))
            results[label] = await _bench_store(
                await provider.get_kv_store(Record, "bench"), n_set, n_get
            )
        (root / "raw").mkdir()
        results["raw sqlcipher3 (limit)"] = await _raw_sqlcipher(root / "raw", n_set, n_get)
    return results


# ---------------------------------------------------------------- end to end
# Credentials of the shared-state rows' replicas (bench/shared.py), made with the rest.
REPLICA_CREDENTIALS = {"replica-1": "agent", "replica-2": "agent"}
# This process's fabric settings, dropped before it joins another stack.
_CLIENT_SETTINGS = ("PERSISTENT_AGENT_", "FAME_ADMISSION_", "FAME_JWT_")


@functools.cache
def access_material() -> Path:
    """The one access directory (CA, certificates, credentials) of every stack in this run.

    aiohttp builds its default TLS context when it is imported, from the CA
    pinned then, so every stack this process talks to must share that one CA:
    each stack gets a copy of this directory, and this process pins its CA.
    Call it before anything imports aiohttp.
    """
    from persistent_agent.access import project
    from persistent_agent.access.fabric import pinned_roots
    from persistent_agent.access.project import access_dir

    root = Path(tempfile.mkdtemp(prefix="bench-access-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    project.ensure(root, REPLICA_CREDENTIALS)
    os.environ.update(pinned_roots(access_dir(root) / "ca.crt"))
    return access_dir(root)


def _nodes(root: Path, profile: str, secure: bool = True, metrics: bool | None = None) -> Any:
    """An initialised stack under *root*; *secure* False is the loopback opt-out.

    *metrics*: whether its nodes serve /metrics (None: LocalNodes' default, on
    unless PERSISTENT_AGENT_LOCAL_METRICS=off).
    """
    from persistent_agent.access.project import access_dir
    from persistent_agent.demo.local_nodes import LocalNodes, free_port
    from persistent_agent.ops import config_files

    config = root / "config"
    config.mkdir(parents=True, exist_ok=True)
    for example in (REPO / "config").glob(".env.*.example"):
        shutil.copy(example, config / example.name)
    config_files.init(config, root / "data")
    shutil.copytree(access_material(), access_dir(config), dirs_exist_ok=True)
    nodes = LocalNodes(
        config,
        root / "data",
        root / "run",
        port=free_port(),
        issuer_port=free_port(),
        secure=secure,
        extra_env={"FAME_STORAGE_PROFILE": profile, "FAME_LOG_LEVEL": "critical"},
    )
    if metrics is not None:
        nodes.metrics = metrics
    return nodes


def client_env(nodes: Any) -> None:
    """This process becomes a client of *nodes*' sentinel (its access settings, memory
    storage, own id); the previous stack's settings go, the pinned CA stays."""
    from persistent_agent.client.caller import use_unique_node_id

    for name in [k for k in os.environ if k.startswith(_CLIENT_SETTINGS)]:
        del os.environ[name]
    os.environ.update(nodes.access_env("client"))
    os.environ["FAME_DIRECT_ADMISSION_URL"] = nodes.admission_url()
    os.environ["FAME_STORAGE_PROFILE"] = "memory"
    use_unique_node_id()


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


Call = Callable[[int], Awaitable[Any]]


def _agent_call(agent: Any) -> Call:
    """Alternate store_value and retrieve_value, as the demo's client does."""

    def call(i: int) -> Awaitable[Any]:
        return agent.retrieve_value() if i % 2 else agent.store_value(f"value-{i}")

    return call


async def _rpc_batch(call: Call, calls: int, concurrency: int, latencies: list[float]) -> float:
    """*calls* calls, *concurrency* in flight; returns seconds."""
    semaphore = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with semaphore:
            started = time.perf_counter()
            await call(i)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(calls)))
    return time.perf_counter() - started


async def _rpc_interleaved(
    stacks: dict[str, Any], relays: dict[str, Relay], calls: int, rounds: int
) -> dict[str, dict[str, float]]:
    """Every target side by side: batches alternate between them (in turned order
    every other round) so that drift on a shared machine hits all equally."""
    from naylence.agent import Agent
    from naylence.fame.core import FameFabric
    from relay import Client

    from persistent_agent import AGENT_ADDR
    from persistent_agent.access.fabric import client_config
    from persistent_agent.node.logs import drop_noop_tracing

    samples: dict[str, list[float]] = {}
    elapsed: dict[str, float] = {}
    async with contextlib.AsyncExitStack() as stack:
        targets: dict[str, Call] = {}
        for name, nodes in stacks.items():
            client_env(nodes)
            fabric = await stack.enter_async_context(FameFabric.create(root_config=client_config()))
            if name != UPSTREAM:  # our client's side, as client.caller sets it up
                drop_noop_tracing(fabric.node)
            targets[name] = _agent_call(Agent.remote_by_address(AGENT_ADDR, fabric=fabric))
        for name, (url, ca_file) in relays.items():
            relay = await Client.connect(url, ca_file)
            stack.push_async_callback(relay.close)
            targets[name] = functools.partial(_relay_call, relay)
        for call in targets.values():
            await _first_answer(call)  # an agent may still be attaching
            for i in range(20):  # warm up
                await call(i)
        for concurrency in (1, 32):
            for r in range(rounds):
                order = list(targets) if r % 2 == 0 else list(reversed(targets))
                for name in order:
                    label = f"{name}, {'sequential' if concurrency == 1 else '32 concurrent'}"
                    took = await _rpc_batch(
                        targets[name], calls // rounds, concurrency, samples.setdefault(label, [])
                    )
                    elapsed[label] = elapsed.get(label, 0.0) + took
    return {
        label: {
            "p50_ms": _percentile(values, 0.5) * 1000,
            "p99_ms": _percentile(values, 0.99) * 1000,
            "req_per_s": len(values) / elapsed[label],
        }
        for label, values in samples.items()
    }


def _relay_call(relay: Any, i: int) -> Awaitable[Any]:
    """One call through a relay floor (bound with partial: a lambda in the loop
    over the relays would see only the last one)."""
    return relay.call(f"value-{i}")


async def _first_answer(call: Call, patience: float = 120) -> None:
    deadline = time.monotonic() + patience
    while True:
        try:
            await asyncio.wait_for(call(0), 2)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


RELAY = "relay floor"
RELAY_TLS = "relay floor (TLS)"
UPSTREAM = "upstream-shaped agent"
SECURED = "encrypted-sqlite"
SECURITY_OFF = "encrypted-sqlite, security off"
# A relay's URL and the CA file its TLS is verified against (None: plain ws://).
Relay = tuple[str, str | None]


@contextlib.contextmanager
def _relay(access: Path | None = None) -> Iterator[Relay]:
    """The floor's relay and echo service as processes; yields the relay's URL and CA file.

    With *access* (a config/access directory) the relay serves wss:// with the
    sentinel's certificate, as the secured sentinel does.
    """
    from persistent_agent.demo.local_nodes import free_port

    port = free_port()
    url = f"{'wss' if access else 'ws'}://127.0.0.1:{port}"
    ca_file = str(access / "ca.crt") if access else None
    tls = [str(access / "sentinel.crt"), str(access / "sentinel.key")] if access else []
    script = str(REPO / "bench" / "relay.py")
    with contextlib.ExitStack() as stack:
        for argv in (
            [script, "relay", str(port), *tls],
            [script, "echo", url, *([ca_file] if ca_file else [])],
        ):
            proc = stack.enter_context(
                subprocess.Popen([sys.executable, *argv], stdout=subprocess.PIPE, text=True)
            )
            stack.callback(proc.terminate)
            if proc.stdout is not None and not proc.stdout.readline():  # "listening"/"attached"
                raise SystemExit(f"the relay floor's {argv[1]} did not start")
        yield url, ca_file


def _start_upstream(nodes: Any) -> subprocess.Popen[bytes]:
    """Our sentinel with the upstream-shaped agent behind it (see bench/upstream_agent.py)."""
    from persistent_agent.ops import config_files

    nodes.start("sentinel")
    env = nodes.env("agent")
    env["FAME_STORAGE_MASTER_KEY"] = config_files.node_keys(nodes.config_dir)["agent"]
    (nodes.data_dir / "upstream").mkdir(parents=True, exist_ok=True)
    env["FAME_STORAGE_DB_DIRECTORY"] = str(nodes.data_dir / "upstream")
    return subprocess.Popen(
        [sys.executable, str(REPO / "bench" / "upstream_agent.py")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def bench_rpc(quick: bool) -> dict[str, dict[str, float]]:
    calls, rounds = (160, 4) if quick else (640, 8)
    with (
        tempfile.TemporaryDirectory() as tmp,
        _relay() as plain,
        _relay(access_material()) as tls,
    ):
        stacks = {p: _nodes(Path(tmp) / p, p) for p in ("memory", SECURED)}
        stacks[SECURITY_OFF] = _nodes(Path(tmp) / "security-off", SECURED, secure=False)
        stacks[UPSTREAM] = _nodes(Path(tmp) / "upstream", "memory")
        upstream = None
        try:
            for name, nodes in stacks.items():
                if name == UPSTREAM:
                    upstream = _start_upstream(nodes)
                else:
                    nodes.start_all()
            relays = {RELAY: plain, RELAY_TLS: tls}
            results = asyncio.run(_rpc_interleaved(stacks, relays, calls, rounds))
        finally:
            if upstream is not None:
                upstream.terminate()
                upstream.wait()
            for nodes in stacks.values():
                nodes.stop_all()
    return dict(sorted(results.items(), key=lambda kv: ("32" in kv[0], kv[0])))


def bench_startup() -> dict[str, float]:
    """Seconds from launching the agent process to its first answered RPC."""
    from naylence.agent import Agent
    from naylence.fame.core import FameFabric

    from persistent_agent import AGENT_ADDR
    from persistent_agent.access.fabric import client_config

    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        nodes = _nodes(Path(tmp), "encrypted-sqlite")
        nodes.start("sentinel")
        client_env(nodes)

        async def first_answer() -> float:
            async with FameFabric.create(root_config=client_config()):
                agent = Agent.remote_by_address(AGENT_ADDR)
                started = time.perf_counter()
                proc = nodes.launch("agent")
                while True:
                    try:
                        # Short per-try timeout: a call sent while the sentinel
                        # still holds the previous agent's route is lost, not
                        # refused, and would otherwise wait out the RPC timeout.
                        await asyncio.wait_for(agent.retrieve_value(), 0.25)
                        break
                    except Exception:  # not attached yet (Unroutable) or lost
                        await asyncio.sleep(0.01)
                elapsed = time.perf_counter() - started
                await agent.store_value("x" * 100)
            nodes.stop("agent")
            proc.wait()
            return elapsed

        try:
            results["empty data"] = asyncio.run(first_answer())
            results["existing encrypted data"] = asyncio.run(first_answer())
        finally:
            nodes.stop_all()
    return results


# ---------------------------------------------------------------- report
def table(storage: dict[str, Any], rpc: dict[str, Any], startup: dict[str, float]) -> str:
    ours = storage["ours (SQLCipher)"]
    builtin = storage["runtime encrypted-sqlite"]
    uncached = storage["runtime encrypted-sqlite, cache off"]
    raw = storage["raw sqlcipher3 (limit)"]
    lines = [
        "### Storage (100 keys, ~100-byte values; one run)",
        "",
        "| provider | set/s | get/s |",
        "| --- | ---: | ---: |",
    ]
    lines += [
        f"| {k} | {v['set_per_s']:,.0f} | {v['get_per_s']:,.0f} |" for k, v in storage.items()
    ]
    lines += [
        "",
        "| ratio | set | get |",
        "| --- | ---: | ---: |",
        f"| ours / runtime encrypted-sqlite | {ours['set_per_s'] / builtin['set_per_s']:.2f}x "
        f"| {ours['get_per_s'] / builtin['get_per_s']:.2f}x |",
        f"| ours / runtime encrypted-sqlite, cache off "
        f"| {ours['set_per_s'] / uncached['set_per_s']:.2f}x "
        f"| {ours['get_per_s'] / uncached['get_per_s']:.2f}x |",
        f"| ours / raw sqlcipher3 | {ours['set_per_s'] / raw['set_per_s']:.2f}x "
        f"| {ours['get_per_s'] / raw['get_per_s']:.2f}x |",
        "",
        "### End to end: store_value/retrieve_value through sentinel and agent on loopback",
        "",
        "| profile, load | p50 ms | p99 ms | req/s |",
        "| --- | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {k} | {v['p50_ms']:.2f} | {v['p99_ms']:.2f} | {v['req_per_s']:,.0f} |"
        for k, v in rpc.items()
    ]
    mem = rpc.get("memory, sequential")
    enc = rpc.get(f"{SECURED}, sequential")
    if mem and enc:
        lines += [
            "",
            f"encrypted-sqlite / memory p50 (sequential): {enc['p50_ms'] / mem['p50_ms']:.3f}x",
        ]
    lines += [line for line in (_ratio_line(rpc, SECURED, SECURITY_OFF, "security on / off"),
                                _ratio_line(rpc, RELAY_TLS, RELAY, "relay floor TLS / plain"))
              if line]  # fmt: skip
    lines += ["", "| ours | against | p50, sequential | req/s, 32 concurrent |"]
    lines += ["| --- | --- | ---: | ---: |"]
    # Each against the floor that pays for what it does: TLS for the secured stack.
    for ours, other in ((SECURED, RELAY_TLS), (SECURED, UPSTREAM), (SECURITY_OFF, RELAY)):
        pair = _pair(rpc, ours, other)
        if pair:
            lines.append(
                f"| {ours} | {other} | {pair[0]:.2f}x the time | {pair[1]:.2f}x the rate |"
            )
    lines += [
        "",
        "### Agent startup to first answered RPC",
        "",
        "| data | seconds |",
        "| --- | ---: |",
    ]
    lines += [f"| {k} | {v:.2f} |" for k, v in startup.items()]
    return "\n".join(lines)


def _pair(rpc: dict[str, Any], ours: str, other: str) -> tuple[float, float] | None:
    """*ours* against *other*: p50 (sequential) and req/s (32 concurrent) ratios."""
    seq, par = f"{ours}, sequential", f"{ours}, 32 concurrent"
    other_seq, other_par = f"{other}, sequential", f"{other}, 32 concurrent"
    if not all(label in rpc for label in (seq, par, other_seq, other_par)):
        return None
    return (
        rpc[seq]["p50_ms"] / rpc[other_seq]["p50_ms"],
        rpc[par]["req_per_s"] / rpc[other_par]["req_per_s"],
    )


def _ratio_line(rpc: dict[str, Any], ours: str, other: str, title: str) -> str | None:
    pair = _pair(rpc, ours, other)
    return f"\n{title}: p50 {pair[0]:.2f}x, req/s {pair[1]:.2f}x" if pair else None


def shared_table(shared: dict[str, Any], rpc: dict[str, Any]) -> str:
    """The encrypted-postgres rows beside the local SQLCipher ones and the raw limit."""
    lines = [
        "### Shared state (encrypted-postgres): increment(1) through sentinel and replicas",
        "",
        "| target, load | p50 ms | p99 ms | increments/s | conflict retries | overload retries |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {k} | {v['p50_ms']:.2f} | {v['p99_ms']:.2f} | {v['req_per_s']:,.0f} "
        f"| {v['conflict_retries']:.0f} | {v['overload_retries']:.0f} |"
        for k, v in shared.items()
    ]
    local = rpc.get("encrypted-sqlite, sequential")
    one = shared.get("shared state, 1 replica, sequential")
    raw = shared.get("raw psycopg round trip (limit), sequential")
    two, one_par = (
        shared.get("shared state, 2 replicas, 32 concurrent"),
        shared.get("shared state, 1 replica, 32 concurrent"),
    )
    if local and one and raw and two and one_par:
        lines += [
            "",
            f"1 replica / local encrypted-sqlite p50 (sequential): "
            f"{one['p50_ms'] / local['p50_ms']:.2f}x; "
            f"shared p50 minus raw round trip: {one['p50_ms'] - raw['p50_ms']:.2f} ms; "
            f"2 replicas / 1 replica increments/s (32 concurrent): "
            f"{two['req_per_s'] / one_par['req_per_s']:.2f}x",
        ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer operations (smoke run)")
    parser.add_argument("--out", type=Path, default=REPO / "bench-results")
    parser.add_argument(
        "--metrics-rounds",
        type=int,
        default=9,
        help="rounds of the metrics on/off section (bench/metrics_cost.py); 0 leaves it out",
    )
    args = parser.parse_args()

    access_material()  # first: the CA this process pins, before aiohttp is imported
    from persistent_agent.node import logs

    logs.install()  # the client side drops disabled log levels, as our client does
    storage = asyncio.run(bench_storage(args.quick))
    rpc = bench_rpc(args.quick)
    from shared import bench_shared

    shared = bench_shared(args.quick, lambda root: _nodes(root, SECURED), client_env)
    startup = bench_startup()
    report = table(storage, rpc, startup) + "\n\n" + shared_table(shared, rpc)
    metrics: dict[str, Any] = {}
    if args.metrics_rounds > 0:  # last, its own section: the tables above stay as they were
        import metrics_cost

        started = metrics_cost.load_line()
        figures = metrics_cost.run_all(
            lambda root, on: _nodes(root, SECURED, metrics=on),
            client_env,
            args.metrics_rounds,
            args.quick,
        )
        metrics = {"started": started, **metrics_cost.summary(figures)}
        report += "\n\n" + metrics_cost.table(figures, f"{started}; {args.metrics_rounds} rounds")
    print(report)

    from importlib.metadata import version

    import naylence.fame  # noqa: F401 - for the version below

    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    doc = {
        "when": stamp,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "runtime": version("naylence-runtime"),
        "sqlcipher3": version("sqlcipher3"),
        "storage": storage,
        "rpc": rpc,
        "shared_state": shared,
        "startup_s": startup,
        "metrics_on_off": metrics,
    }
    (args.out / f"bench-{stamp}.json").write_text(json.dumps(doc, indent=2))
    (args.out / "latest.md").write_text(report + "\n")
    print(f"\n(figures also in {args.out}/bench-{stamp}.json)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
