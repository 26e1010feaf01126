"""The server-sent events decoder and the pass-through's event cutter, fed every way a body can be split into
reads; and the helpers that wait for a stream's first event and close its upstream."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Iterator

import orjson
import pytest

from relaygate.core.call import Reply
from relaygate.core.errors import Unavailable
from relaygate.providers.openai_format import take_usage
from relaygate.providers.streaming import (
    EventCutter,
    SSEDecoder,
    UpstreamBody,
    closing,
    peek,
    sse_events,
    sse_frame,
)
from relaygate.testing.base import BackgroundServer, FaultPlan
from relaygate.testing.openai import OpenAIEmulatorOptions, create_app
from relaygate.upstream import Client, Response

ENDINGS = {"LF": b"\n", "CR": b"\r", "CRLF": b"\r\n"}
BOM = b"\xef\xbb\xbf"

# one line per entry; "" is a blank line (the end of an event)
LINES = [
    ": a comment, ignored",
    "retry: 1500",
    "event: message_start",
    "id: 1",
    'data: {"type":"message_start"}',
    "",
    "data:first line, no space after the colon",
    "data:  two spaces: only the first is dropped",
    "data",  # a field without a colon: an empty data line
    "",
    ": keep-alive",
    "",
    "event: ping",  # an event without data is not dispatched, and its type does not carry over
    "",
    "data: after the ping",
    "unknown: field, ignored",
    "retry: soon",  # not digits: ignored
    "id: with\0nul",  # an id with NUL: ignored
    "",
    "event: content_block_delta",
    'data: {"text":"caf\u00e9 \u2603"}',
    "",
]
EXPECTED = [
    ("message_start", b'{"type":"message_start"}'),
    ("message", b"first line, no space after the colon\n two spaces: only the first is dropped\n"),
    ("message", b"after the ping"),
    ("content_block_delta", '{"text":"caf\u00e9 \u2603"}'.encode()),
]


def stream(ending: bytes, bom: bool = False) -> bytes:
    return (BOM if bom else b"") + b"".join(line.encode() + ending for line in LINES)


def decode(reads: list[bytes]) -> tuple[list[tuple[str, bytes]], SSEDecoder]:
    d = SSEDecoder()
    events = [e for r in reads for e in d.feed(r)]
    return events + d.end(), d


def splits(body: bytes) -> Iterator[list[bytes]]:
    """The body in two reads at every byte boundary, byte by byte, and in random reads."""
    for i in range(len(body) + 1):
        yield [body[:i], body[i:]]
    yield [body[i:i + 1] for i in range(len(body))]
    rng = random.Random(17)
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(body)), rng.randint(1, 12)))
        yield [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]


@pytest.mark.parametrize("bom", [False, True], ids=["plain", "bom"])
@pytest.mark.parametrize("ending", ENDINGS.values(), ids=ENDINGS.keys())
def test_decoder_reads_every_field_whatever_the_line_ending_and_the_reads(ending: bytes, bom: bool) -> None:
    body = stream(ending, bom)
    for reads in splits(body):
        events, d = decode(reads)
        assert events == EXPECTED, [len(r) for r in reads]
        assert d.last_event_id == "1" and d.retry == 1500


def test_crlf_split_between_two_reads_ends_one_line_not_two() -> None:
    # a blank line would dispatch "a" early and "b" alone; one line end keeps them one event
    events, _ = decode([b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"])
    assert events == [("message", b"a\nb")]


def test_mixed_line_endings_in_one_stream() -> None:
    events, _ = decode([b"data: a\r\ndata: b\rdata: c\n\r\ndata: d\r\r"])
    assert events == [("message", b"a\nb\nc"), ("message", b"d")]


def test_a_bom_is_dropped_only_at_the_start() -> None:
    events, _ = decode([BOM[:1], BOM[1:2], BOM[2:] + b"data: x\n\n" + BOM + b"data: y\n\ndata: z\n\n"])
    assert events == [("message", b"x"), ("message", b"z")]  # mid-stream, the BOM is part of a field name


def test_a_body_that_starts_like_a_bom_but_is_not_one_is_kept() -> None:
    events, _ = decode([b"\xef", b"\xbbdata: x\n\ndata: y\n\n"])
    assert events == [("message", b"y")]  # "\xef\xbbdata" is an unknown field


def test_a_last_event_without_its_blank_line_is_still_delivered_at_the_end() -> None:
    for tail in (b"data: last", b"data: last\n", b"data: last\r"):
        events, _ = decode([b"data: first\n\n", tail])
        assert events == [("message", b"first"), ("message", b"last")]


def test_a_line_longer_than_many_reads_is_kept_whole() -> None:
    payload = orjson.dumps({"text": "x" * 200_000})
    body = b"data: " + payload + b"\r\n\r\n"
    events, _ = decode([body[i:i + 1000] for i in range(0, len(body), 1000)])
    assert events == [("message", payload)]


def test_thousands_of_events_in_one_read_are_all_decoded_in_order() -> None:
    n = 20_000
    body = b"".join(b"event: e%d\r\ndata: {\"i\":%d}\r\n\r\n" % (i % 3, i) for i in range(n))
    events, _ = decode([body])
    assert len(events) == n
    assert all(e == (f"e{i % 3}", b'{"i":%d}' % i) for i, e in enumerate(events))


def test_sse_frame_puts_each_line_of_the_data_in_its_own_field() -> None:
    framed = sse_frame(b"one\ntwo\r\nthree", b"note")
    assert framed == b"event: note\ndata: one\ndata: two\ndata: three\n\n"
    assert decode([framed])[0] == [("note", b"one\ntwo\nthree")]


# ---- the pass-through's cutter --------------------------------------------------------------------------

CHUNK = b'data: {"choices":[{"delta":{"content":"hi"}}],"usage":null}'
OPENAI_LINES = [CHUNK, b"", b": keep-alive", b"", CHUNK, b"", b'data: {"choices":[],"usage":{"prompt_tokens":3}}',
                b"", b"data: [DONE]", b""]


@pytest.mark.parametrize("ending", ENDINGS.values(), ids=ENDINGS.keys())
def test_cutter_forwards_whole_events_as_soon_as_a_read_completes_them(ending: bytes) -> None:
    body = b"".join(line + ending for line in OPENAI_LINES)
    lf = b"".join(line + b"\n" for line in OPENAI_LINES)
    for reads in splits(body):
        cutter = EventCutter()
        seen = 0  # the bytes of the input fed so far
        out = b""
        for r in reads:
            seen += len(r)
            piece = cutter.feed(r)
            assert not piece or piece.endswith(b"\n\n")
            out += piece
            # every event the reads completed is out: a CRLF whose LF has not come yet already ends its line
            fed = body[:seen].replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            assert out == fed[:fed.rfind(b"\n\n") + 2] if b"\n\n" in fed else out == b""
        out += cutter.end()
        assert out == lf
        assert decode([out])[0] == decode([body])[0]


def test_cutter_closes_a_last_event_left_open() -> None:
    cutter = EventCutter()
    assert cutter.feed(b"data: a\n\ndata: [DONE]") == b"data: a\n\n"
    assert cutter.end() == b"data: [DONE]\n\n"
    cutter = EventCutter()
    assert cutter.feed(b"data: [DONE]\n") == b""
    assert cutter.end() == b"data: [DONE]\n\n"
    assert EventCutter().end() == b""


def test_cutter_passes_an_lf_read_on_without_copying_it() -> None:
    read = CHUNK + b"\n\n" + CHUNK + b"\n\n"
    assert EventCutter().feed(read) is read


# ---- waiting for the first event; closing the upstream ---------------------------------------------------

@pytest.fixture(scope="module")
def emulator() -> Iterator[BackgroundServer]:
    with BackgroundServer(create_app(OpenAIEmulatorOptions())) as srv:
        yield srv


async def _stream_request(client: Client, emulator: BackgroundServer, body: str = "one two three four five",
                          ) -> Response:
    data = orjson.dumps({"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": body}]})
    return await client.request("POST", emulator.url + "/v1/chat/completions",
                                headers={"content-type": "application/json"}, data=data)


def _wait_cancelled(emulator: BackgroundServer) -> None:
    deadline = time.monotonic() + 5
    while emulator.state.cancelled == 0 and time.monotonic() < deadline:
        time.sleep(0.01)


def test_closing_releases_a_body_read_to_its_end(emulator: BackgroundServer) -> None:
    emulator.state.cancelled = 0

    async def run() -> tuple[int, bool]:
        async with Client() as client:
            body = UpstreamBody(await _stream_request(client, emulator), "openai")
            events = 0
            async for piece in closing(body, body):
                events += piece.count(b"\n\n")
            return events, body.complete and client.idle_connections() == 1  # pooled for the next request

    events, released = asyncio.run(run())
    assert events > 3 and released and emulator.state.cancelled == 0


def test_a_reader_that_leaves_mid_stream_stops_the_upstream(emulator: BackgroundServer) -> None:
    emulator.state.cancelled = 0
    emulator.state.faults = FaultPlan(chunk_delay_ms=100, count=1)

    async def run() -> bool:
        async with Client() as client:
            body = UpstreamBody(await _stream_request(client, emulator), "openai")
            stream = closing(body, sse_events(body))
            first = await anext(stream)
            assert first[0] == "message"
            await stream.aclose()  # the client went away
            return not body.complete and client.idle_connections() == 0  # closed, never pooled

    try:
        assert asyncio.run(run())
        _wait_cancelled(emulator)
        assert emulator.state.cancelled == 1
    finally:
        emulator.state.faults = None


def test_peek_raises_before_the_first_event_and_closes_the_upstream(emulator: BackgroundServer) -> None:
    emulator.state.faults = FaultPlan(disconnect_after_chunks=0, count=1)  # headers, then the socket closes

    async def run() -> tuple[int, bool]:
        async with Client() as client:
            body = UpstreamBody(await _stream_request(client, emulator), "openai")
            with pytest.raises(Unavailable) as e:
                await peek(body, anext(sse_events(body), None))
            return e.value.status, client.idle_connections() == 0

    try:
        status, closed = asyncio.run(run())
    finally:
        emulator.state.faults = None
    assert status == 502 and closed


# ---- the pass-through's usage, from reads of many events ------------------------------------------------

def _chunk(content: str, usage: object = None, spaced: bool = False) -> bytes:
    body = {"choices": [{"index": 0, "delta": {"content": content}}] if content else [], "usage": usage}
    text = json.dumps(body) if spaced else orjson.dumps(body).decode()  # json.dumps: '"usage": {' with a space
    return b"data: " + text.encode() + b"\n\n"


@pytest.mark.parametrize("spaced", [False, True], ids=["compact", "spaced"])
def test_usage_only_chunk_among_many_events_is_read_and_dropped_unless_kept(spaced: bool) -> None:
    usage = {"prompt_tokens": 3, "completion_tokens": 40, "total_tokens": 43}
    text = b"".join(_chunk(f"w{i} ", spaced=spaced) for i in range(40))
    read = text + _chunk("", usage, spaced) + b"data: [DONE]\n\n"
    for keep in (False, True):
        reply = Reply()
        out = take_usage(read, reply, keep)
        assert reply.usage is not None and (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (3, 40)
        assert out == (read if keep else text + b"data: [DONE]\n\n")


def test_usage_in_every_chunk_is_kept_with_its_chunks_and_the_last_one_counts() -> None:
    read = b"".join(_chunk(f"w{i} ", {"prompt_tokens": 3, "completion_tokens": i + 1}) for i in range(5))
    reply = Reply()
    assert take_usage(read, reply, False) == read  # chunks with choices are never dropped
    assert reply.usage is not None and reply.usage.completion_tokens == 5
