"""Entry point: the client (``persistent-agent-client``, `make run` / `make local-run`).

Stores the current time in the agent and prints the state before and after,
as the seed's client does; the calling and its retry policy live in
:mod:`persistent_agent.node.caller`. ``persistent-agent-client increment
[--calls N --concurrency C]`` calls ``increment`` instead
(:mod:`persistent_agent.node.increments`).
"""

from __future__ import annotations

import asyncio
import os
import sys

from persistent_agent.errors import PersistentAgentError, report
from persistent_agent.node import caller, increments, logs, serving


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    serving.load_env()
    # Retries would log connection warnings; the one line we print if all
    # fail is enough. Set before the runtime's logging is first imported
    # (logs.install), which reads FAME_LOG_LEVEL then.
    os.environ.setdefault(serving.LOG_LEVEL_VAR, "critical")
    logs.install()
    try:
        if argv[:1] == ["increment"]:
            asyncio.run(increments.main(argv[1:]))
        else:
            asyncio.run(caller.run())
    except PersistentAgentError as error:
        return report("client", error)
    return 0


if __name__ == "__main__":
    sys.exit(main())
