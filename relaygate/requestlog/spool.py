"""Where log rows wait while the database cannot take them (the spool), and where a row it refused goes.

Spool files are JSON lines, one row (by column name) a line, appended by one process under an exclusive
lock. A crash mid-append leaves a torn last line: replay skips and counts it, and the rest of the file is
written. A file is deleted only once all its rows were written (or dead-lettered), so a crash at any point
leaves it to be replayed; a row already written is skipped by its ``uid``.
"""

from __future__ import annotations

import fcntl
import glob
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson

log = logging.getLogger("relaygate.requestlog")

SPOOL_GLOB = "relaygate-spool-*.jsonl"
DEAD_LETTERS = "relaygate-deadletter.jsonl"


def _line(obj: Any) -> bytes:
    """One JSON line. Text orjson cannot encode (a lone surrogate) is escaped rather than fail the batch."""
    try:
        return orjson.dumps(obj, default=repr) + b"\n"
    except orjson.JSONEncodeError:
        return orjson.dumps(_escaped(obj), default=repr) + b"\n"


def _escaped(obj: Any) -> Any:
    if isinstance(obj, str):
        return obj.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(obj, dict):
        return {_escaped(k): _escaped(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_escaped(v) for v in obj]
    return obj


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class Spool:
    """This process's spool file (held under an exclusive lock) and the orphans of dead processes."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.path = self._new_path()
        self._fd: int | None = None
        self._torn = False  # an append failed part-way: the next one starts on a line of its own
        self.torn_lines = 0  # unreadable lines skipped by replays (a crash mid-append)
        self.lock = threading.Lock()  # appends come from the writer thread and, on overflow, the loop
        self._look_at = 0.0  # when ``pending(every)`` next looks for other processes' files

    def _new_path(self) -> str:
        return os.path.join(self.directory, f"relaygate-spool-{os.getpid()}-{os.urandom(6).hex()}.jsonl")

    def append(self, rows: list[dict[str, Any]]) -> None:
        """Append rows; raises OSError (disk full…) with the file still readable up to the last whole line."""
        data = b"".join(map(_line, rows))
        with self.lock:
            if self._fd is None:
                os.makedirs(self.directory, exist_ok=True)
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
                fcntl.flock(self._fd, fcntl.LOCK_EX)
            if self._torn:
                data = b"\n" + data
            self._torn = True
            _write_all(self._fd, data)
            self._torn = False

    def pending(self, every: float = 0.0) -> bool:
        """Whether there are rows to replay: this process's file, or another's (a dead process's), looked for
        at most every ``every`` seconds (a glob of the directory: ~170k instructions in one of 50 files)."""
        if self._fd is not None:
            return True
        if every:
            now = time.monotonic()
            if now < self._look_at:
                return False
            self._look_at = now + every
        return bool(self._others())

    def _others(self) -> list[str]:
        return glob.glob(os.path.join(self.directory, SPOOL_GLOB))

    def replay(self, write: Callable[[list[Any]], None], batch: int) -> int:
        """Hand every spooled row to ``write`` in lists of ``batch``; a file is deleted once ``write``
        returned for all its rows. ``write`` raises to stop: the file, and those after it, wait for the next
        replay. Returns how many rows were handed over."""
        claimed: list[tuple[str, int]] = []
        with self.lock:  # hand our own file over to the replay; new rows start a new file
            if self._fd is not None:
                claimed.append((self.path, self._fd))
                self._fd = None
                self._torn = False
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
                rows: list[Any] = []
                for row in self._rows(fd, path):
                    rows.append(row)
                    if len(rows) == batch:
                        write(rows)
                        count += len(rows)
                        rows = []
                if rows:
                    write(rows)
                    count += len(rows)
                os.unlink(path)
                os.close(fd)
                claimed.pop(0)
        finally:
            for _, fd in claimed:  # not replayed: the lock drops and the file waits for the next try
                os.close(fd)
        return count

    def _rows(self, fd: int, path: str) -> Iterator[Any]:
        """The file's rows, read a line at a time; unreadable lines are skipped and counted."""
        os.lseek(fd, 0, os.SEEK_SET)
        with os.fdopen(os.dup(fd), "rb") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    yield orjson.loads(line)
                except orjson.JSONDecodeError:  # a torn line: a crash (or a full disk) mid-append
                    self.torn_lines += 1
                    log.warning("request log: skipping an unreadable line of %s (%d bytes; a torn write)",
                                os.path.basename(path), len(line))

    def close(self) -> None:
        with self.lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


class DeadLetters:
    """Rows the database refused even once fitted, kept whole with the reason (JSON lines, appended)."""

    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, DEAD_LETTERS)
        self.lock = threading.Lock()

    def add(self, row: dict[str, Any], reason: str) -> None:
        data = _line({"at": time.time(), "reason": reason, "row": row})
        with self.lock:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                _write_all(fd, data)
            finally:
                os.close(fd)
