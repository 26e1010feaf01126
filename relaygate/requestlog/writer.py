"""The audit log writer: rows queued by the request path, written in batches by a thread of its own.

Never on the request path: ``submit`` only appends to a bounded queue. A dedicated thread takes batches and
inserts them in one transaction. When the database fails, the batch goes to a spool file (JSON lines) and is
replayed when the database answers again; spool files left by a process that died are replayed too.
Rows carry a unique ``uid``, so a replay after an uncertain commit never duplicates. ``close`` drains
everything (to the database, else to the spool): zero rows lost.
"""

from __future__ import annotations

import collections
import fcntl
import glob
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson
from sqlalchemy import Engine

from relaygate.store import tables
from relaygate.store.db import BulkInsert

log = logging.getLogger("relaygate.requestlog")

Row = tuple[Any, ...] | dict[str, Any]  # values in column order, or by column name (spool lines)


class Spool:
    """This process's spool file (held under an exclusive lock) and the orphans of dead processes.

    A file is deleted only after all its rows were written; a crash at any point leaves it to be replayed
    (duplicates are skipped by ``uid``).
    """

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.path = self._new_path()
        self._fd: int | None = None
        self.lock = threading.Lock()  # appends come from the writer thread and, on overflow, the loop

    def _new_path(self) -> str:
        return os.path.join(self.directory, f"relaygate-spool-{os.getpid()}-{os.urandom(6).hex()}.jsonl")

    def append(self, rows: list[dict[str, Any]]) -> None:
        data = b"".join(orjson.dumps(r) + b"\n" for r in rows)
        with self.lock:
            if self._fd is None:
                os.makedirs(self.directory, exist_ok=True)
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
                fcntl.flock(self._fd, fcntl.LOCK_EX)
            os.write(self._fd, data)

    def pending(self) -> bool:
        return self._fd is not None or bool(self._others())

    def _others(self) -> list[str]:
        return glob.glob(os.path.join(self.directory, "relaygate-spool-*.jsonl"))

    def replay(self, write: Callable[[list[Row]], None], batch: int) -> int:
        """Write every spooled row through ``write``; a file is deleted once its rows are all written."""
        claimed: list[tuple[str, int]] = []
        with self.lock:  # hand our own file over to the replay; new rows start a new file
            if self._fd is not None:
                claimed.append((self.path, self._fd))
                self._fd = None
                self.path = self._new_path()
        mine = {p for p, _ in claimed}
        for path in self._others():
            if path in mine:
                continue
            try:
                fd = os.open(path, os.O_RDWR)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a live process holds its own: skip it
            except BlockingIOError:
                os.close(fd)
                continue
            claimed.append((path, fd))
        count = 0
        try:
            while claimed:
                path, fd = claimed[0]
                count += _write_lines(_read_all(fd), write, batch)
                os.unlink(path)
                os.close(fd)
                claimed.pop(0)
        finally:
            for _, fd in claimed:  # not replayed: the lock drops and the file waits for the next try
                os.close(fd)
        return count

    def close(self) -> None:
        with self.lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def _read_all(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks: list[bytes] = []
    while True:
        b = os.read(fd, 1 << 20)
        if not b:
            return b"".join(chunks)
        chunks.append(b)


def _write_lines(data: bytes, write: Callable[[list[Row]], None], batch: int) -> int:
    rows: list[Row] = []
    for line in data.splitlines():
        if not line.strip():
            continue
        try:
            rows.append(orjson.loads(line))
        except orjson.JSONDecodeError:  # a torn last line from a crash mid-write
            log.warning("skipping an unreadable spool line (%d bytes)", len(line))
    for i in range(0, len(rows), batch):
        write(rows[i:i + batch])
    return len(rows)


class RequestLogWriter:
    """Batches rows from a bounded queue into the database in a background thread.

    The queue is a deque the event loop appends to without waking the writer: the writer wakes every
    ``flush_interval`` (or when a batch is full) and drains it. Waking a thread per row would cost more
    CPU, in GIL hand-offs, than the row itself.
    """

    def __init__(self, engine: Engine, spool_dir: str, *, queue_size: int = 10000, batch_size: int = 500,
                 flush_interval: float = 0.5) -> None:
        self.engine = engine
        self.spool = Spool(spool_dir)
        self._bulk = BulkInsert(tables.request_log)
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.queue_size = queue_size
        self.queue: collections.deque[Row] = collections.deque()
        self._wake = threading.Event()
        self._stopping = False
        self.submitted = 0
        self.handled = 0  # rows written or spooled (compared with ``submitted`` by ``flush``)
        self.written = 0  # rows committed to the database (by this writer, replays included)
        self.spooled = 0
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
            self.spool.append([self._bulk.as_dict(row)])
            self.spooled += 1
            self.handled += 1
            return
        q.append(row)
        if len(q) == self.batch_size:
            self._wake.set()

    # -- the writer thread ------------------------------------------------------------------------------

    def _insert(self, rows: list[Row]) -> None:
        with self.engine.begin() as conn:
            self._bulk(conn, rows)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            batch, stopping = self._take()
            if batch:
                self._write(batch)
                self.handled += len(batch)
            if self.spool.pending() and time.monotonic() >= self._retry_at:
                self._replay()
            with self._idle:
                self._idle.notify_all()
        # final drain: the database once more, else the spool
        if self.spool.pending():
            self._replay()
        self.spool.close()

    def _take(self) -> tuple[list[Row], bool]:
        """Everything queued once a batch is full or ``flush_interval`` passed; and whether to stop."""
        if len(self.queue) < self.batch_size and not self._stopping:
            self._wake.wait(self.flush_interval)
        self._wake.clear()
        stopping = self._stopping  # read before draining: rows queued before the stop are all taken
        q = self.queue
        batch: list[Row] = []
        while q:
            batch.append(q.popleft())  # popleft is atomic: appends from the event loop may go on meanwhile
        return batch, stopping

    def _write(self, batch: list[Row]) -> None:
        if self.db_ok or time.monotonic() >= self._retry_at:
            for i in range(0, len(batch), self.batch_size):
                chunk = batch[i:i + self.batch_size]
                try:
                    self._insert(chunk)
                except Exception as e:
                    self._failed(e)
                    self.spool.append([self._bulk.as_dict(r) for r in batch[i:]])
                    self.spooled += len(batch) - i
                    return
                self.written += len(chunk)
            self._recovered()
            return
        self.spool.append([self._bulk.as_dict(r) for r in batch])
        self.spooled += len(batch)

    def _replay(self) -> None:
        def write(rows: list[Row]) -> None:
            self._insert(rows)
            self.written += len(rows)

        try:
            n = self.spool.replay(write, self.batch_size)
        except Exception as e:
            self._failed(e)
            return
        if n:
            log.warning("request log: replayed %d spooled rows into the database", n)
        self._recovered()

    def _failed(self, e: Exception) -> None:
        if self.db_ok:
            log.error("request log: database write failed (%s); spooling rows to %s until it returns",
                      type(e).__name__, self.spool.path)
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
