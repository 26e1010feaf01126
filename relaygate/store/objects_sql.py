"""The stored objects' statements (SQLAlchemy Core), run by ``ObjectStore`` (``objects.py``) in the database's
threads. Imported on the store's first use: with them, SQLAlchemy.
"""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import Engine, and_, bindparam, select, update
from sqlalchemy import delete as delete_from
from sqlalchemy.exc import IntegrityError

from relaygate.store import tables
from relaygate.store.objects import Stored


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


def save(engine: Engine, objs: list[Stored]) -> None:
    with engine.begin() as conn:
        for o in objs:
            data = orjson.dumps(o.data).decode()
            extra = orjson.dumps(o.extra).decode() if o.extra is not None else None
            # scoped by owner and kind: an id taken by another owner's object fails the insert, never updates it
            done = conn.execute(_UPDATE, {"oid": o.id, "who": o.owner, "k": o.kind, "d": data, "x": extra})
            if done.rowcount == 0:
                conn.execute(_INSERT, {"id": o.id, "kind": o.kind, "owner": o.owner, "parent": o.parent,
                                       "seq": o.seq, "created_at": o.created_at, "data": data, "extra": extra})


def claim(engine: Engine, o: Stored) -> bool:
    try:
        with engine.begin() as conn:
            conn.execute(_INSERT, {"id": o.id, "kind": o.kind, "owner": o.owner, "parent": o.parent, "seq": o.seq,
                                   "created_at": o.created_at, "data": orjson.dumps(o.data).decode(),
                                   "extra": orjson.dumps(o.extra).decode() if o.extra is not None else None})
        return True
    except IntegrityError:  # the id is taken: someone else came first
        return False


def get(engine: Engine, kind: str, oid: str, owner: str) -> Stored | None:
    with engine.connect() as conn:
        r = conn.execute(_SELECT, {"oid": oid, "k": kind, "who": owner}).first()
    return _row(r) if r is not None else None


def delete(engine: Engine, kind: str, oid: str, owner: str | None) -> bool:
    """Delete an object and what belongs to it (two levels: a thread's runs and their steps); ``owner``
    None: whoever owns it (the admin API)."""
    t = tables.stored_objects
    with engine.begin() as conn:
        found = conn.execute(select(t.c.owner).where(t.c.id == oid, t.c.kind == kind,
                                                     *([t.c.owner == owner] if owner is not None else []))).first()
        if found is None:
            return False
        who = found.owner
        conn.execute(delete_from(t).where(t.c.id == oid, t.c.owner == who))
        children = select(t.c.id).where(t.c.parent == oid, t.c.owner == who).scalar_subquery()
        conn.execute(delete_from(t).where(t.c.parent.in_(children), t.c.owner == who))
        conn.execute(delete_from(t).where(t.c.parent == oid, t.c.owner == who))
    return True


def page(engine: Engine, kind: str, owner: str | None, parent: str | None, limit: int, order: str,
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


def children(engine: Engine, kind: str, owner: str, parent: str, cap: int) -> list[Stored]:
    t = tables.stored_objects
    with engine.connect() as conn:
        q = select(t).where(t.c.parent == parent, t.c.kind == kind, t.c.owner == owner).order_by(t.c.seq.asc())
        return [_row(r) for r in conn.execute(q.limit(cap))]
