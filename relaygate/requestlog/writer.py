"""The audit log writer: rows queued by the request path, written in batches by a thread of its own.

Never on the request path: ``submit`` only appends to a bounded queue. The writer thread takes batches and
hands each, as one transaction, to a database thread, waiting at most ``write_timeout``. When the database
fails (refused, reset, or silent past the timeout) the batch goes to a spool file (``spool.py``) and is
replayed when the database answers again; spool files left by a process that died are replayed too. Rows
carry a unique ``uid``, so a replay after an uncertain commit never duplicates. A row the database refuses
for what it holds (a data error, not a connection error) never sinks its batch: the batch is fitted to the
table and retried, then bisected down to the rows that still fail, each written as a salvaged row and kept
whole in the dead-letter file. ``close`` drains everything (to the database, else to the spool).
"""

from __future__ import annotations

import collections
import itertools
import logging
import queue
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from relaygate.requestlog.spool import DeadLetters, Spool
from relaygate.store import schema
from relaygate.store.bulk import BulkInsert
from relaygate.store.rows import RowFitter
from relaygate.store.sqlite import SQLiteFile

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from relaygate.store.db import Interruptible

log = logging.getLogger("relaygate.requestlog")

Row = tuple[Any, ...] | dict[str, Any]  # values in column order, or by column name (spool lines)
# seconds between the writer's looks for spool files other processes left (its own is known without a look);
# each look is a glob of the spool directory, which per batch cost the writer thread ~800 instructions a row
ORPHAN_LOOK = 30.0


class WriteTimeout(Exception):
    """The database did not finish a write in time (or a write that did not is still running)."""


def is_data_error(e: BaseException) -> bool:
    """Whether the database refused a write for what the rows hold (a value out of range, a NUL, a missing
    value), as opposed to the database being unreachable, slow, or down: those are worth retrying as they
    are, these never."""
    sqlalchemy_errors = sys.modules.get("sqlalchemy.exc")  # not loaded: e is none of its errors (writing to a file)
    if sqlalchemy_errors is not None and isinstance(e, sqlalchemy_errors.DBAPIError) and e.orig is not None:
        e = e.orig
    if isinstance(e, sqlite3.Error):  # locked, busy, I/O, read-only, no such table: OperationalError
        return isinstance(e, (sqlite3.IntegrityError, sqlite3.DataError, sqlite3.InterfaceError)) or (
            isinstance(e, sqlite3.ProgrammingError) and "binding parameter" in str(e))  # a value of a bad type
    name = type(e).__module__.split(".")[0]
    if name == "psycopg":
        import psycopg

        return isinstance(e, (psycopg.DataError, psycopg.IntegrityError))
    # raised while adapting a value, before anything was sent (an int too big, text it cannot encode)
    return isinstance(e, (ValueError, TypeError, OverflowError))


class _DatabaseThread:
    """Runs the writer's database calls one at a time, so that the writer can stop waiting for one.

    Jobs and results pass through two C queues (a Future per call cost more than its wait): a result is
    tagged with its job's number, so that one arriving after its caller gave up is told apart."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[int, Callable[[Any], Any], Any] | None] = queue.SimpleQueue()
        self._results: queue.SimpleQueue[tuple[int, BaseException | None]] = queue.SimpleQueue()
        self._given = 0  # the number of the last job given
        self._done = 0  # the number of the last job finished (set by the database thread)
        self._thread = threading.Thread(target=self._run, name="relaygate-requestlog-db", daemon=True)
        self._thread.start()

    @property
    def busy(self) -> bool:
        return self._done != self._given

    def call(self, fn: Callable[[Any], Any], arg: Any, timeout: float) -> None:
        """``fn(arg)`` in the database thread; WriteTimeout after ``timeout`` seconds (it may still finish)."""
        if self.busy:
            raise WriteTimeout("a database write that timed out has not returned yet")
        self._given += 1
        self._jobs.put((self._given, fn, arg))
        deadline = time.monotonic() + timeout
        while True:
            try:
                n, error = self._results.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                raise WriteTimeout(f"the database did not finish a write within {timeout:g} s") from None
            if n == self._given:  # else the late result of a call that timed out
                break
        if error is not None:
            raise error

    def stop(self) -> None:
        """End the thread once it is done with what it was given."""
        self._jobs.put(None)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            n, fn, arg = job
            error: BaseException | None = None
            try:
                fn(arg)
            except BaseException as e:
                error = e
            self._done = n
            self._results.put((n, error))
            del error


class RequestLogWriter:
    """Batches rows from a bounded queue into the database in a background thread.

    The queue is a deque the event loop appends to without waking the writer: the writer wakes every
    ``flush_interval`` (or when a batch is full) and drains it. Waking a thread per row would cost more
    CPU, in GIL hand-offs, than the row itself.
    """

    def __init__(self, database: Engine | SQLiteFile, spool_dir: str, *, queue_size: int = 10000,
                 batch_size: int = 500, flush_interval: float = 0.5, write_timeout: float = 2.0) -> None:
        """``database``: what ``Database.log_target`` chose, a SQLite file (plain ``sqlite3``) or an engine."""
        self.engine: Engine | None = None
        self.sqlite: SQLiteFile | None = None
        self._interruptible: Interruptible | None = None
        if isinstance(database, SQLiteFile):
            self.sqlite = database  # one plain sqlite3 connection, opened in the database thread
        else:
            from relaygate.store.db import Interruptible

            self.engine = database
            self._interruptible = Interruptible(database)
        self._conn: sqlite3.Connection | None = None
        self.spool = Spool(spool_dir)
        self.dead_letters = DeadLetters(spool_dir)
        self._bulk = BulkInsert(schema.request_log, statement_timeout=write_timeout)
        self._fit = RowFitter(schema.request_log)
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.write_timeout = write_timeout
        self.queue_size = queue_size
        self.queue: collections.deque[Row] = collections.deque()
        self._wake = threading.Event()
        self._stopping = False
        self._db: _DatabaseThread | None = None
        self.submitted = 0
        self.handled = 0  # rows written or spooled (compared with ``submitted`` by ``flush``)
        self.written = 0  # rows committed to the database (by this writer, replays included)
        self.spooled = 0
        self.replayed = 0  # spooled rows handed back to the database
        self.timeouts = 0  # writes the database did not finish within ``write_timeout``
        self.dead = 0  # rows the database refused even fitted: kept in the dead-letter file
        self.salvaged = 0  # of those, rows written in a salvaged form
        self.lost = 0  # rows neither written nor spooled (the spool could not be written either)
        self._first_reason = ""  # why the database refused the last dead-lettered row
        self.db_ok = True
        self._retry_at = 0.0
        self._backoff = 0.5
        self._idle = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="relaygate-requestlog", daemon=True)
        self._closed = False

    def start(self) -> None:
        self._thread.start()

    def submit(self, row: Row) -> None:
        """Queue a row (never blocks); a full queue overflows to the spool file rather than drop it."""
        self.submitted += 1
        q = self.queue
        if len(q) >= self.queue_size:
            self._spool([row])
            self.handled += 1
            return
        q.append(row)
        if len(q) == self.batch_size:
            self._wake.set()

    # -- the writer thread ------------------------------------------------------------------------------

    def _run(self) -> None:
        stopping = False
        while not stopping:
            batch, stopping = self._take()
            if batch:
                self._write(batch)
                self.handled += len(batch)
            if self.spool.pending(ORPHAN_LOOK) and self._may_try():
                self._replay()
            with self._idle:
                self._idle.notify_all()
        # final drain: the database once more, else the spool
        if self.spool.pending() and not (self._db is not None and self._db.busy):
            self._replay()
        self.spool.close()
        if self._db is not None:
            if not self._db.busy:
                try:
                    self._db.call(lambda _: self._close_connection(), None, self.write_timeout)
                except Exception:  # the thread is gone with the process anyway
                    pass
            self._db.stop()

    def _take(self) -> tuple[list[Row], bool]:
        """Everything queued once a batch is full or ``flush_interval`` passed; and whether to stop."""
        if len(self.queue) < self.batch_size and not self._stopping:
            self._wake.wait(self.flush_interval)
        self._wake.clear()
        stopping = self._stopping  # read before draining: rows queued before the stop are all taken
        q = self.queue
        # as many as are queued now, popped in C (popleft is atomic: appends from the event loop may go on
        # meanwhile, and are taken next time)
        return list(itertools.starmap(q.popleft, itertools.repeat((), len(q)))), stopping

    def _may_try(self) -> bool:
        """Whether to try the database now: it answered last time, or the back-off is over, and no write
        that timed out is still hanging in the database thread (that one is broken off again)."""
        if self._db is not None and self._db.busy:
            if time.monotonic() >= self._retry_at:  # e.g. it was still connecting when it was broken off
                self._interrupt()
                self._failed(WriteTimeout("a database write that timed out has not returned yet"))
            return False
        return self.db_ok or time.monotonic() >= self._retry_at

    def _write(self, batch: list[Row]) -> None:
        if not self._may_try():
            self._spool(batch)
            return
        for i in range(0, len(batch), self.batch_size):
            try:
                self._store(batch[i:i + self.batch_size])
            except Exception as e:
                self._failed(e)
                self._spool(batch[i:])
                return
        self._recovered()

    def _spool(self, rows: list[Row]) -> None:
        try:
            self.spool.append([self._bulk.as_dict(r) for r in rows])
        except OSError as e:  # nowhere left to keep them
            self.lost += len(rows)
            log.error("request log: %d rows lost: the database failed and the spool could not be written (%s)",
                      len(rows), e)
            return
        self.spooled += len(rows)

    def _store(self, rows: list[Row], fit: bool = False) -> None:
        """Write ``rows`` (``fit``: fitted to the table first); a row refused for what it holds never fails
        the others. Raises only when the database is unreachable, slow or down (the caller spools them)."""
        if not fit:
            try:
                self._insert(rows)
                return
            except Exception as e:
                if not is_data_error(e):
                    raise
        dead = self.dead
        self._isolate([self._fit.row(self._bulk.values(r)) for r in rows], rows)
        if self.dead > dead:  # once per batch: a batch of bad rows must not flood the log
            log.error("request log: the database refused %d of %d rows even fitted (the first: %s); they are "
                      "kept in %s", self.dead - dead, len(rows), self._first_reason, self.dead_letters.path)

    def _isolate(self, fitted: list[tuple[Any, ...]], originals: list[Row]) -> None:
        """Write ``fitted``; where the database refuses, halve and retry, down to the single rows it refuses,
        which go to the dead-letter file (``originals``: the same rows as they came)."""
        try:
            self._insert(fitted)
            return
        except Exception as e:
            if not is_data_error(e):
                raise
            if len(fitted) == 1:
                self._dead_letter(fitted[0], originals[0], e)
                return
        mid = len(fitted) // 2
        self._isolate(fitted[:mid], originals[:mid])
        self._isolate(fitted[mid:], originals[mid:])

    def _dead_letter(self, fitted: tuple[Any, ...], original: Row, error: BaseException) -> None:
        """Keep a refused row whole in the dead-letter file, and write it salvaged (every value made
        storable, the cost and the key kept, so that spend sums stay right) when the database takes that."""
        reason = f"{type(getattr(error, 'orig', None) or error).__name__}: {str(error).splitlines()[0][:300]}"
        self.dead_letters.add(self._bulk.as_dict(original), reason)
        self.dead += 1
        self._first_reason = reason
        row = list(self._fit.salvage(fitted))
        i = self._bulk.names.index("error_message")
        row[i] = f"[request log: row salvaged, original in the dead-letter file: {reason}] {row[i] or ''}"
        try:
            self._insert([tuple(row)])
        except Exception as e:
            if not is_data_error(e):
                raise
            return
        self.salvaged += 1

    def _insert(self, rows: list[Any]) -> None:
        """One transaction in the database thread, bounded by ``write_timeout``: past it, the connection's
        wait is broken off and the write counts as failed (whether it committed is unknown: a replay of its
        rows skips those that did)."""
        if self._db is None:
            self._db = _DatabaseThread()
        try:
            self._db.call(self._transaction, rows, self.write_timeout)
        except WriteTimeout:
            self.timeouts += 1
            self._interrupt()
            raise
        self.written += len(rows)

    def _interrupt(self) -> None:
        """Break off the database thread's wait (a write past its timeout)."""
        if self._interruptible is not None:
            self._interruptible.interrupt()
            return
        conn = self._conn
        if conn is not None:
            try:
                conn.interrupt()
            except sqlite3.ProgrammingError:  # closed meanwhile: nothing to break off
                pass

    def _transaction(self, rows: list[Any]) -> None:
        if self.engine is not None:
            with self.engine.begin() as conn:
                self._bulk(conn, rows)
            return
        assert self.sqlite is not None
        if self._conn is None:
            self._conn = self.sqlite.connect()
        lite = self._conn
        try:
            lite.execute("BEGIN")
            self._bulk.sqlite(lite, rows)
            lite.execute("COMMIT")
        except BaseException:
            try:
                lite.rollback()  # a no-op outside a transaction
            except Exception:  # a connection that cannot even roll back is not used again
                self._conn = None
                lite.close()
            raise

    def _close_connection(self) -> None:
        """The database thread's last job: close the plain SQLite connection."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _replay(self) -> None:
        def write(lines: list[Any]) -> None:
            rows: list[Row] = []
            for line in lines:
                if isinstance(line, dict):
                    rows.append(line)
                else:  # valid JSON, but not a row
                    self.dead_letters.add({"line": line}, "not a row")
                    self.dead += 1
            if rows:
                self._store(rows, fit=True)  # a line may predate fitting, or hold what the client sent

        try:
            n = self.spool.replay(write, self.batch_size)
        except Exception as e:
            self._failed(e)
            return
        self.replayed += n
        if n:
            log.warning("request log: replayed %d spooled rows into the database", n)
        self._recovered()

    def _failed(self, e: Exception) -> None:
        if self.db_ok:
            log.error("request log: database write failed (%s: %s); spooling rows to %s until it returns",
                      type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "", self.spool.path)
        self.db_ok = False
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, 5.0)

    def _recovered(self) -> None:
        self.db_ok = True
        self._backoff = 0.5

    # -- lifecycle --------------------------------------------------------------------------------------

    def flush(self, timeout: float = 10.0) -> bool:
        """Block until every row submitted so far was written or spooled (tests, shutdown)."""
        target = self.submitted
        self._wake.set()
        deadline = time.monotonic() + timeout
        with self._idle:
            while self.handled < target:
                left = deadline - time.monotonic()
                if left <= 0 or not self._thread.is_alive():
                    return False
                self._idle.wait(min(left, 0.1))
        return True

    def close(self, timeout: float = 60.0) -> None:
        """Write everything queued (database, else spool) and stop the thread."""
        if self._closed:
            return
        self._closed = True
        if not self._thread.is_alive():
            self._thread.start()
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("request log writer did not finish within %.0f s", timeout)
