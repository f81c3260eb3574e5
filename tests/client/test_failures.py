"""Every failure labelled by where it came from, by type and code first."""

from __future__ import annotations

import pytest
from naylence.fame.errors import FameConnectError, FameTransportClose
from naylence.fame.factory.expression_evaluator import ExpressionEvaluator
from websockets.datastructures import Headers
from websockets.exceptions import InvalidStatus
from websockets.http11 import Response

from persistent_agent.client.failures import (
    RUNTIME_TEXTS,
    Kind,
    LocalConfigurationError,
    Origin,
    classify,
    label,
)
from persistent_agent.errors import (
    ClientCallError,
    ConfigError,
    NothingRunningError,
    TransportError,
)

from .fake_agent import METHOD_NOT_FOUND, OVERLOADED, UNROUTABLE

URL = "wss://sentinel.example:8443/fame/v1/attach/ws/downstream"


def _missing_setting() -> Exception:
    """What the runtime raises when its config names an unset variable (its own code)."""
    try:
        ExpressionEvaluator.evaluate("${env:PERSISTENT_AGENT_TEST_NEVER_SET}")
    except Exception as exc:
        return exc
    raise AssertionError("the runtime accepted an unset variable")


def _refused(status: int) -> BaseException:
    """A handshake answered with an HTTP status, inside the runtime's connect error."""
    error = FameConnectError("connect failed")
    error.__cause__ = InvalidStatus(Response(status, "Refused", Headers()))
    return error


def test_a_missing_setting_is_local_configuration_not_the_agents_answer() -> None:
    """The issue's case: the runtime's missing variable is this machine's configuration."""
    failure = classify(_missing_setting())
    assert (failure.kind, failure.origin) == (Kind.MISSING_SETTING, Origin.CONFIGURATION)
    line = str(label(_missing_setting(), URL))
    assert line.startswith("local configuration: PERSISTENT_AGENT_TEST_NEVER_SET is not set")
    assert "answered" not in line


def test_a_refused_handshake_is_the_sentinels_not_the_agents() -> None:
    """HTTP 403 on the websocket upgrade comes from the sentinel's door."""
    assert classify(_refused(403)).origin is Origin.SENTINEL
    line = str(label(_refused(403), URL))
    assert line == f"the sentinel at {URL} refused the connection (HTTP 403)"


def test_origins_and_lines() -> None:
    """Nack: the sentinel; error reply: the agent; a broken connection: the transport."""
    nack = label(UNROUTABLE, URL)
    assert isinstance(nack, ClientCallError)
    assert str(nack) == (
        f"the sentinel at {URL} refused the call to storage@fame.fabric: "
        "Unroutable to storage@fame.fabric"
    )
    assert str(label(METHOD_NOT_FOUND, URL)) == "storage@fame.fabric answered: Method not found"
    assert classify(OVERLOADED).origin is Origin.AGENT
    closed = label(FameTransportClose(1006, "gone"), URL)
    assert isinstance(closed, TransportError)
    assert str(closed).startswith(f"cannot call storage@fame.fabric via {URL}: FameTransportClose")


def test_a_json_rpc_code_wins_over_the_text() -> None:
    """Where an error still carries its JSON-RPC code, the code decides, not the message."""
    coded = Exception("Méthode introuvable")
    coded.code = -32601  # type: ignore[attr-defined]
    assert classify(coded).kind is Kind.METHOD_NOT_FOUND
    assert classify(Exception("Méthode introuvable")).kind is Kind.AGENT_ERROR


def test_labels_are_given_once_and_our_own_errors_pass_unchanged() -> None:
    once = label(ConfigError("FAME_X is not set"), URL)
    assert isinstance(once, LocalConfigurationError)
    assert str(label(once, URL)) == str(once) == "local configuration: FAME_X is not set"
    ours = NothingRunningError("nothing is running at https://issuer:8443")
    assert label(ours, URL) is ours


@pytest.mark.parametrize("entry", RUNTIME_TEXTS, ids=lambda e: e.kind.name)
def test_every_runtime_text_is_documented_and_recognised(entry: object) -> None:
    """Each text in the one table says why it is matched, and matches what it names."""
    from persistent_agent.client.failures import RuntimeText

    assert isinstance(entry, RuntimeText)
    assert entry.why
    raised = (
        RuntimeError(f"Envelope nacked: {entry.starts} …")
        if entry.kind is Kind.UNROUTABLE
        else Exception(f"{entry.starts}: …")
    )
    assert classify(raised).kind is entry.kind
