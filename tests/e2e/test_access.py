"""The fabric's door, with real processes, real TLS and real tokens: who gets in, and what not.

Each refusal is checked three ways: the caller gets a clear answer at once
(not a hang), the node that refused logs one line saying why, and nothing is
served or written (the real agent's value is still what the client reads).
Tokens for the bad cases are minted with real keys: the issuer's own signing
key (what an expired or wrongly scoped token would be signed with) or another.
"""

from __future__ import annotations

import contextlib
import json
import os
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from persistent_agent.access import fabric, handshakes, pki
from persistent_agent.access.authorizer import node_id_prefix
from persistent_agent.access.project import access_dir
from persistent_agent.demo.local_nodes import LocalNodes
from persistent_agent.ops import access

from ..conftest import REPO, wait_until
from .conftest import (
    attach_socket,
    ca_context,
    run_client,
    settings_only_client_env,
    stored_value,
)

pytestmark = pytest.mark.e2e


@pytest.fixture
def up(nodes: LocalNodes) -> Iterator[LocalNodes]:
    """The secured local fabric, with one value stored through it by the real client."""
    nodes.start_all()
    first = run_client(nodes)
    assert first.returncode == 0, first.stderr
    (nodes.run_dir / "last-value").write_text(stored_value(first.stdout))
    yield nodes


def _log(nodes: LocalNodes, role: str) -> str:
    return nodes.log_file(role).read_text(errors="replace")


def _issuer_kid(nodes: LocalNodes) -> str:
    import urllib.request

    url = f"{nodes.issuer_url()}/.well-known/jwks.json"
    with urllib.request.urlopen(url, context=ca_context(nodes)) as response:  # noqa: S310 - https
        return str(json.load(response)["keys"][0]["kid"])


def _signing_key(nodes: LocalNodes) -> Any:
    return pki.load_private_key(access_dir(nodes.config_dir) / pki.SIGNING_KEY)


def mint(nodes: LocalNodes, key: Any = None, **changes: Any) -> str:
    """A token as the issuer would sign it for the client credential, with *changes*
    (a value of None drops the claim)."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": nodes.issuer_url(),
        "sub": "client",
        "aud": fabric.DEFAULT_AUDIENCE,
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "jti": uuid.uuid4().hex,
        "scope": "node.connect",
        "role": "client",
    }
    claims.update(changes)
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode(
        claims, key or _signing_key(nodes), algorithm="ES256", headers={"kid": _issuer_kid(nodes)}
    )


def attach(
    nodes: LocalNodes, token: str, system_id: str | None = None
) -> tuple[dict[str, Any], int]:
    """Open the attach websocket with *token*, send a NodeAttach for *system_id*, and
    return the sentinel's answer (the NodeAttachAck) and the close code."""
    from naylence.fame.core import NodeAttachFrame, create_fame_envelope

    system_id = system_id or f"{node_id_prefix('client')}{uuid.uuid4().hex[:12]}"
    with attach_socket(nodes, token, system_id) as ws:
        envelope = create_fame_envelope(
            frame=NodeAttachFrame(system_id=system_id, instance_id=uuid.uuid4().hex)
        )
        # A token refused at the handshake is answered before any frame is read.
        with contextlib.suppress(ConnectionClosed):
            ws.send(
                json.dumps(
                    envelope.model_dump(by_alias=True, exclude_none=True, mode="json")
                ).encode()
            )
        answers: list[dict[str, Any]] = []
        with contextlib.suppress(ConnectionClosed):
            while True:
                answers.append(json.loads(ws.recv(timeout=30)))
        code = ws.close_code
    acks = [a["frame"] for a in answers if a["frame"]["type"] == "NodeAttachAck"]
    assert acks, answers
    return acks[0], int(code or 0)


def refused(nodes: LocalNodes, token: str, reason: str, system_id: str | None = None) -> None:
    before = _log(nodes, "sentinel").count(reason)
    frame, code = attach(nodes, token, system_id)
    assert frame["type"] == "NodeAttachAck"
    assert frame["ok"] is False
    assert code == 1008
    wait_until(lambda: _log(nodes, "sentinel").count(reason) > before, f"the log line {reason!r}")


def value_unchanged(nodes: LocalNodes) -> None:
    """The agent still serves the value the real client stored last: nothing was written."""
    last = nodes.run_dir / "last-value"
    result = run_client(nodes)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == f"Previous state: {last.read_text()}"
    last.write_text(stored_value(result.stdout))


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("no token", "refused an attach: no token"),
        ("another key", "refused an attach: token signature does not verify"),
        ("expired", "refused an attach: token expired"),
        ("wrong audience", "refused an attach: token is not for audience"),
        ("missing scope", "token lacks the scope node.connect"),
        ("no expiry", "refused an attach: token has no 'exp' claim"),
    ],
)
def test_bad_tokens_are_refused_at_the_door(up: LocalNodes, case: str, reason: str) -> None:
    now = int(time.time())
    token = {
        "no token": lambda: "",
        "another key": lambda: mint(up, key=ec.generate_private_key(ec.SECP256R1())),
        "expired": lambda: mint(up, iat=now - 900, nbf=now - 900, exp=now - 600),
        "wrong audience": lambda: mint(up, aud="another.fabric"),
        "missing scope": lambda: mint(up, scope="profile"),
        "no expiry": lambda: mint(up, exp=None),
    }[case]()
    refused(up, token, reason)
    value_unchanged(up)


def test_a_node_id_of_another_credential_is_refused(up: LocalNodes) -> None:
    """A client token cannot attach under the agent's node id and take over its route."""
    agent_id = f"{node_id_prefix('persistent-agent')}persistent-agent"
    refused(up, mint(up), f"node id '{agent_id}' is not tied to credential 'client'", agent_id)
    value_unchanged(up)


def _rogue(nodes: LocalNodes, *mode: str) -> subprocess.CompletedProcess[str]:
    env = nodes.env("agent")
    env.update(nodes.access_env("client"))
    env.pop("FAME_NODE_ID", None)
    env.pop("PERSISTENT_AGENT_RESTART", None)
    env["FAME_STORAGE_DB_DIRECTORY"] = str(nodes.data_dir / "rogue")
    return subprocess.run(
        [sys.executable, "-m", "tests.e2e.rogue_agent", *mode],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("mode", "address"), [((), "storage@fame.fabric"), (("pool",), "storage@*.fame.fabric")]
)
def test_a_client_credential_cannot_serve_the_agents_address(
    up: LocalNodes, mode: tuple[str, ...], address: str
) -> None:
    """The rogue node of the issue, with the client's credential: refused at its bind,
    directly and through the replicas' pool; the client still reads the real value."""
    result = _rogue(up, *mode)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last == (
        f"rogue-agent: error: the sentinel refused this node: role client may not bind {address}"
    ), result.stderr[-2000:]
    assert f"refused AddressBind from node {node_id_prefix('client')}" in _log(up, "sentinel")
    assert f"(credential 'client', role client): role client may not bind {address}" in _log(
        up, "sentinel"
    )
    value_unchanged(up)
    assert "forged" not in run_client(up).stdout


def test_a_client_may_call_the_agent_only(up: LocalNodes) -> None:
    """A call to any other address is nacked by the sentinel at once, with the reason."""
    result = subprocess.run(
        [sys.executable, "-m", "tests.e2e.other_call", "other@fame.fabric"],
        env=up.env("client"), cwd=REPO, capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip
    assert result.stdout.strip() == (
        "error RuntimeError Envelope nacked: access refused: role client may call only "
        "storage@fame.fabric, not other@fame.fabric"
    ), result.stdout + result.stderr
    assert "refused Data from node" in _log(up, "sentinel")
    value_unchanged(up)


def test_plain_websocket_is_refused(up: LocalNodes) -> None:
    """ws:// to the TLS port: no HTTP upgrade happens, the client fails at once, and the
    sentinel logs the refused handshake in one line."""
    before = _log(up, "sentinel").count(handshakes.PLAINTEXT)
    argv, env = up.client_command()
    env[fabric.SECURITY_VAR] = "off"
    env[fabric.ADMISSION_URL_VAR] = up.admission_url().replace("wss://", "ws://")
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode != 0
    assert "did not receive a valid HTTP response" in result.stderr.strip().splitlines()[-1]

    def refusals() -> int:
        return _log(up, "sentinel").count(handshakes.PLAINTEXT) - before

    wait_until(lambda: refusals() > 0, "the sentinel's plaintext line")
    assert refusals() == 1
    value_unchanged(up)


def test_a_server_certified_by_another_ca_is_refused(up: LocalNodes, tmp_path: Path) -> None:
    """A client pinning another CA (as if the sentinel's certificate came from elsewhere)
    refuses the connection at once, naming the CA it pins."""
    other = tmp_path / "other-ca"
    pki.ensure_ca(other)
    argv, env = up.client_command()
    env[fabric.CA_FILE_VAR] = str(other / "ca.crt")
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert "TLS certificate is not signed by the project CA" in last
    assert str(other / "ca.crt") in last
    # Trusting the system roots instead does not help either: the CA is private.
    with pytest.raises(ssl.SSLCertVerificationError):
        connect(up.admission_url() + "/x", ssl=ssl.create_default_context(), open_timeout=30)


def test_a_wrong_secret_is_refused_by_the_issuer(up: LocalNodes, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.secret"
    wrong.write_text("not-the-secret\n")
    wrong.chmod(0o600)
    argv, env = up.client_command()
    env[fabric.SECRET_FILE_VAR] = str(wrong)
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode != 0
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith(
            "client: error: the token issuer refused credential 'client' (HTTP 401, invalid_client)"
        )
    )
    assert "not-the-secret" not in result.stderr + _log(up, "issuer")
    wait_until(lambda: "client" in _log(up, "issuer"), "the issuer's refusal line")


def test_revoking_refuses_old_tokens_and_ends_live_links(up: LocalNodes) -> None:
    """rotate-credentials: a token issued before is refused at attach, a link that was
    live is closed within 10 s, and the credential's new secret works at once."""
    old_token = mint(up)
    session = subprocess.Popen(
        [sys.executable, "-m", "tests.e2e.session_client"],
        env=up.env("client"), cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert session.stdout is not None
        assert json.loads(session.stdout.readline()) == {"ready": True}
        rotated = time.monotonic()
        print(access.rotate_credential(up.config_dir, "client", up))
        wait_until(
            lambda: (
                "credential 'client' was revoked" in _log(up, "sentinel")
                and "closed the link of node" in _log(up, "sentinel")
            ),
            "the sentinel closing the revoked client's live link",
        )
        closed_after = time.monotonic() - rotated
        print(f"the revoked client's live link closed {closed_after:.1f}s after rotation")
        assert closed_after < 10, f"the live link lasted {closed_after:.1f}s after revocation"
    finally:
        session.kill()
        session.communicate()
    refused(up, old_token, "refused an attach: credential 'client' was revoked")
    value_unchanged(up)  # the client reads its new secret from the file


def test_issuer_and_sentinel_listen_on_tls_only(up: LocalNodes) -> None:
    """Nothing answers in plaintext: an HTTP request to either port gets no HTTP reply."""
    import http.client

    for port in (up.port, up.issuer_port):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            connection.request("GET", "/health")
            connection.getresponse()
        connection.close()


def test_credentials_never_reach_environment_argv_or_logs(up: LocalNodes) -> None:
    """The secrets are read from files: no process's environment or command line holds
    one, and no log holds a secret or a token."""
    import psutil

    directory = access_dir(up.config_dir)
    secrets = [p.read_text().strip() for p in directory.glob("*.secret")]
    assert secrets
    for role in up.roles():
        process = psutil.Process(up.pid(role))
        exposed = " ".join(process.cmdline()) + " ".join(process.environ().values())
        assert not [s for s in secrets if s in exposed], role
        log = _log(up, role)
        assert not [s for s in secrets if s in log], role
        assert "eyJ" not in log, f"a JWT in the {role} log"
    assert os.stat(directory).st_mode & 0o077 == 0


def test_the_upstream_python_client_gets_in_with_settings_only(up: LocalNodes) -> None:
    """The SDK's own CLIENT_CONFIG, unchanged, with the runtime's `direct` admission profile
    and our credential in environment variables (how the upstream example runs)."""
    env = settings_only_client_env(up, FAME_LOG_LEVEL="critical")
    result = subprocess.run(
        [sys.executable, "-m", "tests.e2e.upstream_client"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines()[0].startswith("Previous state: {'value': '")


def test_rotating_the_agents_credential_restarts_the_agent_only(up: LocalNodes) -> None:
    """Revoking touches no data and restarts only the node that held the credential."""
    before = {role: up.pid(role) for role in up.roles()}
    line = access.rotate_credential(up.config_dir, "persistent-agent", up)
    assert line.endswith("restarted the local agent")
    after = {role: up.pid(role) for role in up.roles()}
    assert after["agent"] != before["agent"]
    assert (after["issuer"], after["sentinel"]) == (before["issuer"], before["sentinel"])
    value_unchanged(up)  # the value stored before is read back: no data was touched


def test_reissued_certificates_are_served_after_the_restart(up: LocalNodes) -> None:
    """make reissue-certs: new certificates from the same CA, servers restarted, no client
    change needed."""
    cert = access_dir(up.config_dir) / "sentinel.crt"
    old = cert.read_bytes()
    line = access.reissue(up.config_dir, up)
    assert "restarted the local issuer and sentinel" in line
    assert cert.read_bytes() != old
    served = ssl.get_server_certificate(("127.0.0.1", up.port))
    assert served.encode().strip() == cert.read_bytes().strip()
    value_unchanged(up)
