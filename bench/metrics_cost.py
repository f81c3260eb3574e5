"""What metrics cost: the same work with a node's metrics on and off (issue 22).

Two parts, each interleaved in rounds so that drift in a shared machine's
speed hits both sides alike; every round gives one on/off ratio per measure,
and the report gives each round's ratio, their median and their spread
(min-max):

* **storage, in process**: ``set`` and ``get`` on one real SQLCipher store
  (``SQLCipherStorageProvider``, the ``encrypted-sqlite`` path), with the
  metrics listener registered (``StorageMetrics`` on ``Instruments`` in a
  fresh ``CollectorRegistry``, through ``storage.events.listen``, as
  ``metrics.endpoint.start`` does) and with no listener at all. A third case,
  *hook only*, registers just an observer like the node's own exit on
  unavailable storage (``node/serving.py``), which every node has whether or
  not it serves metrics: *metrics / hook only* is the listener's own cost.
* **RPC, through real nodes**: two stacks started the same way (secured,
  encrypted-sqlite; ``LocalNodes(metrics=True)``, so the sentinel and the
  agent each serve /metrics, and ``metrics=False``), store_value/retrieve_value
  in batches, sequential (p50, req/s) and 32 in flight (p50, req/s). At the
  end the on stack's agent is scraped once: its call counter must have seen
  every call (else the "on" stack measured nothing).

The issue's target is a cost of at most 5 % on RPC p50 and on storage set/s;
a measure falls short only if its whole spread is past 5 %. No assertion on
speed: it prints, and a reader judges.

    python bench/metrics_cost.py [--rounds 9] [--quick] [--control] [--breakdown]
    make bench ONLY=metrics [BENCH_ARGS=...]

``--breakdown`` prints only what each piece (the hook's Observation, the
listener, its counter and histogram) adds per storage operation, timed alone.
``--control`` runs the RPC part with metrics off on both stacks: an A/A run,
the spread two like stacks show on this machine.

``make bench`` runs it too, after its other sections (bench/run.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

REPO = Path(__file__).resolve().parents[1]
TARGET = 0.05  # the issue's: at most 5 % slower with metrics on

ON, OFF, HOOK_ONLY = "on", "off", "hook only"
# measure -> whether a higher figure is better (a rate) or a lower one (a latency)
HIGHER_IS_BETTER = {
    "storage set/s": True,
    "storage get/s": True,
    "RPC p50 ms, sequential": False,
    "RPC req/s, sequential": True,
    "RPC p50 ms, 32 concurrent": False,
    "RPC req/s, 32 concurrent": True,
}
# The measures the issue sets its 5 % target on.
TARGETED = ("storage set/s", "RPC p50 ms, sequential", "RPC p50 ms, 32 concurrent")

# Within a round the cases take turns SLICES times (in a turning order), so that
# a burst of load from elsewhere lands on all of them; a round's figure is over its slices.
SLICES = 4
MADE = "calls made"  # an entry of bench_rpc's figures: the calls each stack answered
Rounds = dict[str, dict[str, list[float]]]  # measure -> case -> one figure per round


class Record(BaseModel):
    value: str


# ---------------------------------------------------------------- storage
async def bench_storage(rounds: int, ops: int) -> Rounds:
    """set/s and get/s per round for each case, on one store (see the module docstring)."""
    from prometheus_client import CollectorRegistry, disable_created_metrics

    from persistent_agent.errors import StorageUnavailableError
    from persistent_agent.keys.master_key import generate_master_key, parse_master_key
    from persistent_agent.metrics.instruments import Instruments
    from persistent_agent.metrics.listener import StorageMetrics
    from persistent_agent.storage import events
    from persistent_agent.storage.provider import SQLCipherStorageProvider

    disable_created_metrics()  # type: ignore[no-untyped-call]  # as endpoint.start does

    class NodeObserver(events.StorageListener):
        """What node/serving.py's StorageFailed does per operation."""

        def __init__(self) -> None:
            self.failures: list[BaseException] = []

        def observed(self, event: events.Observation) -> None:
            if isinstance(event.error, StorageUnavailableError):
                self.failures.append(event.error)

    # One listener per case for the whole run, as a node has one.
    registry = CollectorRegistry()  # a fresh one, as each node's
    listeners: dict[str, list[events.StorageListener]] = {
        OFF: [],
        ON: [StorageMetrics(Instruments(registry))],
        HOOK_ONLY: [NodeObserver()],
    }
    keys = [f"key-{i:03d}" for i in range(100)]
    records = [Record(value="v" * 100 + str(i)) for i in range(100)]
    n_set, n_get = ops // SLICES, 3 * ops // SLICES  # per slice
    figures: Rounds = {m: {} for m in ("storage set/s", "storage get/s")}
    with tempfile.TemporaryDirectory() as tmp:
        provider = SQLCipherStorageProvider(Path(tmp), parse_master_key(generate_master_key()))
        try:
            store = await provider.get_kv_store(Record, "bench")

            async def timed(case: str) -> tuple[float, float]:
                """Seconds for n_set sets, then n_get gets, with *case*'s listeners."""
                stops = [events.listen(each) for each in listeners[case]]
                try:
                    started = time.perf_counter()
                    for i in range(n_set):
                        await store.set(keys[i % 100], records[i % 100])
                    between = time.perf_counter()
                    for i in range(n_get):
                        await store.get(keys[i % 100])
                    return between - started, time.perf_counter() - between
                finally:
                    for stop in stops:
                        stop()

            cases = list(listeners)
            for case in cases:  # warm up: every key exists, every path ran once
                await timed(case)
            for r in range(rounds):
                seconds = {case: [0.0, 0.0] for case in cases}  # sets, gets
                for s in range(SLICES):
                    shift = (r + s) % len(cases)  # no case always first
                    for case in cases[shift:] + cases[:shift]:
                        set_s, get_s = await timed(case)
                        seconds[case][0] += set_s
                        seconds[case][1] += get_s
                for case, (set_s, get_s) in seconds.items():
                    figures["storage set/s"].setdefault(case, []).append(n_set * SLICES / set_s)
                    figures["storage get/s"].setdefault(case, []).append(n_get * SLICES / get_s)
        finally:
            provider.close()
    counted = registry.get_sample_value(
        "persistent_agent_storage_operations_total",
        {"namespace": "bench", "operation": "set", "outcome": "ok"},
    )
    if counted != n_set * (rounds * SLICES + 1):
        raise SystemExit(f"the metrics listener counted {counted} sets: the comparison is void")
    return figures


# ---------------------------------------------------------------- RPC
MakeNodes = Callable[[Path, bool], Any]  # (root, metrics) -> an initialised LocalNodes


def bench_rpc(
    make_nodes: MakeNodes,
    client_env: Callable[[Any], None],
    rounds: int,
    sequential: int,
    concurrent: int,
    control: bool = False,
) -> Rounds:
    """The two stacks (metrics on, off), started alike and called in interleaved batches.

    *control*: the "on" stack serves no metrics either (an A/A run: how far
    apart two like stacks come out on this machine).
    """
    with tempfile.TemporaryDirectory() as tmp:
        stacks = {
            ON: make_nodes(Path(tmp) / "on", not control),
            OFF: make_nodes(Path(tmp) / "off", False),
        }
        try:
            for nodes in stacks.values():
                nodes.start_all()
            figures = asyncio.run(_rpc_rounds(stacks, client_env, rounds, sequential, concurrent))
            if not control:
                _check_metered(stacks, figures)
            return figures
        finally:
            for nodes in stacks.values():
                nodes.stop_all()


async def _rpc_rounds(
    stacks: dict[str, Any],
    client_env: Callable[[Any], None],
    rounds: int,
    sequential: int,
    concurrent: int,
) -> Rounds:
    from naylence.agent import Agent
    from naylence.fame.core import FameFabric
    from run import _agent_call, _first_answer, _percentile, _rpc_batch

    from persistent_agent import AGENT_ADDR
    from persistent_agent.access.fabric import client_config
    from persistent_agent.node.logs import drop_noop_tracing

    figures: Rounds = {m: {} for m in HIGHER_IS_BETTER if m.startswith("RPC")}
    async with contextlib.AsyncExitStack() as stack:
        calls: dict[str, Any] = {}
        for name, nodes in stacks.items():
            client_env(nodes)
            fabric = await stack.enter_async_context(FameFabric.create(root_config=client_config()))
            drop_noop_tracing(fabric.node)  # our client's side, as client.caller sets it up
            calls[name] = _agent_call(Agent.remote_by_address(AGENT_ADDR, fabric=fabric))
        made = dict.fromkeys(calls, 0)
        for name, call in calls.items():
            await _first_answer(call)  # an agent may still be attaching
            calls[name] = call = _bounded(call)
            for i in range(40):  # warm up
                await call(i)
            made[name] += 41
        for r in range(rounds):
            for in_flight, n, label in (
                (1, sequential, "sequential"),
                (32, concurrent, "32 concurrent"),
            ):
                latencies: dict[str, list[float]] = {name: [] for name in calls}
                took = dict.fromkeys(calls, 0.0)
                for s in range(SLICES):  # on and off take turns, in slices
                    order = list(calls) if (r + s) % 2 == 0 else list(reversed(calls))
                    for name in order:
                        took[name] += await _rpc_batch(
                            calls[name], n // SLICES, in_flight, latencies[name]
                        )
                        made[name] += n // SLICES
                for name in calls:
                    p50 = _percentile(latencies[name], 0.5) * 1000
                    figures[f"RPC p50 ms, {label}"].setdefault(name, []).append(p50)
                    figures[f"RPC req/s, {label}"].setdefault(name, []).append(
                        len(latencies[name]) / took[name]
                    )
    figures[MADE] = {name: [float(count)] for name, count in made.items()}
    return figures


CALL_TIMEOUT = 60.0  # seconds; a call lost on the way stops the run instead of hanging it


def _bounded(call: Callable[[int], Awaitable[Any]]) -> Callable[[int], Awaitable[Any]]:
    async def bounded(i: int) -> Any:
        try:
            return await asyncio.wait_for(call(i), CALL_TIMEOUT)
        except TimeoutError:
            raise SystemExit(f"a call got no answer in {CALL_TIMEOUT:g} s: run stopped") from None

    return bounded


def _check_metered(stacks: dict[str, Any], figures: Rounds) -> None:
    """The on stack's agent counted every call; the off stack serves no /metrics."""
    if stacks[OFF].metrics_url("agent") is not None:
        raise SystemExit("the metrics-off stack serves /metrics: the comparison is void")
    url = stacks[ON].metrics_url("agent")
    if url is None:
        raise SystemExit("the metrics-on stack's agent serves no /metrics: the comparison is void")
    with urllib.request.urlopen(url, timeout=10) as reply:  # noqa: S310 - our loopback URL
        text = reply.read().decode()
    counted = sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("persistent_agent_rpc_calls_total{")
    )
    made = figures.pop(MADE)[ON][0]
    if counted < made:
        raise SystemExit(
            f"the metrics-on agent counted {counted:.0f} calls of {made:.0f}: "
            "the comparison is void"
        )


# ---------------------------------------------------------------- per operation
def breakdown(repeat: int = 7, number: int = 100_000) -> dict[str, float]:
    """Microseconds per storage operation of each piece the metrics add, timed alone
    (timeit, the fastest of *repeat*): what an Observation costs to make, what the
    hook's delivery costs, and what the metrics listener does with it."""
    import timeit

    from prometheus_client import CollectorRegistry

    from persistent_agent.metrics.instruments import Instruments
    from persistent_agent.metrics.listener import StorageMetrics
    from persistent_agent.storage import events

    metrics = StorageMetrics(Instruments(CollectorRegistry()))
    event = events.Observation("set", "bench", 3e-5, "ok")
    metrics.observed(event)  # its tallies exist, as after a node's first operation
    pieces = {
        "Observation(...), made once per operation by the hook": lambda: events.Observation(
            "set", "bench", 3e-5, "ok"
        ),
        "StorageMetrics.observed (tallies; prometheus-client only at scrape)": lambda: (
            metrics.observed(event)
        ),
    }
    return {
        name: min(timeit.repeat(piece, number=number, repeat=repeat)) / number * 1e6
        for name, piece in pieces.items()
    }


# ---------------------------------------------------------------- report
def ratios(figures: Rounds, case: str = ON, against: str = OFF) -> dict[str, list[float]]:
    """measure -> *case* / *against*, one per round (each round's pair side by side)."""
    return {
        measure: [a / b for a, b in zip(by_case[case], by_case[against], strict=True)]
        for measure, by_case in figures.items()
        if case in by_case and against in by_case
    }


def cost(measure: str, ratio: float) -> float:
    """How much worse *ratio* (on / off) is, as a fraction: positive is a cost."""
    return 1 - ratio if HIGHER_IS_BETTER[measure] else ratio - 1


def verdict(measure: str, per_round: list[float]) -> str:
    """The issue's rule: a measure falls short only if its whole spread is past the target."""
    costs = sorted(cost(measure, r) for r in per_round)
    median = statistics.median(costs)
    if median <= TARGET:
        return "met"
    if costs[0] <= TARGET:
        return "met by the rule (median past 5 %, the spread reaches within)"
    return "falls short (the whole spread is past 5 %)"


def table(figures: Rounds, meta: str = "") -> str:
    on_off = ratios(figures)
    lines = [
        "### Metrics on and off",
        "",
        *([meta, ""] if meta else []),
        "| measure | off, median | on, median | on / off: median | spread (min-max) "
        "| cost at the median | against ≤ 5 % |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for measure, per_round in on_off.items():
        median = statistics.median(per_round)
        targeted = measure in TARGETED
        lines.append(
            f"| {measure} | {_fmt(statistics.median(figures[measure][OFF]))} "
            f"| {_fmt(statistics.median(figures[measure][ON]))} | {median:.3f} "
            f"| {min(per_round):.3f}-{max(per_round):.3f} | {cost(measure, median):+.1%} "
            f"| {verdict(measure, per_round) if targeted else '(not targeted)'} |"
        )
    hook = ratios(figures, ON, HOOK_ONLY)
    for measure, per_round in hook.items():
        lines.append(
            f"| {measure}: metrics / hook only "
            f"| {_fmt(statistics.median(figures[measure][HOOK_ONLY]))} "
            f"| {_fmt(statistics.median(figures[measure][ON]))} "
            f"| {statistics.median(per_round):.3f} "
            f"| {min(per_round):.3f}-{max(per_round):.3f} "
            f"| {cost(measure, statistics.median(per_round)):+.1%} | (the listener's own) |"
        )
    measures = list(on_off)
    lines += [
        "",
        "Each round's ratio, on / off (a rate below 1, or a latency above 1, is a cost):",
        "",
        "| round | " + " | ".join(measures) + " |",
        "| ---: | " + " | ".join("---:" for _ in measures) + " |",
    ]
    rounds = max(len(v) for v in on_off.values())
    for r in range(rounds):
        cells = [f"{on_off[m][r]:.3f}" if r < len(on_off[m]) else "" for m in measures]
        lines.append(f"| {r + 1} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt(value: float) -> str:
    return f"{value:,.2f}" if value < 100 else f"{value:,.0f}"


def summary(figures: Rounds) -> dict[str, Any]:
    """The JSON form: every figure per round, and the ratios."""
    return {
        "figures": figures,
        "on_off": ratios(figures),
        "on_hook_only": ratios(figures, ON, HOOK_ONLY),
    }


def run_all(
    make_nodes: MakeNodes,
    client_env: Callable[[Any], None],
    rounds: int,
    quick: bool,
    control: bool = False,
) -> Rounds:
    """Both parts (*control*: the RPC part alone, both stacks with metrics off)."""
    ops, sequential, concurrent = (1000, 100, 200) if quick else (4000, 300, 600)
    figures = {} if control else asyncio.run(bench_storage(rounds, ops))
    figures |= bench_rpc(make_nodes, client_env, rounds, sequential, concurrent, control)
    figures.pop(MADE, None)
    return figures


def load_line() -> str:
    one, five, fifteen = os.getloadavg()
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"Started {when}, {os.cpu_count()} cores, load average {one:.2f}, {five:.2f}, {fifteen:.2f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9, help="interleaved rounds (at least 5)")
    parser.add_argument("--quick", action="store_true", help="smaller batches (a smoke run)")
    parser.add_argument("--out", type=Path, default=REPO / "bench-results")
    parser.add_argument(
        "--control",
        action="store_true",
        help="A/A: the RPC part with metrics off on both stacks (the machine's own spread)",
    )
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="only the microseconds each piece adds to a storage operation, timed alone",
    )
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.breakdown:
        for name, micros in breakdown().items():
            print(f"{micros:6.2f} µs  {name}")
        return 0
    meta = load_line()

    import run  # beside this file: the stacks, the client and the batches of `make bench`

    run.access_material()  # first: the CA this process pins, before aiohttp is imported
    from persistent_agent.node import logs

    logs.install()  # the client side drops disabled log levels, as our client does
    figures = run_all(
        lambda root, metrics: run._nodes(root, run.SECURED, metrics=metrics),
        run.client_env,
        args.rounds,
        args.quick,
        args.control,
    )
    control = "; control run: metrics off on both stacks" if args.control else ""
    report = table(figures, meta + f"; {args.rounds} rounds{control}")
    print(report)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    doc = {"when": stamp, "started": meta, "rounds": args.rounds, **summary(figures)}
    (args.out / f"metrics-{stamp}.json").write_text(json.dumps(doc, indent=2))
    print(f"\n(figures also in {args.out}/metrics-{stamp}.json)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
