"""The response cache's level on disk: an SQLite file bounded in bytes, for a single node whose answers should
survive a restart.

Entries are ``entry.encode``'s bytes (the same as Redis holds) under the cache key, with the model (for a purge
by model), a wall-clock expiry (an answer kept before a restart expires on time after it) and the time of its
last use (the least recently used go first when the file's entries pass ``max_bytes``). SQLite runs in one
thread of its own, never on the event loop; a read that does not finish within ``timeout`` is given up (the
call goes upstream) and counted, like a write that fails (disk full, read-only): a disk level never fails a
request.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

from relaygate.cache.entry import Entry, decode, encode

REOPEN_AFTER = 5.0  # seconds a file that could not be opened is left alone before the next try
EVICT_BATCH = 64  # entries looked at per eviction query: one query frees room for most puts

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS cache_entries (key TEXT PRIMARY KEY, model TEXT NOT NULL, expires REAL NOT NULL,"
    " used REAL NOT NULL, size INTEGER NOT NULL, data BLOB NOT NULL)",
    "CREATE INDEX IF NOT EXISTS ix_cache_entries_used ON cache_entries (used)",
    # the entries' total, kept by SQLite itself in each writing transaction: exact when several processes
    # (``serve --workers``) share the file, so the bound holds for all of them together
    "CREATE TABLE IF NOT EXISTS cache_totals (id INTEGER PRIMARY KEY CHECK (id = 1), bytes INTEGER NOT NULL,"
    " entries INTEGER NOT NULL)",
    "INSERT OR IGNORE INTO cache_totals SELECT 1, coalesce(sum(size), 0), count(*) FROM cache_entries",
    "CREATE TRIGGER IF NOT EXISTS cache_entries_added AFTER INSERT ON cache_entries BEGIN"
    " UPDATE cache_totals SET bytes = bytes + new.size, entries = entries + 1 WHERE id = 1; END",
    "CREATE TRIGGER IF NOT EXISTS cache_entries_removed AFTER DELETE ON cache_entries BEGIN"
    " UPDATE cache_totals SET bytes = bytes - old.size, entries = entries - 1 WHERE id = 1; END",
)


@contextmanager
def _writing(db: sqlite3.Connection) -> Iterator[None]:
    """One write transaction, taken at once (other processes writing the file wait up to the busy timeout)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


class DiskCache:
    """See the module docstring. ``ttl``: seconds an answer stays on disk at most."""

    def __init__(self, path: str, max_bytes: int, ttl: float, timeout: float) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.ttl = ttl
        self.timeout = timeout
        self.bytes = 0  # the entries' sizes in the file, all processes' (as of this one's last access)
        self.entries = 0
        self.evictions = 0
        self._db: sqlite3.Connection | None = None  # opened, used and closed in the level's one thread only
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="relaygate-cache-disk")
        self._closed = False
        self._broken_until = 0.0  # monotonic: the file could not be opened; no try (nor thread hop) before

    async def _run(self, fn: Any, *args: Any, bounded: bool = False) -> Any:
        """``fn(*args)`` in the level's thread (with the file open); ``bounded``: within ``timeout`` (a read on
        the request path), else as long as it takes (writes and purges run in the background)."""
        if self._db is None and time.monotonic() < self._broken_until:
            raise OSError(f"the disk cache {self.path!r} could not be opened; trying again shortly")
        try:
            job = asyncio.wrap_future(self._thread.submit(self._with_db, fn, *args))
        except RuntimeError:  # closed (its gateway was replaced): a level that cannot answer, like a full disk
            raise OSError("the disk cache is closed") from None
        if not bounded:
            return await job
        try:
            return await asyncio.wait_for(job, self.timeout)
        except TimeoutError:
            raise OSError(f"the disk cache took more than {self.timeout} s to answer") from None

    def _with_db(self, fn: Any, *args: Any) -> Any:
        db = self._db
        if db is None:
            try:
                db = self._db = self._open()
            except BaseException:
                self._broken_until = time.monotonic() + REOPEN_AFTER
                raise
        return fn(db, *args)

    def _open(self) -> sqlite3.Connection:
        folder = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(folder, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=1.0, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # a cache: the last writes may go with a power cut
            with _writing(db):
                for statement in _SCHEMA:
                    db.execute(statement)
                self._delete(db, "expires <= ?", (time.time(),))
                self._evict(db)  # a smaller max_bytes than the file was filled with
        except BaseException:
            db.close()
            raise
        return db

    async def get(self, model: str, key: str) -> Entry | None:
        """The entry, or None; raises ``sqlite3.Error`` / ``OSError`` (also past ``timeout``) when the disk
        cannot answer."""
        data: bytes | None = await self._run(self._get, key, bounded=True)
        return decode(data) if data is not None else None

    def _get(self, db: sqlite3.Connection, key: str) -> bytes | None:
        row = db.execute("SELECT data, expires FROM cache_entries WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        now = time.time()
        if row[1] <= now:
            self._delete(db, "key = ?", (key,))
            return None
        db.execute("UPDATE cache_entries SET used = ? WHERE key = ?", (now, key))
        return bytes(row[0])

    async def put(self, key: str, entry: Entry, ttl: float | None = None) -> None:
        life = self.ttl if ttl is None else min(ttl, self.ttl)
        data = encode(entry)
        if len(data) > self.max_bytes:
            return
        await self._run(self._put, key, entry.model, data, entry.created + life)

    def _put(self, db: sqlite3.Connection, key: str, model: str, data: bytes, expires: float) -> None:
        with _writing(db):  # the entry and the evictions it makes need: one transaction
            db.execute("DELETE FROM cache_entries WHERE key = ?", (key,))
            db.execute("INSERT INTO cache_entries (key, model, expires, used, size, data) VALUES (?, ?, ?, ?, ?, ?)",
                       (key, model, expires, time.time(), len(data), data))
            self._evict(db)

    def _evict(self, db: sqlite3.Connection) -> None:
        """Expired entries first, then the least recently used, until the file's entries fit ``max_bytes``."""
        self._totals(db)
        if self.bytes <= self.max_bytes:
            return
        self._delete(db, "expires <= ?", (time.time(),))
        while self.bytes > self.max_bytes:
            rows = db.execute("SELECT key, size FROM cache_entries ORDER BY used LIMIT ?", (EVICT_BATCH,)).fetchall()
            if not rows:
                return
            over, doomed = self.bytes - self.max_bytes, []
            for k, size in rows:
                doomed.append(k)
                over -= size
                if over <= 0:
                    break
            self.evictions += self._delete(db, f"key IN ({', '.join('?' * len(doomed))})", doomed)

    def _delete(self, db: sqlite3.Connection, where: str, args: Any) -> int:
        """Delete the entries ``where`` says; how many went (the totals follow, by trigger)."""
        gone = db.execute(f"DELETE FROM cache_entries WHERE {where}", args).rowcount
        self._totals(db)
        return gone

    def _totals(self, db: sqlite3.Connection) -> None:
        self.bytes, self.entries = db.execute("SELECT bytes, entries FROM cache_totals WHERE id = 1").fetchone()

    async def purge(self, model: str | None = None, key: str | None = None) -> int:
        """Delete every entry, or one model's, or one cache key's; how many were deleted."""
        conds, args = ["1 = 1"], []
        if model is not None:
            conds.append("model = ?")
            args.append(model)
        if key is not None:
            conds.append("key = ?")
            args.append(key)
        n: int = await self._run(self._delete, " AND ".join(conds), args)
        return n

    async def close(self) -> None:
        """Close the file (writes queued before this one finish first); a second close does nothing."""
        if self._closed:
            return
        self._closed = True

        def shut() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        await asyncio.wrap_future(self._thread.submit(shut))
        self._thread.shutdown(wait=True)
