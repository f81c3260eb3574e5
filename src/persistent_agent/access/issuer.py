"""The token issuer: trades a client credential for a short-lived signed token.

The runtime's development OAuth2 server makes new keys at every start and
knows one client; this process replaces it. It serves, over HTTPS only, with
the access directory's ``issuer.crt``:

- ``POST /oauth/token``: the client-credentials grant (RFC 6749 4.4). A token
  is an ES256 JWT naming the client (``sub``), its ``role`` from the
  registry, and the one grantable scope, ``node.connect``.
- ``GET /.well-known/jwks.json``: the public key that verifies those tokens,
  the path where the runtime's JWKS verifier looks for it.
- ``GET /revocations``: each client's ``not_before`` (its last rotation):
  the sentinel's authorizer refuses tokens issued before it.
- ``GET /health``.

The signing key is kept on disk, so tokens stay verifiable across restarts.
The registry (``clients.json``) is re-read when it changes, so a rotation
takes effect without a restart. Guessing is slowed: after five failed
authentications within a minute from one client id or one address, that id
or address is refused (429) until the minute has passed. Neither secrets nor
tokens are ever logged; uvicorn's own logging is left unconfigured and its
access log is off. A refused TLS handshake (``http://`` to this port, a client
that does not trust the CA) is one line (access/handshakes.py).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import json
import logging
import math
import os
import secrets
import signal
import socket
import ssl
import sys
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote_plus

import jwt
import uvicorn
from cryptography.hazmat.primitives.asymmetric import ec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from persistent_agent import settings as registry
from persistent_agent.access import pki
from persistent_agent.access.credentials import REGISTRY, Registry, load_registry, valid_client_id
from persistent_agent.access.handshakes import log_refused_handshakes
from persistent_agent.errors import ConfigError, PersistentAgentError, report

NAME = "persistent-agent-issuer"
ACCESS_DIR_VAR = registry.PERSISTENT_AGENT_ACCESS_DIR.name
HOST_VAR = registry.PERSISTENT_AGENT_ISSUER_HOST.name
PORT_VAR = registry.PERSISTENT_AGENT_ISSUER_PORT.name
ISSUER_VAR = registry.FAME_JWT_TRUSTED_ISSUER.name
AUDIENCE_VAR = registry.FAME_JWT_AUDIENCE.name
TTL_VAR = registry.PERSISTENT_AGENT_TOKEN_TTL_SECONDS.name
READY_FILE_VAR = registry.PERSISTENT_AGENT_READY_FILE.name
HEARTBEAT_SECONDS = 2.0
LOG_LEVEL_VAR = registry.FAME_LOG_LEVEL.name
SCOPE = "node.connect"
ALGORITHM = "ES256"
MAX_FAILURES = 5
FAILURE_WINDOW = 60.0
MAX_BODY = 8192
MAX_TTL = 86400

log = logging.getLogger("persistent_agent.access.issuer")


# ---------------------------------------------------------------- settings


@dataclass(frozen=True)
class Settings:
    """What the issuer serves, and where; read from the environment."""

    access_dir: Path
    host: str
    port: int
    issuer: str
    audience: str
    ttl: int
    ready_file: Path | None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Settings from *env* (default: the environment); a missing or bad value is one
        line naming its variable."""
        access_dir = registry.PERSISTENT_AGENT_ACCESS_DIR.required(
            env, hint="point it at the access directory"
        )
        port = registry.PERSISTENT_AGENT_ISSUER_PORT.value(env)
        return cls(
            access_dir=access_dir,
            host=registry.PERSISTENT_AGENT_ISSUER_HOST.value(env),
            port=port,
            issuer=registry.FAME_JWT_TRUSTED_ISSUER.value(env) or f"https://127.0.0.1:{port}",
            audience=registry.FAME_JWT_AUDIENCE.value(env),
            ttl=registry.PERSISTENT_AGENT_TOKEN_TTL_SECONDS.value(env),
            ready_file=registry.PERSISTENT_AGENT_READY_FILE.value(env),
        )


# ---------------------------------------------------------------- the signing key


def thumbprint(public: ec.EllipticCurvePublicKey) -> str:
    """The RFC 7638 JWK thumbprint of *public*: a kid that depends on the key alone."""
    jwk = _public_jwk(public)
    canonical = json.dumps(
        {name: jwk[name] for name in ("crv", "kty", "x", "y")}, separators=(",", ":")
    )
    return _b64(hashlib.sha256(canonical.encode()).digest())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _public_jwk(public: ec.EllipticCurvePublicKey) -> dict[str, str]:
    numbers = public.public_numbers()
    return {
        "kty": "EC",
        "crv": "P-256",
        "x": _b64(numbers.x.to_bytes(32, "big")),
        "y": _b64(numbers.y.to_bytes(32, "big")),
    }


class SigningKey:
    """The issuer's ES256 key: signs tokens, and publishes its public half as a JWK set."""

    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        self._key = key
        self.kid = thumbprint(key.public_key())

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        """The JWK set served at /.well-known/jwks.json."""
        jwk = _public_jwk(self._key.public_key())
        return {"keys": [{**jwk, "kid": self.kid, "alg": ALGORITHM, "use": "sig"}]}

    def sign(self, claims: dict[str, Any]) -> str:
        """*claims* as a compact JWS, with this key's kid in the header."""
        return jwt.encode(claims, self._key, algorithm=ALGORITHM, headers={"kid": self.kid})


# ---------------------------------------------------------------- the registry, kept current


class RegistryWatch:
    """The client registry, re-read whenever its file changes (a rotation, a new client).

    A file that no longer loads is not replaced by the last good copy: tokens
    are refused (fail closed) until it is mended, and the problem is logged once.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp = self._stat()
        self._registry: Registry | None = load_registry(path)

    def _stat(self) -> tuple[int, int, int]:
        try:
            info = self.path.stat()
        except OSError:
            return (0, 0, 0)
        return (info.st_ino, info.st_mtime_ns, info.st_size)

    def current(self) -> Registry | None:
        """The registry as the file holds it now; None while the file does not load."""
        stamp = self._stat()
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                self._registry = load_registry(self.path)
            except ConfigError as exc:
                self._registry = None
                log.error("client registry unusable, refusing tokens until mended: %s", exc)
        return self._registry


# ---------------------------------------------------------------- slowing down guessing


class FailureLimit:
    """Failed authentications per client id and per remote address, over a sliding window."""

    def __init__(self, limit: int = MAX_FAILURES, window: float = FAILURE_WINDOW) -> None:
        self._limit = limit
        self._window = window
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, key: str, now: float) -> deque[float]:
        times = self._failures.get(key, deque())
        while times and times[0] <= now - self._window:
            times.popleft()
        return times

    def retry_after(self, keys: list[str]) -> int | None:
        """Seconds until every one of *keys* may try again; None if none is limited."""
        now = time.monotonic()
        waits = [
            times[0] + self._window - now
            for times in (self._recent(key, now) for key in keys)
            if len(times) >= self._limit
        ]
        return max(1, math.ceil(max(waits))) if waits else None

    def record(self, keys: list[str]) -> None:
        """Count one failure against each of *keys*."""
        now = time.monotonic()
        if len(self._failures) > 10_000:
            self._failures = {k: t for k, t in self._failures.items() if self._recent(k, now)}
        for key in keys:
            self._failures[key] = self._recent(key, now)
            self._failures[key].append(now)


# ---------------------------------------------------------------- the token endpoint


class Refusal(Exception):
    """A token request refused, as an RFC 6749 error response; *reason* is for the log."""

    def __init__(
        self,
        status: int,
        error: str,
        description: str,
        headers: dict[str, str] | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description
        self.headers = headers or {}
        self.reason = reason or description

    def response(self) -> JSONResponse:
        body = {"error": self.error, "error_description": self.description}
        headers = {"Cache-Control": "no-store", "Pragma": "no-cache", **self.headers}
        return JSONResponse(body, status_code=self.status, headers=headers)


def _invalid_client(reason: str) -> Refusal:
    """One answer for every failed authentication: which part was wrong is for the log only."""
    return Refusal(
        401,
        "invalid_client",
        "client authentication failed",
        {"WWW-Authenticate": 'Basic realm="persistent-agent"'},
        reason,
    )


async def _form(request: Request) -> dict[str, str]:
    """The request's form fields; RFC 6749 allows each at most once."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/x-www-form-urlencoded":
        raise Refusal(400, "invalid_request", "send an application/x-www-form-urlencoded body")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise Refusal(400, "invalid_request", "the request body is too large")
    try:
        pairs = parse_qsl(body.decode(), keep_blank_values=True, max_num_fields=20)
    except (UnicodeDecodeError, ValueError):
        raise Refusal(400, "invalid_request", "the request body is not a valid form") from None
    form = dict(pairs)
    if len(form) != len(pairs):
        raise Refusal(400, "invalid_request", "a parameter was given more than once")
    return form


def _credentials(request: Request, form: dict[str, str]) -> tuple[str, str]:
    """The client id and secret, from HTTP Basic or the form (not both)."""
    header = request.headers.get("authorization", "")
    if not header:
        return form.get("client_id", ""), form.get("client_secret", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or "client_secret" in form:
        raise Refusal(400, "invalid_request", "use one client authentication method: Basic")
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise Refusal(400, "invalid_request", "malformed Basic credentials") from None
    raw_id, colon, raw_secret = decoded.partition(":")
    client_id, secret = unquote_plus(raw_id), unquote_plus(raw_secret)
    if not colon or form.get("client_id", client_id) != client_id:
        raise Refusal(400, "invalid_request", "malformed Basic credentials")
    return client_id, secret


def _scope(form: dict[str, str]) -> str:
    requested = form.get("scope", "").split()
    if any(scope != SCOPE for scope in requested):
        raise Refusal(400, "invalid_scope", f"only {SCOPE} can be granted")
    return SCOPE


def _shown(client_id: str) -> str:
    """The client id as the log may show it: a malformed one (a pasted secret?) is not shown."""
    if not client_id:
        return "<none>"
    return client_id if valid_client_id(client_id) else "<malformed>"


class TokenService:
    """Authenticates clients against the registry and signs their tokens."""

    def __init__(self, settings: Settings, key: SigningKey, registry: RegistryWatch) -> None:
        self.settings = settings
        self.key = key
        self.registry = registry
        self.failures = FailureLimit()

    async def token(self, request: Request) -> Response:
        remote = request.client.host if request.client else "unknown"
        client_id = ""
        try:
            form = await _form(request)
            client_id = form.get("client_id", "")
            if form.get("grant_type") != "client_credentials":
                raise Refusal(400, "unsupported_grant_type", "only client_credentials is supported")
            client_id, secret = _credentials(request, form)
            role = self._authenticate(client_id, secret, remote)
            scope = _scope(form)
            if form.get("audience", self.settings.audience) != self.settings.audience:
                raise Refusal(400, "invalid_request", "unknown audience")
        except Refusal as refusal:
            log.warning(
                "refused a token request: client_id=%s remote=%s reason=%s",
                _shown(client_id), remote, refusal.reason,
            )  # fmt: skip
            return refusal.response()
        return self._issue(client_id, role, scope)

    def _authenticate(self, client_id: str, secret: str, remote: str) -> str:
        """The client's role if *secret* is its secret and neither it nor *remote* is limited."""
        keys = [f"id:{_shown(client_id)}", f"addr:{remote}"]
        wait = self.failures.retry_after(keys)
        if wait is not None:
            raise Refusal(
                429,
                "temporarily_unavailable",
                "too many failed authentications; try again later",
                {"Retry-After": str(wait)},
            )
        registry = self.registry.current()
        if registry is None:
            raise Refusal(503, "temporarily_unavailable", "the client registry is unusable")
        if not secret:
            raise _invalid_client("no client secret")
        client = registry.check(client_id, secret)
        if client is None:
            self.failures.record(keys)
            known = client_id in registry.clients
            raise _invalid_client("wrong client secret" if known else "unknown client id")
        return client.role

    def _issue(self, client_id: str, role: str, scope: str) -> Response:
        # iat keeps its fraction: a rotation's not_before is a float, and a token
        # issued just after it must not look older by rounding down.
        now = time.time()
        claims = {
            "iss": self.settings.issuer,
            "sub": client_id,
            "aud": self.settings.audience,
            "iat": now,
            "nbf": int(now),
            "exp": int(now) + self.settings.ttl,
            "jti": secrets.token_urlsafe(16),
            "scope": scope,
            "role": role,
        }
        token = self.key.sign(claims)
        log.debug("issued a token: client_id=%s role=%s", client_id, role)
        body = {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": self.settings.ttl,
            "scope": scope,
        }
        return JSONResponse(body, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})

    async def jwks(self, _request: Request) -> Response:
        return JSONResponse(self.key.jwks(), headers={"Cache-Control": "max-age=60"})

    async def revocations(self, _request: Request) -> Response:
        registry = self.registry.current()
        if registry is None:
            return JSONResponse({"error": "the client registry is unusable"}, status_code=503)
        not_before = {cid: client.not_before for cid, client in registry.clients.items()}
        return JSONResponse({"not_before": not_before}, headers={"Cache-Control": "no-store"})

    async def health(self, _request: Request) -> Response:
        return JSONResponse({"status": "ok"})


def create_app(settings: Settings) -> Starlette:
    """The issuer's web app, over the access directory's signing key and registry."""
    key = SigningKey(pki.load_private_key(settings.access_dir / pki.SIGNING_KEY))
    service = TokenService(settings, key, RegistryWatch(settings.access_dir / REGISTRY))
    return Starlette(
        routes=[
            Route("/oauth/token", service.token, methods=["POST"]),
            Route("/.well-known/jwks.json", service.jwks, methods=["GET"]),
            Route("/revocations", service.revocations, methods=["GET"]),
            Route("/health", service.health, methods=["GET"]),
        ]
    )


# ---------------------------------------------------------------- the process


def _check_files(access_dir: Path) -> None:
    """Refuse, in one line, what uvicorn would otherwise refuse with a traceback."""
    if not access_dir.is_dir():
        raise ConfigError(f"{ACCESS_DIR_VAR}={access_dir} is not a directory; {pki.FIX}")
    cert, key = access_dir / "issuer.crt", access_dir / "issuer.key"
    for path in (cert, key, access_dir / pki.SIGNING_KEY, access_dir / REGISTRY):
        if not path.exists():
            raise ConfigError(f"{path}: no such file; {pki.FIX}")
    pki.load_private_key(key)
    if pki.expiry(cert) <= datetime.now(UTC):
        raise ConfigError(f"{cert} has expired; {pki.FIX} to issue a new one")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key)
    except ssl.SSLError:
        raise ConfigError(f"{key} does not match {cert}; {pki.FIX} to issue a new pair") from None


def _bind(settings: Settings) -> socket.socket:
    """The listening socket, bound here so that a taken port is one clear line."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            settings.host, settings.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise ConfigError(f"{HOST_VAR}={settings.host} is not usable: {exc}") from None
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {settings.host}:{settings.port} ({exc.strerror}); "
            f"set {PORT_VAR} to a free port"
        ) from None
    return sock


def _setup_logging() -> None:
    """Our one-line log on stderr; uvicorn's chatter (startup, access) stays off."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s {NAME}: %(message)s"))
    log.addHandler(handler)
    log.propagate = False
    level = (registry.FAME_LOG_LEVEL.value() or "info").upper()
    log.setLevel(level if level in logging.getLevelNamesMapping() else "INFO")
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)


def _server(settings: Settings, app: Starlette) -> uvicorn.Server:
    access = settings.access_dir
    config = uvicorn.Config(
        app,
        ssl_certfile=access / "issuer.crt",
        ssl_keyfile=access / "issuer.key",
        log_config=None,
        access_log=False,
        lifespan="off",
        proxy_headers=False,  # the remote address counts failures: no header may forge it
        server_header=False,
    )
    # Loaded here, not by serve(), to reach the SSLContext it builds: asyncio
    # would drop a failed handshake (http:// to this port, say) without a word.
    config.load()
    if config.ssl is not None:
        log_refused_handshakes(config.ssl, log)
    return uvicorn.Server(config)


async def _serve(settings: Settings, server: uvicorn.Server, sock: socket.socket) -> None:
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not task.done():
        await asyncio.sleep(0.01)
    if server.started:
        port = sock.getsockname()[1]
        log.info("started: https://%s:%d (issuer %s)", settings.host, port, settings.issuer)
    try:
        # Rewritten every HEARTBEAT_SECONDS while serving, as the nodes do: a
        # fresh file is what compose's healthcheck and `local-status` look for.
        while settings.ready_file is not None and server.started and not task.done():
            settings.ready_file.write_text(str(os.getpid()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), HEARTBEAT_SECONDS)
        await task
    finally:
        if settings.ready_file is not None:
            settings.ready_file.unlink(missing_ok=True)


def main() -> None:
    """Entry point of ``persistent-agent-issuer``: serve until SIGINT or SIGTERM."""
    _setup_logging()
    try:
        settings = Settings.from_env()
        _check_files(settings.access_dir)
        server = _server(settings, create_app(settings))
        sock = _bind(settings)
    except PersistentAgentError as error:
        sys.exit(report(NAME, error))

    def stop(_signum: int, _frame: object) -> None:
        server.should_exit = True

    # uvicorn handles these signals while it serves, then restores these handlers
    # and raises the signal again: here that is a no-op, so the process ends
    # normally (exit 0, ready file removed), not by the signal's default action.
    # A signal before uvicorn took over stops it as soon as it starts.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop)
    with contextlib.closing(sock):
        asyncio.run(_serve(settings, server, sock))


if __name__ == "__main__":
    main()
