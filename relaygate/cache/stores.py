"""The response cache's two levels: an in-process LRU bounded in bytes, and Redis (shared by instances).

Each level has its own TTL. A Redis that is down or slow is never waited on past the client's one timeout
policy (state/resp.py): a read or write that fails is counted and the call goes on without the cache.
"""

from __future__ import annotations

import sqlite3
import time
from collections import OrderedDict

from relaygate.cache.entry import Entry, compressed, decode, encode
from relaygate.state.resp import RedisUnavailable, RespClient, RespError


class MemoryCache:
    """Least recently used entries within ``max_bytes`` (bodies plus a fixed allowance each), each for ``ttl``
    seconds at most; ``compress`` keeps the bodies zlib-compressed."""

    def __init__(self, max_bytes: int, ttl: float, compress: bool = False) -> None:
        self.max_bytes = max_bytes
        self.ttl = ttl
        self.compress = compress
        self.bytes = 0
        self.evictions = 0
        self._items: OrderedDict[str, tuple[Entry, float, int]] = OrderedDict()  # entry, expiry (monotonic), size

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str) -> Entry | None:
        held = self._items.get(key)
        if held is None:
            return None
        if held[1] <= time.monotonic():
            self._drop(key)
            return None
        self._items.move_to_end(key)
        return held[0]

    def put(self, key: str, entry: Entry, ttl: float | None = None) -> None:
        if self.compress:
            entry = compressed(entry)
        size = len(entry.body) + len(entry.model) + 256  # Entry.size, inline: a property call per store
        if size > self.max_bytes:
            return
        items = self._items
        old = items.get(key)  # (not ``pop`` and insert again: an OrderedDict's node made anew costs more)
        items[key] = (entry, time.monotonic() + (self.ttl if ttl is None or ttl > self.ttl else ttl), size)
        if old is None:
            held = self.bytes + size
        else:
            held = self.bytes + size - old[2]
            items.move_to_end(key)
        while held > self.max_bytes:
            held -= items.pop(next(iter(items)))[2]
            self.evictions += 1
        self.bytes = held

    def _drop(self, key: str) -> None:
        self.bytes -= self._items.pop(key)[2]

    def purge(self, model: str | None = None, key: str | None = None) -> int:
        """Drop every entry, or those of one model, or the one of a cache key; how many were dropped."""
        if key is not None:
            if key in self._items and (model is None or self._items[key][0].model == model):
                self._drop(key)
                return 1
            return 0
        doomed = [k for k, h in self._items.items() if model is None or h[0].model == model]
        for k in doomed:
            self._drop(k)
        return len(doomed)


def _glob_escaped(text: str) -> str:
    """``text`` matched literally by a Redis glob pattern."""
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)


class RedisCache:
    """Entries under ``prefix + model + ":" + key`` (SET … PX ttl), so that a model's entries can be found
    for a purge; the bytes are ``entry.encode``'s."""

    def __init__(self, client: RespClient, prefix: str, ttl: float) -> None:
        self.client = client
        self.prefix = prefix
        self.ttl_ms = max(1, int(ttl * 1000))

    def _name(self, model: str, key: str) -> bytes:
        return f"{self.prefix}{model}:{key}".encode()

    async def get(self, model: str, key: str) -> Entry | None:
        """The entry, or None; raises ``RedisUnavailable`` / ``RespError`` when Redis cannot answer."""
        data = await self.client.call("GET", self._name(model, key))
        return decode(data) if isinstance(data, bytes) else None

    async def put(self, key: str, entry: Entry, ttl: float | None = None) -> None:
        ms = self.ttl_ms if ttl is None else max(1, min(self.ttl_ms, int(ttl * 1000)))
        await self.client.call("SET", self._name(entry.model, key), encode(entry), "PX", ms)

    async def purge(self, model: str | None = None, key: str | None = None) -> int:
        """Delete every entry, or one model's, or one cache key's (in any model); how many were deleted."""
        pattern = (_glob_escaped(self.prefix) + ("*" if model is None else _glob_escaped(model) + ":")
                   + ("*" if key is None else _glob_escaped(key)))
        deleted = 0
        cursor = b"0"
        while True:
            reply = await self.client.call("SCAN", cursor, "MATCH", pattern, "COUNT", 1000)
            cursor, names = reply[0], reply[1]
            if names:
                deleted += int(await self.client.call("DEL", *names))
            if cursor in (b"0", "0"):
                return deleted


# what a level that cannot answer raises (Redis down or slow, a disk full, read-only or slow): counted, and the
# call goes on without that level
CACHE_ERRORS = (RedisUnavailable, RespError, OSError, sqlite3.Error)
