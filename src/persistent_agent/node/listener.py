"""The sentinel's listeners, on a web server that refuses frames over the envelope limit.

The runtime's listeners (``HttpListener``, ``WebSocketListener``) share one
``DefaultHttpServer`` per address, whose ``uvicorn.Config`` is fixed: it
accepts websocket messages of up to 16 MiB, although no envelope may exceed
256 KiB (``FAME_MAX_MESSAGE_SIZE``, which the runtime's connectors check
before sending and its websocket client applies when receiving). A 15 MB
frame sent to the attach endpoint was read whole into memory (the sentinel's
RSS went from 88 to 139 MB) before being refused as an envelope. No setting
changes that, so the sentinel's config names these listener types instead
(registered under the runtime's ``naylence.TransportListenerFactory``
entry-point group, see pyproject.toml): the same listener classes, built as
the runtime's factories build them, on :class:`BoundedHttpServer`, whose only
difference is ``ws_max_size``. A larger frame closes its connection with
1009 (message too big) before it is buffered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from naylence.fame.connector.connector_config import ConnectorConfig
from naylence.fame.connector.connector_factory import ConnectorFactory
from naylence.fame.connector.http_listener_factory import HttpListenerConfig
from naylence.fame.connector.http_server import HttpServer
from naylence.fame.connector.transport_listener_factory import TransportListenerFactory
from naylence.fame.connector.websocket_connector import WebSocketConnector
from naylence.fame.connector.websocket_listener import WebSocketListener
from naylence.fame.connector.websocket_listener_factory import WebSocketListenerConfig

from persistent_agent.access.handshakes import log_refused_handshakes

if TYPE_CHECKING:
    import uvicorn
    from fastapi import APIRouter
    from naylence.fame.connector.transport_listener import TransportListener

HTTP_LISTENER_TYPE = "BoundedHttpListener"
WEBSOCKET_LISTENER_TYPE = "BoundedWebSocketListener"
_RUNTIME_TYPES = {"HttpListener": HTTP_LISTENER_TYPE, "WebSocketListener": WEBSOCKET_LISTENER_TYPE}
GATEWAY_LISTENER_TYPE = "AgentHttpGatewayListener"  # the SDK's; on the runtime's own server


def max_frame_bytes() -> int:
    """The largest websocket message the sentinel reads: the runtime's envelope limit."""
    from naylence.fame.connector.base_async_connector import FAME_MAX_MESSAGE_SIZE

    return int(FAME_MAX_MESSAGE_SIZE)


def bounded(listener: dict[str, Any]) -> dict[str, Any]:
    """*listener* (a runtime listener's config) on the bounded server, where there is one."""
    return {**listener, "type": _RUNTIME_TYPES.get(listener["type"], listener["type"])}


class BoundedHttpServer(HttpServer):
    """FastAPI on uvicorn as the runtime's ``DefaultHttpServer`` runs it, shared per
    address, with websocket messages limited to :func:`max_frame_bytes`, and each
    refused TLS handshake logged in one line (access/handshakes.py)."""

    _shared: ClassVar[dict[tuple[str, int], BoundedHttpServer]] = {}

    def __init__(
        self,
        *,
        host: str = "0.0.0.0",  # noqa: S104 - as the runtime's
        port: int = 0,
        tls: tuple[str, str] | None = None,
    ) -> None:
        from fastapi import FastAPI

        super().__init__(host=host, port=port)
        self._tls = tls
        self._app = FastAPI(title="Fame HTTP Server", lifespan=None)
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def shared(
        cls, host: str, port: int, tls: tuple[str, str] | None = None
    ) -> BoundedHttpServer:
        """The running server for *host*:*port*, started by the first listener that asks.

        *tls*: (certificate file, key file), to serve HTTPS and ``wss://`` only.
        """
        server = cls._shared.get((host, port))
        if server is None:
            server = cls._shared[(host, port)] = cls(host=host, port=port, tls=tls)
        elif server._tls != tls:
            raise RuntimeError(f"listeners on {host}:{port} disagree on TLS")
        await server.start()
        return server

    async def start(self) -> None:
        import uvicorn

        if self._server is not None:
            return
        config = uvicorn.Config(
            self._app,
            host=self._host,
            port=self._port,
            lifespan="off",
            log_config=None,
            loop="asyncio",
            access_log=False,
            # The runtime's settings: an idle attached node must not be dropped.
            timeout_keep_alive=3600,
            timeout_graceful_shutdown=30,
            # Named, not "auto": the bound below is applied by this implementation.
            ws="websockets",
            ws_max_size=max_frame_bytes(),
            ssl_certfile=self._tls[0] if self._tls else None,
            ssl_keyfile=self._tls[1] if self._tls else None,
        )
        # Loaded here, not by serve(), to reach the SSLContext it builds: asyncio
        # would drop a failed handshake (ws:// to this port, say) without a word.
        config.load()
        if config.ssl is not None:
            log_refused_handshakes(config.ssl, logging.getLogger(__name__))
        self._server = server = uvicorn.Server(config)
        self._task = task = asyncio.create_task(server.serve())
        while not server.started:  # uvicorn says when it listens only by this flag
            if task.done():
                task.result()  # its error (a port taken, say)
                raise RuntimeError(f"the web server on {self._host}:{self._port} stopped")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        server, task, self._server, self._task = self._server, self._task, None, None
        if server is None or task is None:
            return
        server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout=5.0)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def include_router(self, router: APIRouter) -> None:
        self._app.include_router(router)

    @property
    def is_running(self) -> bool:
        return self._server is not None and self._server.started

    def _address(self) -> tuple[str, int] | None:
        if self._server is None or not self._server.servers:
            return None
        host, port = self._server.servers[0].sockets[0].getsockname()[:2]
        return str(host), int(port)

    @property
    def actual_host(self) -> str | None:
        address = self._address()
        return address[0] if address else None

    @property
    def actual_port(self) -> int | None:
        address = self._address()
        return address[1] if address else None


async def _authorizer(config: HttpListenerConfig | WebSocketListenerConfig) -> Any:
    if not config.authorizer:
        return None
    from naylence.fame.factory import create_resource
    from naylence.fame.security.auth.authorizer_factory import AuthorizerFactory

    return await create_resource(AuthorizerFactory, config.authorizer)


ListenerConfigT = TypeVar(
    "ListenerConfigT", "BoundedHttpListenerConfig", "BoundedWebSocketListenerConfig"
)


async def _server(
    model: type[ListenerConfigT], config: Any
) -> tuple[ListenerConfigT, BoundedHttpServer]:
    """*config* (the runtime's listener config, or a dict) as *model*, and the shared
    server on its address, serving TLS when it names a certificate and key."""
    settings = model.model_validate(
        config.model_dump() if hasattr(config, "model_dump") else config or {}
    )
    cert, key = settings.tls_cert_file, settings.tls_key_file
    tls = (cert, key) if cert and key else None
    return settings, await BoundedHttpServer.shared(settings.host, settings.port, tls)


class BoundedHttpListenerConfig(HttpListenerConfig):
    """The runtime's HTTP listener, on :class:`BoundedHttpServer`."""

    type: str = HTTP_LISTENER_TYPE
    tls_cert_file: str | None = None
    tls_key_file: str | None = None


class BoundedHttpListenerFactory(TransportListenerFactory):
    """Builds the runtime's ``HttpListener`` on the shared :class:`BoundedHttpServer`."""

    async def create(
        self, config: HttpListenerConfig | dict[str, Any] | None = None, **kwargs: Any
    ) -> TransportListener:
        from naylence.fame.connector.http_listener import HttpListener

        settings, server = await _server(BoundedHttpListenerConfig, config)
        return HttpListener(http_server=server, authorizer=await _authorizer(settings), **kwargs)


CONNECTOR_TYPE = "GrantingWebSocketConnector"


class GrantingWebSocketConnector(WebSocketConnector):
    """The sentinel's end of an attached node's websocket: it grants credits, and never
    waits for any.

    The runtime's credit flow control lets 32 envelopes per flow be in flight on a
    connection; a sender waits for credits with no timeout, and a receiver hands
    them back only after its handler returned. The sentinel's handler is the
    forward to the next hop, which waits for that hop's credits: under a flood
    both ways fill at once and the two receive loops wait on each other for good
    (docs/operations.md, "Floods"). This end still counts what it receives and
    grants credits, so a node or client with flow control on goes on sending; its
    own sends never wait, and are bounded by the connector's send queue instead.
    """

    def __init__(self, websocket: Any, *, authorization_context: Any = None) -> None:
        super().__init__(websocket, authorization_context=authorization_context)
        # No setting says "grant, but do not wait": with flow control on
        # (FAME_FLOW_CONTROL, the default) the base class counts and grants
        # credits and would wait for them; this turns off only the waiting.
        self._fc_enabled = False


class GrantingWebSocketConnectorConfig(ConnectorConfig):
    """The sentinel's end of a websocket attach, built by the factory below."""

    type: str = CONNECTOR_TYPE


class GrantingWebSocketConnectorFactory(ConnectorFactory):
    """Builds the sentinel's end of an accepted websocket. It never dials out, so it
    answers no connection grant: nodes and clients keep the runtime's own factory."""

    @classmethod
    def supported_grant_types(cls) -> list[str]:
        return []

    @classmethod
    def supported_grants(cls) -> dict[str, Any]:
        return {}

    @classmethod
    def config_from_grant(cls, grant: Any, expression_evaluation_policy: Any = None) -> Any:
        raise ValueError(f"{CONNECTOR_TYPE} only serves websockets the sentinel accepted")

    @classmethod
    def grant_from_config(cls, config: Any, expression_evaluation_policy: Any = None) -> Any:
        raise ValueError(f"{CONNECTOR_TYPE} only serves websockets the sentinel accepted")

    async def create(self, config: Any = None, websocket: Any = None, **kwargs: Any) -> Any:
        if websocket is None:
            raise ValueError(f"{CONNECTOR_TYPE} needs the websocket the sentinel accepted")
        return GrantingWebSocketConnector(websocket)


class GrantingWebSocketListener(WebSocketListener):
    """The runtime's attach listener, whose connectors are :class:`GrantingWebSocketConnector`."""

    async def _create_websocket_connector(
        self,
        *,
        system_id: str,
        websocket: Any,
        origin_type: Any,
        node: Any,
        authorization: Any = None,
    ) -> Any:
        return await node.create_origin_connector(
            origin_type=origin_type,
            system_id=system_id,
            connector_config=GrantingWebSocketConnectorConfig(),
            websocket=websocket,
            authorization=authorization,
        )


class BoundedWebSocketListenerConfig(WebSocketListenerConfig):
    """The runtime's websocket attach listener, on :class:`BoundedHttpServer`."""

    type: str = WEBSOCKET_LISTENER_TYPE
    tls_cert_file: str | None = None
    tls_key_file: str | None = None


class BoundedWebSocketListenerFactory(TransportListenerFactory):
    """Builds the runtime's ``WebSocketListener`` on the shared :class:`BoundedHttpServer`."""

    async def create(
        self, config: WebSocketListenerConfig | dict[str, Any] | None = None, **kwargs: Any
    ) -> TransportListener:
        settings, server = await _server(BoundedWebSocketListenerConfig, config)
        # As the runtime's factory: a token verifier passed in is used only if it is one.
        verifier = kwargs.pop("token_verifier", None)
        return GrantingWebSocketListener(
            http_server=server,
            token_verifier=verifier if hasattr(verifier, "verify") else None,
            authorizer=await _authorizer(settings),
            **kwargs,
        )
