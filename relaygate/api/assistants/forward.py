"""The Assistants API forwarded to an upstream that still serves it (``assistants.passthrough``: Azure OpenAI,
a self-hosted server, another relaygate), instead of hosted by the gateway.

Every request goes through the pipeline as OpenAI's other forwarded routes do (``api/passthrough.py``: the
upstream URL from the config alone, keys, limits, the request log, the upstream's errors scrubbed), the
answer relayed as it comes (a streamed run event by event). What the upstream creates belongs to the caller's
owner as hosted objects do: the gateway records the id of each assistant, thread and vector store created
through it with its owner (``stored_objects``, kind ``forwarded``), so those ids keep going to that upstream
for their owner, and another key gets a 404 for them, for what is below them (a thread's messages, runs,
steps) and in a body that names them (``assistant_id``, ``vector_store_ids``); lists of assistants and vector
stores show the caller's own. Managing objects is free; a run spends tokens inside the upstream, which the
gateway cannot price before it goes: it is refused to a caller with a budget unless
``passthrough.allow_unpriced_with_budget``, and charged its whole usage by the first request that sees it
ended (its stream's last event, or a poll).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import orjson

from relaygate.api.common import object_body, respond_stream
from relaygate.api.objects import MAX_ID
from relaygate.api.passthrough import forward, upstream_target
from relaygate.api.passthrough_cost import Metered
from relaygate.api.query import Query
from relaygate.core.aiter import aclose
from relaygate.core.call import Usage
from relaygate.core.errors import GatewayError, NotFound
from relaygate.core.pricing import Meter
from relaygate.providers.base import ANSWER_ERRORS, unreadable
from relaygate.providers.streaming import EventCutter
from relaygate.server.http import Request, Response, StreamResponse
from relaygate.server.upload import ReadBody
from relaygate.store.objects import Stored, owner_of

if TYPE_CHECKING:
    from relaygate.auth.principal import Principal
    from relaygate.core.call import Call, Reply
    from relaygate.gateway import Gateway

KIND = "forwarded"  # the stored_objects kind of an upstream object's id and owner
# the collections whose objects the gateway records, and the ``object`` type of each (in a 404: "vector store")
OWNED = {"assistants": "assistant", "threads": "thread", "vector_stores": "vector_store"}
MAX_WHOLE = 4 * 1024 * 1024  # a created object's answer is read whole to record its id
MAX_LIST_PAGES = 10  # upstream pages one list request reads to fill a page with the caller's objects


def _runs(method: str, path: list[str]) -> bool:
    """Whether the request starts (or continues) a run, which spends tokens upstream."""
    if method != "POST" or path[0] != "threads":
        return False
    return path[1:] == ["runs"] or (len(path) == 3 and path[2] == "runs") \
        or (len(path) == 5 and path[2] == "runs" and path[4] == "submit_tool_outputs")


async def _owned(gw: Gateway, who: str, family: str, oid: Any, param: str | None = None) -> None:
    if not isinstance(oid, str) or not oid or len(oid) > MAX_ID \
            or await gw.objects.get(KIND, oid, who) is None:
        what = OWNED[family].replace("_", " ")
        raise NotFound(f"No {what} found with id '{str(oid)[:MAX_ID]}'.", param=param)


def _store_ids(resources: Any) -> list[Any]:
    """The vector store ids a ``tool_resources`` object names."""
    search = resources.get("file_search") if isinstance(resources, dict) else None
    ids = search.get("vector_store_ids") if isinstance(search, dict) else None
    return ids if isinstance(ids, list) else []


async def _body_refs(gw: Gateway, who: str, body: dict[str, Any]) -> None:
    """The objects a request body names must be the caller's too."""
    if "assistant_id" in body:
        await _owned(gw, who, "assistants", body["assistant_id"], "assistant_id")
    thread = body.get("thread")
    for resources in (body.get("tool_resources"), thread.get("tool_resources") if isinstance(thread, dict) else None):
        for vid in _store_ids(resources):
            await _owned(gw, who, "vector_stores", vid, "tool_resources")


def _record(gw: Gateway, who: str, obj: Any) -> Stored | None:
    """The record of an object the upstream created (None for anything else)."""
    if not isinstance(obj, dict) or not isinstance(obj.get("id"), str) or not 0 < len(obj["id"]) <= MAX_ID:
        return None
    if obj.get("object") not in OWNED.values():
        return None
    return Stored(id=obj["id"], kind=KIND, owner=who, data={"object": obj["object"]}, seq=time.time_ns(),
                  created_at=time.time())


async def forward_assistants(gw: Gateway, req: Request, model: str,
                             key: Principal | None) -> Response | StreamResponse:
    """``key``: the caller, as the route found it."""
    who = owner_of(key)
    family, target = upstream_target(req)
    path = target.partition("?")[0].strip("/").split("/")
    if len(path) > 1 and not (family == "threads" and path[1] == "runs"):  # /threads/runs creates a thread
        await _owned(gw, who, family, path[1])
    metered = Metered(Meter(priced=not _runs(req.method, path)))
    if req.method == "POST":
        limit = gw.config.server.max_body_bytes
        raw = await req.body(limit)
        if raw.strip():
            body = object_body(await req.json(limit))
            await _body_refs(gw, who, body)
            metered.body, metered.parsed = ReadBody(raw), body
    listing = req.method == "GET" and len(path) == 1 and family != "threads"
    if listing:
        return await _list(gw, req, key, model, family, target, metered, who)
    call, reply = await forward(gw, req, key, model, family, target, metered)
    sse = reply.stream is not None and reply.media_type.startswith("text/event-stream")
    if not metered.meter.priced and sse and reply.stream is not None:
        reply.stream = _run_usage(gw, who, reply.stream, reply, metered.meter)  # a streamed run: priced at its end
    elif req.method == "GET" and len(path) == 4 and path[2] == "runs" and reply.stream is not None and not sse:
        data = await _whole(call, reply)  # a polled run: priced when first seen ended
        if reply.status < 300:
            await _settle(gw, who, _json(data), reply, metered.meter)
        reply.body, reply.stream = data, None
    created = req.method == "POST" and (len(path) == 1 or path[1:] == ["runs"])
    if req.method == "DELETE" and len(path) == 2 and reply.status < 300:
        await gw.objects.delete(KIND, path[1], who)
    if created and reply.stream is not None:
        if reply.media_type.startswith("text/event-stream"):  # /threads/runs streamed: thread.created first
            reply.stream = _recorded_events(gw, who, reply.stream)
        else:
            data = await _whole(call, reply)
            obj = _json(data)
            if family == "threads" and path[1:] == ["runs"] and isinstance(obj, dict):  # the run's new thread
                obj = {"id": obj.get("thread_id"), "object": "thread"}
            record = _record(gw, who, obj)
            if record is not None and reply.status < 300:
                await gw.objects.save(record)
            reply.body, reply.stream = data, None
    return respond_stream(call, reply)


def _json(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None


async def _whole(call: Call, reply: Reply) -> bytes:
    """The answer's body, read whole (a created object: small)."""
    assert reply.stream is not None
    parts: list[bytes] = []
    size = 0
    stream = reply.stream
    try:
        async for chunk in stream:
            size += len(chunk)
            if size > MAX_WHOLE:
                raise unreadable(call.deployment.provider_type if call.deployment else "upstream",
                                 ValueError("answer too long"))
            parts.append(chunk)
    except GatewayError as e:
        reply.finish(e)
        raise
    finally:
        await aclose(stream)
    return b"".join(parts)


async def _recorded_events(gw: Gateway, who: str, stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """A streamed create-thread-and-run, its thread recorded before its ``thread.created`` event goes on (a
    client may use the thread as soon as it reads it)."""
    cutter = EventCutter()
    pending = True
    try:
        async for chunk in stream:
            if not pending:
                yield chunk
                continue
            events = cutter.feed(chunk)
            at = events.find(b"event: thread.created")
            if at >= 0:
                data = events[at:].split(b"\ndata: ", 1)[1].split(b"\n", 1)[0] if b"\ndata: " in events[at:] else b""
                try:
                    record = _record(gw, who, orjson.loads(data))
                except (orjson.JSONDecodeError, *ANSWER_ERRORS):
                    record = None
                if record is not None:
                    await gw.objects.save(record)
                pending = False
                rest = cutter.end()
                yield events + rest
            elif events:
                yield events
        if pending:
            rest = cutter.end()
            if rest:
                yield rest
    finally:
        await aclose(stream)


RUN_DONE = ("completed", "incomplete", "failed", "cancelled", "expired")  # a run's terminal statuses
RUN_ENDS = tuple(f"event: thread.run.{status}\n".encode() for status in RUN_DONE)  # the events that end a run


def _run_end(events: bytes) -> dict[str, Any] | None:
    """The run object of the event that ends a run, if ``events`` (whole events) hold one."""
    for frame in events.split(b"\n\n"):
        if frame.startswith(RUN_ENDS):
            data = frame.partition(b"\ndata: ")[2]
            try:
                run = orjson.loads(data.split(b"\n", 1)[0])
            except orjson.JSONDecodeError:
                return None
            return run if isinstance(run, dict) else None
    return None


async def _run_usage(gw: Gateway, who: str, stream: AsyncIterator[bytes], reply: Reply,
                     meter: Meter) -> AsyncIterator[bytes]:
    """A streamed run relayed as it comes, the event that ends it settled (``_settle``) before it goes on."""
    cutter = EventCutter()
    try:
        async for chunk in stream:
            events = cutter.feed(chunk)
            if events.find(b"event: thread.run.") >= 0:
                await _settle(gw, who, _run_end(events), reply, meter)
            if events:
                yield events
        events = cutter.end()
        if events:
            await _settle(gw, who, _run_end(events), reply, meter)
            yield events
    finally:
        await aclose(stream)


async def _settle(gw: Gateway, who: str, run: Any, reply: Reply, meter: Meter) -> None:
    """A run seen ended for the first time (streamed to its end, or polled): its whole usage onto ``reply``,
    priced at its model's price, by the one request that records the run (a ``forwarded`` record below its
    thread, inserted only if absent): no other request, earlier, later or concurrent, charges it again."""
    if not isinstance(run, dict) or run.get("status") not in RUN_DONE:
        return
    usage, model, rid = run.get("usage"), run.get("model"), run.get("id")
    if not isinstance(usage, dict) or not isinstance(model, str) or not isinstance(rid, str) \
            or not 0 < len(rid) <= MAX_ID:
        return
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if not (type(prompt) is int and type(completion) is int and prompt >= 0 and completion >= 0):
        return
    thread = run.get("thread_id")
    if not await gw.objects.claim(Stored(id=rid, kind=KIND, owner=who, data={"object": "thread.run"},
                                         parent=thread if isinstance(thread, str) and len(thread) <= MAX_ID else None,
                                         seq=time.time_ns(), created_at=time.time())):
        return  # charged already, by an earlier request or one running beside this one (in any instance)
    meter.per_token = gw.pricing.book.lookup(model)
    reply.usage = Usage(prompt_tokens=prompt, completion_tokens=completion)


async def _list(gw: Gateway, req: Request, key: Principal | None, model: str, family: str, target: str, metered: Metered,
                who: str) -> Response | StreamResponse:
    """A list of assistants or vector stores: the upstream's pages read (up to ``MAX_LIST_PAGES``) until the
    page holds ``limit`` of the caller's own objects, in the upstream's order."""
    q = Query(req.query)
    limit = q.integer("limit", 1, 100, 20) or 20
    params = {k: v for k in ("order", "after", "before") if (v := q.text(k, MAX_ID))}
    mine: list[dict[str, Any]] = []
    more = False
    call = reply = None
    base = target.partition("?")[0]
    for _ in range(MAX_LIST_PAGES):
        call, reply = await forward(gw, req, key, model, family, f"{base}?{urlencode({**params, 'limit': 100})}",
                                    metered)
        data = await _whole(call, reply)
        page = _json(data)
        if reply.status >= 300 or not isinstance(page, dict) or not isinstance(page.get("data"), list):
            reply.body, reply.stream = data, None
            return respond_stream(call, reply)
        items = [it for it in page["data"] if isinstance(it, dict) and isinstance(it.get("id"), str)]
        owned = [it for it in items if len(it["id"]) <= MAX_ID and await gw.objects.get(KIND, it["id"], who)]
        room = limit - len(mine)
        mine.extend(owned[:room])
        more = len(owned) > room or bool(page.get("has_more"))
        if len(mine) >= limit or not page.get("has_more") or not items or "before" in params:
            break
        reply.finish(None)  # this page's call is logged; the next page is another
        params["after"] = items[-1]["id"]
    assert call is not None and reply is not None
    reply.body = orjson.dumps({"object": "list", "data": mine, "first_id": mine[0]["id"] if mine else None,
                               "last_id": mine[-1]["id"] if mine else None, "has_more": more})
    reply.stream = None
    return respond_stream(call, reply)
