"""Keep-alive pool: reuse, dead sockets, caps and their queue, idle expiry, and no request sent twice."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from relaygate.upstream import Client, ConnectionClosed, Limits, PoolTimeout, Timeouts
from tests.upstream.rawserver import Peer, RawServer, Tally, respond, run, serve_forever

Arun = Callable[..., Any]


def answer_then(after: Callable[[Peer], None]) -> Callable[[Peer], Any]:
    """Answer one request on the connection, then do ``after`` (close it, reset it) while it is idle."""
    async def script(peer: Peer) -> None:
        if await peer.request() is not None:
            await peer.send(respond(body=b"ok"))
            await asyncio.sleep(0.02)
            after(peer)
    return script


def test_a_pooled_socket_the_upstream_closed_is_detected_and_replaced(arun: Arun) -> None:
    async def test() -> None:
        async with RawServer(answer_then(Peer.close)) as srv, Client() as client:
            for _ in range(3):
                assert await (await client.request("POST", srv.url(), data=b"x")).read() == b"ok"
                await asyncio.sleep(0.1)
            assert len(srv.requests) == 3 and srv.connections == 3
    arun(test)


@pytest.mark.parametrize("close", [Peer.close, Peer.reset], ids=["fin", "rst"])
def test_a_dead_pooled_socket_the_loop_has_not_seen_yet_is_polled_before_reuse(arun: Arun, close: Any) -> None:
    async def test() -> None:
        limits = Limits(check_idle_after=0.0)
        async with RawServer(answer_then(close)) as srv, Client(limits=limits) as client:
            for _ in range(3):
                assert await (await client.request("POST", srv.url(), data=b"x")).read() == b"ok"
                await asyncio.sleep(0.05)  # the server closes the idle connection...
                time.sleep(0.05)  # noqa: ASYNC251 (the close is in the socket, not yet seen by the loop)
            assert len(srv.requests) == 3
    arun(test)


def test_a_reused_socket_whose_write_fails_at_once_is_retried_on_a_new_one() -> None:
    # The default loop writes at once, so a reset socket fails the write itself: provably nothing was sent.
    # (uvloop defers writes to the end of the loop turn: there the same case is a ConnectionClosed instead.)
    async def test() -> None:
        limits = Limits(check_idle_after=3600)
        async with RawServer(answer_then(Peer.reset)) as srv, Client(limits=limits) as client:
            for _ in range(3):
                assert await (await client.request("POST", srv.url(), data=b"x")).read() == b"ok"
                await asyncio.sleep(0.05)
                time.sleep(0.05)  # noqa: ASYNC251 (blocks the loop: the reset is not seen before the write)
            assert len(srv.requests) == 3 and srv.connections == 3
    run("asyncio", test)


def test_a_request_the_upstream_may_have_seen_is_never_sent_again(arun: Arun) -> None:
    async def script(peer: Peer) -> None:
        while await peer.request() is not None:
            if len(peer.server.requests) == 1:
                await peer.send(respond(body=b"ok"))
            else:
                peer.reset()  # read the second request, then died
                return

    async def test() -> None:
        async with RawServer(script) as srv, Client() as client:
            await (await client.request("POST", srv.url(), data=b"1")).read()
            with pytest.raises(ConnectionClosed) as e:
                await client.request("POST", srv.url(), data=b"2")
            assert e.value.request_sent
            assert [body for _, _, body in srv.requests] == [b"1", b"2"]
    arun(test)


def test_a_thousand_concurrent_calls_share_fifty_connections(arun: Arun) -> None:
    async def test() -> None:
        limits = Limits(max_per_origin=50, queue_timeout=30)
        async with RawServer(serve_forever(respond(body=b"ok"), delay=0.001)) as srv, \
                Client(limits=limits) as client:
            async def one(i: int) -> bytes:
                resp = await client.request("POST", srv.url(), data=b"%d" % i)
                return await resp.read()
            started = time.monotonic()
            assert await asyncio.gather(*(one(i) for i in range(1000))) == [b"ok"] * 1000
            assert time.monotonic() - started < 20
            assert srv.max_open <= 50 and srv.connections <= 50
            assert sorted(int(b) for _, _, b in srv.requests) == list(range(1000))  # each once
    arun(test, timeout=40)


@pytest.mark.parametrize("queue_timeout,deadline", [(0.2, None), (30, 0.2)], ids=["queue-timeout", "deadline"])
def test_a_call_over_the_cap_waits_then_gets_a_pool_timeout(arun: Arun, queue_timeout: float,
                                                            deadline: float | None) -> None:
    async def test() -> None:
        limits = Limits(max_per_origin=1, queue_timeout=queue_timeout)
        async with RawServer(serve_forever(respond(), delay=1.0)) as srv, Client(limits=limits) as client:
            first = asyncio.ensure_future(client.request("GET", srv.url()))
            await asyncio.sleep(0.05)
            started = time.monotonic()
            with pytest.raises(PoolTimeout, match="connection caps"):
                await client.request("GET", srv.url(),
                                     deadline=None if deadline is None else time.monotonic() + deadline)
            assert 0.15 < time.monotonic() - started < 0.6
            assert (await first).status == 200
    arun(test)


def test_the_global_cap_closes_another_origins_idle_connection_rather_than_wait(arun: Arun) -> None:
    async def test() -> None:
        limits = Limits(max_total=1, queue_timeout=1)
        async with RawServer(serve_forever(respond(body=b"a"))) as a, \
                RawServer(serve_forever(respond(body=b"b"))) as b, Client(limits=limits) as client:
            for srv, body in ((a, b"a"), (b, b"b"), (a, b"a")):
                assert await (await client.request("GET", srv.url())).read() == body
            assert a.connections == 2 and b.connections == 1
    arun(test)


def test_the_global_cap_queues_across_origins_and_hands_slots_over(arun: Arun) -> None:
    async def test() -> None:
        limits = Limits(max_total=3, queue_timeout=10)
        tally = Tally()
        async with RawServer(serve_forever(respond(body=b"a"), delay=0.01), tally=tally) as a, \
                RawServer(serve_forever(respond(body=b"b"), delay=0.01), tally=tally) as b, \
                Client(limits=limits) as client:
            async def one(srv: RawServer) -> bytes:
                return await (await client.request("GET", srv.url())).read()
            got = await asyncio.gather(*(one(a if i % 2 else b) for i in range(60)))
            assert got == [b"a" if i % 2 else b"b" for i in range(60)]
            assert tally.max_busy == 3  # the cap was used whole, never exceeded
    arun(test)


def test_a_cancelled_call_gives_its_slot_back(arun: Arun) -> None:
    async def test() -> None:
        limits = Limits(max_per_origin=1, queue_timeout=2)
        async with RawServer(serve_forever(respond(), delay=0.3)) as srv, Client(limits=limits) as client:
            for _ in range(3):  # cancelled while waiting for the answer, and while queued
                first = asyncio.ensure_future(client.request("GET", srv.url()))
                queued = asyncio.ensure_future(client.request("GET", srv.url()))
                await asyncio.sleep(0.05)
                first.cancel()
                queued.cancel()
                await asyncio.gather(first, queued, return_exceptions=True)
            assert (await client.request("GET", srv.url())).status == 200
    arun(test)


def test_idle_connections_expire(arun: Arun) -> None:
    async def test() -> None:
        async with RawServer(serve_forever(respond())) as srv, Client(limits=Limits(idle_timeout=0.1)) as client:
            await asyncio.gather(*(client.request("GET", srv.url()) for _ in range(3)))
            assert srv.open == 3
            await asyncio.sleep(0.4)
            assert srv.open == 0
            assert (await client.request("GET", srv.url())).status == 200
            assert srv.connections == 4
    arun(test)


def test_connection_close_from_the_upstream_is_honoured(arun: Arun) -> None:
    async def test() -> None:
        answer = respond(body=b"ok", headers="connection: close\r\n")
        async with RawServer(serve_forever(answer)) as srv, Client() as client:
            for _ in range(3):
                assert await (await client.request("GET", srv.url())).read() == b"ok"
            assert srv.connections == 3
    arun(test)


def test_a_closed_client_fails_queued_calls(arun: Arun) -> None:
    async def test() -> None:
        limits = Limits(max_per_origin=1, queue_timeout=5)
        async with RawServer(serve_forever(respond(), delay=5)) as srv:
            client = Client(limits=limits, timeouts=Timeouts(total=10))
            first = asyncio.ensure_future(client.request("GET", srv.url()))
            queued = asyncio.ensure_future(client.request("GET", srv.url()))
            await asyncio.sleep(0.05)
            await client.close()
            with pytest.raises(ConnectionClosed):
                await first
            with pytest.raises(PoolTimeout, match="closed"):
                await queued
    arun(test)
