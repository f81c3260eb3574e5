"""The ``persistent-agent-client`` command line: its subcommands and how errors print.

``persistent-agent-client [run]`` is the seed's flow (``make run``,
``make local-run``): store the current time in the agent and print the state
before and after, exactly the seed's two lines. ``persistent-agent-client
increment --calls N --concurrency C [--by n]`` calls ``increment`` instead and
prints a JSON summary (``make run-increments``, ``make demo-replicas``).

The arguments are parsed before anything else happens, so ``--help`` and a
mistyped option never load a setting nor connect. Every error ends as one
line labelled by where it came from (:func:`persistent_agent.client.failures.label`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from persistent_agent import __version__, settings
from persistent_agent.client import failures, retry
from persistent_agent.errors import report
from persistent_agent.node import logs, serving

PROG = "persistent-agent-client"
Command = Callable[[argparse.Namespace], Coroutine[Any, Any, None]]


async def _run(_args: argparse.Namespace) -> None:
    from persistent_agent.client import caller

    await caller.run()


async def _increment(args: argparse.Namespace) -> None:
    # Imported only now: node.agent imports the runtime, whose logging must
    # first see the level main() sets.
    from persistent_agent.client import increments
    from persistent_agent.node.agent import INCREMENT_MAX, INCREMENT_MIN

    if args.calls < 0 or args.concurrency < 1:
        args.parser.error("--calls must be >= 0 and --concurrency >= 1")
    if not INCREMENT_MIN <= args.by <= INCREMENT_MAX:
        args.parser.error(f"--by must be from {INCREMENT_MIN} to {INCREMENT_MAX} (2**31-1)")
    await increments.main(args.calls, args.concurrency, args.by)


def build_parser() -> argparse.ArgumentParser:
    """The parser, one subparser per command; no subcommand means ``run``."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Call the persistent agent (storage@fame.fabric) through the sentinel "
        "named by FAME_DIRECT_ADMISSION_URL (config/.env.client, PERSISTENT_AGENT_ENV_FILE).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.set_defaults(command=_run, parser=parser)
    commands = parser.add_subparsers(title="commands", metavar="{run,increment}")

    run = commands.add_parser(
        "run",
        help="store the current time, print the state before and after (the default)",
        description="Retrieve the agent's state, store the current time in ms, and print "
        "both: `Previous state: …`, `Updated state: …`. Retried while the agent attaches, "
        f"until {retry.CLIENT_TIMEOUT_VAR} (default {retry.DEFAULT_CLIENT_TIMEOUT:g}).",
    )
    run.set_defaults(command=_run, parser=run)

    increment = commands.add_parser(
        "increment",
        aliases=["increments"],
        help="call increment(n) many times, each acknowledged exactly once; JSON summary",
        description="Call increment(n) CALLS times, CONCURRENCY at a time, over one "
        "connection; each call is retried with its request id until acknowledged "
        f"({retry.INCREMENT_DEADLINE_VAR}, at most {retry.INCREMENT_DEADLINE:g}). "
        "Prints a one-line JSON summary.",
    )
    increment.add_argument("--calls", type=int, default=100, help="calls in all (default 100)")
    increment.add_argument(
        "--concurrency", type=int, default=16, help="calls at a time (default 16)"
    )
    increment.add_argument("--by", type=int, default=1, help="the n of each increment(n)")
    increment.set_defaults(command=_increment, parser=increment)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse *argv* (default: sys.argv), then run its command; the exit status."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    command: Command = args.command
    try:
        serving.load_env()
        # Retries would log connection warnings; the one line we print if all
        # fail is enough. Set before the runtime's logging is first imported
        # (logs.install), which reads FAME_LOG_LEVEL then.
        os.environ.setdefault(settings.FAME_LOG_LEVEL.name, "critical")
        logs.install()
        asyncio.run(command(args))
    except Exception as error:  # ours or not: one line, labelled by where it came from
        return report("client", failures.label(error, _sentinel()))
    return 0


def _sentinel() -> str:
    return settings.FAME_DIRECT_ADMISSION_URL.value() or "the sentinel"
