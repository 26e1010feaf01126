"""The lean floor: bench/passthrough.py with relaygate's own upstream client instead of aiohttp's.

The same raw ASGI app on uvicorn + uvloop + httptools, the same forwarding (POST /v1/chat/completions
unchanged to UPSTREAM/chat/completions, the answer streamed back as it arrives); only the upstream
client differs, so the two floors' difference is what the client costs (issue 20).

    python bench/passthrough_lean.py --upstream http://127.0.0.1:8001/v1 --port 8003
"""

import argparse
import sys
from pathlib import Path

import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from relaygate.upstream import Client, EncodedHeaders, UpstreamError  # noqa: E402

HEADERS = EncodedHeaders({"content-type": "application/json", "authorization": "Bearer sk-bench"})


class Proxy:
    def __init__(self, upstream: str) -> None:
        self.url = upstream.rstrip("/") + "/chat/completions"
        self.client: Client = None  # type: ignore[assignment]  # made at startup

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await receive()  # startup
            self.client = Client()
            await send({"type": "lifespan.startup.complete"})
            await receive()  # shutdown
            await self.client.close()
            return await send({"type": "lifespan.shutdown.complete"})
        if scope["path"] == "/health":
            return await respond(send, 200, b'{"status":"ok"}')
        if scope["method"] != "POST" or scope["path"] != "/v1/chat/completions":
            return await respond(send, 404, b'{"error":{"message":"not found"}}')
        body, more = b"", True
        while more:
            msg = await receive()
            body, more = body + msg.get("body", b""), msg.get("more_body", False)
        started = False
        try:
            up = await self.client.request("POST", self.url, headers=HEADERS, data=body)
            out = [(b"content-type", up.headers.get("content-type", "application/json").encode())]
            if "content-length" in up.headers:
                out.append((b"content-length", up.headers["content-length"].encode()))
            await send({"type": "http.response.start", "status": up.status, "headers": out})
            started = True
            async for chunk in up:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        except UpstreamError:
            if started:
                raise  # uvicorn drops the connection: the client sees a truncated stream
            await respond(send, 502, b'{"error":{"message":"upstream failed"}}')


async def respond(send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="bare pass-through proxy on relaygate's upstream client (lean floor)")
    ap.add_argument("--upstream", required=True, help="base URL, e.g. http://127.0.0.1:8001/v1")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8003)
    a = ap.parse_args()
    uvicorn.run(Proxy(a.upstream), host=a.host, port=a.port, loop="uvloop", http="httptools",
                lifespan="on", log_level="warning", access_log=False, backlog=4096)
