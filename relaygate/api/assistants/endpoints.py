"""``/v1/assistants`` and ``/v1/threads``: OpenAI's Assistants API (v2), hosted by the gateway for any model.

OpenAI turned its Assistants API off on 26 August 2026; relaygate keeps serving it. Assistants, threads,
messages, runs and run steps live in the gateway's object store, scoped to the caller's owner (another key
gets a 404); runs execute in the gateway (``runner.py``), each step a chat call through the whole pipeline to
the assistant's model, on any provider."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from relaygate.api.assistants import runs, shapes
from relaygate.api.assistants.forward import OWNED, forward_assistants
from relaygate.api.common import object_body
from relaygate.api.objects import delete_owned, metadata, missing, page_of, page_query, path_ids, set_metadata
from relaygate.auth.authenticator import caller
from relaygate.core.errors import BadRequest, MethodNotAllowed, NotFound
from relaygate.server.http import Request, Response, StreamResponse, json_response
from relaygate.store.objects import owner_of

if TYPE_CHECKING:
    from relaygate.gateway import Gateway
    from relaygate.store.objects import Stored

RouteHandler = Callable[["Gateway", Request], Awaitable[Response | StreamResponse]]
MAX_BODY = 4 * 1024 * 1024
ASSISTANT_TEXT = {"name": 256, "description": 512, "instructions": 256_000}


async def _who(gw: Gateway, req: Request) -> str:
    return owner_of(await caller(gw.auth, req.headers))


async def _body(req: Request) -> dict[str, Any]:
    return object_body(await req.json(MAX_BODY))


def _assistant_fields(body: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with the assistant fields ``body`` sets (checked)."""
    if "model" in body:
        model = shapes.text(body, "model", 200)
        if not model:
            raise BadRequest("'model' must be a model name", param="model", code="invalid_value")
        data["model"] = model
    for name, limit in ASSISTANT_TEXT.items():
        if name in body:
            data[name] = shapes.text(body, name, limit)
    if "tools" in body:
        data["tools"] = shapes.tools(body["tools"])
    if "metadata" in body:
        data["metadata"] = metadata(body) or {}
    if "temperature" in body:
        data["temperature"] = shapes.number(body, "temperature", 0, 2)
    if "top_p" in body:
        data["top_p"] = shapes.number(body, "top_p", 0, 1)
    if "response_format" in body:
        data["response_format"] = shapes.response_format(body["response_format"])
    if "reasoning_effort" in body:
        data["reasoning_effort"] = shapes.text(body, "reasoning_effort", 20)
    return data


async def create_assistant(gw: Gateway, req: Request) -> Response:
    who = await _who(gw, req)
    body = await _body(req)
    if not isinstance(body.get("model"), str):
        raise BadRequest("you must provide the 'model' parameter", param="model", code="missing_required_parameter")
    data = _assistant_fields(body, {
        "object": "assistant", "name": None, "description": None, "model": "", "instructions": None,
        "tools": [], "tool_resources": {}, "metadata": {}, "temperature": 1.0, "top_p": 1.0,
        "response_format": "auto", "reasoning_effort": None})
    obj = gw.objects.new("assistant", "asst_", who, data)
    await gw.objects.save(obj)
    return json_response(obj.data)


async def list_assistants(gw: Gateway, req: Request) -> Response:
    who = await _who(gw, req)
    limit, order, after, before = page_query(req)
    return json_response(page_of(*await gw.objects.page("assistant", who, None, limit, order, after, before)))


async def one_assistant(gw: Gateway, req: Request) -> Response:
    who = await _who(gw, req)
    parts = path_ids(req.params["rest"], "assistant")
    if len(parts) != 1:
        raise NotFound(f"Unknown route {req.method} {req.path}", code="unknown_route")
    aid = parts[0]
    if req.method == "DELETE":
        return json_response(await delete_owned(gw, "assistant", aid, who))
    obj = await runs.get_assistant(gw, who, aid)
    if req.method == "POST":
        _assistant_fields(await _body(req), obj.data)
        await gw.objects.save(obj)
    return json_response(obj.data)


# ---- threads and messages ------------------------------------------------------------------------------

async def create_thread(gw: Gateway, req: Request) -> Response:
    who = await _who(gw, req)
    body = await _body(req)
    thread = gw.objects.new("thread", "thread_", who, {"object": "thread", "metadata": metadata(body) or {},
                                                        "tool_resources": {}})
    messages = runs.additional_messages(gw, who, thread.id, body, "messages")
    await gw.objects.save(thread, *messages)
    return json_response(thread.data)


async def create_thread_and_run(gw: Gateway, req: Request) -> Response | StreamResponse:
    key = await caller(gw.auth, req.headers)
    body = await _body(req)
    return await runs.create_thread_and_run(gw, key, owner_of(key), body)


async def _thread(gw: Gateway, who: str, tid: str) -> Stored:
    found = await gw.objects.get("thread", tid, who)
    if found is None:
        raise missing("thread", tid)
    return found


async def _messages(gw: Gateway, req: Request, who: str, thread: Stored, parts: list[str]) -> Response:
    method = req.method
    if not parts:
        if method == "POST":
            body = await _body(req)
            msg = gw.objects.new("message", "msg_", who, shapes.message(
                thread.id, body.get("role"), body.get("content"), metadata(body)), parent=thread.id)
            await gw.objects.save(msg)
            return json_response(msg.data)
        limit, order, after, before = page_query(req)
        return json_response(page_of(*await gw.objects.page("message", who, thread.id, limit, order, after, before)))
    mid = parts[0]
    found = await gw.objects.get("message", mid, who) if len(parts) == 1 and len(mid) <= 64 else None
    if found is None or found.parent != thread.id:
        raise missing("message", mid[:64])
    msg = found
    if method == "DELETE":
        await gw.objects.delete("message", mid, who)
        return json_response({"id": mid, "object": "thread.message.deleted", "deleted": True})
    if method == "POST":
        return json_response(await set_metadata(gw, msg, await _body(req)))
    return json_response(msg.data)


async def one_thread(gw: Gateway, req: Request) -> Response | StreamResponse:
    """``/v1/threads/{id}`` and everything below it."""
    key = await caller(gw.auth, req.headers)
    who = owner_of(key)
    parts = path_ids(req.params["rest"], "thread")
    tid, method = parts[0], req.method
    if len(parts) == 1:
        if method == "DELETE":
            return json_response(await delete_owned(gw, "thread", tid, who))
        thread = await _thread(gw, who, tid)
        if method == "POST":
            return json_response(await set_metadata(gw, thread, await _body(req)))
        return json_response(thread.data)
    thread = await _thread(gw, who, tid)
    if parts[1] == "messages" and len(parts) <= 3:
        return await _messages(gw, req, who, thread, parts[2:])
    if parts[1] == "runs" and len(parts) <= 6:
        if method == "DELETE":
            raise MethodNotAllowed(f"Method DELETE is not allowed on {req.path}")
        # (cancel has no body)
        body = (await _body(req) if (await req.body(MAX_BODY)).strip() else {}) if method == "POST" else None
        return await runs.dispatch(gw, req, key, who, thread, parts[2:], body)
    raise NotFound(f"Unknown route {method} {req.path}", code="unknown_route")


# the collections hosted here too, and the stored kind of each (vector stores only ever live upstream)
HOSTED_KINDS = {family: kind for family, kind in OWNED.items() if family != "vector_stores"}


async def hosted_here(gw: Gateway, req: Request, who: str) -> bool:
    """Whether the request is about an object the gateway hosts for the caller (created before the config
    named a passthrough upstream): it stays here. ``/v1/threads/runs`` follows its ``assistant_id``."""
    parts = req.path.split("/")[2:]  # "", "v1", family, id, ...
    kind = HOSTED_KINDS.get(parts[0])
    if kind is None or len(parts) < 2 or not parts[1]:
        return False
    oid: Any = parts[1]
    if parts[0] == "threads" and oid == "runs":
        if req.method != "POST":
            return False
        body = object_body(await req.json(MAX_BODY))
        kind, oid = "assistant", body.get("assistant_id")
    if not isinstance(oid, str) or not 0 < len(oid) <= 64:
        return False
    return await gw.objects.get(kind, oid, who) is not None


def hosted_or_forwarded(handler: RouteHandler) -> RouteHandler:
    """The hosted API's ``handler``, or, with ``assistants.passthrough`` in the config, the upstream it names
    (but for the objects hosted here before: their ids keep being served here)."""
    async def route(gw: Gateway, req: Request) -> Response | StreamResponse:
        key = await caller(gw.auth, req.headers)  # the key before anything else: a body or a route's refusal
        upstream = gw.config.assistants.passthrough
        if upstream is not None and not await hosted_here(gw, req, owner_of(key)):
            return await forward_assistants(gw, req, upstream, key)
        return await handler(gw, req)
    return route


async def vector_stores(gw: Gateway, req: Request) -> Response | StreamResponse:
    """Vector stores are served only by an upstream (``file_search`` runs there); hosted, they do not exist."""
    raise NotFound(f"{req.method} {req.path} is not served by this gateway: vector stores live at an upstream "
                   "that serves the Assistants API (assistants.passthrough in the config)", code="unknown_route")


ROUTES = [(method, path, hosted_or_forwarded(handler)) for method, path, handler in [
    ("POST", "/v1/assistants", create_assistant),
    ("GET", "/v1/assistants", list_assistants),
    *[(m, "/v1/assistants/{rest}", one_assistant) for m in ("GET", "POST", "DELETE")],
    ("POST", "/v1/threads", create_thread),
    ("POST", "/v1/threads/runs", create_thread_and_run),
    *[(m, "/v1/threads/{rest}", one_thread) for m in ("GET", "POST", "DELETE")],
    *[(m, "/v1/vector_stores", vector_stores) for m in ("GET", "POST")],
    *[(m, "/v1/vector_stores/{rest}", vector_stores) for m in ("GET", "POST", "DELETE")],
]]
