"""Database reads on the request path (a key not in the cache, a budget's spend this period), bounded in time.

They get their own threads and, on PostgreSQL, their own connections (``Database.bounded_engine``: bounded
connect, pool and TCP waits; a ``statement_timeout`` per transaction), so they never queue behind the
request-log writer or the admin API. A read that does not finish within ``timeout`` seconds fails with
``StoreUnavailable``, marks the database down (``outage``) and breaks off the waits of the reads' connections
(``Interruptible``: a server that accepts but never answers would hold their threads otherwise). Until a
probe in the background (``SELECT 1``, with backoff) succeeds, reads fail at once instead of waiting.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Engine, event, text
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from relaygate.state.outage import Outage
from relaygate.store.db import Interruptible

if TYPE_CHECKING:
    from relaygate.store.db import Database

T = TypeVar("T")

THREADS = 4  # reads in flight at most
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


def _statement_timeout(engine: Engine, timeout: float) -> None:
    """Every transaction of ``engine`` bounded on the server as well (per transaction, not per session: safe
    behind PgBouncer's transaction pooling, which also refuses an ``options`` startup parameter)."""
    ms = max(1, int(timeout * 1000))

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql(f"SET LOCAL statement_timeout = {ms}")


class Reads:
    """Bounded request-path reads over ``engine`` (see the module docstring)."""

    def __init__(self, db: Database, timeout: float, threads: int = THREADS) -> None:
        self.timeout = timeout
        self.outage = Outage("The database (request-path reads)", longest=2.0)
        self._interruptible: Interruptible | None = None
        if db.dialect == "postgresql":
            self.engine = db.bounded_engine(timeout, threads)
            self._interruptible = Interruptible(self.engine)
            _statement_timeout(self.engine, timeout)
        else:  # SQLite: local reads that a writer never blocks (WAL)
            self.engine = db.engine
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

    def _once_more(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)``, again on a fresh connection if a pooled one had been closed by the database (a
        restart; there is no pre-ping, itself an unbounded wait) unless the database is down meanwhile."""
        try:
            return fn(*args)
        except DBAPIError as e:
            if not e.connection_invalidated or self.outage.down:
                raise
            return fn(*args)

    async def _bounded(self, fn: Callable[..., T], *args: Any) -> T:
        outage = self.outage
        fut = asyncio.get_running_loop().run_in_executor(self._pool, self._once_more, fn, *args)
        try:
            result = await asyncio.wait_for(asyncio.shield(fut), self.timeout)
        except TimeoutError:
            fut.add_done_callback(_retrieve)
            outage.failed(f"no answer within {self.timeout:g} s")
            if self._interruptible is not None:  # free the threads now: the database is down
                self._interruptible.interrupt()
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
        """Stop probing and break off reads still waiting (the engine is disposed with the database's)."""
        for task in self._probes:
            task.cancel()
        if self._interruptible is not None:
            self._interruptible.interrupt()
        self._pool.shutdown(wait=False, cancel_futures=True)
