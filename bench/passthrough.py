"""The floor relaygate is measured against: a bare pass-through proxy with the stack STACK.md chose.

Raw ASGI on uvicorn + uvloop + httptools, one pooled aiohttp.ClientSession. It forwards
POST /v1/chat/completions unchanged to UPSTREAM/chat/completions and streams the answer back as
it arrives. No parsing, no auth, no logging: whatever relaygate costs beyond this is its own.

    python bench/passthrough.py --upstream http://127.0.0.1:8001/v1 --port 8002
"""

import argparse

import aiohttp
import uvicorn


class Proxy:
    """The ASGI plumbing; ``forward`` is the part that uses an upstream client (bench/passthrough_lean.py
    swaps it for relaygate's own)."""

    def __init__(self, upstream: str) -> None:
        self.url = upstream.rstrip("/") + "/chat/completions"
        self.session: aiohttp.ClientSession = None  # type: ignore[assignment]  # made at startup

    async def start(self) -> None:
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    async def stop(self) -> None:
        await self.session.close()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await receive()  # startup
            await self.start()
            await send({"type": "lifespan.startup.complete"})
            await receive()  # shutdown
            await self.stop()
            return await send({"type": "lifespan.shutdown.complete"})
        if scope["path"] == "/health":
            return await respond(send, 200, b'{"status":"ok"}')
        if scope["method"] != "POST" or scope["path"] != "/v1/chat/completions":
            return await respond(send, 404, b'{"error":{"message":"not found"}}')
        body, more = b"", True
        while more:
            msg = await receive()
            body, more = body + msg.get("body", b""), msg.get("more_body", False)
        await self.forward(body, send)

    async def forward(self, body: bytes, send) -> None:
        headers = {"Content-Type": "application/json", "Authorization": "Bearer sk-bench"}
        started = False
        try:
            async with self.session.post(self.url, data=body, headers=headers) as up:
                out = [(b"content-type", up.headers.get("Content-Type", "application/json").encode())]
                if "Content-Length" in up.headers:
                    out.append((b"content-length", up.headers["Content-Length"].encode()))
                await send({"type": "http.response.start", "status": up.status, "headers": out})
                started = True
                async for chunk in up.content.iter_any():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b""})
        except aiohttp.ClientError:
            if started:
                raise  # uvicorn drops the connection: the client sees a truncated stream
            await respond(send, 502, b'{"error":{"message":"upstream failed"}}')


async def respond(send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def serve(make_proxy, description: str, default_port: int) -> None:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--upstream", required=True, help="base URL, e.g. http://127.0.0.1:8001/v1")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=default_port)
    a = ap.parse_args()
    uvicorn.run(make_proxy(a.upstream), host=a.host, port=a.port, loop="uvloop", http="httptools",
                lifespan="on", log_level="warning", access_log=False, backlog=4096)


if __name__ == "__main__":
    serve(Proxy, "bare pass-through proxy (benchmark floor)", 8002)
