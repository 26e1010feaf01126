"""Set-up of microinstr.py's ``http-protocol-*`` cases: one chat request through uvicorn's httptools protocol (or
relaygate's guarded one), from the bytes read to the answer's completion, with the app's task left out."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import uvloop
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from relaygate.testing.transport import HeldTransport


class _Transport(HeldTransport):
    def write(self, data: Any) -> None:  # nothing kept: the case runs thousands of times
        pass


async def _app(scope: Any, receive: Any, send: Any) -> None:
    pass


def protocol(guarded: bool) -> Any:
    """A protocol on a connection, whose ``one()`` serves one request as a keep-alive client sends it."""
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    config = Config(_app, http="httptools", lifespan="off")
    config.load()
    cls: Any = HttpToolsProtocol
    if guarded:
        from relaygate.config import ServerConfig
        from relaygate.server.guard import Watchdog, protocol_class

        cls = protocol_class(Watchdog(ServerConfig()))
    p = cls(config=config, server_state=ServerState(), app_state={}, _loop=loop)
    p._start_asgi_task = lambda cycle, app: None
    p.connection_made(_Transport())
    body = (Path(__file__).resolve().parent / "requests" / "chat.json").read_bytes()
    request = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:4000\r\nUser-Agent: Python/3.11 aiohttp\r\n"
               b"Accept: */*\r\nAccept-Encoding: gzip, deflate\r\ncontent-type: application/json\r\n"
               b"authorization: Bearer sk-bench\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)

    def one() -> None:
        p.data_received(request)
        p.cycle.response_complete = True
        p.on_response_complete()

    p.one = one
    return p
