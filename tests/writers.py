"""Processes that write through the SQLCipher provider, for tests that need a
second process: ``python -m tests.writers live CONFIG DATA`` keeps writing to
the agent's ``extra`` namespace until killed (it prints ``writing`` once it
has written), ``python -m tests.writers bulk ROOT`` fills both nodes with
enough data for a rotation to last a while.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from pydantic import BaseModel

from persistent_agent.ops.node_keys import source_of
from persistent_agent.storage.provider import SQLCipherStorageProvider


class Item(BaseModel):
    text: str


async def fill(root: Path, namespaces: list[str], rows: int, text: str = "") -> None:
    """Write *rows* entries into each of *namespaces* of both nodes under *root*."""
    for role in ("sentinel", "agent"):
        provider = SQLCipherStorageProvider(root / "data" / role, source_of(root / "config", role))
        try:
            for ns in namespaces:
                store = await provider.get_kv_store(Item, ns)
                for i in range(rows):
                    await store.set(f"{role}-{ns}-{i}", Item(text=f"SECRET-{role}-{i}{text}"))
        finally:
            provider.close()


async def live(config_dir: Path, data_dir: Path) -> None:
    """Overwrite 500 keys of the agent's ``extra`` namespace in a loop, forever."""
    provider = SQLCipherStorageProvider(data_dir / "agent", source_of(config_dir, "agent"))
    store = await provider.get_kv_store(Item, "extra")
    i = 0
    while True:
        await store.set(f"live-{i % 500}", Item(text="x" * 200))
        if i == 0:
            print("writing", flush=True)
        i += 1
        await asyncio.sleep(0)


def main(argv: list[str]) -> None:
    command, *args = argv
    if command == "live":
        asyncio.run(live(Path(args[0]), Path(args[1])))
    elif command == "bulk":
        asyncio.run(fill(Path(args[0]), [f"bulk{n}" for n in range(12)], 1500, "-" + "x" * 150))
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
