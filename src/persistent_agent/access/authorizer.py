"""The sentinel's door: who may attach, and what each credential's role may do once in.

The runtime's ``oauth2-gated`` authorizer checks a token's issuer, audience,
signature and scope, then lets the node do anything: its address-bind handler
applies binds, pool binds included, before any route authorization, so any
admitted node could serve ``storage@fame.fabric`` and answer calls with forged
values. :class:`RoleAuthorizer` keeps those checks and adds what the role in
the token allows. The sentinel runs it on every frame from a downstream node
before acting on it (``DefaultSecurityManager.on_deliver``, which calls
``authorize`` ahead of the ``NodeAttach``/``AddressBind``/``CapabilityAdvertise``
handlers), so a refused frame is never applied.

- **Attach.** The token is verified against the issuer's JWKS, fetched over
  TLS that trusts only the project's CA: ES256, ``exp``/``iat``/``sub``
  required, issuer and audience as configured, scope ``node.connect``, a known
  role, and not revoked. The node id must carry the runtime's token-subject
  prefix (``<fingerprint of sub>-``, as ``FAME_NODE_IDENTITY_PROFILE=token-subject``
  makes it), so a credential cannot attach under another credential's node id
  and take over its route. (The logicals a node lists at attach are its own
  business: the runtime's direct admission lists ``*`` for any node that asks
  for none, and the sentinel routes by binds, not by them.)
- **Binds and capabilities.** Only the agent role may bind the agent's
  address, directly or in the ``*.fame.fabric`` pool, or advertise a
  capability. Any role may bind addresses under its own node's physical path.
- **Calls.** A client credential may send data only to the agent's address.

A refused attach or bind is answered (a negative ack, so the caller fails at
once with the reason instead of waiting for a timeout), logged in one line, and
the link is closed with 1008. **Revocation**: every 2 s the authorizer reads
the issuer's ``/revocations``; a token issued before its credential's
``not_before`` is refused at attach, and a live link that attached with one is
closed. Tokens are otherwise checked only at the websocket handshake.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
import ssl
import time
from dataclasses import dataclass
from typing import Any, Literal, get_args

import jwt

from persistent_agent import AGENT_ADDR

logger = logging.getLogger("persistent_agent.access")

AUTHORIZER_TYPE = "RoleAuthorizer"
REQUIRED_SCOPE = "node.connect"
ROLES = ("agent", "client", "sentinel")
# What the agent role may bind: the fabric's logical address, alone or as a
# replica in the wildcard pool.
_AGENT_ADDRESSES = (AGENT_ADDR, AGENT_ADDR.replace("@", "@*."))
POLICY_VIOLATION = 1008
_LEEWAY_SECONDS = 5
_JWKS_REFRESH_SECONDS = 5.0
_CLOSE_DELAY_SECONDS = 0.1


# Every reason a node is told starts so (access/fabric.py's refusal() finds it).
REFUSAL_PREFIX = "access refused: "


# Why a refusal was made, as a bounded code (the text says it to a person).
Reason = Literal[
    "no_token", "bad_token", "expired", "revoked", "role", "identity", "issuer_unreachable"
]
REASONS: tuple[Reason, ...] = get_args(Reason)


class Refused(Exception):
    """A frame or a token this authorizer refuses; the text is the reason (never a
    secret), :attr:`reason` its code (the metrics count refusals by it)."""

    def __init__(self, text: str, reason: Reason) -> None:
        super().__init__(text)
        self.reason: Reason = reason


@dataclass
class _Session:
    connector: Any
    subject: str
    role: str
    issued_at: float
    system_id: str


def node_id_prefix(subject: str) -> str:
    """The prefix the runtime's token-subject identity policy gives a node of *subject*."""
    from naylence.fame.core import generate_id

    return f"{generate_id(mode='fingerprint', material=subject, length=8)}-"


def _address_parts(address: str) -> tuple[str, str]:
    name, _, location = address.partition("@")
    return name, location


def _own_path(address: str, system_id: str) -> bool:
    """Whether *address* lives under the node's own physical path (``name@/…/<system id>``)."""
    _name, location = _address_parts(address)
    return location.startswith("/") and location.rstrip("/").split("/")[-1] == system_id


def _agent_address(address: str) -> bool:
    return any(
        fnmatch.fnmatchcase(address, pattern) for pattern in _AGENT_ADDRESSES
    ) or address in (_AGENT_ADDRESSES)


class RoleAuthorizer:
    """OAuth2 checks plus authorization by the token's role; see the module docstring."""

    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        ca_file: str,
        revocation_poll_seconds: float = 2.0,
    ) -> None:
        self._issuer = issuer.rstrip("/")
        self._audience = audience
        self._ssl = ssl.create_default_context(cafile=ca_file)
        self._poll_seconds = revocation_poll_seconds
        self._keys: dict[str, Any] = {}
        self._keys_fetched = 0.0
        self._not_before: dict[str, float] = {}
        self._sessions: dict[int, _Session] = {}
        self._poller: asyncio.Task[None] | None = None
        self._key_lock = asyncio.Lock()
        self._closing: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------ the issuer
    async def _get_json(self, path: str) -> Any:
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=5)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(f"{self._issuer}{path}", ssl=self._ssl) as response,
        ):
            response.raise_for_status()
            return await response.json()

    async def _signing_key(self, kid: str) -> Any:
        async with self._key_lock:
            key = self._keys.get(kid)
            if key is None and time.monotonic() - self._keys_fetched > _JWKS_REFRESH_SECONDS:
                self._keys_fetched = time.monotonic()
                try:
                    jwks = await self._get_json("/.well-known/jwks.json")
                except Exception as exc:
                    raise Refused(
                        f"cannot reach the token issuer's keys ({type(exc).__name__})",
                        "issuer_unreachable",
                    ) from None
                self._keys = {
                    str(jwk["kid"]): jwt.PyJWK(jwk).key
                    for jwk in jwks.get("keys", [])
                    if "kid" in jwk
                }
                key = self._keys.get(kid)
        if key is None:
            raise Refused("token not signed by the fabric's issuer", "bad_token")
        return key

    def _start_polling(self) -> None:
        if self._poller is None or self._poller.done():
            self._poller = asyncio.get_running_loop().create_task(self._poll_revocations())

    async def _poll_revocations(self) -> None:
        while True:
            with contextlib.suppress(Exception):  # the issuer down: keep the last list
                body = await self._get_json("/revocations")
                self._not_before = {str(k): float(v) for k, v in body.get("not_before", {}).items()}
                await self._end_revoked_sessions()
            await asyncio.sleep(self._poll_seconds)

    def _revoked(self, subject: str, issued_at: float) -> bool:
        return issued_at < self._not_before.get(subject, 0.0)

    async def _end_revoked_sessions(self) -> None:
        from naylence.fame.core import ConnectorState

        for key, session in list(self._sessions.items()):
            if session.connector.state in (ConnectorState.CLOSED, ConnectorState.STOPPED):
                del self._sessions[key]
            elif self._revoked(session.subject, session.issued_at):
                del self._sessions[key]
                logger.warning(
                    "closed the link of node %s: credential %r was revoked",
                    session.system_id,
                    session.subject,
                )
                with contextlib.suppress(Exception):
                    await session.connector.close(POLICY_VIOLATION, "credential revoked")

    # ------------------------------------------------------------ the runtime's Authorizer
    async def authenticate(self, credentials: str | bytes) -> Any:
        """The websocket handshake's token: the claims, or None (the attach is refused)."""
        from naylence.fame.core import AuthorizationContext

        self._start_polling()
        token = credentials.decode() if isinstance(credentials, bytes) else credentials
        if token.lower().startswith("bearer "):
            token = token[7:]
        token = token.strip()
        try:
            claims = await self._verify(token)
        except Refused as refused:
            logger.warning("refused an attach: %s", refused)
            return None
        return AuthorizationContext(
            authenticated=True,
            principal=claims["sub"],
            claims=claims,
            granted_scopes=str(claims.get("scope", "")).split(),
            auth_method="oauth2_jwt",
        )

    async def _verify(self, token: str) -> dict[str, Any]:
        if not token:
            raise Refused("no token", "no_token")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Refused("not a JWT", "bad_token") from None
        if header.get("alg") != "ES256":
            raise Refused(f"token algorithm {header.get('alg')!r} is not ES256", "bad_token")
        key = await self._signing_key(str(header.get("kid", "")))
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=["ES256"],
                audience=self._audience,
                issuer=self._issuer,
                leeway=_LEEWAY_SECONDS,
                options={"require": ["exp", "iat", "sub", "aud", "iss"]},
            )
        except jwt.ExpiredSignatureError:
            raise Refused("token expired", "expired") from None
        except jwt.InvalidAudienceError:
            raise Refused(f"token is not for audience {self._audience!r}", "bad_token") from None
        except jwt.InvalidIssuerError:
            raise Refused(f"token is not from issuer {self._issuer}", "bad_token") from None
        except jwt.InvalidSignatureError:
            raise Refused("token signature does not verify", "bad_token") from None
        except jwt.MissingRequiredClaimError as exc:
            raise Refused(f"token has no {exc.claim!r} claim", "bad_token") from None
        except jwt.PyJWTError as exc:
            raise Refused(f"token invalid ({type(exc).__name__})", "bad_token") from None
        subject = str(claims["sub"])
        if REQUIRED_SCOPE not in str(claims.get("scope", "")).split():
            raise Refused(f"credential {subject!r}: token lacks the scope {REQUIRED_SCOPE}", "role")
        if claims.get("role") not in ROLES:
            raise Refused(f"credential {subject!r}: token has no known role", "role")
        if self._revoked(subject, float(claims["iat"])):
            raise Refused(f"credential {subject!r} was revoked", "revoked")
        return claims

    async def authorize(self, node: Any, envelope: Any, context: Any = None) -> Any:
        """Each frame from a downstream node: its authorization context, or None (dropped)."""
        auth = getattr(getattr(context, "security", None), "authorization", None)
        system_id = str(getattr(context, "from_system_id", None) or "?")
        claims = getattr(auth, "claims", None) or {}
        subject, role = str(claims.get("sub", "")), str(claims.get("role", ""))
        frame = envelope.frame
        try:
            if not subject:
                raise Refused("no authenticated credential", "no_token")
            if self._revoked(subject, float(claims.get("iat", 0))):
                raise Refused(f"credential {subject!r} was revoked", "revoked")
            self._check(envelope, system_id, subject, role)
        except Refused as refused:
            logger.warning(
                "refused %s from node %s (credential %r, role %s): %s",
                frame.type,
                system_id,
                subject or "-",
                role or "-",
                refused,
            )
            await self._answer(envelope, context, f"{REFUSAL_PREFIX}{refused}")
            return None
        if (
            frame.type == "NodeAttach"
            and context is not None
            and context.from_connector is not None
        ):
            self._sessions[id(context.from_connector)] = _Session(
                context.from_connector, subject, role, float(claims["iat"]), system_id
            )
        return auth

    async def authorize_route(
        self, node: Any, envelope: Any, action: Any, context: Any = None
    ) -> Any:
        return None  # frames were checked in authorize; routes follow from them

    def create_reverse_authorization_config(self, node: Any) -> Any:
        return None

    # ------------------------------------------------------------ the policy
    def _check(self, envelope: Any, system_id: str, subject: str, role: str) -> None:
        frame = envelope.frame
        kind = frame.type
        if kind == "NodeAttach":
            if not str(frame.system_id).startswith(node_id_prefix(subject)):
                raise Refused(
                    f"node id {frame.system_id!r} is not tied to credential {subject!r} "
                    "(set FAME_NODE_IDENTITY_PROFILE=token-subject)",
                    "identity",
                )
        elif kind in ("AddressBind", "AddressUnbind"):
            address = str(frame.address)
            if _own_path(address, system_id):
                return
            if role != "agent" or not _agent_address(address):
                raise Refused(f"role {role} may not bind {address}", "role")
        elif kind in ("CapabilityAdvertise", "CapabilityWithdraw"):
            if role != "agent":
                raise Refused(f"role {role} may not advertise capabilities", "role")
        elif kind == "Data" and role == "client":
            target = str(envelope.to or "")
            if target and not _agent_address(target):
                raise Refused(f"role client may call only {AGENT_ADDR}, not {target}", "role")

    async def _answer(self, envelope: Any, context: Any, reason: str) -> None:
        """Tell the node why, as the frame's own negative ack; then close its link,
        except for a refused call, which is nacked to its sender."""
        from naylence.fame.core import (
            AddressBindAckFrame,
            AddressUnbindAckFrame,
            CapabilityAdvertiseAckFrame,
            DeliveryAckFrame,
            FlowFlags,
            NodeAttachAckFrame,
            create_fame_envelope,
        )

        connector = getattr(context, "from_connector", None)
        if connector is None:
            return
        frame = envelope.frame
        ack: Any = None
        if frame.type == "NodeAttach":
            ack = NodeAttachAckFrame(ok=False, reason=reason, ref_id=envelope.id)
        elif frame.type == "AddressBind":
            ack = AddressBindAckFrame(
                ok=False, reason=reason, ref_id=envelope.id, address=frame.address
            )
        elif frame.type == "AddressUnbind":
            ack = AddressUnbindAckFrame(
                ok=False, reason=reason, ref_id=envelope.id, address=frame.address
            )
        elif frame.type == "CapabilityAdvertise":
            ack = CapabilityAdvertiseAckFrame(
                ok=False,
                reason=reason,
                ref_id=envelope.id,
                address=frame.address,
                capabilities=frame.capabilities,
            )
        if frame.type == "Data":
            # A refused call is nacked, as the sentinel nacks an unroutable one;
            # the link stays: the node's other calls may be allowed.
            if envelope.reply_to and envelope.corr_id:
                nack = DeliveryAckFrame(
                    ok=False, code="access_refused", ref_id=envelope.id, reason=reason
                )
                with contextlib.suppress(Exception):
                    await connector.send(
                        create_fame_envelope(
                            frame=nack,
                            to=envelope.reply_to,
                            corr_id=envelope.corr_id,
                            flags=FlowFlags.RESET,
                        )
                    )
            return
        if ack is not None:
            with contextlib.suppress(Exception):
                await connector.send(create_fame_envelope(frame=ack, corr_id=envelope.corr_id))
        # As the runtime does after a refused attach: close a moment later, so
        # that the node reads the ack before its link goes.
        task = asyncio.get_running_loop().create_task(self._close_soon(connector, reason))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    @staticmethod
    async def _close_soon(connector: Any, reason: str) -> None:
        await asyncio.sleep(_CLOSE_DELAY_SECONDS)
        with contextlib.suppress(Exception):
            await connector.close(POLICY_VIOLATION, reason[:120])
