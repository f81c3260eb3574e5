"""The token issuer as a real process, over real TLS on loopback, its CA pinned."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import pytest

from persistent_agent.access import credentials, handshakes
from persistent_agent.access.credentials import ensure_access, ensure_client, rotate
from persistent_agent.access.issuer import NAME

from ..conftest import REPO, wait_until

CLIENTS = {"agent-1": "agent", "client-1": "client", "sentinel-1": "sentinel"}
AUDIENCE = "fame.fabric"
WRONG = "not-" + "a-secret"  # built, so that no linter takes it for a real one


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Issuer:
    """One issuer process on a loopback port, and what a pinned client needs to reach it."""

    access: Path
    port: int
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def pinned(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.access / "ca.crt")

    def start(self) -> None:
        ready = self.ready
        ready.unlink(missing_ok=True)
        env = {
            **os.environ,
            "PERSISTENT_AGENT_ACCESS_DIR": str(self.access),
            "PERSISTENT_AGENT_ISSUER_PORT": str(self.port),
            "PERSISTENT_AGENT_READY_FILE": str(ready),
            **self.env,
        }
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "persistent_agent.access.issuer"],
                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        proc = self.proc
        wait_until(lambda: ready.exists() or proc.poll() is not None, "the issuer's ready file")
        assert proc.poll() is None, self.log.read_text()

    @property
    def ready(self) -> Path:
        return self.access.parent / "issuer.ready"

    def stop(self) -> int | None:
        """SIGTERM the process; its exit code (None if it had already ended)."""
        if self.proc is None or self.proc.poll() is not None:
            return None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)

    def secret(self, client_id: str) -> str:
        return credentials.read_secret(self.access / f"{client_id}.secret")

    def request(
        self,
        path: str,
        form: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        context: ssl.SSLContext | None = None,
    ) -> tuple[int, dict[str, str], Any]:
        """(status, headers, JSON body) of one HTTPS request: POST if *form* is given."""
        data = urllib.parse.urlencode(form).encode() if form is not None else None
        request = urllib.request.Request(self.url + path, data=data, headers=headers or {})  # noqa: S310
        try:
            with urllib.request.urlopen(request, context=context or self.pinned) as response:  # noqa: S310
                return response.status, lower(response.headers.items()), json.load(response)
        except urllib.error.HTTPError as error:
            return error.code, lower(error.headers.items()), json.load(error)

    def token(self, client_id: str, secret: str | None = None, **extra: str) -> Any:
        form = {"grant_type": "client_credentials", "client_id": client_id}
        form["client_secret"] = self.secret(client_id) if secret is None else secret
        return self.request("/oauth/token", {**form, **extra})


def lower(items: Any) -> dict[str, str]:
    return {str(name).lower(): str(value) for name, value in items}


@pytest.fixture
def access(tmp_path: Path) -> Path:
    directory = tmp_path / "config" / "access"
    ensure_access(directory, clients=CLIENTS, server_names={"issuer": []})
    return directory


@pytest.fixture
def issuer(access: Path) -> Iterator[Issuer]:
    running = Issuer(access, free_port(), access.parent / "issuer.log")
    running.start()
    yield running
    running.stop()


def verify(issuer: Issuer, token: str) -> dict[str, Any]:
    """Verify *token* as the runtime does: against the JWKS fetched from the issuer."""
    status, _, jwks = issuer.request("/.well-known/jwks.json")
    assert status == 200
    key = jwt.PyJWKSet.from_dict(jwks)[jwt.get_unverified_header(token)["kid"]]
    claims: dict[str, Any] = jwt.decode(
        token, key, algorithms=["ES256"], audience=AUDIENCE, issuer=issuer.url
    )
    return claims


def test_a_token_verifies_against_the_jwks_and_names_client_and_role(issuer: Issuer) -> None:
    status, headers, body = issuer.token("agent-1")
    assert status == 200, body
    assert headers["cache-control"] == "no-store"
    assert (body["token_type"], body["expires_in"]) == ("Bearer", 300)
    assert body["scope"] == "node.connect"
    claims = verify(issuer, body["access_token"])
    assert claims["sub"] == "agent-1" and claims["role"] == "agent"
    assert claims["scope"] == "node.connect" and claims["aud"] == AUDIENCE
    assert claims["exp"] - claims["iat"] == pytest.approx(300, abs=1)
    assert set(claims) == {"iss", "sub", "aud", "iat", "nbf", "exp", "jti", "scope", "role"}
    header = jwt.get_unverified_header(body["access_token"])
    _, _, jwks = issuer.request("/.well-known/jwks.json")
    assert header["alg"] == "ES256"
    assert jwks["keys"][0]["kid"] == header["kid"]
    assert {jwks["keys"][0][k] for k in ("alg", "use", "kty", "crv")} == {
        "ES256", "sig", "EC", "P-256",
    }  # fmt: skip
    assert issuer.request("/health")[0] == 200


def test_basic_auth_scope_and_audience(issuer: Issuer) -> None:
    secret = issuer.secret("sentinel-1")
    basic = base64.b64encode(f"sentinel-1:{secret}".encode()).decode()
    status, _, body = issuer.request(
        "/oauth/token",
        {"grant_type": "client_credentials", "scope": "node.connect", "audience": AUDIENCE},
        {"Authorization": f"Basic {basic}"},
    )
    assert status == 200, body
    assert verify(issuer, body["access_token"])["role"] == "sentinel"
    status, _, body = issuer.token("client-1", scope="node.connect admin")
    assert (status, body["error"]) == (400, "invalid_scope")
    status, _, body = issuer.token("client-1", audience="elsewhere")
    assert (status, body["error"]) == (400, "invalid_request")
    status, _, body = issuer.token("client-1", grant_type="password")
    assert (status, body["error"]) == (400, "unsupported_grant_type")


def test_wrong_secret_and_unknown_client_are_401(issuer: Issuer) -> None:
    status, headers, body = issuer.token("agent-1", secret=WRONG)
    assert (status, body["error"]) == (401, "invalid_client")
    assert "www-authenticate" in headers
    status, _, body = issuer.token("ghost", secret=issuer.secret("agent-1"))
    assert (status, body["error"]) == (401, "invalid_client")
    status, _, body = issuer.token("agent-1", secret="")
    assert (status, body["error"]) == (401, "invalid_client")


def test_five_failures_for_a_client_id_refuse_even_its_right_secret(issuer: Issuer) -> None:
    for _ in range(5):
        assert issuer.token("agent-1", secret=WRONG)[0] == 401
    status, headers, body = issuer.token("agent-1")
    assert status == 429, body
    assert 1 <= int(headers["retry-after"]) <= 60


def test_five_failures_from_an_address_refuse_it(issuer: Issuer) -> None:
    for number in range(5):
        assert issuer.token(f"guess-{number}", secret=WRONG)[0] == 401
    assert issuer.token("client-1")[0] == 429


def test_rotation_refuses_the_old_secret_and_publishes_not_before(issuer: Issuer) -> None:
    old_secret = issuer.secret("client-1")
    old_token = issuer.token("client-1")[2]["access_token"]
    rotated_at = time.time()
    rotate(issuer.access, "client-1")
    assert issuer.token("client-1", secret=old_secret)[0] == 401
    status, _, body = issuer.token("client-1")
    assert status == 200
    new_token = body["access_token"]
    status, headers, revocations = issuer.request("/revocations")
    assert status == 200 and headers["cache-control"] == "no-store"
    assert set(revocations["not_before"]) == set(CLIENTS)
    not_before = revocations["not_before"]["client-1"]
    assert not_before >= rotated_at
    # What the authorizer checks: the old token is older than the rotation, the new one is not.
    assert verify(issuer, old_token)["iat"] < not_before <= verify(issuer, new_token)["iat"]


def test_a_new_client_is_known_without_a_restart(issuer: Issuer) -> None:
    assert issuer.token("agent-2", secret=WRONG)[0] == 401
    ensure_client(issuer.access, "agent-2", "agent")
    status, _, body = issuer.token("agent-2")
    assert status == 200 and verify(issuer, body["access_token"])["sub"] == "agent-2"


def test_a_restart_keeps_the_key_and_old_tokens_verify(issuer: Issuer) -> None:
    token = issuer.token("agent-1")[2]["access_token"]
    kid = issuer.request("/.well-known/jwks.json")[2]["keys"][0]["kid"]
    assert issuer.stop() == 0
    assert not issuer.ready.exists()
    issuer.start()
    assert issuer.request("/.well-known/jwks.json")[2]["keys"][0]["kid"] == kid
    assert verify(issuer, token)["sub"] == "agent-1"


def test_a_client_trusting_only_system_roots_refuses_the_issuer(issuer: Issuer) -> None:
    system_only = ssl.create_default_context()
    with pytest.raises(urllib.error.URLError) as caught:
        issuer.request("/health", context=system_only)
    assert isinstance(caught.value.reason, ssl.SSLCertVerificationError)
    assert "certificate verify failed" in str(caught.value.reason)


def test_plain_http_and_an_untrusting_client_are_one_log_line_each(issuer: Issuer) -> None:
    """A refused handshake is logged by the issuer: asyncio alone would say nothing."""
    plain = issuer.url.replace("https://", "http://") + "/health"
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(plain, timeout=30)  # noqa: S310 - the point: not https
    wait_until(lambda: handshakes.PLAINTEXT in issuer.log.read_text(), "the plaintext line")
    line = [each for each in issuer.log.read_text().splitlines() if handshakes.PLAINTEXT in each]
    assert len(line) == 1 and line[0].endswith(f"WARNING {NAME}: {handshakes.PLAINTEXT}")
    assert "GET" not in issuer.log.read_text()  # what the client sent is never logged
    with pytest.raises(urllib.error.URLError):
        issuer.request("/health", context=ssl.create_default_context())
    untrusted = "refused a TLS handshake: alert unknown ca (the client does not trust the CA"
    wait_until(lambda: untrusted in issuer.log.read_text(), "the unknown-CA line")


def test_refused_handshake_lines_are_rate_limited() -> None:
    """A flood of bad handshakes: *limit* lines per window, then one line counting the rest."""
    lines: list[str] = []
    now = [0.0]
    log = handshakes.RefusalLog(lines.append, limit=3, window=10.0, clock=lambda: now[0])
    for _ in range(5):
        log("refused")
    assert lines == ["refused"] * 3
    now[0] = 10.0
    log("refused")
    assert lines[3:] == [
        "... and 2 more refused TLS handshakes (not logged one by one)",
        "refused",
    ]


def test_the_log_holds_no_secret_and_no_token(access: Path) -> None:
    running = Issuer(access, free_port(), access.parent / "issuer.log", {"FAME_LOG_LEVEL": "debug"})
    running.start()
    try:
        token = running.token("agent-1")[2]["access_token"]
        running.token("agent-1", secret="not-the-secret-" + running.secret("client-1"))
        running.token(running.secret("sentinel-1"), secret=WRONG)  # a secret pasted as the id
        running.request("/revocations")
    finally:
        running.stop()
    log = running.log.read_text()
    assert "started: https://127.0.0.1:" in log
    assert (
        "refused a token request: client_id=agent-1 remote=127.0.0.1 reason=wrong client secret"
    ) in log
    assert "client_id=<malformed> remote=127.0.0.1 reason=unknown client id" in log
    assert "issued a token: client_id=agent-1 role=agent" in log
    for value in [token, token.split(".")[2], *(running.secret(c) for c in CLIENTS)]:
        assert value not in log
    assert "eyJ" not in log
    assert len(log.splitlines()) == 4, log


AIOHTTP_CLIENT = """
import asyncio, sys, aiohttp
async def main():
    async with aiohttp.ClientSession() as session:
        async with session.post(sys.argv[1], data={
            "grant_type": "client_credentials", "client_id": sys.argv[2],
            "client_secret": open(sys.argv[3]).read().strip(),
        }) as response:
            print(response.status, "access_token" in await response.json())
asyncio.run(main())
"""


def aiohttp_token(issuer: Issuer, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-c", AIOHTTP_CLIENT, issuer.url + "/oauth/token", "agent-1"]
    argv.append(str(issuer.access / "agent-1.secret"))
    clean = {k: v for k, v in os.environ.items() if k not in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
    return subprocess.run(argv, env={**clean, **env}, capture_output=True, text=True, timeout=60)


def test_aiohttp_pins_the_ca_through_ssl_cert_file(issuer: Issuer, tmp_path: Path) -> None:
    """The runtime's token provider (aiohttp, default SSL context) takes the CA from the env."""
    empty = tmp_path / "no-certs"
    empty.mkdir()
    pinned = aiohttp_token(issuer, {"SSL_CERT_FILE": str(issuer.access / "ca.crt"),
                                    "SSL_CERT_DIR": str(empty)})  # fmt: skip
    assert pinned.returncode == 0 and pinned.stdout.split() == ["200", "True"], pinned.stderr
    unpinned = aiohttp_token(issuer, {})
    assert unpinned.returncode != 0
    assert "certificate verify failed" in unpinned.stderr


def run_issuer(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PERSISTENT_AGENT_")}
    return subprocess.run(
        [sys.executable, "-m", "persistent_agent.access.issuer"],
        cwd=REPO, env={**clean, **env}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_bad_settings_and_missing_files_are_one_line_exit_2(access: Path) -> None:
    cases = [
        ({}, "PERSISTENT_AGENT_ACCESS_DIR is not set"),
        ({"PERSISTENT_AGENT_ACCESS_DIR": str(access), "PERSISTENT_AGENT_ISSUER_PORT": "http"},
         "PERSISTENT_AGENT_ISSUER_PORT must be a whole number"),
        ({"PERSISTENT_AGENT_ACCESS_DIR": str(access), "PERSISTENT_AGENT_TOKEN_TTL_SECONDS": "0"},
         "PERSISTENT_AGENT_TOKEN_TTL_SECONDS must be a whole number"),
        ({"PERSISTENT_AGENT_ACCESS_DIR": str(access.parent / "nowhere")},
         "is not a directory; run `make access`"),
    ]  # fmt: skip
    (access / "issuer.crt").unlink()
    cases.append(
        (
            {"PERSISTENT_AGENT_ACCESS_DIR": str(access)},
            "issuer.crt: no such file; run `make access`",
        )
    )
    for env, expected in cases:
        done = run_issuer(env)
        assert done.returncode == 2, (env, done.stderr)
        assert done.stderr.startswith("persistent-agent-issuer: error: "), done.stderr
        assert expected in done.stderr and done.stderr.count("\n") == 1, done.stderr


def test_a_taken_port_is_one_line(issuer: Issuer) -> None:
    done = run_issuer(
        {"PERSISTENT_AGENT_ACCESS_DIR": str(issuer.access),
         "PERSISTENT_AGENT_ISSUER_PORT": str(issuer.port)}
    )  # fmt: skip
    assert done.returncode == 2
    assert "cannot listen on 127.0.0.1" in done.stderr and done.stderr.count("\n") == 1


def test_a_mismatched_issuer_key_is_one_line(access: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        (access / "issuer.key").unlink()
    (access / "issuer.key").write_bytes((access / "ca.key").read_bytes())
    (access / "issuer.key").chmod(0o600)
    done = run_issuer({"PERSISTENT_AGENT_ACCESS_DIR": str(access)})
    assert done.returncode == 2
    assert "issuer.key does not match" in done.stderr and "BEGIN" not in done.stderr
