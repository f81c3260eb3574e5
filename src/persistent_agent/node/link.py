"""A node's link to its sentinel: is the sentinel ready, is the node attached.

Two questions the runtime does not answer through a public API:

- **Is the sentinel ready for attaches?** Its web server starts listening
  before its websocket routes are registered; in that gap an attach is
  answered ``HTTP 403``, exactly as a refused credential would be. The
  websocket listener's ``GET <attach prefix>/health`` is registered together
  with the attach route, so it answers 404 in the gap and 200 once attaches
  can work: :func:`sentinel_readiness` asks it. The client uses it to tell
  "sentinel starting" (retry) from "refused" (fail at once); the agent uses it
  to attach again as soon as a restarted sentinel can take it.
- **Is this node attached?** :func:`attached` looks at the node's upstream
  connector (``NodeLike.upstream_connector`` and its ``state``): the runtime
  drops it when the link closes and sets a new one once it has attached again.
"""

from __future__ import annotations

import asyncio
import enum
import http.client
from typing import Any
from urllib.parse import urlsplit

from persistent_agent import settings

ADMISSION_URL_VAR = settings.FAME_DIRECT_ADMISSION_URL.name
# The websocket listener's routes live under this prefix; the attach URL is
# <prefix>/ws/downstream/<system id>, its health check <prefix>/health.
ATTACH_PREFIX = "/fame/v1/attach"
_PROBE_TIMEOUT = 2.0


class Readiness(enum.Enum):
    DOWN = "down"  # nothing answers at the sentinel's address
    STARTING = "starting"  # its web server answers, its attach route is not there yet
    READY = "ready"  # attaches can work


def health_url(admission_url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path) of the health check beside *admission_url*."""
    parts = urlsplit(admission_url)
    secure = parts.scheme in ("wss", "https")
    port = parts.port or (443 if secure else 80)
    path = parts.path
    prefix = path[: path.index("/ws/")] if "/ws/" in path else ATTACH_PREFIX
    return ("https" if secure else "http", parts.hostname or "127.0.0.1", port, f"{prefix}/health")


def _probe(admission_url: str) -> Readiness:
    scheme, host, port, path = health_url(admission_url)
    factory = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
    connection = factory(host, port, timeout=_PROBE_TIMEOUT)
    try:
        connection.request("GET", path)
        status = connection.getresponse().status
    except OSError:
        return Readiness.DOWN
    finally:
        connection.close()
    return Readiness.READY if status == 200 else Readiness.STARTING


async def sentinel_readiness(admission_url: str | None = None) -> Readiness:
    """Ask the sentinel at *admission_url* (default: FAME_DIRECT_ADMISSION_URL) how ready it is."""
    url = admission_url or settings.FAME_DIRECT_ADMISSION_URL.value()
    if not url:
        return Readiness.DOWN
    return await asyncio.to_thread(_probe, url)


def attached(node: Any) -> bool:
    """Whether *node* has a live link to its upstream sentinel now."""
    from naylence.fame.core import ConnectorState

    connector = getattr(node, "upstream_connector", None)
    return connector is not None and connector.state is ConnectorState.STARTED
