"""Entry point: the sentinel node, on the storage selected by FAME_STORAGE_*."""

from __future__ import annotations

import sys
from typing import Any

from naylence.agent import configs

from persistent_agent.node import serving


async def _nothing_to_serve(_fabric: Any) -> None:
    """The sentinel routes; it hosts no agent of its own."""


async def _main() -> None:
    await serving.serve(_nothing_to_serve, configs.SENTINEL_CONFIG)


def main() -> None:
    sys.exit(serving.run("sentinel", _main))


if __name__ == "__main__":
    main()
