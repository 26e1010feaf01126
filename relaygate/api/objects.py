"""What the APIs over stored objects (responses, conversations, assistants, threads) share: the caller's
owner, ids in paths, list pages in OpenAI's shape."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from relaygate.api.query import Query
from relaygate.auth.authenticator import caller
from relaygate.core.errors import BadRequest, NotFound
from relaygate.store.objects import owner_of

if TYPE_CHECKING:
    from relaygate.gateway import Gateway
    from relaygate.server.http import Request
    from relaygate.store.objects import Stored

MAX_ID = 64  # stored ids are at most this long (store/tables.py)
MAX_METADATA = 16


async def owner(gw: Gateway, req: Request) -> str:
    """The owner of what the caller may see and create (checked before the body is read)."""
    return owner_of(await caller(gw.auth, req.headers))


def path_ids(rest: str, what: str) -> list[str]:
    """The segments of a path below a collection; an id that cannot exist is a 404 for ``what``."""
    parts = rest.split("/")
    oid = parts[0]
    if not oid or len(oid) > MAX_ID or not oid.isprintable():
        raise NotFound(f"No {what} found with id '{oid[:MAX_ID]}'.")
    return parts


def missing(what: str, oid: str, param: str | None = None) -> NotFound:
    return NotFound(f"No {what} found with id '{oid}'.", param=param)


async def delete_owned(gw: Gateway, kind: str, oid: str, who: str, shown: str | None = None) -> dict[str, Any]:
    """Delete ``who``'s stored ``kind`` ``oid`` (a 404 when there is none); OpenAI's answer, whose ``object`` is
    ``shown`` (default ``<kind>.deleted``)."""
    if not await gw.objects.delete(kind, oid, who):
        raise missing(kind, oid)
    return {"id": oid, "object": shown or f"{kind}.deleted", "deleted": True}


def page_query(req: Request, default_order: str = "desc") -> tuple[int, str, str | None, str | None]:
    """``limit`` (1-100, default 20), ``order``, ``after``, ``before`` of a list request."""
    q = Query(req.query)
    limit = q.integer("limit", 1, 100, 20) or 20
    return limit, q.choice("order", ("asc", "desc"), default_order), q.text("after", MAX_ID), q.text("before", MAX_ID)


def list_page(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": has_more}


def page_of(objs: list[Stored], has_more: bool) -> dict[str, Any]:
    return list_page([o.data for o in objs], has_more)


def slice_page(items: list[dict[str, Any]], limit: int, order: str, after: str | None,
               before: str | None) -> dict[str, Any]:
    """A page of a list held whole (a response's input items)."""
    seq = items if order == "asc" else list(reversed(items))
    ids = [it.get("id") for it in seq]
    start, end = 0, len(seq)
    if after is not None:
        start = ids.index(after) + 1 if after in ids else end
    if before is not None:
        end = ids.index(before) if before in ids else 0
        start = max(start, end - limit) if after is None else start
    page = seq[start:min(end, start + limit)]
    return list_page(page, start + len(page) < end)


def metadata(body: dict[str, Any]) -> dict[str, str] | None:
    """``metadata``: at most 16 string pairs (keys up to 64 characters, values up to 512), or None."""
    value = body.get("metadata")
    if value is None:
        return None
    if not isinstance(value, dict) or len(value) > MAX_METADATA or not all(
            isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 512 for k, v in value.items()):
        raise BadRequest("'metadata' must be an object of at most 16 string values (keys up to 64 characters, "
                         "values up to 512)", param="metadata", code="invalid_value")
    return value


async def set_metadata(gw: Gateway, obj: Stored, body: dict[str, Any]) -> dict[str, Any]:
    """A modify request that may change only ``metadata``: applied and stored; the object's data."""
    meta = metadata(body)
    if meta is not None:
        obj.data["metadata"] = meta
        await gw.objects.save(obj)
    return obj.data
