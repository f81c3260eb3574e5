"""A web server that answers as a sentinel does in the gap before it can take attaches.

A real sentinel cannot be held in that gap on purpose: its web server
(uvicorn + Starlette) listens a moment before its websocket listener registers
the attach route and its ``/health`` beside it. In that moment a websocket
handshake is answered ``HTTP 403`` (Starlette's answer to a websocket with no
route) and ``GET <attach prefix>/health`` 404. This serves exactly that, on the
same stack; with ``ready=True`` the health check answers 200 while attaches are
still refused, which is how a sentinel that refuses a credential looks.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from persistent_agent.access.project import access_dir
from persistent_agent.demo.local_nodes import LocalNodes
from persistent_agent.node.link import ATTACH_PREFIX


class GapSentinel:
    def __init__(self, port: int, ready: bool, tls: tuple[Path, Path] | None = None) -> None:
        self.handshakes = 0
        routes: list[Route | WebSocketRoute] = []
        if ready:

            async def health(_request: Request) -> JSONResponse:
                return JSONResponse({"status": "healthy"})

            async def refuse(websocket: WebSocket) -> None:
                await websocket.close(code=1008)  # before accept: HTTP 403

            routes = [
                Route(f"{ATTACH_PREFIX}/health", health),
                WebSocketRoute(f"{ATTACH_PREFIX}/ws/{{kind}}/{{system_id}}", refuse),
            ]
        self._app = Starlette(routes=routes)
        config = uvicorn.Config(
            self._counting,
            host="127.0.0.1",
            port=port,
            log_config=None,  # leaves the process's logging as it is (other tests read it)
            lifespan="off",
            ws="websockets-sansio",
            interface="asgi3",
            # The real sentinel's certificate, when the fabric is secured.
            ssl_certfile=tls[0] if tls else None,
            ssl_keyfile=tls[1] if tls else None,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=asyncio.run, args=(self._server.serve(),))

    async def _counting(self, scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] == "websocket":
            self.handshakes += 1
        await self._app(scope, receive, send)

    def __enter__(self) -> GapSentinel:
        self._thread.start()
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the stand-in sentinel did not start")
            self._thread.join(0.01)
        return self

    def __exit__(self, *_exc: object) -> None:
        self._server.should_exit = True
        self._thread.join()


@contextlib.contextmanager
def gap_sentinel(nodes: LocalNodes, ready: bool = False) -> Iterator[GapSentinel]:
    """The stand-in on *nodes*' sentinel port, with the sentinel's certificate if secured."""
    access = access_dir(nodes.config_dir)
    tls = (access / "sentinel.crt", access / "sentinel.key") if nodes.secure else None
    with GapSentinel(nodes.port, ready, tls) as server:
        yield server
