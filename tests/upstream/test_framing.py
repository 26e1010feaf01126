"""Response framing against a server that splits, coalesces and breaks its answers on purpose."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from relaygate.upstream import Client, ConnectionClosed, EncodedHeaders, Limits, ProtocolError
from tests.upstream.rawserver import Peer, RawServer, respond, serve_forever

CHUNKED = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
           b"7;name=value;quoted=\"a b\"\r\ndata: 1\r\n"
           b"a\r\ndata: 22\n\n\r\n"
           b"0;last\r\nx-trailer: t1\r\nx-other: t2\r\n\r\n")
LENGTH = respond(200, b'{"id":"chatcmpl-1","usage":{"prompt_tokens":3}}', "x-request-id: abc  \r\n")

Arun = Callable[..., Any]


def split_script(response: bytes, boundaries: list[int]) -> Callable[[Peer], Any]:
    """One connection, one answer per request: request i gets ``response`` split at ``boundaries[i]``."""
    async def script(peer: Peer) -> None:
        i = 0
        while await peer.request() is not None:
            cut = boundaries[i]
            i += 1
            await peer.send(response[:cut], pause=0.002)
            await peer.send(response[cut:])
    return script


@pytest.mark.parametrize("response,body", [(CHUNKED, b"data: 1data: 22\n\n"),
                                           (LENGTH, b'{"id":"chatcmpl-1","usage":{"prompt_tokens":3}}')],
                         ids=["chunked-with-extensions-and-trailers", "content-length"])
def test_a_response_split_at_every_byte_reads_the_same_on_one_connection(arun: Arun, response: bytes,
                                                                         body: bytes) -> None:
    cuts = list(range(1, len(response)))

    async def test() -> None:
        async with RawServer(split_script(response, cuts)) as srv, Client() as client:
            for _ in cuts:
                resp = await client.request("POST", srv.url(), data=b"{}")
                assert resp.status == 200
                assert await resp.read() == body
            assert srv.connections == 1  # every answer ended cleanly: the connection was kept
    arun(test, timeout=60)


def test_a_response_dripped_one_byte_per_write_streams_as_it_comes(arun: Arun) -> None:
    async def script(peer: Peer) -> None:
        await peer.request()
        for i in range(len(CHUNKED)):
            await peer.send(CHUNKED[i:i + 1], pause=0.0005)

    async def test() -> None:
        async with RawServer(script) as srv, Client() as client:
            resp = await client.request("GET", srv.url())
            assert resp.headers["content-type"] == "text/event-stream"
            assert b"".join([c async for c in resp.content.iter_any()]) == b"data: 1data: 22\n\n"
    arun(test)


def test_head_body_and_an_interim_response_coalesced_in_one_write(arun: Arun) -> None:
    both = b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n" + LENGTH + b"HTTP/1.1 100 Continue\r\n\r\n"[:0]

    async def test() -> None:
        async with RawServer(serve_forever(both)) as srv, Client() as client:
            for _ in range(3):
                resp = await client.request("POST", srv.url(), data=b"x")
                assert resp.status == 200 and "link" not in resp.headers
                assert resp.headers.get("x-request-id") == "abc"  # trailing whitespace is not the value's
                assert (await resp.read()).startswith(b'{"id"')
            assert srv.connections == 1
    arun(test)


def test_headers_are_named_in_lower_case_and_repeated_ones_joined(arun: Arun) -> None:
    answer = (b"HTTP/1.1 200 OK\r\nX-RateLimit-Remaining-Requests: 9\r\nVia: a\r\nvia: b \r\n"
              b"Set-Cookie: k=1\r\nSet-Cookie: j=2\r\ncontent-length: 0\r\n\r\n")

    async def test() -> None:
        async with RawServer(serve_forever(answer)) as srv, Client() as client:
            resp = await client.request("GET", srv.url())
            assert resp.headers == {"x-ratelimit-remaining-requests": "9", "via": "a, b",
                                    "set-cookie": "k=1, j=2", "content-length": "0"}
            assert resp.raw_headers[3:5] == [(b"Set-Cookie", b"k=1"), (b"Set-Cookie", b"j=2")]
    arun(test)


def test_bytes_after_a_complete_response_retire_the_connection(arun: Arun) -> None:
    async def test() -> None:
        async with RawServer(serve_forever(LENGTH + b"HTTP/1.1 200 OK\r\n")) as srv, Client() as client:
            for _ in range(2):
                resp = await client.request("POST", srv.url(), data=b"x")
                assert resp.status == 200 and await resp.read()
            assert srv.connections == 2  # the first was out of step after its answer: never reused
    arun(test)


def test_connection_close_without_a_length_reads_to_the_end(arun: Arun) -> None:
    async def script(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\npart one,", pause=0.01)
        await peer.send(b" part two")
        peer.close()

    async def test() -> None:
        async with RawServer(script) as srv, Client() as client:
            resp = await client.request("POST", srv.url(), data=b"x")
            assert await resp.read() == b"part one, part two"
            resp2 = await client.request("POST", srv.url(), data=b"x")  # a new connection, not the closed one
            assert await resp2.read() == b"part one, part two"
            assert srv.connections == 2
    arun(test)


def test_a_half_closed_upstream_ends_a_body_read_to_the_close_and_is_not_reused(arun: Arun) -> None:
    async def script(peer: Peer) -> None:
        while await peer.request() is not None:
            await peer.send(b"HTTP/1.1 200 OK\r\n\r\nuntil the end")
            peer.writer.write_eof()  # FIN on our side only; we still read
            await asyncio.sleep(0.2)
            return

    async def test() -> None:
        async with RawServer(script) as srv, Client() as client:
            for _ in range(2):
                assert await (await client.request("POST", srv.url(), data=b"x")).read() == b"until the end"
            assert srv.connections == 2
    arun(test)


def test_a_half_close_after_a_whole_answer_retires_the_pooled_connection(arun: Arun) -> None:
    async def script(peer: Peer) -> None:
        await peer.request()
        await peer.send(respond(body=b"whole"))
        peer.writer.write_eof()
        await asyncio.sleep(1)

    async def test() -> None:
        async with RawServer(script) as srv, Client() as client:
            for _ in range(2):
                assert await (await client.request("POST", srv.url(), data=b"x")).read() == b"whole"
                await asyncio.sleep(0.05)
            assert srv.connections == 2 and len(srv.requests) == 2
    arun(test)


def test_http_1_0_answer_is_not_kept_alive(arun: Arun) -> None:
    async def test() -> None:
        answer = b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok"
        async with RawServer(serve_forever(answer)) as srv, Client() as client:
            for _ in range(2):
                assert await (await client.request("GET", srv.url())).read() == b"ok"
            assert srv.connections == 2
    arun(test)


@pytest.mark.parametrize("partial", [
    b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly this much",
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n",
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel",
], ids=["content-length", "chunked-between-chunks", "chunked-mid-chunk"])
def test_an_early_close_mid_body_is_an_error_not_a_short_body(arun: Arun, partial: bytes) -> None:
    async def script(peer: Peer) -> None:
        await peer.request()
        await peer.send(partial, pause=0.01)
        peer.close()

    async def test() -> None:
        async with RawServer(script) as srv, Client() as client:
            resp = await client.request("GET", srv.url())
            with pytest.raises(ConnectionClosed, match="middle of the response body"):
                await resp.read()
    arun(test)


def test_a_close_before_the_answer_is_reported_as_possibly_sent(arun: Arun) -> None:
    async def script(peer: Peer) -> None:
        await peer.request()
        peer.close()

    async def test() -> None:
        async with RawServer(script) as srv, Client() as client:
            with pytest.raises(ConnectionClosed) as e:
                await client.request("POST", srv.url(), data=b'{"model":"m"}')
            assert e.value.request_sent is True
            assert len(srv.requests) == 1  # and it was not sent again
    arun(test)


def test_oversized_headers_are_refused_with_a_clear_error(arun: Arun) -> None:
    async def script(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\n")
        for i in range(2000):  # ~100 KB of headers, never ending
            await peer.send(f"x-filler-{i}: {'v' * 40}\r\n".encode())
        await asyncio.sleep(5)

    async def test() -> None:
        async with RawServer(script) as srv, Client(limits=Limits(max_head_bytes=16 * 1024)) as client:
            with pytest.raises(ProtocolError, match="headers .* exceed 16384 bytes"):
                await client.request("GET", srv.url())
    arun(test)


def test_oversized_trailers_are_refused(arun: Arun) -> None:
    trailers = b"".join(f"x-t{i}: {'v' * 50}\r\n".encode() for i in range(400))
    answer = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n" + trailers + b"\r\n"

    async def test() -> None:
        async with RawServer(serve_forever(answer)) as srv, Client(limits=Limits(max_head_bytes=8192)) as client:
            resp = await client.request("GET", srv.url())
            with pytest.raises(ProtocolError, match="trailers"):
                await resp.read()
    arun(test)


@pytest.mark.parametrize("bad", [
    b"HTTP/1.1 200 OK\ncontent-length: 2\n\nhi",  # bare LF
    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nhi",
    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nx: folded\r\n continued\r\ncontent-length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\nupgrade: h2c\r\nconnection: upgrade\r\n\r\n",
    b"SSH-2.0-OpenSSH_9.0\r\n",
], ids=["bare-lf", "two-lengths", "length-and-chunked", "obs-fold", "bad-chunk-size", "upgrade", "not-http"])
def test_what_a_lenient_parser_would_accept_is_a_protocol_error(arun: Arun, bad: bytes) -> None:
    async def test() -> None:
        async with RawServer(serve_forever(bad)) as srv, Client() as client:
            with pytest.raises(ProtocolError):
                resp = await client.request("GET", srv.url())
                await resp.read()
    arun(test)


def test_head_and_no_content_answers_have_no_body(arun: Arun) -> None:
    def answer(req: tuple[str, dict[str, str], bytes]) -> bytes:
        if req[0].startswith("HEAD"):
            return b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n"
        return b"HTTP/1.1 204 No Content\r\n\r\n"

    async def test() -> None:
        async with RawServer(serve_forever(answer)) as srv, Client() as client:
            head = await client.request("HEAD", srv.url())
            assert head.status == 200 and head.headers["content-length"] == "1000"
            assert await head.read() == b""
            for _ in range(2):
                resp = await client.request("DELETE", srv.url())
                assert resp.status == 204 and await resp.read() == b""
            assert srv.connections == 2  # HEAD's connection is retired; the 204s share one
    arun(test)


def test_request_framing_belongs_to_the_client(arun: Arun) -> None:
    async def chunks() -> Any:
        for part in (b"one,", b"", b"two,", b"three"):
            yield part

    async def test() -> None:
        async with RawServer(serve_forever(respond())) as srv, Client() as client:
            await client.request("POST", srv.url(), data=b"abc",
                                 headers={"Content-Length": "999", "Transfer-Encoding": "gzip", "x-a": "1"})
            await client.request("POST", srv.url(), data=chunks(), headers={"transfer-encoding": "identity"})
            await client.request("PUT", srv.url(), data=chunks(), headers={"content-length": "13"})
            await client.request("POST", srv.url("/v1/x?q=a b&é=1"))
            await client.request("GET", srv.url(), headers={"Host": "signed.example"})
            port = srv.port
        (line1, h1, b1), (_, h2, b2), (_, h3, b3), (line4, h4, b4), (_, h5, _) = srv.requests
        assert line1 == "POST /v1/chat/completions HTTP/1.1" and h1["content-length"] == "3" and b1 == b"abc"
        assert "transfer-encoding" not in h1 and h1["host"] == f"127.0.0.1:{port}"
        assert h2["transfer-encoding"] == "chunked" and b2 == b"one,two,three"
        assert h3["content-length"] == "13" and b3 == b"one,two,three"
        assert line4 == "POST /v1/x?q=a%20b&%C3%A9=1 HTTP/1.1" and h4["content-length"] == "0"
        assert h5["host"] == "signed.example"
        assert all("accept-encoding" not in h for _, h, _ in srv.requests)  # no compression asked for
    arun(test)


def test_encoded_headers_are_checked_once_and_reused(arun: Arun) -> None:
    async def body() -> Any:
        yield b"abc"

    async def test() -> None:
        fixed = EncodedHeaders({"Authorization": "Bearer k", "Content-Length": "3", "transfer-encoding": "x"})
        assert fixed.length == 3 and b"ength" not in fixed.block and b"transfer" not in fixed.block
        async with RawServer(serve_forever(respond())) as srv, Client() as client:
            await client.request("POST", srv.url(), headers=fixed, data=b"12345")  # its own length wins
            await client.request("POST", srv.url(), headers=fixed, data=body())  # the declared length
        (_, h1, b1), (_, h2, b2) = srv.requests
        assert (h1["content-length"], b1, h1["authorization"]) == ("5", b"12345", "Bearer k")
        assert (h2["content-length"], b2) == ("3", b"abc") and "transfer-encoding" not in h2
    arun(test)


@pytest.mark.parametrize("headers", [{"x-a": "1\r\nx-injected: 1"}, {"x-a\nb": "1"}, {"x-a": "nul\0"}])
def test_header_injection_is_refused_before_anything_is_sent(arun: Arun, headers: dict[str, str]) -> None:
    async def test() -> None:
        async with RawServer(serve_forever(respond())) as srv, Client() as client:
            with pytest.raises(ValueError, match="CR, LF or NUL"):
                await client.request("GET", srv.url(), headers=headers)
            assert srv.connections == 0
    arun(test)
