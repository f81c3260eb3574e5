"""The floor under an RPC through the sentinel: a minimal relay, in three processes.

Same topology and stack as a call through the demo, with nothing else: a
client sends a JSON envelope over a loopback websocket to a relay (FastAPI's
websocket route on uvicorn, configured as the runtime's sentinel configures
it), which parses it and forwards it by its ``to`` address to an echo
service; the echo parses it and sends a reply envelope back the same way.
No routing tables, delivery tracking, security, storage or logging: what is
left is (de)serialising JSON, the event loops and the sockets.

With a certificate and key the relay serves ``wss://`` as the secured sentinel
does (uvicorn's ``ssl_certfile``/``ssl_keyfile``), and the echo and the client
verify it against a CA file: the TLS floor, beside the plaintext one, so that
the secured stack is compared with a floor that pays for TLS too.

    python bench/relay.py relay PORT [CERT KEY]  # serves ws(s)://127.0.0.1:PORT/ws/<name>
    python bench/relay.py echo URL [CA_FILE]     # attaches as "echo" and answers
"""

from __future__ import annotations

import asyncio
import json
import ssl
import sys
import uuid
from typing import Any

# At module level: FastAPI resolves the route's (string) annotations here.
import uvicorn
from fastapi import FastAPI, WebSocket, WebSocketDisconnect

ECHO = "echo@fame.fabric"


def request_envelope(client: str, value: str) -> dict[str, Any]:
    """A request shaped and sized like a store_value call's envelope on the wire."""
    corr = str(uuid.uuid4())
    return {
        "version": "1.0",
        "id": str(uuid.uuid4()),
        "sid": uuid.uuid4().hex[:22],
        "to": ECHO,
        "replyTo": f"{client}@fame.fabric",
        "corrId": corr,
        "flowFlags": 0,
        "frame": {
            "type": "Data",
            "payload": {
                "jsonrpc": "2.0",
                "id": corr,
                "method": "store_value",
                "params": {"args": [], "kwargs": {"value": value}},
            },
        },
        "ts": "2026-11-26T17:53:29.429Z",
    }


def reply_envelope(request: dict[str, Any]) -> dict[str, Any]:
    value = request["frame"]["payload"]["params"]["kwargs"]["value"]
    return {
        "version": "1.0",
        "id": str(uuid.uuid4()),
        "sid": uuid.uuid4().hex[:22],
        "to": request["replyTo"],
        "corrId": request["corrId"],
        "flowFlags": 0,
        "frame": {
            "type": "Data",
            "payload": {"jsonrpc": "2.0", "id": request["corrId"], "result": {"value": value}},
        },
        "ts": "2026-11-26T17:53:29.431Z",
    }


def tls_options(ca_file: str | None) -> dict[str, Any]:
    """websockets.connect's TLS option: a context trusting *ca_file* only (the
    project CA), or none, so that ws:// stays plain and wss:// uses the defaults."""
    return {"ssl": ssl.create_default_context(cafile=ca_file)} if ca_file else {}


def relay(port: int, cert: str | None = None, key: str | None = None) -> None:
    app = FastAPI()
    peers: dict[str, WebSocket] = {}

    @app.websocket("/ws/{name}")
    async def attach(websocket: WebSocket, name: str) -> None:
        await websocket.accept()
        peers[f"{name}@fame.fabric"] = websocket
        try:
            while True:
                envelope = json.loads(await websocket.receive_text())
                target = peers.get(envelope["to"])
                if target is not None:
                    await target.send_text(json.dumps(envelope, separators=(",", ":")))
        except WebSocketDisconnect:
            peers.pop(f"{name}@fame.fabric", None)

    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        lifespan="off",
        log_config=None,
        loop="asyncio",
        access_log=False,
        ssl_certfile=cert,
        ssl_keyfile=key,
    )
    print("listening", flush=True)
    uvicorn.Server(config).run()


async def echo(url: str, ca_file: str | None = None) -> None:
    import websockets

    async with websockets.connect(
        f"{url}/ws/echo", max_size=None, proxy=None, **tls_options(ca_file)
    ) as ws:
        print("attached", flush=True)
        async for message in ws:
            reply = reply_envelope(json.loads(message))
            await ws.send(json.dumps(reply, separators=(",", ":")))


class Client:
    """One websocket to the relay; calls matched to replies by correlation id."""

    def __init__(self, ws: Any, name: str) -> None:
        self._ws, self._name = ws, name
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, url: str, ca_file: str | None = None) -> Client:
        """Attach to the relay at *url*; a ``wss://`` one is verified against *ca_file*."""
        import websockets

        name = f"client-{uuid.uuid4().hex[:8]}"
        ws = await websockets.connect(
            f"{url}/ws/{name}", max_size=None, proxy=None, **tls_options(ca_file)
        )
        return cls(ws, name)

    async def _read(self) -> None:
        async for message in self._ws:
            envelope = json.loads(message)
            waiter = self._waiting.pop(envelope["corrId"], None)
            if waiter is not None:
                waiter.set_result(envelope)

    async def call(self, value: str) -> dict[str, Any]:
        request = request_envelope(self._name, value)
        waiter = asyncio.get_running_loop().create_future()
        self._waiting[request["corrId"]] = waiter
        await self._ws.send(json.dumps(request, separators=(",", ":")))
        reply = await waiter
        return dict(reply["frame"]["payload"]["result"])

    async def close(self) -> None:
        await self._ws.close()
        self._reader.cancel()


if __name__ == "__main__":
    role, where, *tls = sys.argv[1:]
    if role == "relay":
        relay(int(where), *tls)
    else:
        asyncio.run(echo(where, *tls))
