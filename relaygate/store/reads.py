"""Database reads on the request path (a key not in the cache, a budget's spend this period), bounded in time.

They get their own threads and, on PostgreSQL, their own connections with connect, statement and TCP
timeouts, so they never queue behind the request-log writer or the admin API. A read that does not finish
within ``timeout`` seconds fails with ``StoreUnavailable`` and marks the database down (``outage``): until a
probe in the background (``SELECT 1``, with backoff) succeeds, reads fail at once instead of waiting. A thread stuck on
a database that accepts connections but never answers stays stuck until it answers or TCP gives up; the
request that started the read has long had its answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from relaygate.state.outage import Outage
from relaygate.store.db import engine_url

if TYPE_CHECKING:
    from relaygate.store.db import Database

T = TypeVar("T")

THREADS = 4  # reads in flight at most; a hung database holds at most these
# errors that say the database is unreachable or too slow (others, e.g. a constraint, are its answer)
OUTAGE_ERRORS = (OperationalError, InterfaceError, PoolTimeout, OSError, TimeoutError)


class StoreUnavailable(Exception):
    """The database did not answer a request-path read in time, or is marked down."""


def _retrieve(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()  # a read nobody waits for any more must not warn when it fails at last


def _ping(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))


def reader_engine(url: str, timeout: float, threads: int) -> Engine:
    """A PostgreSQL engine for bounded reads: every wait on the server has an end."""
    ms = max(1, int(timeout * 1000))
    engine = create_engine(engine_url(url), pool_size=threads, max_overflow=0, pool_timeout=timeout,
                           pool_pre_ping=True, pool_use_lifo=True, pool_recycle=1800, connect_args={
                               "connect_timeout": 2,  # libpq's minimum
                               # a peer gone silent (a partition) is dropped by the kernel instead of hanging
                               "tcp_user_timeout": max(5000, 5 * ms), "keepalives": 1, "keepalives_idle": 10,
                               "keepalives_interval": 5, "keepalives_count": 3})

    @event.listens_for(engine, "begin")
    def _statement_timeout(conn: Any) -> None:
        # per transaction, not per session: safe behind PgBouncer's transaction pooling (which also refuses
        # an ``options`` startup parameter)
        conn.exec_driver_sql(f"SET LOCAL statement_timeout = {ms}")

    return engine


class Reads:
    """Bounded request-path reads over ``engine`` (see the module docstring)."""

    def __init__(self, db: Database, timeout: float, threads: int = THREADS) -> None:
        self.timeout = timeout
        self.outage = Outage("The database (request-path reads)", longest=2.0)
        self.engine = reader_engine(db.url, timeout, threads) if db.dialect == "postgresql" else db.engine
        self._own_engine = self.engine is not db.engine
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="relaygate-reads")
        self._probes: set[asyncio.Task[None]] = set()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` (blocking database code) in the read threads, waited for ``timeout`` s at most; at
        once ``StoreUnavailable`` while the database is marked down."""
        outage = self.outage
        if outage.down:
            if outage.may_probe():
                task = asyncio.ensure_future(self._probe())
                self._probes.add(task)
                task.add_done_callback(self._probes.discard)
            raise StoreUnavailable(f"the database is unreachable (next try in {outage.retry_in():.1f} s)")
        return await self._bounded(fn, *args)

    async def _bounded(self, fn: Callable[..., T], *args: Any) -> T:
        outage = self.outage
        fut = asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        try:
            result = await asyncio.wait_for(asyncio.shield(fut), self.timeout)
        except TimeoutError:
            fut.add_done_callback(_retrieve)
            outage.failed(f"no answer within {self.timeout:g} s")
            raise StoreUnavailable(f"the database did not answer within {self.timeout:g} s") from None
        except OUTAGE_ERRORS as e:
            outage.failed(e)
            raise StoreUnavailable(f"the database is unreachable ({type(e).__name__})") from None
        except asyncio.CancelledError:
            fut.add_done_callback(_retrieve)
            raise
        except BaseException:
            outage.recovered()  # it answered, with an error of its own
            raise
        if outage.down:
            outage.recovered()
        return result

    async def _probe(self) -> None:
        """In the background, not on a call: is the database answering again?"""
        try:
            await self._bounded(_ping, self.engine)
        except StoreUnavailable:
            pass  # noted by _bounded: the backoff grows
        finally:
            self.outage.probing = False

    def close(self) -> None:
        for task in self._probes:
            task.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)  # a thread stuck on a hung database is let be
        if self._own_engine:
            self.engine.dispose()
