"""Objects the gateway keeps for the Responses, Conversations and Assistants APIs, each scoped to its owner.

One table (``stored_objects``) holds them all: the object as the API returns it (``data``), what the gateway
keeps beside it (``extra``: a response's context, a run's working state), its owner, the object it belongs to
(``parent``) and a creation sequence that lists page on. Every read and delete names the owner, so another
key's object is simply not found. The work runs in the database's threads, never on the event loop; a write
that must not hold up a stream is queued (``save_later``) and a read of that object waits for it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import Engine, and_, bindparam, delete, select, update
from sqlalchemy.exc import IntegrityError

from relaygate.store import tables

if TYPE_CHECKING:
    from relaygate.auth.keys import Principal
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


def _row(r: Any) -> Stored:
    return Stored(id=r.id, kind=r.kind, owner=r.owner, parent=r.parent, seq=r.seq, created_at=r.created_at,
                  data=orjson.loads(r.data), extra=orjson.loads(r.extra) if r.extra is not None else None)


_T = tables.stored_objects
# built once, run with parameters: building a statement per write (its clauses, its cache key) cost SQLAlchemy
# ~5x the database's own work, in a thread that holds the GIL while it does (bench/instructions.py: a stored
# Responses stream spent 2.0M instructions in the database thread, 0.5M with these)
_UPDATE = (update(_T).where(_T.c.id == bindparam("oid"), _T.c.owner == bindparam("who"), _T.c.kind == bindparam("k"))
           .values(data=bindparam("d"), extra=bindparam("x")))
_INSERT = _T.insert()
_SELECT = select(_T).where(_T.c.id == bindparam("oid"), _T.c.kind == bindparam("k"), _T.c.owner == bindparam("who"))


def _save(engine: Engine, objs: list[Stored]) -> None:
    with engine.begin() as conn:
        for o in objs:
            data = orjson.dumps(o.data).decode()
            extra = orjson.dumps(o.extra).decode() if o.extra is not None else None
            # scoped by owner and kind: an id taken by another owner's object fails the insert, never updates it
            done = conn.execute(_UPDATE, {"oid": o.id, "who": o.owner, "k": o.kind, "d": data, "x": extra})
            if done.rowcount == 0:
                conn.execute(_INSERT, {"id": o.id, "kind": o.kind, "owner": o.owner, "parent": o.parent,
                                       "seq": o.seq, "created_at": o.created_at, "data": data, "extra": extra})


def _claim(engine: Engine, o: Stored) -> bool:
    try:
        with engine.begin() as conn:
            conn.execute(_INSERT, {"id": o.id, "kind": o.kind, "owner": o.owner, "parent": o.parent, "seq": o.seq,
                                   "created_at": o.created_at, "data": orjson.dumps(o.data).decode(),
                                   "extra": orjson.dumps(o.extra).decode() if o.extra is not None else None})
        return True
    except IntegrityError:  # the id is taken: someone else came first
        return False


def _get(engine: Engine, kind: str, oid: str, owner: str) -> Stored | None:
    with engine.connect() as conn:
        r = conn.execute(_SELECT, {"oid": oid, "k": kind, "who": owner}).first()
    return _row(r) if r is not None else None


def _delete(engine: Engine, kind: str, oid: str, owner: str | None) -> bool:
    """Delete an object and what belongs to it (two levels: a thread's runs and their steps); ``owner``
    None: whoever owns it (the admin API)."""
    t = tables.stored_objects
    with engine.begin() as conn:
        found = conn.execute(select(t.c.owner).where(t.c.id == oid, t.c.kind == kind,
                                                     *([t.c.owner == owner] if owner is not None else []))).first()
        if found is None:
            return False
        who = found.owner
        conn.execute(delete(t).where(t.c.id == oid, t.c.owner == who))
        children = select(t.c.id).where(t.c.parent == oid, t.c.owner == who).scalar_subquery()
        conn.execute(delete(t).where(t.c.parent.in_(children), t.c.owner == who))
        conn.execute(delete(t).where(t.c.parent == oid, t.c.owner == who))
    return True


def _page(engine: Engine, kind: str, owner: str | None, parent: str | None, limit: int, order: str,
          after: str | None, before: str | None) -> tuple[list[Stored], bool]:
    """Up to ``limit`` objects in creation order (``asc``/``desc``), after/before the object named."""
    t = tables.stored_objects
    conds: list[Any] = [t.c.kind == kind]
    if owner is not None:
        conds.append(t.c.owner == owner)
    if parent is not None:
        conds.append(t.c.parent == parent)
    desc = order == "desc"
    with engine.connect() as conn:
        for cursor, later in ((after, not desc), (before, desc)):
            if cursor is None:
                continue
            seq = conn.execute(select(t.c.seq).where(t.c.id == cursor, *conds)).scalar()
            if seq is None:
                return [], False
            conds.append(t.c.seq > seq if later else t.c.seq < seq)
        q = select(t).where(and_(*conds)).order_by(t.c.seq.desc() if desc else t.c.seq.asc())
        if before is not None and after is None:  # the page just before the cursor, in the order asked
            q = select(t).where(and_(*conds)).order_by(t.c.seq.asc() if desc else t.c.seq.desc())
            rows = [_row(r) for r in conn.execute(q.limit(limit + 1))]
            more = len(rows) > limit
            return list(reversed(rows[:limit])), more
        rows = [_row(r) for r in conn.execute(q.limit(limit + 1))]
    return rows[:limit], len(rows) > limit


def _all(engine: Engine, kind: str, owner: str, parent: str, cap: int) -> list[Stored]:
    t = tables.stored_objects
    with engine.connect() as conn:
        q = select(t).where(t.c.parent == parent, t.c.kind == kind, t.c.owner == owner).order_by(t.c.seq.asc())
        return [_row(r) for r in conn.execute(q.limit(cap))]


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
        await self.db.run(_save, self.db.engine, list(objs))

    async def claim(self, obj: Stored) -> bool:
        """Insert ``obj`` only if no object has its id: True for the one caller (of any instance) that made
        it, False when it was there already. For what must happen once, like charging a run."""
        await self._settled(obj.id)
        return await self.db.run(_claim, self.db.engine, obj)

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
            await self.db.run(_save, self.db.engine, [obj])
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
        return await self.db.run(_get, self.db.engine, kind, oid, owner)

    async def delete(self, kind: str, oid: str, owner: str | None) -> bool:
        await self._settled(oid)
        return await self.db.run(_delete, self.db.engine, kind, oid, owner)

    async def page(self, kind: str, owner: str | None, parent: str | None = None, limit: int = 20,
                   order: str = "desc", after: str | None = None,
                   before: str | None = None) -> tuple[list[Stored], bool]:
        if parent is not None:
            await self._settled(parent)
        return await self.db.run(_page, self.db.engine, kind, owner, parent, min(limit, MAX_PAGE), order,
                                 after, before)

    async def children(self, kind: str, owner: str, parent: str, cap: int = 10_000) -> list[Stored]:
        """The objects of ``kind`` that belong to ``parent``, oldest first (at most ``cap``)."""
        await self._settled(parent)
        return await self.db.run(_all, self.db.engine, kind, owner, parent, cap)

    async def close(self) -> None:
        """Finish the queued writes."""
        pending = [f for f, _ in self._pending.values()]
        if pending:
            await asyncio.wait(pending)
