"""Entry point: the persistent-agent node, serving PersistentAgent at storage@fame.fabric.

On a backend its replicas share (``storage.registry``: an entry with ``shared``,
such as ``encrypted-postgres``) the node is one of several replicas: it asks
for the wildcard logical ``*.fame.fabric``, so the sentinel pools every
replica under ``storage@fame.fabric`` instead of letting the last one to
attach replace the others. Each replica needs a node id of its own that stays
the same across restarts (``FAME_NODE_ID``).
"""

from __future__ import annotations

import sys
from typing import Any

from persistent_agent import AGENT_ADDR
from persistent_agent.access import fabric
from persistent_agent.node import backlog, serving
from persistent_agent.node.agent import PersistentAgent


async def _main() -> None:
    limit = backlog.max_wait_seconds()

    async def start(fabric: Any) -> None:
        clock = backlog.ArrivalClock()
        fabric.node.add_event_listener(clock)
        agent = PersistentAgent(backlog.Line(clock, limit))
        # Load the state before attaching: a state this version cannot read
        # (a newer schema) stops the node here, untouched, not at the first call.
        await agent.get_state()
        await fabric.serve(agent, AGENT_ADDR)

    await serving.serve(start, node_config(), upstream=True)


POOLED_LOGICAL = "*.fame.fabric"


def node_config() -> dict[str, Any]:
    """The SDK's node config, admitted with the agent's credential (access/fabric.py);
    a replica of a shared backend (``serving.shared_state``) joins the pool."""
    config = fabric.node_config()
    if serving.shared_state():
        config["node"]["requested_logicals"] = [POOLED_LOGICAL]
    return config


def main() -> None:
    sys.exit(serving.run("persistent-agent", _main))


if __name__ == "__main__":
    main()
