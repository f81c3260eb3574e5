"""The client's output format: the seed's lines, compact JSON."""

from __future__ import annotations

from persistent_agent.client.caller import format_state


def test_no_value_prints_null() -> None:
    """A state with nothing stored (or no state at all) prints `null`."""
    assert format_state({}) == "null"
    assert format_state({"value": None}) == "null"
    assert format_state(None) == "null"


def test_value_prints_compact_json_with_only_value() -> None:
    """A stored value prints as {"value":"…"}, without spaces or other fields."""
    assert format_state({"value": "1730227876509"}) == '{"value":"1730227876509"}'
    assert format_state({"value": "x", "version": 2}) == '{"value":"x"}'
    assert format_state({"value": "héllo"}) == '{"value":"héllo"}'
