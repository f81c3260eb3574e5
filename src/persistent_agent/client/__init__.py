"""The client: calling the agent through the sentinel (``persistent-agent-client``).

- ``client.cli``: the command line, its subcommands (``run``, ``increment``);
- ``client.caller``: the seed's calls, retrieve then store, and its two lines;
- ``client.increments``: increment calls acknowledged exactly once;
- ``client.retry``: the one retry policy both use (deadlines, backoff, jitter,
  what is worth another try);
- ``client.failures``: what went wrong and where: local configuration,
  transport, sentinel or agent; the one table of runtime texts.

Importing this package imports nothing else: the launchers
(:mod:`persistent_agent.demo.local_nodes`) read :data:`failures.START_HINT_VAR`
from it, and the runtime's logging must see the level :func:`main` sets.
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    """The ``persistent-agent-client`` entry point (:func:`persistent_agent.client.cli.main`)."""
    from persistent_agent.client.cli import main as cli_main

    return cli_main(argv)
