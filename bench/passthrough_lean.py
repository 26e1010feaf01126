"""The lean floor: bench/passthrough.py with relaygate's own upstream client instead of aiohttp's.

The same raw ASGI app on uvicorn + uvloop + httptools, the same forwarding (POST /v1/chat/completions
unchanged to UPSTREAM/chat/completions, the answer streamed back as it arrives); only the upstream
client differs, so the two floors' difference is what the client costs (issue 20).

    python bench/passthrough_lean.py --upstream http://127.0.0.1:8001/v1 --port 8003
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from passthrough import Proxy, respond, serve  # noqa: E402  (this directory is sys.path[0])

from relaygate.upstream import Client, EncodedHeaders, UpstreamError  # noqa: E402

HEADERS = EncodedHeaders({"content-type": "application/json", "authorization": "Bearer sk-bench"})


class LeanProxy(Proxy):
    async def start(self) -> None:
        self.client = Client()

    async def stop(self) -> None:
        await self.client.close()

    async def forward(self, body: bytes, send) -> None:
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


if __name__ == "__main__":
    serve(LeanProxy, "bare pass-through proxy on relaygate's upstream client (lean floor)", 8003)
