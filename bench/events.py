"""What the storage-events hook costs a store call when nobody listens (``storage.events``).

Times ``get`` and ``set`` on a real SQLCipher store (the ``encrypted-sqlite``
path every RPC takes) three ways, interleaved in rounds so that drift in the
machine's speed hits all three alike, and prints the fastest round of each and the ratios:

* **bare**: the method as written, taken from the class before any listener came;
* **hooked**: the method as the node calls it, with no listener registered (one
  was registered and removed before: the hook must give the class its own back);
* **listened**: with one listener of each stream, for scale.

The claim is that *hooked / bare* is 1.00 within the noise. No assertion: it
prints, and a reader judges (timed asserts do not belong in tests).

    python bench/events.py [--calls 20000] [--rounds 15]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from pydantic import BaseModel

from persistent_agent.keys.master_key import generate_master_key, parse_master_key
from persistent_agent.storage import events
from persistent_agent.storage.provider import SQLCipherKeyValueStore, SQLCipherStorageProvider


class Doc(BaseModel):
    n: int


class Listener(events.StorageListener):
    def __init__(self) -> None:
        self.heard = 0

    def observed(self, event: events.Observation) -> None:
        self.heard += 1

    async def committed(self, batch: events.ChangeBatch) -> None:
        self.heard += 1


async def _per_call(calls: int, call: Callable[[], Awaitable[object]]) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        await call()
    return (time.perf_counter() - started) / calls * 1e6  # microseconds


async def _timed_case(
    name: str, calls: int, cases: dict[str, Callable[[], Awaitable[object]]]
) -> float:
    if not name.endswith("listened"):
        return await _per_call(calls, cases[name])
    stop = events.listen(Listener())
    try:
        return await _per_call(calls, cases[name.replace("listened", "hooked")])
    finally:
        stop()


async def _main(calls: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        provider = SQLCipherStorageProvider(
            Path(tmp) / "db", parse_master_key(generate_master_key())
        )
        try:
            store = await provider.get_kv_store(Doc, "bench")
            assert isinstance(store, SQLCipherKeyValueStore)  # noqa: S101 - the bench's premise
            doc = Doc(n=1)
            await store.set("k", doc)
            bare_get = SQLCipherKeyValueStore.get
            bare_set = SQLCipherKeyValueStore.set
            events.listen(Listener())()  # a listener came and went
            cases: dict[str, Callable[[], Awaitable[object]]] = {
                "get bare": lambda: bare_get(store, "k"),
                "get hooked": lambda: store.get("k"),
                "set bare": lambda: bare_set(store, "k", doc),
                "set hooked": lambda: store.set("k", doc),
            }
            timings: dict[str, list[float]] = {name: [] for name in cases}
            timings |= {"get listened": [], "set listened": []}
            for call in cases.values():  # warm-up, not counted
                await _per_call(calls // 10 + 1, call)
            order = [*cases, "get listened", "set listened"]
            for round_ in range(rounds):
                # Each round starts at another case: no case is always first.
                shift = round_ % len(order)
                for name in order[shift:] + order[:shift]:
                    timings[name].append(await _timed_case(name, calls, cases))
        finally:
            provider.close()
    # The fastest round: the least disturbed by the rest of the machine.
    best = {name: min(values) for name, values in timings.items()}
    for name, value in best.items():
        print(f"{name:14} {value:8.2f} µs/call")
    for op in ("get", "set"):
        print(
            f"{op}: hooked/bare = {best[f'{op} hooked'] / best[f'{op} bare']:.3f} "
            f"(no listener); listened/bare = "
            f"{best[f'{op} listened'] / best[f'{op} bare']:.3f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    asyncio.run(_main(args.calls, args.rounds))


if __name__ == "__main__":
    main()
