"""Unary RPC replies: one response object instead of a one-item stream."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from naylence.agent import BaseAgent, BaseAgentState
from naylence.fame.core import DataFrame, FameMessageResponse, create_fame_envelope
from naylence.fame.service import operation

from persistent_agent.keys.master_key import MasterKey
from persistent_agent.node.agent import PersistentAgent
from persistent_agent.node.replies import UnaryReplyMixin
from persistent_agent.storage.provider import SQLCipherStorageProvider


def _request(method: str, params: dict[str, Any]) -> Any:
    payload = {"jsonrpc": "2.0", "id": "req-1", "method": method, "params": params}
    return create_fame_envelope(
        frame=DataFrame(payload=payload), to="storage@fame.fabric", reply_to="client@fame.fabric"
    )


def _agent(db_dir: Path, key: MasterKey) -> PersistentAgent:
    agent = PersistentAgent()
    agent._storage_provider = SQLCipherStorageProvider(db_dir, key)  # no node in a unit test
    return agent


async def test_an_operation_replies_with_one_response_not_a_stream(
    db_dir: Path, master_key: MasterKey
) -> None:
    """store_value answers with a FameMessageResponse the polling loop sends at once."""
    agent = _agent(db_dir, master_key)
    reply = await agent.handle_message(_request("store_value", {"value": "v1"}))
    assert isinstance(reply, FameMessageResponse)
    assert reply.envelope.frame.payload["result"]["value"] == "v1"
    assert reply.envelope.corr_id == "req-1"


@pytest.mark.parametrize(
    ("store", "retrieve"),
    [("store_value", "retrieve_value"), ("storeValue", "retrieveValue")],
    ids=["python names", "typescript names"],
)
async def test_both_spellings_reply_with_the_seeds_shape(
    db_dir: Path, master_key: MasterKey, store: str, retrieve: str
) -> None:
    """Either spelling answers exactly {"value": …} ({} before any store), as the
    TypeScript agent does; the schema version and timestamp stay in the stored state."""
    agent = _agent(db_dir, master_key)
    empty = await agent.handle_message(_request(retrieve, {}))
    assert empty.envelope.frame.payload["result"] == {}
    stored = await agent.handle_message(_request(store, {"value": "v1"}))
    assert stored.envelope.frame.payload["result"] == {"value": "v1"}
    read = await agent.handle_message(_request(retrieve, {}))
    assert read.envelope.frame.payload["result"] == {"value": "v1"}


async def test_errors_are_replied_the_same_way(db_dir: Path, master_key: MasterKey) -> None:
    """A refused call (non-string value) is one error reply carrying the message."""
    agent = _agent(db_dir, master_key)
    reply = await agent.handle_message(_request("store_value", {"value": 5}))
    assert isinstance(reply, FameMessageResponse)
    assert "expects a string" in str(reply.envelope.frame.payload["error"])


class _Streamer(UnaryReplyMixin, BaseAgent[BaseAgentState]):
    """An agent with a genuinely streaming operation."""

    @operation(streaming=True)
    async def count(self, n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i


async def test_a_real_stream_passes_through_whole() -> None:
    """A streaming operation keeps every reply, in order, after the mixin peeked at two."""
    reply = await _Streamer().handle_message(_request("count", {"n": 4}))
    assert not isinstance(reply, FameMessageResponse)
    items = [item async for item in reply]
    results = [i.envelope.frame.payload.get("result") for i in items]
    assert results[:4] == [0, 1, 2, 3]
    assert all(isinstance(i, FameMessageResponse) for i in items)
