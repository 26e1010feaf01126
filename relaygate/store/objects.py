"""Objects the gateway keeps for the Responses, Conversations and Assistants APIs, each scoped to its owner.

One table (``stored_objects``) holds them all: the object as the API returns it (``data``), what the gateway
keeps beside it (``extra``: a response's context, a run's working state), its owner, the object it belongs to
(``parent``) and a creation sequence that lists page on. Every read and delete names the owner, so another
key's object is simply not found. The work runs in the database's threads, never on the event loop; a write
that must not hold up a stream is queued (``save_later``) and a read of that object waits for it.

The statements are in ``objects_sql.py``, imported with SQLAlchemy on the first use of the store: a gateway
that serves no stored objects does not load them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from relaygate.auth.principal import Principal
    from relaygate.store.db import Database

log = logging.getLogger("relaygate.store")

MAX_PAGE = 100


def owner_of(key: Principal | None) -> str:
    """Who owns what a caller creates: its team, else its user, else the key itself; "" on an open gateway."""
    if key is None:
        return ""
    if key.team_id:
        return "team:" + key.team_id
    if key.user_id:
        return "user:" + key.user_id
    return "key:" + key.id


def new_id(prefix: str) -> str:
    """A new object id in OpenAI's shape (``resp_`` + hex): random, so ids say nothing about each other."""
    return prefix + os.urandom(24).hex()


@dataclass(slots=True)
class Stored:
    """One stored object: the API's view (``data``) and the gateway's own state beside it (``extra``)."""

    id: str
    kind: str
    owner: str
    data: dict[str, Any]
    parent: str | None = None
    extra: dict[str, Any] | None = None
    seq: int = 0
    created_at: float = 0.0


class ObjectStore:
    """Stored objects over the gateway's database, off the event loop (see the module docstring)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._last_seq = 0
        # writes queued by save_later, by object id, with the object's parent (listing a parent waits for them)
        self._pending: dict[str, tuple[asyncio.Future[None], str | None]] = {}

    def new(self, kind: str, prefix: str, owner: str, data: dict[str, Any], parent: str | None = None,
            extra: dict[str, Any] | None = None) -> Stored:
        """A new object (not yet saved), with its id, sequence and ``created_at`` (also put in ``data``)."""
        now = time.time()
        seq = self._last_seq = max(time.time_ns(), self._last_seq + 1)
        oid = new_id(prefix)
        return Stored(id=oid, kind=kind, owner=owner, parent=parent, seq=seq, created_at=now,
                      data={"id": oid, **data, "created_at": int(now)} if "created_at" not in data
                      else {"id": oid, **data}, extra=extra)

    async def save(self, *objs: Stored) -> None:
        for o in objs:
            await self._settled(o.id)
        from relaygate.store.objects_sql import save

        await self.db.on_engine(save, list(objs))

    async def claim(self, obj: Stored) -> bool:
        """Insert ``obj`` only if no object has its id: True for the one caller (of any instance) that made
        it, False when it was there already. For what must happen once, like charging a run."""
        await self._settled(obj.id)
        from relaygate.store.objects_sql import claim

        return await self.db.on_engine(claim, obj)

    def save_later(self, obj: Stored) -> asyncio.Future[None]:
        """Queue the write (in order with earlier writes of the object); reads of it wait for it. The future
        is done once it was written (or failed, which is logged)."""
        prev = self._pending.get(obj.id)
        fut = asyncio.ensure_future(self._write_after(prev[0] if prev else None, obj))
        self._pending[obj.id] = (fut, obj.parent)

        def done(f: asyncio.Future[None], oid: str = obj.id) -> None:
            entry = self._pending.get(oid)
            if entry is not None and entry[0] is f:
                del self._pending[oid]

        fut.add_done_callback(done)
        return fut

    async def _write_after(self, prev: asyncio.Future[None] | None, obj: Stored) -> None:
        if prev is not None:
            await asyncio.wait([prev])
        try:
            from relaygate.store.objects_sql import save

            await self.db.on_engine(save, [obj])
        except Exception:  # the object is lost, the answer was not: say so loudly
            log.exception("could not store %s %s", obj.kind, obj.id)

    async def _settled(self, oid: str) -> None:
        """Wait for the queued writes of the object ``oid`` and of the objects that belong to it."""
        if self._pending:
            futs = [f for i, (f, parent) in self._pending.items() if oid in (i, parent)]
            if futs:
                await asyncio.wait(futs)

    async def get(self, kind: str, oid: str, owner: str) -> Stored | None:
        await self._settled(oid)
        from relaygate.store.objects_sql import get

        return await self.db.on_engine(get, kind, oid, owner)

    async def delete(self, kind: str, oid: str, owner: str | None) -> bool:
        await self._settled(oid)
        from relaygate.store.objects_sql import delete

        return await self.db.on_engine(delete, kind, oid, owner)

    async def page(self, kind: str, owner: str | None, parent: str | None = None, limit: int = 20,
                   order: str = "desc", after: str | None = None,
                   before: str | None = None) -> tuple[list[Stored], bool]:
        if parent is not None:
            await self._settled(parent)
        from relaygate.store.objects_sql import page

        return await self.db.on_engine(page, kind, owner, parent, min(limit, MAX_PAGE), order, after, before)

    async def children(self, kind: str, owner: str, parent: str, cap: int = 10_000) -> list[Stored]:
        """The objects of ``kind`` that belong to ``parent``, oldest first (at most ``cap``)."""
        await self._settled(parent)
        from relaygate.store.objects_sql import children

        return await self.db.on_engine(children, kind, owner, parent, cap)

    async def close(self) -> None:
        """Finish the queued writes."""
        pending = [f for f, _ in self._pending.values()]
        if pending:
            await asyncio.wait(pending)
