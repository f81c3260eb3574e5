"""The SDK and runtime internals this project relies on are still there.

Where no public API exists, ``node.state`` uses BaseAgent's private state
members, ``node.replies`` overrides ``handle_message``, ``node.serving``
uses ``profile_discovery`` and ``metrics.rpcs`` reads the agent's
``_rpc_registry``. The packages are pinned to the versions these ran against;
these tests fail loudly when a bump changes any of those shapes.
"""

from __future__ import annotations

import asyncio
import inspect
import tomllib
from importlib.metadata import version

from naylence.agent import BaseAgent, BaseAgentState
from naylence.fame.node.channel_polling_manager import ChannelPollingManager
from naylence.fame.profile import profile_discovery

from ..conftest import REPO


class _State(BaseAgentState):
    n: int = 0


def test_runtime_and_sdk_are_pinned_to_the_installed_versions() -> None:
    """pyproject pins both packages exactly, and those versions are what is installed."""
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = dict(d.split("==") for d in deps if d.startswith("naylence-"))
    assert pins == {
        "naylence-runtime": version("naylence-runtime"),
        "naylence-agent-sdk": version("naylence-agent-sdk"),
    }


def test_base_agent_state_internals_used_by_transactions() -> None:
    """_state_lock is an asyncio.Lock, _load_state/_save_state are coroutines, _state_model set."""
    agent = BaseAgent(state_model=_State, state_namespace="contract")
    assert isinstance(agent._state_lock, asyncio.Lock)
    assert agent._state_model is _State
    assert inspect.iscoroutinefunction(agent._load_state)
    assert list(inspect.signature(agent._load_state).parameters) == []
    assert inspect.iscoroutinefunction(agent._save_state)
    assert len(inspect.signature(agent._save_state).parameters) == 1


def test_handle_message_is_what_unary_replies_override() -> None:
    """BaseAgent.handle_message(envelope, context=None) is a coroutine function."""
    assert inspect.iscoroutinefunction(BaseAgent.handle_message)
    params = list(inspect.signature(BaseAgent.handle_message).parameters)
    assert params[:3] == ["self", "envelope", "context"]


def test_the_streaming_pause_that_unary_replies_avoid_still_exists() -> None:
    """The polling loop's streaming path (10 ms per reply) is still a separate method."""
    source = inspect.getsource(ChannelPollingManager._handle_streaming_fame_message_responses)
    assert "sleep" in source


def test_profile_discovery_takes_a_base_type_and_a_name() -> None:
    """discover_profile(base_type, profile_name) is what the storage preflight calls."""
    params = list(inspect.signature(profile_discovery.discover_profile).parameters)
    assert params == ["base_type", "profile_name"]


def test_an_agents_operations_are_in_the_rpc_registry_metrics_read() -> None:
    """metrics.rpcs labels a call by its method only if the agent declares it: the SDK's
    class-level ``_rpc_registry`` (method -> handler), what its RPC adapter dispatches by."""
    from persistent_agent.node.agent import PersistentAgent

    registry = PersistentAgent._rpc_registry
    assert {"store_value", "retrieve_value", "increment"} <= set(registry)
