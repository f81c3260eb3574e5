"""Client: store the current time in the agent and show the state before and after.

Run with `make run` (compose) or `make local-run` (local processes).
"""

from __future__ import annotations

import asyncio
import os
import sys

from persistent_agent import client, node
from persistent_agent.errors import PersistentAgentError


def main() -> int:
    node.load_env()
    # Retries log connection warnings; the one line we print if all fail is
    # enough. The runtime re-reads FAME_LOG_LEVEL whenever a fabric starts.
    os.environ.setdefault(node.LOG_LEVEL_VAR, "critical")
    try:
        asyncio.run(client.run())
    except PersistentAgentError as error:
        print(f"client: error: {error}", file=sys.stderr)
        return error.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
