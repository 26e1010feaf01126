"""Keep-alive connections per origin, under a per-origin and a global cap, with a queue for the rest."""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from typing import TYPE_CHECKING

from relaygate.upstream.errors import ConnectionClosed, PoolTimeout
from relaygate.upstream.options import Limits

if TYPE_CHECKING:
    from relaygate.upstream.connection import Connection

INF = float("inf")
_Waiter = tuple[int, "asyncio.Future[Connection | None]"]  # (arrival order, hand-over)


class Pool:
    """The connections to one origin (scheme, host, port, proxy): idle ones are reused newest first."""

    __slots__ = ("key", "host", "port", "tls", "proxy", "what", "slots", "idle", "conns", "waiters", "open")

    def __init__(self, slots: Slots, key: tuple[object, ...], host: str, port: int, tls: bool,
                 proxy: object) -> None:
        self.slots = slots
        self.key = key
        self.host = host
        self.port = port
        self.tls = tls
        self.proxy = proxy  # relaygate.upstream.proxy.Proxy or None
        self.what = f"{host}:{port}"
        self.idle: list[Connection] = []  # oldest first
        self.conns: set[Connection] = set()  # every open connection, idle or in use
        self.waiters: deque[_Waiter] = deque()
        self.open = 0  # connections counted against the caps: open, or being opened

    def take(self, now: float) -> Connection | None:
        """The most recently used idle connection that is still sound, without waiting."""
        idle = self.idle
        while idle:
            conn = idle.pop()
            if conn.lost or (now - conn.idle_since >= self.slots.limits.check_idle_after and conn.peer_closed()):
                conn.abort()
                continue
            conn.reused = True
            return conn
        return None

    def put(self, conn: Connection) -> None:
        """A connection whose response is complete and that may carry another request."""
        slots = self.slots
        while self.waiters:
            _, fut = self.waiters.popleft()
            if not fut.done():
                conn.reused = True
                fut.set_result(conn)
                return
        if slots._waiting and slots.starved():  # another origin waits for a slot this idle one would hold
            conn.close()
            return
        conn.idle_since = slots.loop.time()
        self.idle.append(conn)
        if slots._sweeper is None:
            slots.arm_sweeper()

    def discard(self, conn: Connection) -> None:
        """A connection that is gone or will not be reused: its slot is free (idempotent)."""
        if conn.discarded:
            return
        conn.discarded = True
        if self.idle and conn in self.idle:
            self.idle.remove(conn)
        self.conns.discard(conn)
        self.open -= 1
        self.slots.release()

    def expire(self, now: float, idle_timeout: float) -> float:
        """Close connections idle too long; when the next one expires (inf when none is idle)."""
        idle = self.idle
        while idle and now - idle[0].idle_since >= idle_timeout:
            idle.pop(0).close()
        return idle[0].idle_since + idle_timeout if idle else INF


class Slots:
    """The caps of one client, and the queue of requests waiting for a connection slot."""

    def __init__(self, loop: asyncio.AbstractEventLoop, limits: Limits) -> None:
        self.loop = loop
        self.limits = limits
        self.per_origin = limits.max_per_origin or 1 << 62
        self.total = limits.max_total or 1 << 62
        self.open = 0
        self.pools: dict[tuple[object, ...], Pool] = {}
        self._order = itertools.count()
        self._waiting = 0  # requests queued (some may have given up since)
        self._sweeper: asyncio.TimerHandle | None = None

    def reserve(self, pool: Pool) -> bool:
        """Count a new connection for ``pool`` if both caps allow, closing another origin's idle one if
        that is all that stands in the way."""
        if pool.open >= self.per_origin:
            return False
        if self.open >= self.total:
            self._evict_idle()  # the slot it frees may go to a request that queued before this one
            if self.open >= self.total:
                return False
        pool.open += 1
        self.open += 1
        return True

    async def wait(self, pool: Pool, until: float) -> Connection | None:
        """Queue for ``pool``: a connection handed over, or None with a slot reserved to open one."""
        fut: asyncio.Future[Connection | None] = self.loop.create_future()
        pool.waiters.append((next(self._order), fut))
        self._waiting += 1
        timer = self.loop.call_at(until, _expire, fut, until - self.loop.time(), pool.what)
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                got = fut.result()  # handed over just as the caller gave up: pass it on
                if got is not None:
                    pool.put(got)
                else:
                    pool.open -= 1
                    self.release()
            raise
        finally:
            self._waiting -= 1
            timer.cancel()

    def release(self) -> None:
        """A slot came free: hand it to the longest waiting request whose origin is under its cap."""
        self.open -= 1
        if self._waiting:
            self._grant()

    def _grant(self) -> None:
        while self.open < self.total:
            best: Pool | None = None
            for pool in self.pools.values():
                w = pool.waiters
                while w and w[0][1].done():
                    w.popleft()
                if w and pool.open < self.per_origin and (best is None or w[0][0] < best.waiters[0][0]):
                    best = pool
            if best is None:
                return
            _, fut = best.waiters.popleft()
            best.open += 1
            self.open += 1
            fut.set_result(None)

    def starved(self) -> bool:
        """Whether the global cap keeps a queued request of any origin from opening a connection."""
        return self._waiting > 0 and self.open >= self.total and any(p.waiters for p in self.pools.values())

    def _evict_idle(self) -> None:
        oldest: Pool | None = None
        for pool in self.pools.values():
            if pool.idle and (oldest is None or pool.idle[0].idle_since < oldest.idle[0].idle_since):
                oldest = pool
        if oldest is not None:
            oldest.idle.pop(0).close()

    def arm_sweeper(self) -> None:
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(self.limits.idle_timeout, self._sweep)

    def _sweep(self) -> None:
        self._sweeper = None
        now = self.loop.time()
        nxt = min((p.expire(now, self.limits.idle_timeout) for p in list(self.pools.values())), default=INF)
        if nxt != INF:
            self._sweeper = self.loop.call_at(nxt, self._sweep)

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for pool in self.pools.values():
            for _, fut in pool.waiters:
                if not fut.done():
                    fut.set_exception(PoolTimeout("the upstream client was closed"))
            pool.waiters.clear()
            for conn in list(pool.conns):
                if conn.resp is not None:
                    conn.resp._fail(ConnectionClosed("the upstream client was closed"))
                conn.abort()


def _expire(fut: asyncio.Future[Connection | None], seconds: float, what: str) -> None:
    if not fut.done():
        fut.set_exception(PoolTimeout(f"no connection to {what} came free within {max(seconds, 0):.3g} s "
                                      "(connection caps reached)"))
