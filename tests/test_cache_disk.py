"""The response cache's level on disk (SQLite): answers across a restart, the byte bound (least recently used
go first), TTLs that outlive the process, a disk that cannot be written bypassed and counted."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from relaygate.cache.disk import DiskCache
from relaygate.cache.entry import CHAT, Entry
from relaygate.core.call import Usage
from relaygate.testing.base import BackgroundServer
from relaygate.testing.gateway import GatewayThread

from .test_cache import cached_model, chat, streamed_text, upstream_calls


def entry(body: bytes, model: str = "m", created: float | None = None) -> Entry:
    return Entry(CHAT, body, "application/json", time.time() if created is None else created, model,
                 Usage(3, 4), 1234)


def wait_for(cond: Callable[[], bool], seconds: float = 5) -> None:
    deadline = time.monotonic() + seconds
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_answers_on_disk_are_served_after_a_restart(openai_emulator: BackgroundServer, tmp_path: Path,
                                                    start_gateway: Callable[..., GatewayThread]) -> None:
    cfg = {"models": [cached_model("m", openai_emulator)],
           "cache": {"disk": {"path": str(tmp_path / "cache.db"), "ttl": 600}}}
    one = start_gateway(cfg)
    first = chat(one)
    assert first.headers["x-relaygate-cache"] == "miss"
    disk = one.gateway.cache.disk
    wait_for(lambda: disk.entries == 1)  # written after the answer, in the background
    one.stop()

    two = start_gateway(cfg)  # a new process's gateway: an empty memory level, the same file
    streamed = chat(two, stream=True)
    assert streamed.headers["x-relaygate-cache"] == "hit" and int(streamed.headers["age"]) >= 0
    assert streamed_text(streamed.content) == first.json()["choices"][0]["message"]["content"]
    assert two.gateway.cache.stats.disk_hits == 1
    assert chat(two).json() == first.json() and two.gateway.cache.stats.memory_hits == 1  # copied to memory
    assert upstream_calls(openai_emulator) == 1
    assert two.run(two.gateway.cache.purge(model="m")) == {"memory": 1, "disk": 1}
    assert chat(two).headers["x-relaygate-cache"] == "miss"


def test_the_disk_level_keeps_within_its_bytes_least_recently_used_going_first(tmp_path: Path) -> None:
    path = str(tmp_path / "bounded.db")
    body = b"x" * 1000

    async def fill() -> tuple[int, int, int, list[bool]]:
        disk = DiskCache(path, max_bytes=20_000, ttl=600, timeout=5)
        await disk.put("k0", entry(body))
        for i in range(1, 100):
            await disk.put(f"k{i}", entry(body))
            if i % 5 == 0:
                assert await disk.get("m", "k0") is not None  # used again: stays
        present = [await disk.get("m", k) is not None for k in ("k0", "k1", "k50", "k99")]
        await disk.close()
        return disk.bytes, disk.entries, disk.evictions, present

    held, entries, evictions, present = asyncio.run(fill())
    assert 0 < held <= 20_000 and evictions >= 80
    assert present == [True, False, False, True]
    with sqlite3.connect(path) as db:  # the counts are the file's
        assert db.execute("SELECT count(*), sum(size) FROM cache_entries").fetchone() == (entries, held)

    async def reopen(max_bytes: int) -> tuple[int, int]:
        disk = DiskCache(path, max_bytes=max_bytes, ttl=600, timeout=5)
        await disk.get("m", "k99")  # opens the file
        await disk.close()
        return disk.bytes, disk.entries

    assert asyncio.run(reopen(20_000)) == (held, entries)
    smaller, fewer = asyncio.run(reopen(5_000))  # a smaller bound than the file was filled with
    assert smaller <= 5_000 and 0 < fewer < entries


def test_processes_sharing_the_file_keep_within_the_bound_together(tmp_path: Path) -> None:
    """``serve --workers``: each process has its own connection to the one file; the bound is the file's."""
    path = str(tmp_path / "shared.db")

    async def fill() -> tuple[int, int]:
        one, two = (DiskCache(path, max_bytes=20_000, ttl=600, timeout=5) for _ in range(2))
        for i in range(60):
            await (one if i % 2 else two).put(f"k{i}", entry(b"y" * 1000))
        await one.get("m", "k0")  # the totals as the file has them now
        await one.close()
        await two.close()
        return one.bytes, one.entries

    held, entries = asyncio.run(fill())
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*), sum(size) FROM cache_entries").fetchone() == (entries, held)
    assert 15_000 < held <= 20_000


def test_disk_entries_expire_on_time_across_a_restart(tmp_path: Path) -> None:
    path = str(tmp_path / "ttl.db")

    async def put() -> None:
        disk = DiskCache(path, max_bytes=1 << 20, ttl=600, timeout=5)
        await disk.put("short", entry(b"{}"), ttl=0.2)
        await disk.put("long", entry(b"{}"))
        await disk.put("made-long-ago", entry(b"{}", created=time.time() - 700))  # older than the level's ttl
        await disk.close()

    async def get() -> list[Any]:
        disk = DiskCache(path, max_bytes=1 << 20, ttl=600, timeout=5)
        got = [await disk.get("m", k) for k in ("short", "long", "made-long-ago")]
        await disk.close()
        return got

    asyncio.run(put())
    time.sleep(0.25)
    short, long, old = asyncio.run(get())
    assert short is None and old is None
    assert long is not None and long.body == b"{}" and long.usage == Usage(3, 4) and long.cost_nano == 1234


@pytest.mark.parametrize("broken", ["not-a-folder", "read-only"])
def test_a_disk_level_that_cannot_be_used_is_bypassed_and_counted(
        broken: str, openai_emulator: BackgroundServer, tmp_path: Path,
        start_gateway: Callable[..., GatewayThread]) -> None:
    if broken == "not-a-folder":  # the cache's folder is a file: the file cannot be made
        (tmp_path / "file").write_text("")
        path = tmp_path / "file" / "cache.db"
    else:  # a file SQLite cannot write (what a full or read-only disk does to it)
        path = tmp_path / "ro.db"
        path.write_bytes(b"this is not an SQLite database" * 100)
    gw = start_gateway({"models": [cached_model("m", openai_emulator)],
                        "cache": {"disk": {"path": str(path)}, "memory": {"max_bytes": 0}}})
    assert [chat(gw).status_code for _ in range(3)] == [200, 200, 200]
    stats = gw.gateway.cache.stats
    wait_for(lambda: stats.errors >= 3)  # the reads failed (and the writes, in the background)
    assert stats.hits == 0 and upstream_calls(openai_emulator) == 3
