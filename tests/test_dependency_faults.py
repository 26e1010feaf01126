"""A slow or dead dependency (Redis, PostgreSQL) must not stall or poison the gateway: the limiter, the key cache
and the budget loader against the real servers behind a loopback proxy that refuses, resets or black-holes."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis as redis_lib

from relaygate.auth.authenticator import Authenticator
from relaygate.auth.principal import Limits, Principal, Scope, hash_secret
from relaygate.core.errors import GatewayError
from relaygate.limits.memory import MemoryLimiter
from relaygate.limits.redis import RedisLimiter
from relaygate.state.resp import RespClient
from relaygate.store.reads import StoreUnavailable
from relaygate.testing.tcpproxy import TcpProxy
from tests.conftest import inside_one_minute, require_service

REDIS_URL = os.environ.get("RELAYGATE_TEST_REDIS", "redis://127.0.0.1:6379/0")
MASTER = "rg-master-key-for-dependency-fault-tests"


@pytest.fixture
def redis_proxy() -> Iterator[TcpProxy]:
    try:
        redis_lib.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis_lib.RedisError:
        require_service("redis")
    port = int(REDIS_URL.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
    with TcpProxy("127.0.0.1", port) as proxy:
        yield proxy


async def no_spend(name: str, start: float) -> int:
    return 0


async def until_up(client: RespClient, poke: Any, seconds: float = 5) -> None:
    """Calls while Redis is marked down fail at once and start the probe; wait for it to find Redis."""
    deadline = time.monotonic() + seconds
    while client.down and time.monotonic() < deadline:
        try:
            await poke()
        except GatewayError:
            pass
        await asyncio.sleep(0.02)
    assert not client.down


def test_redis_limits_count_in_process_from_redis_last_counts_and_add_them_back_after(redis_proxy) -> None:  # type: ignore[no-untyped-def]
    """Redis black-holed: rpm goes on in-process from the count Redis last gave (3 of 5), so the minute
    holds 5 across the outage; a budget is refused with a 503 at once; when Redis answers again, the 2
    calls counted here are added to its counter and the settlement it missed arrives."""
    tag = os.urandom(4).hex()
    # a cached key's scopes are one tuple, call after call (the limiter keeps its last counts by identity)
    rpm = (Scope(f"key:rpm-{tag}", Limits(rpm=5)),)
    budget = (Scope(f"key:budget-{tag}", Limits(budget_nano=10**9)),)
    inside_one_minute(20)

    async def main() -> dict[str, Any]:
        client = RespClient(f"redis://127.0.0.1:{redis_proxy.port}/0", timeout=0.2, retry=0.25)
        lim = RedisLimiter(client, no_spend, slot_ttl=60)
        out: dict[str, Any] = {}
        try:
            for _ in range(3):
                lim.settle(await lim.acquire(rpm, 1, 0), 1, 0)
            held = await lim.acquire(budget, 1, 500)
            redis_proxy.black_hole()
            t = time.monotonic()
            local = [await lim.acquire(rpm, 1, 0) for _ in range(2)]
            out["first_wait"] = time.monotonic() - t
            out["local"] = [g.local for g in local]
            out["remaining"] = [dict(g.headers)[b"x-ratelimit-remaining-requests"] for g in local]
            with pytest.raises(GatewayError) as refused:
                await lim.acquire(rpm, 1, 0)
            out["over"] = refused.value.status
            t = time.monotonic()
            with pytest.raises(GatewayError) as no_budget:
                await lim.acquire(budget, 1, 500)
            out["budget"] = (no_budget.value.status, no_budget.value.code, time.monotonic() - t)
            lim.settle(held, 1, 700)  # Redis cannot take it now: kept
            for g in local:
                lim.settle(g, 1, 0)
            await asyncio.sleep(0.1)
            redis_proxy.restore()
            await until_up(client, lambda: lim.acquire(budget, 1, 0))
            await asyncio.sleep(0.2)  # the write-back and the kept settlement go out on the new connection
            with pytest.raises(GatewayError) as after:
                await lim.acquire(rpm, 1, 0)
            out["after"] = after.value.status
            out["spent"] = (await lim.known_spend([(budget[0].name, "t")]))[0]
            return out
        finally:
            await lim.close()
            await client.close()

    out = asyncio.run(main())
    assert out["local"] == [True, True]
    assert out["remaining"] == [b"1", b"0"]  # 3 counted in Redis before the outage + 1, + 2
    assert out["over"] == 429
    assert out["first_wait"] < 0.6  # the client's 200 ms (this machine is shared) and a loop turn
    assert out["budget"][:2] == (503, "budget_unavailable") and out["budget"][2] < 0.05
    assert out["after"] == 429  # Redis' counter has the 2 calls counted in-process
    assert out["spent"] == 700


def test_a_budget_whose_spend_cannot_be_loaded_is_a_503_for_that_key_never_a_500() -> None:
    """The database down at a new budget period (or in a new process): the call is refused with a clear 503;
    a key without a budget is not affected; once the database answers the budget works."""
    down = True

    async def loader(name: str, start: float) -> int:
        if down:
            raise StoreUnavailable("the database did not answer within 1 s")
        return 123

    budget = Scope("key:b", Limits(budget_nano=10**9, budget_period="day"))
    plain = Scope("key:p", Limits(rpm=10))

    async def main() -> tuple[GatewayError, bool, int]:
        nonlocal down
        lim = MemoryLimiter(loader)
        with pytest.raises(GatewayError) as refused:
            await lim.acquire((budget,), 10, 100)
        other = await lim.acquire((plain,), 10, 0)
        down = False
        grant = await lim.acquire((budget,), 10, 100)
        return refused.value, other is not None, grant.cost

    err, other_ok, cost = asyncio.run(main())
    assert err.status == 503 and err.code == "budget_unavailable"
    assert "key:b" in err.message and "database" in err.message
    assert other_ok and cost == 100


# ---- the key cache ----------------------------------------------------------------------------------------

class Store:
    """A key store whose lookups can be made to hang or fail, counting them."""

    def __init__(self, principal: Principal) -> None:
        self.principal = principal
        self.lookups = 0
        self.mode = "up"  # up | hang | fail

    async def lookup(self, digest: str) -> Principal | None:
        self.lookups += 1
        if self.mode == "hang":
            await asyncio.sleep(0.5)  # the store's own bound (lookup_timeout), then it fails
            raise StoreUnavailable("the database did not answer within 0.5 s")
        if self.mode == "fail":
            raise StoreUnavailable("the database is unreachable")
        return self.principal if digest == self.principal.hash else None


def test_cached_keys_are_refreshed_in_the_background_and_never_wait_on_a_hung_store() -> None:
    secret = "rg-cached-key-" + os.urandom(4).hex()
    store = Store(Principal(id="key_c", hash=hash_secret(secret)))

    async def main() -> dict[str, Any]:
        auth = Authenticator(MASTER, store.lookup, cache_ttl=0.4, stale_ttl=1.0)
        out: dict[str, Any] = {}
        assert (await auth.authenticate(secret)).id == "key_c"
        await asyncio.sleep(0.32)  # last quarter of the TTL: served, refreshed in the background
        assert auth.quick(secret) is not None
        await asyncio.sleep(0.01)
        out["refreshed"] = store.lookups
        store.mode = "hang"
        slowest = 0.0
        deadline = time.monotonic() + 1.2  # past the TTL and into the stale window, the store hanging
        while time.monotonic() < deadline:
            t = time.monotonic()
            assert (await auth.authenticate(secret)).id == "key_c"
            slowest = max(slowest, time.monotonic() - t)
            await asyncio.sleep(0.01)
        out["slowest"] = slowest
        store.mode = "fail"
        await asyncio.sleep(1.0)  # past TTL + stale_ttl: no longer served
        t = time.monotonic()
        with pytest.raises(GatewayError) as refused:
            await auth.authenticate(secret)
        out["refused"] = (refused.value.status, refused.value.code, time.monotonic() - t)
        with pytest.raises(GatewayError) as unknown:
            await auth.authenticate("rg-never-seen-" + os.urandom(4).hex())
        out["unknown"] = (unknown.value.status, unknown.value.code)
        store.mode = "up"
        await asyncio.sleep(1.0)
        out["back"] = (await auth.authenticate(secret)).id
        return out

    out = asyncio.run(main())
    assert out["refreshed"] == 2
    # the first lookup to hang is in the background (last quarter of the TTL): no call waits for it
    assert out["slowest"] < 0.1
    assert out["refused"][:2] == (503, "key_store_unavailable") and out["refused"][2] < 0.1
    assert out["unknown"] == (503, "key_store_unavailable")
    assert out["back"] == "key_c"


def test_a_key_forgotten_while_its_refresh_is_in_flight_is_not_cached_again() -> None:
    """A revoke on this instance drops the key; a lookup that read the row before must not put it back."""
    secret = "rg-revoked-" + os.urandom(4).hex()
    principal = Principal(id="key_r", hash=hash_secret(secret))
    release = asyncio.Event()
    revoked = False

    async def lookup(digest: str) -> Principal | None:
        row = None if revoked else principal
        await release.wait()
        return row

    async def main() -> GatewayError:
        nonlocal revoked
        auth = Authenticator(MASTER, lookup, cache_ttl=10)
        release.set()
        await auth.authenticate(secret)
        release.clear()
        task = asyncio.ensure_future(auth._load(hash_secret(secret)))  # a refresh that read the old row
        await asyncio.sleep(0)
        revoked = True
        auth.forget("key_r")
        release.set()
        await task
        with pytest.raises(GatewayError) as refused:
            await auth.authenticate(secret)
        return refused.value

    assert asyncio.run(main()).status == 401


def test_a_slow_read_is_answered_at_its_timeout_frees_its_thread_and_is_cut_by_the_server(pg_url) -> None:  # type: ignore[no-untyped-def]
    """A read slower than lookup_timeout: the caller gets StoreUnavailable after the timeout, the database is
    marked down (the next read fails at once), the one read thread is freed at once (its connection broken
    off), so the background probe finds the database back well before the 3 s query would have ended; and
    the server bounds the read's statements too."""
    from sqlalchemy import text
    from sqlalchemy.exc import OperationalError

    from relaygate.store.db import Database
    from relaygate.store.reads import Reads

    def slow(engine: Any) -> None:
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_sleep(3)"))

    db = Database(pg_url)
    reads = Reads(db, 0.3, threads=1)

    async def main() -> tuple[float, float, float]:
        t = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await reads.run(slow, reads.engine)
        waited = time.monotonic() - t
        t = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await reads.run(slow, reads.engine)
        at_once = time.monotonic() - t
        t = time.monotonic()
        while reads.outage.down and time.monotonic() - t < 3:
            try:
                await reads.run(lambda: None)
            except StoreUnavailable:
                await asyncio.sleep(0.05)
        return waited, at_once, time.monotonic() - t

    try:
        waited, at_once, back = asyncio.run(main())
        t = time.monotonic()
        with pytest.raises(OperationalError, match="statement timeout"):
            slow(reads.engine)  # no caller-side bound here: the server's
        cut = time.monotonic() - t
    finally:
        reads.close()
        db.close()
    assert 0.3 <= waited < 1.0
    assert at_once < 0.05
    assert back < 1.5  # the single thread would otherwise be busy for 3 s
    assert cut < 1.0


def test_a_read_after_the_database_closed_its_pooled_connection_succeeds(pg_url) -> None:  # type: ignore[no-untyped-def]
    """The reads' engine has no pre-ping (an unbounded wait): a connection the server closed meanwhile (a
    restart, an idle timeout) fails its first statement, and the read is retried once on a fresh one instead
    of marking the database down."""
    import psycopg
    from sqlalchemy import text

    from relaygate.store.db import Database
    from relaygate.store.reads import Reads

    def backend_pid(engine: Any) -> int:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())

    db = Database(pg_url)
    reads = Reads(db, 1.0, threads=1)

    async def main() -> tuple[int, int, bool]:
        first = await reads.run(backend_pid, reads.engine)
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (first,))
        second = await reads.run(backend_pid, reads.engine)
        return first, second, reads.outage.down

    try:
        first, second, down = asyncio.run(main())
    finally:
        reads.close()
        db.close()
    assert second != first and not down


def test_calls_ready_to_run_when_redis_comes_back_are_judged_with_the_outages_grants(redis_proxy) -> None:  # type: ignore[no-untyped-def]
    """Redis answers again while calls are already queued to run (a loaded loop): the in-process grants of the
    outage reach Redis' counter before any of them, so the minute's limit holds (before: 8 granted of 6)."""
    tag = os.urandom(4).hex()
    rpm = (Scope(f"key:rpm-{tag}", Limits(rpm=6)),)
    budget = (Scope(f"key:budget-{tag}", Limits(budget_nano=10**9)),)
    inside_one_minute(20)

    async def main() -> list[bool]:
        client = RespClient(f"redis://127.0.0.1:{redis_proxy.port}/0", timeout=0.2, retry=0.25)
        lim = RedisLimiter(client, no_spend, slot_ttl=60)
        queued: list[asyncio.Task[Any]] = []

        async def attempt() -> bool:
            try:
                lim.settle(await lim.acquire(rpm, 1, 0), 1, 0)
                return True
            except GatewayError:
                return False

        try:
            for _ in range(3):
                assert await attempt()
            redis_proxy.black_hole()
            assert [await attempt() for _ in range(2)] == [True, True]  # counted here: 5 of 6
            await asyncio.sleep(0.1)  # the abandoned connection's close reaches the proxy (its command is dropped)
            redis_proxy.restore()
            # calls scheduled just before the limiter hears that Redis is back (they run after it)
            client.on_up.insert(0, lambda: queued.extend(asyncio.ensure_future(attempt()) for _ in range(3)))
            await until_up(client, lambda: lim.acquire(budget, 1, 0))
            return list(await asyncio.gather(*queued))
        finally:
            await lim.close()
            await client.close()

    assert sorted(asyncio.run(main())) == [False, False, True]
