"""Runtime variants side by side: how docs/performance.md measured the upstream proposals.

    python bench/ab.py [--rounds 6 --sequential 100 --concurrent 400] NAME=PYTHONPATH ...

Each NAME is a whole stack: a sentinel, an agent (encrypted-sqlite) and a
client process, all three started with PYTHONPATH, for instance an edited
copy of the runtime's package tree put ahead of the installed one (an empty
value: the installed runtime). Nothing here edits a runtime. All stacks run
at once, beside the relay floor; batches of sequential calls, then of calls
32 in flight, alternate between them in a rotating order, so that a shared
machine's drift hits every variant alike. Prints each variant's p50
(sequential) and rate (32 concurrent), and both as ratios to the first NAME
and to the floor.

    python bench/ab.py client URL        (one variant's load, internal)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
FLOOR = "relay floor (TLS)"  # the variants run secured: the floor pays for TLS too


async def client(url: str) -> None:
    """Answer ``CALLS CONCURRENCY`` lines on stdin with the batch's timings (JSON)."""
    from naylence.agent import Agent
    from naylence.fame.core import FameFabric
    from run import _agent_call, _first_answer, _rpc_batch

    from persistent_agent import AGENT_ADDR
    from persistent_agent.access.fabric import client_config
    from persistent_agent.client.caller import use_unique_node_id
    from persistent_agent.node import logs

    os.environ.update(
        FAME_DIRECT_ADMISSION_URL=url, FAME_STORAGE_PROFILE="memory", FAME_LOG_LEVEL="critical"
    )
    use_unique_node_id()
    logs.install()
    async with FameFabric.create(root_config=client_config()) as fabric:
        try:  # our client's side, where the variant's code has it
            from persistent_agent.node.logs import drop_noop_tracing

            drop_noop_tracing(fabric.node)
        except ImportError:
            pass
        call = _agent_call(Agent.remote_by_address(AGENT_ADDR))
        await _first_answer(call)
        for i in range(50):
            await call(i)
        print("ready", flush=True)
        loop = asyncio.get_running_loop()
        while line := (await loop.run_in_executor(None, sys.stdin.readline)).strip():
            calls, concurrency = map(int, line.split())
            latencies: list[float] = []
            took = await _rpc_batch(call, calls, concurrency, latencies)
            print(json.dumps({"took": took, "latencies": latencies}), flush=True)


def compare(variants: dict[str, str], rounds: int, batches: dict[int, int]) -> dict[str, Any]:
    import run as bench
    from relay import Client

    samples: dict[tuple[str, int], list[float]] = {}
    elapsed: dict[tuple[str, int], float] = {}
    with tempfile.TemporaryDirectory() as tmp, bench._relay(bench.access_material()) as floor:
        stacks, clients = {}, {}
        try:
            for name, path in variants.items():
                nodes = bench._nodes(Path(tmp) / name, "encrypted-sqlite")
                nodes.extra_env["PYTHONPATH"] = path
                nodes.start_all()
                stacks[name] = nodes
                env = {k: v for k, v in os.environ.items() if not k.startswith("FAME_")}
                env |= nodes.access_env("client")  # its credential, the CA pinned
                clients[name] = subprocess.Popen(  # noqa: S603 - this script, our interpreter
                    [sys.executable, __file__, "client", nodes.admission_url()],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                    env={**env, "PYTHONPATH": path},
                )
            for proc in clients.values():
                if proc.stdout is None or proc.stdout.readline().strip() != "ready":
                    raise SystemExit("a variant's client did not start")

            async def floor_batch(calls: int, concurrency: int, out: list[float]) -> float:
                relay = await Client.connect(*floor)
                try:
                    return await bench._rpc_batch(
                        lambda i: relay.call(f"value-{i}"), calls, concurrency, out
                    )
                finally:
                    await relay.close()

            targets = [*variants, FLOOR]
            for concurrency, calls in batches.items():
                for r in range(rounds):
                    order = targets[r % len(targets) :] + targets[: r % len(targets)]
                    for name in reversed(order) if r % 2 else order:
                        latencies: list[float] = []
                        if name == FLOOR:
                            took = asyncio.run(floor_batch(calls, concurrency, latencies))
                        else:
                            proc = clients[name]
                            if proc.stdin is None or proc.stdout is None:
                                raise SystemExit(f"{name}: no pipe to its client")
                            proc.stdin.write(f"{calls} {concurrency}\n")
                            proc.stdin.flush()
                            batch = json.loads(proc.stdout.readline())
                            took, latencies = batch["took"], batch["latencies"]
                        samples.setdefault((name, concurrency), []).extend(latencies)
                        elapsed[name, concurrency] = elapsed.get((name, concurrency), 0.0) + took
        finally:
            for proc in clients.values():
                if proc.stdin is not None:
                    proc.stdin.close()
                proc.wait(timeout=30)
            for nodes in stacks.values():
                nodes.stop_all()
    return {
        name: {
            "p50_ms": statistics.median(samples[name, 1]) * 1000,
            "req_per_s_32": len(samples[name, 32]) / elapsed[name, 32],
        }
        for name in [*variants, FLOOR]
    }


def main() -> int:
    if sys.argv[1:2] == ["client"]:
        asyncio.run(client(sys.argv[2]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--sequential", type=int, default=100, help="calls per sequential batch")
    parser.add_argument("--concurrent", type=int, default=400, help="calls per batch of 32")
    parser.add_argument("variants", nargs="+", metavar="NAME=PYTHONPATH")
    args = parser.parse_args()
    variants = dict(v.partition("=")[::2] for v in args.variants)
    results = compare(variants, args.rounds, {1: args.sequential, 32: args.concurrent})
    first, floor = results[next(iter(variants))], results[FLOOR]
    print(
        "| variant | p50 ms | req/s @32 | p50 / first | rate / first | p50 / floor | rate / floor |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, v in results.items():
        print(
            f"| {name} | {v['p50_ms']:.2f} | {v['req_per_s_32']:,.0f} "
            f"| {v['p50_ms'] / first['p50_ms']:.2f} "
            f"| {v['req_per_s_32'] / first['req_per_s_32']:.2f} "
            f"| {v['p50_ms'] / floor['p50_ms']:.2f} "
            f"| {v['req_per_s_32'] / floor['req_per_s_32']:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
