"""The database: one SQLAlchemy engine (SQLite WAL or PostgreSQL/psycopg 3), used off the event loop.

The engine, and SQLAlchemy with it, is made on first use: a gateway on a SQLite file whose config uses no
keys, admin API or stored objects migrates its file and writes its request log through plain ``sqlite3``
(``migrations.migrate_file``, ``Database.log_target``) and never imports SQLAlchemy.
"""

from __future__ import annotations

import asyncio
import math
import os
import socket
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from relaygate.store.migrations import migrate, migrate_file
from relaygate.store.sqlite import SQLiteFile, make_dirs, pragmas, skip_adapter_lookup, sqlite_file

if TYPE_CHECKING:
    from sqlalchemy import Engine

T = TypeVar("T")


def engine_url(url: str) -> str:
    """Normalise a configured URL: PostgreSQL always through psycopg 3."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    return url


def backend(url: str) -> str:
    """The database of a URL as SQLAlchemy names it (``sqlite``, ``postgresql``), read without it."""
    return url.split(":", 1)[0].split("+", 1)[0]


def sqlite_path(url: str) -> str | None:
    """The file of a SQLite URL (None for PostgreSQL or an in-memory SQLite): read plainly where
    ``sqlite_file`` can, by SQLAlchemy only for the rest (a query string, another driver)."""
    path = sqlite_file(url)
    if path is not None:
        return path
    if backend(url) != "sqlite":
        return None
    from sqlalchemy.engine import make_url

    return make_url(url).database or None


def create(url: str, pool_size: int = 5, wait: float | None = None) -> Engine:
    """An engine for ``url``: SQLite in WAL mode with a busy timeout, or PostgreSQL via psycopg 3.

    ``wait`` (seconds) bounds the waits of its connections: the connect, the pool checkout, SQLite's busy
    timeout, TCP data left unacknowledged; and leaves out the pre-ping (a ping is an unbounded wait too: a
    dead connection fails its first statement instead). PostgreSQL statements are bounded per transaction by
    who runs them (``BulkInsert``'s ``statement_timeout``: a startup option would be refused by a pooler in
    transaction mode, a session setting would leak through one). A server that accepts connections but never
    answers is bounded by none of these: see ``Interruptible``."""
    from sqlalchemy import create_engine, event

    url = engine_url(url)
    busy_ms = 30000 if wait is None else max(int(wait * 1000), 1)
    if backend(url) == "sqlite":
        skip_adapter_lookup()
        path = sqlite_path(url)
        if path:
            make_dirs(path)
        # pooled: each connection is used by one thread at a time. Last in, first out: the log writer gets
        # back the connection it just used, whose cache holds its prepared statements (a first-in-first-out
        # pool handed it each pooled connection in turn, and each had to parse the 100-row INSERT again)
        engine = create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=False,
                               pool_use_lifo=True, pool_timeout=30 if wait is None else wait,
                               connect_args={"timeout": busy_ms / 1000, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            pragmas(dbapi_conn, busy_ms)

        return engine
    if wait is None:
        return create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True,
                             pool_use_lifo=True, pool_recycle=1800, connect_args={"connect_timeout": 5})
    import psycopg

    connect: dict[str, Any] = {"connect_timeout": max(math.ceil(wait), 2),  # libpq's least
                               "keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2,
                               "keepalives_count": 3}
    if psycopg.pq.version() >= 120000:  # a libpq that knows it
        connect["tcp_user_timeout"] = busy_ms
    return create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=False,
                         pool_use_lifo=True, pool_recycle=1800, pool_timeout=wait, connect_args=connect)


class Interruptible:
    """Breaks off, from another thread, whatever the connections an engine opened are waiting for.

    Timeouts cannot bound a PostgreSQL server that accepts connections but never answers (or a proxy in
    front of one that stopped forwarding): the socket is alive and every byte is acknowledged. Shutting the
    socket down makes the waiting call fail at once (the connection is then discarded); a SQLite connection
    is interrupted. Register before the engine opens its first connection."""

    def __init__(self, engine: Engine) -> None:
        self._conns: list[Any] = []
        self._lock = threading.Lock()
        from sqlalchemy import event

        event.listen(engine, "do_connect", self._connect)

    def _connect(self, dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
        conn = dialect.connect(*cargs, **cparams)
        with self._lock:
            self._conns = [c for c in self._conns if _is_open(c)] + [conn]
        return conn

    def interrupt(self) -> int:
        """Break off every open connection's wait; how many there were."""
        with self._lock:
            conns = [c for c in self._conns if _is_open(c)]
        for c in conns:
            try:
                if isinstance(c, sqlite3.Connection):
                    c.interrupt()
                else:  # psycopg: the socket is shared with the waiting thread, which sees it closed
                    with socket.socket(fileno=os.dup(c.pgconn.socket)) as sock:
                        sock.shutdown(socket.SHUT_RDWR)
            except Exception:  # closed meanwhile: nothing to break off
                pass
        return len(conns)


def _is_open(conn: Any) -> bool:
    if isinstance(conn, sqlite3.Connection):
        try:
            conn.in_transaction  # noqa: B018  # raises once the connection is closed
        except sqlite3.ProgrammingError:
            return False
        return True
    return not conn.closed


class Database:
    """The engine (made on first use) plus a small thread pool: blocking database work never runs on the
    event loop."""

    def __init__(self, url: str, pool_size: int = 5) -> None:
        self.url = url
        self.pool_size = pool_size
        self.dialect = backend(engine_url(url))  # postgres:// is postgresql
        self._engine: Engine | None = None
        self._engine_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=pool_size, thread_name_prefix="relaygate-db")
        self._engines: list[Engine] = []  # engines of their own (``bounded_engine``), disposed with this one

    @property
    def engine(self) -> Engine:
        """The engine, made (and SQLAlchemy imported) the first time it is asked for."""
        engine = self._engine
        if engine is None:
            with self._engine_lock:
                if self._engine is None:
                    self._engine = create(self.url, self.pool_size)
                engine = self._engine
        return engine

    def migrate(self) -> int:
        """Bring the schema to the newest version: a SQLite file through plain ``sqlite3``, else through the
        engine (the same steps and version table either way)."""
        path = sqlite_file(self.url)
        return migrate_file(path) if path is not None else migrate(self.engine)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` (blocking database code) in the database threads."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def on_engine(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(engine, *args)`` in the database threads: the engine is made there if it is the first
        use, so that importing SQLAlchemy never holds up the event loop."""
        return await self.run(lambda: fn(self.engine, *args))

    def bounded_engine(self, wait: float, pool_size: int = 1) -> Engine:
        """An engine (of one connection unless told) whose every wait is bounded by ``wait`` seconds (see
        ``create``): for the request log writer, whose connection, stuck on a database that stopped answering,
        then never holds one of the pool the key lookups need; and for the request path's reads."""
        engine = create(self.url, pool_size, wait)
        self._engines.append(engine)
        return engine

    def log_target(self, wait: float) -> SQLiteFile | Engine:
        """What the request log's writer writes to, every wait bounded by ``wait`` seconds, on a connection of
        its own: the SQLite file through plain ``sqlite3`` (a transaction through SQLAlchemy's engine costs ten
        times the raw one), else (PostgreSQL, an in-memory or otherwise unusual SQLite URL) a bounded engine."""
        path = sqlite_file(self.url)
        return SQLiteFile(path, wait) if path is not None else self.bounded_engine(wait)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        for engine in [self._engine, *self._engines]:
            if engine is not None:
                engine.dispose()
