"""The fabric's security settings: how each node proves who it is and whom it trusts.

Secure by default: every node attaches over ``wss://`` with a token from the
project's issuer, and trusts only the project's CA. The settings (each node's
env file, or the environment):

- ``PERSISTENT_AGENT_CA_FILE``: the project CA (``config/access/ca.crt``). A
  node *pins* it: the process trusts this CA and no system root, so a publicly
  trusted certificate for another name does not pass.
- the sentinel: ``PERSISTENT_AGENT_TLS_CERT_FILE``/``_KEY_FILE`` (its
  certificate), ``FAME_JWT_TRUSTED_ISSUER`` and ``FAME_JWT_AUDIENCE``;
- the agent, its replicas and the client: ``FAME_ADMISSION_TOKEN_URL``,
  ``FAME_ADMISSION_CLIENT_ID`` and ``PERSISTENT_AGENT_CLIENT_SECRET_FILE`` (an
  owner-only file; the secret is never an environment variable).

``PERSISTENT_AGENT_FABRIC_SECURITY=off`` is the one opt-out, for talking to the
unauthenticated upstream examples: plain ``ws://``, no tokens, the runtime's
``open`` profile. It is refused unless every address involved is loopback.
Relative file paths are taken from the env file's directory.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from persistent_agent import settings as registry
from persistent_agent.access.authorizer import AUTHORIZER_TYPE, REFUSAL_PREFIX, REQUIRED_SCOPE
from persistent_agent.addresses import loopback
from persistent_agent.errors import ConfigError, find_cause

SECURITY_VAR = registry.PERSISTENT_AGENT_FABRIC_SECURITY.name
CA_FILE_VAR = registry.PERSISTENT_AGENT_CA_FILE.name
TLS_CERT_VAR = registry.PERSISTENT_AGENT_TLS_CERT_FILE.name
TLS_KEY_VAR = registry.PERSISTENT_AGENT_TLS_KEY_FILE.name
SECRET_FILE_VAR = registry.PERSISTENT_AGENT_CLIENT_SECRET_FILE.name
CLIENT_ID_VAR = registry.FAME_ADMISSION_CLIENT_ID.name
TOKEN_URL_VAR = registry.FAME_ADMISSION_TOKEN_URL.name
ISSUER_VAR = registry.FAME_JWT_TRUSTED_ISSUER.name
AUDIENCE_VAR = registry.FAME_JWT_AUDIENCE.name
ADMISSION_URL_VAR = registry.FAME_DIRECT_ADMISSION_URL.name
IDENTITY_PROFILE_VAR = registry.FAME_NODE_IDENTITY_PROFILE.name
DEFAULT_AUDIENCE = registry.FAME_JWT_AUDIENCE.default
# The settings that name files, taken from the env file's directory when relative.
PATH_SETTINGS = (CA_FILE_VAR, TLS_CERT_VAR, TLS_KEY_VAR, SECRET_FILE_VAR)
# Where a process looks for system roots when it pins the CA: nowhere.
_NO_SYSTEM_ROOTS = "/nonexistent/persistent-agent-pins-its-ca"


def secure() -> bool:
    """Whether the fabric is secured (the default); ``off`` is the documented opt-out."""
    return registry.PERSISTENT_AGENT_FABRIC_SECURITY.value() == "on"


def check_insecure_host(host: str, what: str) -> None:
    """With security off, refuse *host* unless it is loopback."""
    if not secure() and not loopback(host):
        raise ConfigError(
            f"{SECURITY_VAR}=off but {what} is {host}, not loopback; the unsecured "
            "fabric is for loopback only (see docs/security.md)"
        )


_MAKE_ACCESS = "run `make access` (see docs/security.md)"


def _setting(setting: registry.Setting[str | None]) -> str:
    return setting.required(hint=_MAKE_ACCESS)


def _file_setting(setting: registry.Setting[Path | None]) -> Path:
    path = setting.required(hint=_MAKE_ACCESS)
    if not path.is_file():
        raise ConfigError(f"{setting.name}={path}: no such file; run `make access`")
    return path


def pin_ca() -> None:
    """Trust the project CA and nothing else, in this process and its children.

    Every TLS client here (the websocket client, aiohttp for tokens and keys,
    http.client for health probes) builds its context with
    ``ssl.create_default_context()``, whose roots come from ``SSL_CERT_FILE``
    and ``SSL_CERT_DIR``: the CA file, and a directory that does not exist.
    """
    os.environ.update(pinned_roots(_file_setting(registry.PERSISTENT_AGENT_CA_FILE)))


def pinned_roots(ca_file: Path) -> dict[str, str]:
    """The environment that makes OpenSSL trust *ca_file* and no system root."""
    return {
        registry.SSL_CERT_FILE.name: str(ca_file.resolve()),
        registry.SSL_CERT_DIR.name: _NO_SYSTEM_ROOTS,
    }


def check_url(name: str, url: str) -> None:
    """The scheme *url* must have: TLS when secure, and loopback only when not."""
    parts = urlsplit(url)
    if secure():
        if parts.scheme not in ("wss", "https"):
            raise ConfigError(
                f"{name}={url} is not TLS ({parts.scheme}://); the fabric is secured by "
                f"default (wss:// and https://), see docs/security.md"
            )
    else:
        check_insecure_host(parts.hostname or "", name)


def server_tls() -> tuple[str, str] | None:
    """The sentinel's certificate and key files, or None with security off."""
    if not secure():
        return None
    cert = _file_setting(registry.PERSISTENT_AGENT_TLS_CERT_FILE)
    return str(cert), str(_file_setting(registry.PERSISTENT_AGENT_TLS_KEY_FILE))


def admission_config() -> dict[str, Any]:
    """A node's admission: direct, over ``wss://``, with a client-credentials token.

    The runtime's ``direct`` profile, except that the secret comes from
    ``PERSISTENT_AGENT_CLIENT_SECRET_FILE`` through our ``FileCredentialProvider``.
    """
    from persistent_agent.access.factories import CREDENTIAL_PROVIDER_TYPE

    url = _setting(registry.FAME_DIRECT_ADMISSION_URL)
    check_url(ADMISSION_URL_VAR, url)
    if not secure():
        return {"type": "AdmissionProfile", "profile": "open"}
    token_url = _setting(registry.FAME_ADMISSION_TOKEN_URL)
    check_url(TOKEN_URL_VAR, token_url)
    secret_file = _file_setting(registry.PERSISTENT_AGENT_CLIENT_SECRET_FILE)
    return {
        "type": "DirectAdmissionClient",
        "connection_grants": [
            {
                "type": "WebSocketConnectionGrant",
                "purpose": "node.attach",
                "url": url,
                "auth": {
                    "type": "WebSocketSubprotocolAuth",
                    "token_provider": {
                        "type": "OAuth2ClientCredentialsTokenProvider",
                        "token_url": token_url,
                        "client_id": _setting(registry.FAME_ADMISSION_CLIENT_ID),
                        "client_secret": {
                            "type": CREDENTIAL_PROVIDER_TYPE,
                            "path": str(secret_file.resolve()),
                            "setting": SECRET_FILE_VAR,
                        },
                        "scopes": [REQUIRED_SCOPE],
                        "audience": registry.FAME_JWT_AUDIENCE.value(),
                    },
                },
                "ttl": 0,
                "durable": False,
            }
        ],
        "ttl": 0,
    }


def secure_node(config: dict[str, Any]) -> dict[str, Any]:
    """*config* (an SDK node or client config) admitted with a credential, CA pinned."""
    node = copy.deepcopy(config)
    node["node"]["admission"] = admission_config()
    if secure():
        pin_ca()
        # The node id carries the credential's fingerprint (the sentinel checks it).
        node["node"]["identity_policy"] = {
            "type": "NodeIdentityPolicyProfile",
            "profile": "token-subject",
        }
    return node


def sentinel_security() -> dict[str, Any]:
    """The sentinel's security manager: the runtime's ``gated`` profile, with our authorizer."""
    if not secure():
        return {"type": "SecurityProfile", "profile": "open"}
    from naylence.fame.security.node_security_profile_factory import GATED_PROFILE

    pin_ca()
    issuer = _setting(registry.FAME_JWT_TRUSTED_ISSUER)
    check_url(ISSUER_VAR, issuer)
    security: dict[str, Any] = copy.deepcopy(GATED_PROFILE)
    security["authorizer"] = {
        "type": AUTHORIZER_TYPE,
        "issuer": issuer,
        "audience": registry.FAME_JWT_AUDIENCE.value(),
        "ca_file": str(_file_setting(registry.PERSISTENT_AGENT_CA_FILE).resolve()),
    }
    return security


def client_config() -> dict[str, Any]:
    """The SDK's client config, admitted as :func:`secure_node` says."""
    from naylence.agent import configs

    return secure_node(configs.CLIENT_CONFIG)


def node_config() -> dict[str, Any]:
    """The SDK's agent-node config, admitted as :func:`secure_node` says."""
    from naylence.agent import configs

    return secure_node(configs.NODE_CONFIG)


_TOKEN_REFUSED = "OAuth2 token request failed: "  # noqa: S105 - an error text
_ATTACH_CLOSED = "while waiting for NodeAttachAck"


def refusal(exc: BaseException) -> str | None:
    """Why the fabric's door refused this node, as one line with the fix; None if it did not.

    Three doors: the issuer (a wrong or revoked secret), TLS (a server whose
    certificate the pinned CA does not vouch for) and the sentinel (a token or
    node it refused; it says why in its own log, and tells the node only the
    reasons that give nothing away).
    """
    token = find_cause(exc, ValueError)
    if token is not None and str(token).startswith(_TOKEN_REFUSED):
        status, _, body = str(token).removeprefix(_TOKEN_REFUSED).partition(" - ")
        try:
            detail = json.loads(body).get("error", "")
        except (ValueError, AttributeError):
            detail = ""
        who = registry.FAME_ADMISSION_CLIENT_ID.raw() or "?"
        return (
            f"the token issuer refused credential {who!r} (HTTP {status.strip()}"
            f"{', ' + detail if detail else ''}); check {SECRET_FILE_VAR}, or give it a new "
            "secret with `make rotate-credentials`"
        )
    if "CERTIFICATE_VERIFY_FAILED" in _chain_text(exc):
        ca_file = registry.PERSISTENT_AGENT_CA_FILE.raw() or ""
        return (
            f"a server's TLS certificate is not signed by the project CA "
            f"({CA_FILE_VAR}={ca_file}): certificate verify failed"
        )
    text = _chain_text(exc)
    if REFUSAL_PREFIX in text:
        reason = text.partition(REFUSAL_PREFIX)[2].partition(" | ")[0].rstrip(")")
        return f"the sentinel refused this node: {reason}"
    closed = find_cause(exc, RuntimeError)
    if closed is not None and _ATTACH_CLOSED in str(closed) and "code=1008" in str(closed):
        return "the sentinel refused this node's token (its log says why)"
    return None


def _chain_text(exc: BaseException) -> str:
    parts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        parts.append(str(current))
        current = current.__cause__ or current.__context__
    return " | ".join(parts)
