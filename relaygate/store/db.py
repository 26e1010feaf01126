"""The database: one SQLAlchemy engine (SQLite WAL or PostgreSQL/psycopg 3), used off the event loop."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

from .migrations import migrate

T = TypeVar("T")


def engine_url(url: str) -> str:
    """Normalise a configured URL: PostgreSQL always through psycopg 3."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    return url


def sqlite_path(url: str) -> str | None:
    """The file of a SQLite URL (None for PostgreSQL or an in-memory SQLite)."""
    u = make_url(engine_url(url))
    if u.get_backend_name() != "sqlite":
        return None
    return u.database or None


def create(url: str, pool_size: int = 5) -> Engine:
    """An engine for ``url``: SQLite in WAL mode with a busy timeout, or PostgreSQL via psycopg 3."""
    url = engine_url(url)
    if make_url(url).get_backend_name() == "sqlite":
        path = sqlite_path(url)
        if path and path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        # pooled: each connection is used by one thread at a time; the log writer keeps one warm
        engine = create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=False,
                               connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    return create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True,
                         pool_recycle=1800, connect_args={"connect_timeout": 5})


class Database:
    """The engine plus a small thread pool: blocking database work never runs on the event loop."""

    def __init__(self, url: str, pool_size: int = 5) -> None:
        self.url = url
        self.engine = create(url, pool_size)
        self.dialect = self.engine.dialect.name
        self._pool = ThreadPoolExecutor(max_workers=pool_size, thread_name_prefix="relaygate-db")

    def migrate(self) -> int:
        return migrate(self.engine)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` (blocking database code) in the database threads."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.engine.dispose()


class BulkInsert:
    """INSERT … ON CONFLICT DO NOTHING of many rows: compiled once, then handed to the driver's executemany
    (the request log writes thousands of rows a second; per-row statement processing would cost more CPU
    than the calls it logs)."""

    def __init__(self, table: Any) -> None:
        self.table = table
        self._compiled: dict[str, tuple[str, list[str], bool]] = {}
        self._defaults = {c.name: c.default.arg for c in table.c
                          if c.default is not None and not callable(c.default.arg)}

    def _statement(self, dialect: Any) -> tuple[str, list[str], bool]:
        hit = self._compiled.get(dialect.name)
        if hit is None:
            from sqlalchemy.dialects import postgresql, sqlite

            stmt: Any = (postgresql.insert(self.table) if dialect.name == "postgresql"
                         else sqlite.insert(self.table))
            compiled = stmt.on_conflict_do_nothing().compile(dialect=dialect)
            names = list(compiled.positiontup or []) if compiled.positional else list(compiled.params)
            hit = self._compiled[dialect.name] = (compiled.string, names, bool(compiled.positional))
        return hit

    def __call__(self, conn: Any, rows: list[dict[str, Any]]) -> None:
        """Insert ``rows``, skipping those whose primary key exists (replays after a failed commit are safe)."""
        if not rows:
            return
        sql, names, positional = self._statement(conn.dialect)
        d = self._defaults
        if positional:
            conn.exec_driver_sql(sql, [tuple(r.get(n, d.get(n)) for n in names) for r in rows])
        else:
            conn.exec_driver_sql(sql, [{n: r.get(n, d.get(n)) for n in names} for r in rows])
