"""``/v1/conversations``: conversations and their items, kept in the gateway's database for the caller's
owner. A response created with ``conversation`` reads the items as its history and appends its input and
output to them."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from relaygate.api.common import object_body
from relaygate.api.objects import (
    delete_owned,
    list_page,
    metadata,
    missing,
    owner,
    page_of,
    page_query,
    path_ids,
)
from relaygate.api.responses.translate import input_items
from relaygate.core.errors import BadRequest, MethodNotAllowed, NotFound
from relaygate.server.http import Request, Response, json_response

if TYPE_CHECKING:
    from relaygate.gateway import Gateway
    from relaygate.store.objects import Stored

MAX_BODY = 4 * 1024 * 1024
MAX_ADDED = 20  # items per create or add, as OpenAI allows


def conversation_id(value: Any) -> str | None:
    """The ``conversation`` of a response request: an id, or an object with one."""
    if value is None:
        return None
    if isinstance(value, dict):
        value = value.get("id")
    if not isinstance(value, str) or not value:
        raise BadRequest("'conversation' must be a conversation id or {\"id\": …}", param="conversation",
                         code="invalid_type")
    return value


async def _conversation(gw: Gateway, who: str, cid: str, param: str | None = None) -> Stored:
    found = await gw.objects.get("conversation", cid, who) if len(cid) <= 64 else None
    if found is None:
        raise missing("conversation", cid[:64], param)
    return found


async def conversation_context(gw: Gateway, who: str, cid: str) -> list[dict[str, Any]]:
    """The items of a conversation, oldest first: the history a response in it continues."""
    await _conversation(gw, who, cid, "conversation")
    return [o.data for o in await gw.objects.children("item", who, cid)]


def _new_items(gw: Gateway, who: str, cid: str, items: list[dict[str, Any]]) -> list[Stored]:
    """Stored items of a conversation; each gets an id of its own (ids a client sent may repeat)."""
    out = []
    for it in items:
        obj = gw.objects.new("item", "item_", who, {}, parent=cid)
        obj.data = {**it, "id": obj.id}
        out.append(obj)
    return out


def keep_turn(gw: Gateway, who: str, cid: str, inputs: list[dict[str, Any]],
              output: list[dict[str, Any]]) -> list[asyncio.Future[None]]:
    """Append a response's input and output to its conversation (queued writes)."""
    return [gw.objects.save_later(obj) for obj in _new_items(gw, who, cid, [*inputs, *output])]


def _items(body: dict[str, Any]) -> list[dict[str, Any]]:
    value = body.get("items")
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_ADDED:
        raise BadRequest(f"'items' must be an array of at most {MAX_ADDED} items", param="items",
                         code="invalid_value")
    return input_items(value, "items")


async def create(gw: Gateway, req: Request) -> Response:
    who = await owner(gw, req)
    body = object_body(await req.json(MAX_BODY))
    meta = metadata(body) or {}
    items = _items(body)
    conv = gw.objects.new("conversation", "conv_", who, {"object": "conversation", "metadata": meta})
    await gw.objects.save(conv, *_new_items(gw, who, conv.id, items))
    return json_response(conv.data)


async def one(gw: Gateway, req: Request) -> Response:
    """``/v1/conversations/{id}`` (GET, POST to update, DELETE) and ``…/items[/{item_id}]``."""
    who = await owner(gw, req)  # before anything else: no key, no answer but 401
    parts = path_ids(req.params["rest"], "conversation")
    cid, method = parts[0], req.method
    if len(parts) == 1:
        if method == "DELETE":
            return json_response(await delete_owned(gw, "conversation", cid, who))
        conv = await _conversation(gw, who, cid)
        if method == "POST":
            meta = metadata(object_body(await req.json(MAX_BODY)))
            if meta is None:
                raise BadRequest("you must provide the 'metadata' parameter", param="metadata",
                                 code="missing_required_parameter")
            conv.data["metadata"] = meta
            await gw.objects.save(conv)
        return json_response(conv.data)
    if parts[1] != "items" or len(parts) > 3:
        raise NotFound(f"Unknown route {method} {req.path}", code="unknown_route")
    conv = await _conversation(gw, who, cid)
    if len(parts) == 2:
        if method == "GET":
            limit, order, after, before = page_query(req)
            return json_response(page_of(*await gw.objects.page("item", who, cid, limit, order, after, before)))
        if method == "POST":
            items = _items(object_body(await req.json(MAX_BODY)))
            if not items:
                raise BadRequest("you must provide at least one item", param="items", code="invalid_value")
            added = _new_items(gw, who, cid, items)
            await gw.objects.save(*added)
            return json_response(list_page([o.data for o in added], False))
        raise MethodNotAllowed(f"Method {method} is not allowed on {req.path}")
    iid = parts[2]
    item = await gw.objects.get("item", iid, who) if len(iid) <= 64 else None
    if item is None or item.parent != cid:
        raise missing("item", iid[:64])
    if method == "GET":
        return json_response(item.data)
    if method == "DELETE":
        await gw.objects.delete("item", iid, who)
        return json_response(conv.data)
    raise MethodNotAllowed(f"Method {method} is not allowed on {req.path}")


ROUTES = [
    ("POST", "/v1/conversations", create),
    *[(m, "/v1/conversations/{rest}", one) for m in ("GET", "POST", "DELETE")],
]
