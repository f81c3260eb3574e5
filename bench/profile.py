"""`make bench PROFILE=1`: where each millisecond of a call goes, per process.

Starts the sentinel and the agent (encrypted-sqlite) as `make local-start`
does, and a client process that keeps CONCURRENCY calls in flight
(store_value/retrieve_value alternating). While it runs, py-spy samples the
three processes (``record --format raw --nonblocking``; a loop waiting in
epoll is idle and not counted) and psutil counts their CPU time.
Every sampled stack is put in one category: TLS when its innermost frame is
in ``ssl.py`` or asyncio's ``sslproto.py`` (record encryption and the SSL
transport; by the leaf, since a received record's stack runs on through
sslproto into everything that handles it), else by the frames it contains,
in this order of precedence: logging, delivery tracking (the runtime's inbox
and outbox), storage, security (the runtime's and our authorizer),
envelope (de)serialisation and validation, routing, websocket and socket,
the runtime's node dispatch (channels, listeners, the RPC layer), the event
loop itself, other. The table gives each process's CPU time per call, split
by those shares. The stack is secured as users run it; ``--security off``
profiles the loopback opt-out instead, for comparison.

    python bench/profile.py [--calls 4000] [--concurrency 32] [--security off]
    python bench/profile.py client URL CALLS CONCURRENCY   (the load, internal)
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

# A sampled stack whose innermost frame matches this is TLS work.
TLS = "TLS"
TLS_LEAF = r"\((asyncio/sslproto|ssl)\.py:"
# (category, pattern on "function (file:line)" frames), in order of precedence.
CATEGORIES = [
    ("logging", r"structlog/|\(logging/__init__|util/logging"),
    ("delivery tracking", r"DeliveryTracker|delivery_tracker|\(delivery/"),
    ("storage", r"persistent_agent/storage/|\(storage/|sqlcipher3"),
    ("security", r"SecurityManager|\(security/|persistent_agent/access/"),
    (
        "envelope (de)serialisation, validation",
        r"pydantic|\(json/|model_validate|model_dump|\(core/protocol|_serialize|_deserialize",
    ),
    ("routing", r"\(sentinel/|rout(e|ing)"),
    (
        "websocket, socket",
        r"websockets/|uvicorn/|starlette/|selector_events|socket\.py|\(connector/",
    ),
    (
        "node dispatch (runtime)",
        r"\((node|channel|fabric|service|tracking|rpc)/|naylence/agent/|\(agent/",
    ),
    ("event loop", r"asyncio/"),
]
OTHER = "other"
IDLE_LEAF = "EpollSelector.select (selectors.py:468)"
NAMES = [TLS] + [name for name, _ in CATEGORIES] + [OTHER]


def categorise(stack: str) -> str:
    if re.search(TLS_LEAF, stack.rpartition(";")[2]):
        return TLS
    for name, pattern in CATEGORIES:
        if re.search(pattern, stack):
            return name
    return OTHER


def read_raw(path: Path) -> collections.Counter[str]:
    """py-spy's raw (collapsed) output: ``frame;frame;… count`` per line."""
    shares: collections.Counter[str] = collections.Counter()
    if path.exists():
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            # Waiting in epoll is idle, however py-spy classed the thread.
            if count.isdigit() and not stack.endswith(IDLE_LEAF):
                shares[categorise(stack)] += int(count)
    return shares


# ---------------------------------------------------------------- the load
async def load(url: str, calls: int, concurrency: int) -> None:
    from naylence.agent import Agent
    from naylence.fame.core import FameFabric
    from run import _agent_call, _first_answer, _rpc_batch

    from persistent_agent import AGENT_ADDR
    from persistent_agent.access.fabric import client_config
    from persistent_agent.client.caller import use_unique_node_id
    from persistent_agent.node import logs
    from persistent_agent.node.logs import drop_noop_tracing

    os.environ["FAME_DIRECT_ADMISSION_URL"] = url
    os.environ["FAME_STORAGE_PROFILE"] = "memory"
    use_unique_node_id()
    logs.install()  # as persistent-agent-client does: disabled levels cost nothing
    async with FameFabric.create(root_config=client_config()) as fabric:
        drop_noop_tracing(fabric.node)  # as client.caller does
        call = _agent_call(Agent.remote_by_address(AGENT_ADDR))
        await _first_answer(call)
        for i in range(50):
            await call(i)
        print("ready", flush=True)
        sys.stdin.readline()
        took = await _rpc_batch(call, calls, concurrency, [])
        print(f"{took:.6f}", flush=True)


# ---------------------------------------------------------------- the profile
def profile(calls: int, concurrency: int, keep: Path | None = None, secure: bool = True) -> str:
    from run import _nodes

    spy = Path(sys.executable).parent / "py-spy"
    with tempfile.TemporaryDirectory() as tmp:
        nodes = _nodes(Path(tmp) / "stack", "encrypted-sqlite", secure=secure)
        nodes.start_all()
        client = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "client",
                nodes.admission_url(),
                str(calls),
                str(concurrency),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, **nodes.access_env("client")},  # its credential, the CA pinned
        )
        try:
            if client.stdin is None or client.stdout is None:
                raise SystemExit("no pipe to the load client")
            if client.stdout.readline().strip() != "ready":
                raise SystemExit("the load client did not start")
            pids = {
                "client": client.pid,
                "sentinel": nodes.pid("sentinel"),
                "agent": nodes.pid("agent"),
            }
            processes = {name: psutil.Process(pid) for name, pid in pids.items()}
            before = {name: _cpu(p) for name, p in processes.items()}
            spies = {
                name: subprocess.Popen(
                    [
                        str(spy),
                        "record",
                        "--format",
                        "raw",
                        "--rate",
                        "250",
                        "--nonblocking",
                        "--pid",
                        str(pid),
                        "--output",
                        str(Path(tmp) / f"{name}.txt"),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                for name, pid in pids.items()
            }
            raw_dir = Path(tmp)
            time.sleep(1)  # py-spy attached (it samples from its first tick)
            client.stdin.write("go\n")
            client.stdin.flush()
            took = float(client.stdout.readline())
            after = {name: _cpu(p) for name, p in processes.items()}
            for spy_process in spies.values():
                spy_process.send_signal(signal.SIGINT)
                spy_process.wait(timeout=60)
            rows = []
            for name in pids:
                cpu_ms = (after[name] - before[name]) * 1000 / calls
                shares = read_raw(raw_dir / f"{name}.txt")
                if keep is not None:
                    keep.mkdir(parents=True, exist_ok=True)
                    (keep / f"{name}.txt").write_bytes((raw_dir / f"{name}.txt").read_bytes())
                total = sum(shares.values()) or 1
                rows.append((name, cpu_ms, {k: cpu_ms * shares[k] / total for k in NAMES}))
        finally:
            client.kill()
            nodes.stop_all()
    return _table(rows, calls, concurrency, took)


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def _table(
    rows: list[tuple[str, float, dict[str, float]]], calls: int, concurrency: int, took: float
) -> str:
    lines = [
        f"### Where a call's CPU time goes ({calls} calls, {concurrency} in flight, "
        f"{calls / took:,.0f} req/s while sampled)",
        "",
        "| ms of CPU per call | " + " | ".join(name for name, _, _ in rows) + " |",
        "| --- |" + " ---: |" * len(rows),
        "| **total** | " + " | ".join(f"**{cpu:.2f}**" for _, cpu, _ in rows) + " |",
    ]
    for category in NAMES:
        lines.append(
            f"| {category} | " + " | ".join(f"{split[category]:.2f}" for _, _, split in rows) + " |"
        )
    return "\n".join(lines)


def main() -> int:
    if sys.argv[1:2] == ["client"]:
        url, calls, concurrency = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
        asyncio.run(load(url, calls, concurrency))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--keep", type=Path, help="copy py-spy's raw stacks into this directory")
    parser.add_argument(
        "--security", choices=("on", "off"), default="on", help="off: the loopback opt-out"
    )
    args = parser.parse_args()
    print(profile(args.calls, args.concurrency, args.keep, secure=args.security == "on"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
