"""The database: one SQLAlchemy engine (SQLite WAL or PostgreSQL/psycopg 3), used off the event loop."""

from __future__ import annotations

import asyncio
import itertools
import math
import operator
import os
import socket
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sqlalchemy import BigInteger, Engine, Integer, create_engine, event
from sqlalchemy.engine import make_url

from relaygate.store.migrations import migrate
from relaygate.store.sqlite import SQLiteFile, make_dirs, pragmas, skip_adapter_lookup, sqlite_file

T = TypeVar("T")


def engine_url(url: str) -> str:
    """Normalise a configured URL: PostgreSQL always through psycopg 3."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    return url


def sqlite_path(url: str) -> str | None:
    """The file of a SQLite URL (None for PostgreSQL or an in-memory SQLite): read plainly where
    ``sqlite_file`` can, by SQLAlchemy only for the rest (a query string, another driver)."""
    path = sqlite_file(url)
    if path is not None:
        return path
    u = make_url(engine_url(url))
    if u.get_backend_name() != "sqlite":
        return None
    return u.database or None


def create(url: str, pool_size: int = 5, wait: float | None = None) -> Engine:
    """An engine for ``url``: SQLite in WAL mode with a busy timeout, or PostgreSQL via psycopg 3.

    ``wait`` (seconds) bounds the waits of its connections: the connect, the pool checkout, SQLite's busy
    timeout, TCP data left unacknowledged; and leaves out the pre-ping (a ping is an unbounded wait too: a
    dead connection fails its first statement instead). PostgreSQL statements are bounded per transaction by
    who runs them (``BulkInsert``'s ``statement_timeout``: a startup option would be refused by a pooler in
    transaction mode, a session setting would leak through one). A server that accepts connections but never
    answers is bounded by none of these: see ``Interruptible``."""
    url = engine_url(url)
    busy_ms = 30000 if wait is None else max(int(wait * 1000), 1)
    if make_url(url).get_backend_name() == "sqlite":
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
    """The engine plus a small thread pool: blocking database work never runs on the event loop."""

    def __init__(self, url: str, pool_size: int = 5) -> None:
        self.url = url
        self.engine = create(url, pool_size)
        self.dialect = self.engine.dialect.name
        self._pool = ThreadPoolExecutor(max_workers=pool_size, thread_name_prefix="relaygate-db")
        self._engines: list[Engine] = []  # engines of their own (``bounded_engine``), disposed with this one

    def migrate(self) -> int:
        return migrate(self.engine)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` (blocking database code) in the database threads."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

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
        for engine in [self.engine, *self._engines]:
            engine.dispose()


class BulkInsert:
    """``INSERT … VALUES (…), (…), … ON CONFLICT DO NOTHING``: many rows per statement, the statement text
    built once per row count from the table's columns (same SQL on SQLite and PostgreSQL, placeholders aside).

    The request log writes thousands of rows a second from a thread of the gateway's process. One statement
    per chunk matters: a driver's executemany releases and retakes the GIL for every row, and each retake
    waits for the busy event loop — the hand-offs cost more CPU than the inserts. Chunks come in a few fixed
    sizes so that the driver's cache of prepared statements always hits: parsing a statement of 100 rows
    costs SQLite more than inserting them.

    A row is a tuple of values in column order (the request path builds them so) or a dict by column name
    (spool lines; a missing column, as in an older spool line, takes its default).
    """

    SIZES = (100, 25, 5, 1)  # rows per statement: a chunk of n rows is cut into these, largest first

    def __init__(self, table: Any, statement_timeout: float | None = None) -> None:
        self.table = table
        # PostgreSQL: each transaction's statement and lock timeout, set with the staging table (no round trip)
        self._timeouts = "" if statement_timeout is None else (
            f"SET LOCAL statement_timeout = {max(int(statement_timeout * 1000), 1)}; "
            f"SET LOCAL lock_timeout = {max(int(statement_timeout * 1000), 1)}; ")
        self.names = [str(c.name) for c in table.c]  # plain str: orjson refuses str subclasses as keys
        self._defaults = {c.name: c.default.arg for c in table.c
                          if c.default is not None and not callable(c.default.arg)}
        # a dict row's values in column order, in C (a table has several columns: itemgetter gives a tuple)
        self._values: Callable[[dict[str, Any]], tuple[Any, ...]] = operator.itemgetter(*self.names)
        self._sql: dict[tuple[int, tuple[int, ...]], str] = {}  # (rows, columns) -> SQLite INSERT
        self._all = tuple(range(len(self.names)))
        self._oids: list[int] | None = None  # PostgreSQL type oids of the columns, for binary COPY
        self._staging: str | None = None  # PostgreSQL: the CREATE of the per-connection staging table

    def _statement(self, rows: int, columns: tuple[int, ...]) -> str:
        """SQLite's INSERT of ``rows`` rows of the given columns (indexes into ``names``), built once."""
        sql = self._sql.get((rows, columns))
        if sql is None:
            def q(name: str) -> str:
                return '"' + name.replace('"', '""') + '"'

            one = "(" + ", ".join(["?"] * len(columns)) + ")"
            cols = ", ".join(q(self.names[j]) for j in columns)
            sql = (f"INSERT INTO {q(self.table.name)} ({cols}) VALUES " + ", ".join([one] * rows)
                   + " ON CONFLICT DO NOTHING")
            if len(self._sql) < 256:  # a few shapes of NULL columns in practice
                self._sql[(rows, columns)] = sql
        return sql

    def values(self, row: tuple[Any, ...] | dict[str, Any]) -> tuple[Any, ...]:
        """One row's values in column order."""
        if isinstance(row, tuple):
            return row
        try:
            return self._values(row)
        except KeyError:
            d = self._defaults
            return tuple(row.get(n, d.get(n)) for n in self.names)

    def as_dict(self, row: tuple[Any, ...] | dict[str, Any]) -> dict[str, Any]:
        """A row by column name (for the spool file, whose lines must outlive column order)."""
        return row if isinstance(row, dict) else dict(zip(self.names, row, strict=True))

    def __call__(self, conn: Any, rows: list[Any]) -> None:
        """Insert ``rows`` through a SQLAlchemy connection, skipping those whose primary key exists (replays
        after a failed commit are safe)."""
        values = [r if type(r) is tuple else self.values(r) for r in rows]
        if conn.dialect.name == "postgresql":
            self._copy(conn, values)
            return
        # the DB-API connection: SQLAlchemy's per-statement bookkeeping cost more than binding 100 rows; the
        # transaction is still the SQLAlchemy connection's
        self.sqlite(conn.connection.driver_connection, values)

    def sqlite(self, dbapi: Any, rows: list[Any]) -> None:
        """Insert ``rows`` into SQLite on a ``sqlite3`` connection, in the caller's transaction, skipping those
        whose primary key exists."""
        values = [r if type(r) is tuple else self.values(r) for r in rows]
        chain = itertools.chain.from_iterable
        i, n = 0, len(values)
        cursor = dbapi.cursor()
        try:
            for size in self.SIZES:
                while n - i >= size:
                    chunk = values[i:i + size]
                    # columns that are NULL in every row of the chunk are left out of the INSERT (they are
                    # NULL by default): sqlite3 binds each None through its adapter lookup, ~1k instructions
                    columns = self._non_null(chunk)
                    if columns == self._all or not columns:
                        columns = self._all
                        params = tuple(chain(chunk))
                    else:
                        take = operator.itemgetter(*columns)
                        params = tuple(chain(map(take, chunk))) if len(columns) > 1 else tuple(map(take, chunk))
                    cursor.execute(self._statement(size, columns), params)
                    i += size
        finally:
            cursor.close()

    def _non_null(self, chunk: list[tuple[Any, ...]]) -> tuple[int, ...]:
        """The columns not NULL in every row of ``chunk``. Usually the first row's NULL columns are NULL in
        all: checked with one itemgetter per row, in C (half the cost of transposing the chunk and counting,
        which stays for the chunks where they differ)."""
        nulls = [j for j, v in enumerate(chunk[0]) if v is None]
        if not nulls:
            return self._all
        try:
            same = len(set(map(operator.itemgetter(*nulls), chunk))) == 1
        except TypeError:  # an unhashable value where the first row has a NULL
            same = False
        if same:
            return tuple([j for j in self._all if j not in nulls])
        size = len(chunk)
        return tuple([j for j, col in enumerate(zip(*chunk, strict=True)) if col.count(None) != size])

    def _copy(self, conn: Any, rows: list[tuple[Any, ...]]) -> None:
        """PostgreSQL: COPY into a per-connection temporary table, then one INSERT … SELECT … ON CONFLICT DO
        NOTHING (psycopg adapts COPY rows in C; bound parameters cost ~50 µs of Python per row). The COPY is
        binary: in text, formatting each row's three floats (repr) was a third of the writer's CPU."""
        names = self.names
        q = conn.dialect.identifier_preparer.quote
        table, staging = q(self.table.name), q(self.table.name + "_incoming")
        cols = ", ".join(q(n) for n in names)
        if self._staging is None:
            # the table's columns without their constraints, integers widened to BIGINT: binary COPY writes an
            # int beyond an INTEGER column's range wrapped around (2**32 + 7 as 7); from BIGINT, the INSERT …
            # SELECT checks the range and fails the batch for a data reason instead
            types = [(BigInteger() if isinstance(c.type, Integer) else c.type).compile(dialect=conn.dialect)
                     for c in self.table.c]
            self._staging = (f"{self._timeouts}CREATE TEMPORARY TABLE IF NOT EXISTS {staging} ("
                             + ", ".join(f"{q(n)} {t}" for n, t in zip(names, types, strict=True))
                             + ") ON COMMIT DELETE ROWS")
        conn.exec_driver_sql(self._staging)
        cursor = conn.connection.driver_connection.cursor()
        try:
            if self._oids is None:  # the columns' type oids, which binary COPY needs to encode each value
                cursor.execute(f"SELECT {cols} FROM {staging} LIMIT 0")
                self._oids = [d.type_code for d in cursor.description]
            with cursor.copy(f"COPY {staging} ({cols}) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(self._oids)
                for r in rows:
                    copy.write_row(r)
        finally:
            cursor.close()
        conn.exec_driver_sql(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {staging} ON CONFLICT DO NOTHING")
