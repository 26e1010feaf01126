"""Connect, read (silence), total and deadline timeouts, each named by its phase."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest

from relaygate.upstream import Client, ConnectFailed, TimedOut, Timeouts
from tests.upstream.rawserver import Peer, RawServer

Arun = Callable[..., Any]


async def slow_headers(peer: Peer) -> None:
    await peer.request()
    await peer.send(b"HTTP/1.1 200 OK\r\n")
    await asyncio.sleep(5)


def test_slow_headers_time_out_in_the_read_phase(arun: Arun) -> None:
    async def test() -> None:
        async with RawServer(slow_headers) as srv, Client(timeouts=Timeouts(read=0.2)) as client:
            started = time.monotonic()
            with pytest.raises(TimedOut) as e:
                await client.request("GET", srv.url())
            assert e.value.phase == "read" and isinstance(e.value, TimeoutError)
            assert 0.15 < time.monotonic() - started < 1.0
    arun(test)


def test_a_trickle_that_never_goes_silent_still_hits_the_total(arun: Arun) -> None:
    async def trickle(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for _ in range(100):
            await peer.send(b"1\r\nx\r\n", pause=0.05)

    async def test() -> None:
        async with RawServer(trickle) as srv, Client(timeouts=Timeouts(read=0.2, total=0.5)) as client:
            resp = await client.request("GET", srv.url())
            with pytest.raises(TimedOut) as e:
                await resp.read()
            assert e.value.phase == "total"
    arun(test)


def test_the_call_deadline_is_shorter_than_the_total(arun: Arun) -> None:
    async def test() -> None:
        async with RawServer(slow_headers) as srv, Client(timeouts=Timeouts(total=30)) as client:
            started = time.monotonic()
            with pytest.raises(TimedOut) as e:
                await client.request("GET", srv.url(), deadline=time.monotonic() + 0.2)
            assert e.value.phase == "total" and time.monotonic() - started < 1.0
    arun(test)


def test_a_consumer_that_lags_is_not_a_read_timeout(arun: Arun) -> None:
    async def two_parts(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nfirst", pause=0.05)
        await peer.send(b"secnd")

    async def test() -> None:
        async with RawServer(two_parts) as srv, Client(timeouts=Timeouts(read=0.2)) as client:
            resp = await client.request("GET", srv.url())
            await asyncio.sleep(0.5)  # longer than the read timeout, but the upstream was not silent on us
            assert await resp.read() == b"firstsecnd"
    arun(test)


def test_connect_timeout(arun: Arun) -> None:
    # a listening socket whose backlog is full: further SYNs go unanswered
    with socket.socket() as full:
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        port = full.getsockname()[1]
        fillers = []
        for _ in range(8):
            s = socket.socket()
            s.setblocking(False)
            try:
                s.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
            fillers.append(s)

        async def test() -> None:
            async with Client(timeouts=Timeouts(connect=0.2)) as client:
                started = time.monotonic()
                with pytest.raises(TimedOut) as e:
                    await client.request("GET", f"http://127.0.0.1:{port}/")
                assert e.value.phase == "connect"
                assert time.monotonic() - started < 1.5
        try:
            arun(test)
        finally:
            for s in fillers:
                s.close()


def test_a_refused_port_is_a_connect_failure_naming_only_the_origin(arun: Arun) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused

    async def test() -> None:
        async with Client() as client:
            with pytest.raises(ConnectFailed) as e:
                await client.request("GET", f"http://127.0.0.1:{port}/v1/models?key=AIzaSecret")
            assert f"127.0.0.1:{port}" in str(e.value) and "AIza" not in str(e.value)
    arun(test)
