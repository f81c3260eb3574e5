"""Each node's ``/metrics``: plaintext, on loopback only, on a port of its own.

:func:`start` is the one call a node makes (node/serving.py): with
``PERSISTENT_AGENT_METRICS_PORT`` unset it does nothing at all; set, it
registers the storage listener, the agent's call recorder, the refusal counter
and the scrape-time gauges in one registry, and serves it from a daemon
thread on ``PERSISTENT_AGENT_METRICS_HOST`` (127.0.0.1). Any host that is not
loopback is refused in one line: the endpoint has no TLS and no credential
(scraping over TLS, as compose would need, is not built yet; docs/metrics.md).

Only ``GET /metrics`` answers; every other path is 404.
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from persistent_agent import settings
from persistent_agent.addresses import loopback
from persistent_agent.errors import ConfigError

PATH = "/metrics"


@dataclass
class Endpoint:
    """A running /metrics server and what it registered; :meth:`close` undoes it all."""

    url: str
    registry: Any
    _server: Any
    _undo: list[Callable[[], None]]

    def close(self) -> None:
        for undo in reversed(self._undo):
            undo()
        self._server.shutdown()
        self._server.server_close()


def check_host(host: str) -> None:
    if not loopback(host):
        raise ConfigError(
            f"{settings.PERSISTENT_AGENT_METRICS_HOST.name}={host!r}: /metrics is served in "
            "plaintext, on loopback only; use 127.0.0.1 (a scrape over TLS is not built yet)"
        )


def start() -> Endpoint | None:
    """Serve this node's metrics if PERSISTENT_AGENT_METRICS_PORT is set (else None)."""
    port = settings.PERSISTENT_AGENT_METRICS_PORT.value()
    if port is None:
        return None
    host = settings.PERSISTENT_AGENT_METRICS_HOST.value()
    check_host(host)
    from prometheus_client import CollectorRegistry, disable_created_metrics

    from persistent_agent.metrics import refusals, rpcs
    from persistent_agent.metrics.gauges import NodeGauges
    from persistent_agent.metrics.instruments import Instruments
    from persistent_agent.metrics.listener import StorageMetrics
    from persistent_agent.storage import events

    disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series
    registry = CollectorRegistry()
    instruments = Instruments(registry)
    registry.register(NodeGauges.from_settings())
    undo: list[Callable[[], None]] = [events.listen(StorageMetrics(instruments))]
    rpcs.RECORDER = rpcs.Recorder(instruments)
    undo.append(lambda: setattr(rpcs, "RECORDER", None))
    undo.append(refusals.count_refusals(instruments))
    try:
        server = serve(registry, host, port)
    except BaseException:
        for each in reversed(undo):
            each()
        raise
    return Endpoint(f"http://{host}:{server.server_port}{PATH}", registry, server, undo)


def serve(registry: Any, host: str, port: int) -> Any:
    """A WSGI server for *registry* at PATH on *host*:*port*, in a daemon thread."""
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from prometheus_client import make_wsgi_app
    from prometheus_client.exposition import ThreadingWSGIServer

    scrape = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != PATH:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found: /metrics only\n"]
        result: Iterable[bytes] = scrape(environ, start_response)
        return result

    class Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            """No line per scrape."""

    try:
        server = make_server(host, port, app, ThreadingWSGIServer, handler_class=Quiet)
    except OSError as exc:
        why = "already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
        raise ConfigError(
            f"cannot serve /metrics on {host}:{port}: {why}; set "
            f"{settings.PERSISTENT_AGENT_METRICS_PORT.name} to a free port"
        ) from None
    thread = threading.Thread(target=server.serve_forever, name="metrics", daemon=True)
    thread.start()
    return server
