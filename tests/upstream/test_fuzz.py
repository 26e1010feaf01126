"""Whatever bytes an upstream sends, the client raises nothing but its own errors (and reads valid ones right)."""

from __future__ import annotations

from typing import Any

import hypothesis
from hypothesis import strategies as st

from relaygate.upstream import Client, Timeouts, UpstreamError
from tests.upstream.rawserver import LOOPS, Peer, RawServer, run

FUZZ = hypothesis.settings(max_examples=150, deadline=None, derandomize=True, database=None,
                           suppress_health_check=list(hypothesis.HealthCheck))


async def exchange(answer: bytes, cuts: list[int]) -> tuple[int, bytes] | UpstreamError:
    """Send ``answer`` in pieces cut at ``cuts``, then close; what the client made of it."""
    async def script(peer: Peer) -> None:
        await peer.request()
        last = 0
        for cut in sorted({c % (len(answer) + 1) for c in cuts}) + [len(answer)]:
            await peer.send(answer[last:cut], pause=0.0005)
            last = cut
        peer.close()

    async with RawServer(script) as srv, Client(timeouts=Timeouts(read=2, total=5)) as client:
        try:
            resp = await client.request("POST", srv.url(), data=b'{"model":"m"}')
            body = b"".join([chunk async for chunk in resp])
            return resp.status, body
        except UpstreamError as e:
            return e


@FUZZ
@hypothesis.given(answer=st.binary(max_size=300), cuts=st.lists(st.integers(0, 400), max_size=4),
                  loop=st.sampled_from(LOOPS))
def test_random_bytes_raise_only_the_clients_errors(answer: bytes, cuts: list[int], loop: str) -> None:
    run(loop, lambda: exchange(answer, cuts), timeout=10)


def _answers() -> Any:
    """Valid responses, framed by length, chunks or the close, as (bytes, status, body)."""
    @st.composite
    def build(draw: Any) -> tuple[bytes, int, bytes]:
        status = draw(st.sampled_from([200, 201, 400, 401, 404, 429, 500, 503]))
        body = draw(st.binary(max_size=200))
        names = draw(st.lists(st.from_regex(r"x-[a-z0-9-]{1,12}", fullmatch=True), max_size=4))
        head = f"HTTP/1.1 {status} Reason\r\n" + "".join(f"{n}: v{i}\r\n" for i, n in enumerate(names))
        framing = draw(st.sampled_from(["length", "chunked", "close"]))
        if framing == "length":
            return (head + f"content-length: {len(body)}\r\n\r\n").encode() + body, status, body
        if framing == "close":
            return (head + "connection: close\r\n\r\n").encode() + body, status, body
        sizes = draw(st.lists(st.integers(1, 50), max_size=8))
        parts, rest = [], body
        for n in sizes:
            if rest:
                parts.append(rest[:n])
                rest = rest[n:]
        if rest:
            parts.append(rest)
        ext = draw(st.sampled_from(["", ";a=1", ';b="x y"']))
        chunks = b"".join(b"%x%s\r\n%s\r\n" % (len(p), ext.encode(), p) for p in parts)
        trailer = draw(st.sampled_from([b"", b"x-trailer: t\r\n"]))
        return (head + "transfer-encoding: chunked\r\n\r\n").encode() + chunks + b"0\r\n" + trailer + b"\r\n", \
            status, body
    return build()


@FUZZ
@hypothesis.given(answer=_answers(), cuts=st.lists(st.integers(0, 400), max_size=6), loop=st.sampled_from(LOOPS))
def test_valid_answers_cut_anywhere_read_exactly(answer: tuple[bytes, int, bytes], cuts: list[int],
                                                 loop: str) -> None:
    raw, status, body = answer
    assert run(loop, lambda: exchange(raw, cuts), timeout=10) == (status, body)


@FUZZ
@hypothesis.given(answer=_answers(), edits=st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)),
                                                   min_size=1, max_size=3),
                  cut=st.integers(0, 400), loop=st.sampled_from(LOOPS))
def test_damaged_answers_raise_only_the_clients_errors(answer: tuple[bytes, int, bytes],
                                                       edits: list[tuple[int, int]], cut: int, loop: str) -> None:
    raw = bytearray(answer[0])
    for pos, byte in edits:
        raw[pos % len(raw)] = byte
    damaged = bytes(raw[: max(1, cut % (len(raw) + 1))])  # and maybe cut short
    run(loop, lambda: exchange(damaged, [cut // 2]), timeout=10)
