"""The runtime's no-op trace emitter is taken off a node's event listeners; others stay."""

from __future__ import annotations

from typing import Any

from naylence.agent import Agent, BaseAgent, BaseAgentState
from naylence.fame.core import FameFabric
from naylence.fame.node.node_event_listener import NodeEventListener
from naylence.fame.service import operation
from naylence.fame.telemetry.noop_trace_emitter import NoopTraceEmitter

from persistent_agent.node.logs import drop_noop_tracing


class _Node:
    """The two members of NodeLike that drop_noop_tracing uses."""

    def __init__(self, listeners: list[Any]) -> None:
        self._listeners = list(listeners)

    @property
    def event_listeners(self) -> list[Any]:
        return list(self._listeners)

    def remove_event_listener(self, listener: Any) -> None:
        self._listeners.remove(listener)


class _RecordingEmitter(NoopTraceEmitter):
    """Stands for an emitter that records (a subclass is not the no-op one)."""


def test_only_the_noop_emitter_is_removed() -> None:
    other, recording, noop = object(), _RecordingEmitter(), NoopTraceEmitter()
    node = _Node([other, noop, recording])
    assert drop_noop_tracing(node) == 1
    assert node.event_listeners == [other, recording]
    assert drop_noop_tracing(node) == 0  # idempotent


def test_the_noop_emitter_is_a_node_event_listener() -> None:
    """What makes it cost per envelope: the node dispatches every envelope event to it."""
    assert isinstance(NoopTraceEmitter(), NodeEventListener)


class _Echo(BaseAgent[BaseAgentState]):
    @operation
    async def echo(self, value: str) -> str:
        return value


async def test_a_node_without_it_still_delivers_calls() -> None:
    """On a real node (in-process, memory storage) the default emitter is the no-op one;
    once removed, a call to a local agent is delivered and answered as before."""
    config = {
        "node": {
            "type": "Node",
            "id": "tracing-test",
            "storage": {"type": "InMemoryStorageProvider"},
        }
    }
    async with FameFabric.create(root_config=config) as fabric:
        kinds = [type(each) for each in fabric.node.event_listeners]
        assert NoopTraceEmitter in kinds
        assert drop_noop_tracing(fabric.node) == 1
        assert NoopTraceEmitter not in [type(each) for each in fabric.node.event_listeners]
        address = await fabric.serve(_Echo(), "echo")
        assert await Agent.remote_by_address(address, fabric=fabric).echo("hi") == "hi"
