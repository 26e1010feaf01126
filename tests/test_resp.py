"""The small Redis client of the limits: RESP framing, pipelining, errors, reconnects (real Redis)."""

from __future__ import annotations

import asyncio
import os
import time

import pytest
import redis as redis_lib

from relaygate.state.resp import RespClient, RespError, Script, encode, parse
from tests.conftest import require_service

REDIS_URL = os.environ.get("RELAYGATE_TEST_REDIS", "redis://127.0.0.1:6379/0")


def test_resp_values_parse_whole_or_not_at_all() -> None:
    data = bytearray(b"*3\r\n:1\r\n$5\r\nhello\r\n*2\r\n+OK\r\n$-1\r\n")
    assert parse(data) == ([1, b"hello", [b"OK", None]], len(data))
    for cut in range(1, len(data)):
        assert parse(bytearray(data[:cut])) is None
    err, _ = parse(bytearray(b"-NOSCRIPT No matching script\r\n"))  # type: ignore[misc]
    assert isinstance(err, RespError) and str(err).startswith("NOSCRIPT")
    assert encode(("GET", "k", 5)) == b"*3\r\n$3\r\nGET\r\n$1\r\nk\r\n$1\r\n5\r\n"


def test_replies_resolve_their_calls_in_order_however_the_bytes_are_cut() -> None:
    """One-line replies take a fast path, bulk strings and arrays the general parser; a chunk may end
    anywhere, even inside a reply, and mix both kinds."""
    from relaygate.state.resp import _Protocol

    wire = b"+1 5 100\r\n:42\r\n$7\r\nab\r\n+cd\r\n-NOSCRIPT gone\r\n*2\r\n:1\r\n+OK\r\n+OK\r\n:-3\r\n"
    expected: list[object] = [b"1 5 100", 42, b"ab\r\n+cd", "NOSCRIPT gone", [1, b"OK"], b"OK", -3]

    async def run(chunks: list[bytes]) -> list[object]:
        proto = _Protocol()
        loop = asyncio.get_running_loop()
        futs = [loop.create_future() for _ in expected]
        proto.waiters.extend(futs)
        for chunk in chunks:
            proto.data_received(chunk)
        return [str(f.exception()) if f.exception() else f.result() for f in futs]

    assert asyncio.run(run([wire])) == expected
    for cut in range(1, len(wire)):
        assert asyncio.run(run([wire[:cut], wire[cut:]])) == expected, cut
    assert asyncio.run(run([wire[i:i + 1] for i in range(len(wire))])) == expected


@pytest.fixture
def redis_url() -> str:
    try:
        redis_lib.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis_lib.RedisError:
        require_service("redis")
    return REDIS_URL


def test_pipelined_calls_get_their_own_replies_and_scripts_load_themselves(redis_url) -> None:  # type: ignore[no-untyped-def]
    key = "rg:test:resp:" + os.urandom(6).hex()

    async def main() -> None:
        c = RespClient(redis_url, timeout=2.0)  # what is tested is pipelining, not the 50 ms default
        try:
            replies = await asyncio.gather(*(c.call("INCRBY", key, i) for i in range(1, 101)))
            assert sorted(replies) == sorted({sum(range(1, i + 1)) for i in range(1, 101)})
            assert await c.call("GET", key) == str(sum(range(101))).encode()
            with pytest.raises(RespError):
                await c.call("NOT-A-COMMAND")
            script = Script(c, "return {redis.call('INCR', KEYS[1]), ARGV[1]}")
            assert await script([key], ["x" + os.urandom(4).hex()]) is not None  # NOSCRIPT -> EVAL -> cached
            assert (await script([key], ["y"]))[1] == b"y"
            await c.call("DEL", key)
        finally:
            await c.close()

    asyncio.run(main())


def test_a_killed_connection_is_replaced(redis_url) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        c = RespClient(redis_url)
        try:
            my_id = await c.call("CLIENT", "ID")
            redis_lib.Redis.from_url(redis_url).client_kill_filter(_id=my_id)
            for _ in range(50):  # the loss is noticed when the socket's EOF is read
                if c.connected() is None:
                    break
                await asyncio.sleep(0.01)
            assert await c.call("PING") == b"PONG"
            assert await c.call("CLIENT", "ID") != my_id
        finally:
            await c.close()

    asyncio.run(main())


def test_a_server_that_stops_answering_fails_the_calls_instead_of_hanging() -> None:
    import socket
    import threading
    import time

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: accepted.append(listener.accept()[0]), daemon=True).start()

    async def main() -> float:
        c = RespClient(f"redis://127.0.0.1:{port}/0", timeout=0.5)
        started = time.monotonic()
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(c.call("PING"), 5)
        await c.close()
        return time.monotonic() - started

    try:
        assert asyncio.run(main()) < 3
    finally:
        for s in accepted:
            s.close()
        listener.close()


def _redis_port(url: str) -> int:
    return int(url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])


def test_a_black_holed_redis_costs_one_timeout_then_nothing_until_it_answers_again(redis_url) -> None:  # type: ignore[no-untyped-def]
    """Redis that accepts but never answers: the first call fails within the client's timeout, then calls
    fail at once (marked down, not re-probed per call), and one background probe per backoff finds it back."""
    from relaygate.state.resp import RedisUnavailable
    from relaygate.testing.tcpproxy import TcpProxy

    with TcpProxy("127.0.0.1", _redis_port(redis_url)) as proxy:
        async def main() -> tuple[float, float, int, int, float]:
            c = RespClient(f"redis://127.0.0.1:{proxy.port}/0", timeout=0.05, retry=0.5)
            try:
                assert await c.call("PING") == b"PONG"
                proxy.black_hole()
                await asyncio.sleep(0.05)
                t0 = time.monotonic()
                with pytest.raises(RedisUnavailable):
                    await c.call("PING")
                first = time.monotonic() - t0
                assert c.down
                accepted = proxy.accepted
                slowest = 0.0
                end = time.monotonic() + 1.5
                while time.monotonic() < end:  # 1.5 s of calls during the outage (by the clock: a loaded
                    # machine stretches 300 sleeps of 5 ms well past it): none waits, few probes
                    t = time.monotonic()
                    with pytest.raises(RedisUnavailable):
                        await c.call("PING")
                    slowest = max(slowest, time.monotonic() - t)
                    await asyncio.sleep(0.005)
                probes = proxy.accepted - accepted
                proxy.restore()
                t1 = time.monotonic()
                while time.monotonic() - t1 < 5:
                    try:
                        assert await c.call("PING") == b"PONG"
                        break
                    except RedisUnavailable:
                        await asyncio.sleep(0.01)
                return first, slowest, probes, c.outage.failures, time.monotonic() - t1
            finally:
                await c.close()

        first, slowest, probes, outages, back = asyncio.run(main())
    assert first < 0.5  # 50 ms and a loop turn, with room for a loaded machine
    assert slowest < 0.05
    assert 1 <= probes <= 5  # backoff 0.25 s, 0.5 s, 0.5 s…: a handful in 1.5 s, not one per call
    assert outages == 1
    assert back < 1.5  # the next probe after the backoff


def test_a_redis_that_resets_every_connection_fails_calls_at_once(redis_url) -> None:  # type: ignore[no-untyped-def]
    from relaygate.state.resp import RedisUnavailable
    from relaygate.testing.tcpproxy import TcpProxy

    with TcpProxy("127.0.0.1", _redis_port(redis_url)) as proxy:
        async def main() -> tuple[float, int]:
            c = RespClient(f"redis://127.0.0.1:{proxy.port}/0", timeout=0.05, retry=0.5)
            try:
                assert await c.call("PING") == b"PONG"
                proxy.reset_all()
                slowest = 0.0
                failed = 0
                deadline = time.monotonic() + 1.5
                while time.monotonic() < deadline:
                    t = time.monotonic()
                    try:
                        await c.call("PING")
                    except RedisUnavailable:
                        failed += 1
                    slowest = max(slowest, time.monotonic() - t)
                    await asyncio.sleep(0.005)
                proxy.restore()
                await asyncio.sleep(1.0)  # past the backoff: the next call probes, the one after succeeds
                with pytest.raises(RedisUnavailable):
                    await c.call("PING")
                await asyncio.sleep(0.1)
                assert await c.call("PING") == b"PONG"
                return slowest, failed
            finally:
                await c.close()

        slowest, failed = asyncio.run(main())
    assert slowest < 0.5
    assert failed > 50
