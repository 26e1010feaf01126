"""SQLite without SQLAlchemy: the file of a ``sqlite://`` URL, and plain ``sqlite3`` connections to it.

The request log's writer inserts through a connection of its own (``SQLiteFile.connect``): one transaction per
batch on the DB-API connection costs ~13k instructions, one through SQLAlchemy's engine (pool checkout, reset,
``begin``) ~138k. This module imports no SQLAlchemy, so a gateway whose requests need none does not load it
for them.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote


def sqlite_file(url: str) -> str | None:
    """The file of a SQLite URL as SQLAlchemy reads it (``sqlite:///relative.db``, ``sqlite:////abs.db``);
    None for an in-memory database, another database or a URL this cannot read plainly (a query string, a
    driver other than pysqlite), which then goes through SQLAlchemy."""
    for scheme in ("sqlite:///", "sqlite+pysqlite:///"):
        if url.startswith(scheme):
            path = url[len(scheme):]
            if not path or path == ":memory:" or "?" in path or path.startswith("file:"):
                return None
            return unquote(path)
    return None


def skip_adapter_lookup() -> None:
    """Bind None without sqlite3's adapter protocol. For a value that is not exactly int, float, str or
    bytearray, sqlite3 looks up an adapter and fails two attribute lookups, formatting an AttributeError
    (~2 µs per None; a log row has several). A registered adapter that returns None is found at once, and
    None is bound as NULL exactly as before. The registry is process-wide; the result is the same for
    everyone."""
    sqlite3.register_adapter(type(None), _NULL_ADAPTER)


_NULL_ADAPTER: Callable[[Any], None] = {}.get  # a C callable returning None for any argument


def pragmas(conn: Any, busy_ms: int) -> None:
    """What every connection of the gateway to a SQLite file sets: WAL, NORMAL sync, the busy timeout."""
    cur = conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute(f"PRAGMA busy_timeout={busy_ms}")
    cur.close()


class SQLiteFile:
    """A SQLite file the request log writes to through plain ``sqlite3`` connections, each wait bounded by
    ``wait`` seconds (the busy timeout)."""

    def __init__(self, path: str, wait: float) -> None:
        self.path = path
        self.wait = wait

    def connect(self) -> sqlite3.Connection:
        """A connection in autocommit mode (the caller says BEGIN and COMMIT), usable from any one thread at a
        time and interruptible from another."""
        skip_adapter_lookup()
        busy_ms = max(int(self.wait * 1000), 1)
        conn = sqlite3.connect(self.path, timeout=busy_ms / 1000, isolation_level=None, check_same_thread=False,
                               cached_statements=64)
        try:
            pragmas(conn, busy_ms)
        except BaseException:
            conn.close()
            raise
        return conn


def make_dirs(path: str) -> None:
    """The directory a SQLite file goes in."""
    if path and path != ":memory:":
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
