"""StreamResponse: how a stream ends when it fails after its first byte, and when the client leaves."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson

from relaygate.core.call import Reply
from relaygate.core.errors import GatewayError, Unavailable
from relaygate.providers.streaming import stream_error_event
from relaygate.server.http import StreamResponse


def run(stream: AsyncIterator[bytes], disconnect_after: float | None = None) -> tuple[list[dict[str, Any]], list[Any]]:
    sent: list[dict[str, Any]] = []
    finished: list[Any] = []
    reply = Reply(stream=stream, media_type="text/event-stream")
    reply.on_done(lambda r, e: finished.append(e))

    async def receive() -> dict[str, Any]:
        if disconnect_after is None:
            await asyncio.sleep(3600)
        await asyncio.sleep(disconnect_after or 0)
        return {"type": "http.disconnect"}

    async def send(msg: dict[str, Any]) -> None:
        sent.append(msg)

    async def main() -> None:
        await asyncio.wait_for(StreamResponse(reply, {}, stream_error_event).send(send, receive, "req_1"), 5)

    asyncio.run(main())
    return sent, finished


def test_gateway_error_mid_stream_ends_with_its_error_event() -> None:
    async def stream() -> AsyncIterator[bytes]:
        yield b"data: {}\n\n"
        raise Unavailable("upstream stream broke")

    sent, finished = run(stream())
    last = sent[-1]
    assert last["more_body"] is False
    assert orjson.loads(last["body"][6:])["error"]["message"] == "upstream stream broke"
    assert isinstance(finished[0], Unavailable)


def test_unexpected_exception_mid_stream_still_ends_with_an_error_event_without_details() -> None:
    async def stream() -> AsyncIterator[bytes]:
        yield b"data: {}\n\n"
        raise RuntimeError("secret internal detail")

    sent, finished = run(stream())
    body = sent[-1]["body"]
    assert b"secret internal detail" not in body
    assert orjson.loads(body[6:])["error"]["code"] == "internal_error"
    assert isinstance(finished[0], GatewayError)


def test_client_disconnect_closes_the_stream_and_reports_client_gone() -> None:
    closed = []

    async def stream() -> AsyncIterator[bytes]:
        try:
            while True:
                yield b"data: {}\n\n"
                await asyncio.sleep(0.05)
        finally:
            closed.append(True)

    sent, finished = run(stream(), disconnect_after=0.2)
    assert closed == [True]
    assert type(finished[0]).__name__ == "ClientGone"
    assert 2 <= len(sent) <= 10
