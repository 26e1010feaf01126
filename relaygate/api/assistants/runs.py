"""``/v1/threads/{thread_id}/runs…`` and ``/v1/threads/runs``: runs of the hosted Assistants API (executed by
``runner.Runner``), their tool outputs, cancellation and steps."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from relaygate.api.assistants import shapes
from relaygate.api.assistants.runner import TERMINAL, event, settle_stale
from relaygate.api.objects import metadata, missing, page_of, page_query, set_metadata
from relaygate.core.call import Reply
from relaygate.core.errors import BadRequest, GatewayError, NotFound
from relaygate.server.http import Response, StreamResponse, json_response

if TYPE_CHECKING:
    from relaygate.auth.principal import Principal
    from relaygate.gateway import Gateway
    from relaygate.server.http import Request
    from relaygate.store.objects import Stored

POLL = {"openai-poll-after-ms": "200"}  # how soon the SDK's *_and_poll helpers ask again (they read this)
MAX_ADDITIONAL = 32


def stream_error(err: GatewayError) -> bytes:
    return event("error", err.body()["error"])


def streamed(events: AsyncIterator[bytes]) -> StreamResponse:
    return StreamResponse(Reply(stream=events, media_type="text/event-stream"), {}, stream_error)


async def get_assistant(gw: Gateway, who: str, aid: Any, param: str | None = None) -> Stored:
    if not isinstance(aid, str) or not aid:
        raise BadRequest("you must provide the 'assistant_id' parameter", param="assistant_id",
                         code="missing_required_parameter")
    found = await gw.objects.get("assistant", aid, who) if len(aid) <= 64 else None
    if found is None:
        raise missing("assistant", aid[:64], param)
    return found


def new_run(gw: Gateway, who: str, thread_id: str, assistant: Stored, body: dict[str, Any]) -> Stored:
    """A queued run of ``assistant`` on the thread, its settings from the body over the assistant's."""
    a = assistant.data
    tools = shapes.tools(body["tools"]) if body.get("tools") is not None else a.get("tools") or []
    strategy = body.get("truncation_strategy")
    if strategy is None:
        strategy = {"type": "auto", "last_messages": None}
    elif not (isinstance(strategy, dict) and strategy.get("type") in ("auto", "last_messages")
              and (strategy.get("last_messages") is None or (isinstance(strategy["last_messages"], int)
                                                             and strategy["last_messages"] >= 1))):
        raise BadRequest("'truncation_strategy' must be {\"type\": \"auto\"} or {\"type\": \"last_messages\", "
                         "\"last_messages\": n >= 1}", param="truncation_strategy", code="invalid_value")
    limits = {}
    for name in ("max_prompt_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise BadRequest(f"'{name}' must be a positive integer", param=name, code="invalid_value")
        limits[name] = value
    choice = body.get("tool_choice", "auto")
    if not (choice in ("auto", "none", "required") or isinstance(choice, dict)):
        raise BadRequest("'tool_choice' must be auto, none, required or a function", param="tool_choice",
                         code="invalid_value")
    model = shapes.text(body, "model", 200) or a["model"]
    instructions = shapes.text(body, "instructions")
    data = {
        "object": "thread.run", "assistant_id": assistant.id, "thread_id": thread_id, "status": "queued",
        "started_at": None, "expires_at": None, "cancelled_at": None, "failed_at": None, "completed_at": None,
        "required_action": None, "last_error": None, "model": model,
        "instructions": instructions if instructions is not None else a.get("instructions") or "",
        "tools": tools, "metadata": metadata(body) or {}, "usage": None,
        "temperature": shapes.number(body, "temperature", 0, 2) if body.get("temperature") is not None
        else a.get("temperature"),
        "top_p": shapes.number(body, "top_p", 0, 1) if body.get("top_p") is not None else a.get("top_p"),
        **limits, "truncation_strategy": strategy,
        "response_format": shapes.response_format(body.get("response_format", a.get("response_format"))),
        "tool_choice": choice, "parallel_tool_calls": body.get("parallel_tool_calls", True) is not False,
        "incomplete_details": None, "reasoning_effort": body.get("reasoning_effort", a.get("reasoning_effort")),
    }
    extra: dict[str, Any] = {}
    additional = shapes.text(body, "additional_instructions")
    if additional:
        extra["additional_instructions"] = additional
    return gw.objects.new("run", "run_", who, data, parent=thread_id, extra=extra)


def additional_messages(gw: Gateway, who: str, thread_id: str, body: dict[str, Any],
                        name: str = "additional_messages") -> list[Stored]:
    value = body.get(name)
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_ADDITIONAL:
        raise BadRequest(f"'{name}' must be an array of at most {MAX_ADDITIONAL} messages", param=name,
                         code="invalid_value")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise BadRequest(f"{name}[{i}] must be an object", param=f"{name}[{i}]", code="invalid_type")
        out.append(gw.objects.new("message", "msg_", who, shapes.message(
            thread_id, m.get("role"), m.get("content"), metadata(m), f"{name}[{i}]."), parent=thread_id))
    return out


async def launch(gw: Gateway, run: Stored, key: Principal | None, stream: bool, before: bytes = b"",
                 saved: tuple[Stored, ...] = ()) -> Response | StreamResponse:
    """Save the queued run (and what it needs), hand it to the runner, answer with it or its events."""
    gw.runs.lease(run)
    await gw.objects.save(*saved, run)
    first = before + event("thread.run.created", run.data) + event("thread.run.queued", run.data)
    events = gw.runs.start(run, key, gw.fit, first if stream else b"")
    if events is not None:
        return streamed(events)
    return json_response(run.data, 200, dict(POLL))


def _stream_flag(body: dict[str, Any]) -> bool:
    value = body.get("stream")
    if value is not None and not isinstance(value, bool):
        raise BadRequest("'stream' must be a boolean", param="stream", code="invalid_type")
    return bool(value)


async def create(gw: Gateway, key: Principal | None, who: str, thread: Stored, body: dict[str, Any]) -> Response | StreamResponse:
    assistant = await get_assistant(gw, who, body.get("assistant_id"), "assistant_id")
    run = new_run(gw, who, thread.id, assistant, body)
    return await launch(gw, run, key, _stream_flag(body), saved=tuple(additional_messages(gw, who, thread.id, body)))


async def create_thread_and_run(gw: Gateway, key: Principal | None, who: str, body: dict[str, Any]) -> Response | StreamResponse:
    assistant = await get_assistant(gw, who, body.get("assistant_id"), "assistant_id")
    spec = body.get("thread") or {}
    if not isinstance(spec, dict):
        raise BadRequest("'thread' must be an object", param="thread", code="invalid_type")
    thread = gw.objects.new("thread", "thread_", who, {"object": "thread", "metadata": metadata(spec) or {},
                                                        "tool_resources": {}})
    messages = additional_messages(gw, who, thread.id, spec, "messages")
    run = new_run(gw, who, thread.id, assistant, body)
    return await launch(gw, run, key, _stream_flag(body), event("thread.created", thread.data),
                        (thread, *messages))


async def current(gw: Gateway, who: str, thread_id: str, run_id: str) -> Stored:
    """The run, with a stale state settled (expired waiting for tools, or cut off by a stopped gateway)."""
    run = await gw.objects.get("run", run_id, who) if len(run_id) <= 64 else None
    if run is None or run.parent != thread_id:
        raise missing("run", run_id[:64])
    if settle_stale(run, gw.runs.running(run.id)):
        await gw.objects.save(run)
    return run


async def submit_tool_outputs(gw: Gateway, key: Principal | None, who: str, run: Stored,
                              body: dict[str, Any]) -> Response | StreamResponse:
    d = run.data
    if d["status"] != "requires_action":
        raise BadRequest(f"Runs in status \"{d['status']}\" do not accept tool outputs.", code="invalid_request")
    outputs = body.get("tool_outputs")
    if not isinstance(outputs, list) or not all(isinstance(o, dict) and isinstance(o.get("tool_call_id"), str)
                                                for o in outputs):
        raise BadRequest("'tool_outputs' must be an array of {tool_call_id, output}", param="tool_outputs",
                         code="invalid_value")
    given = {o["tool_call_id"]: o.get("output") if isinstance(o.get("output"), str) else "" for o in outputs}
    wanted = [c["id"] for c in d["required_action"]["submit_tool_outputs"]["tool_calls"]]
    if set(wanted) - set(given):
        raise BadRequest(f"Expected tool outputs for call_ids {wanted}, got {sorted(given)}", param="tool_outputs",
                         code="invalid_value")
    extra = run.extra if run.extra is not None else {}
    saved: list[Stored] = []
    step = await gw.objects.get("step", extra.get("pending_step") or "", who)
    if step is not None:
        for c in step.data["step_details"]["tool_calls"]:
            c["function"]["output"] = given.get(c["id"])
        step.data.update(status="completed", completed_at=shapes.now())
        saved.append(step)
    extra.setdefault("turns", []).extend({"role": "tool", "tool_call_id": cid, "content": given[cid]}
                                         for cid in wanted)
    extra.pop("pending_step", None)
    d.update(status="queued", required_action=None, expires_at=None)
    stream = _stream_flag(body)
    before = event("thread.run.step.completed", step.data) if stream and step is not None else b""
    gw.runs.lease(run)
    await gw.objects.save(*saved, run)
    events = gw.runs.start(run, key, gw.fit, before + event("thread.run.queued", d) if stream else b"")
    if events is not None:
        return streamed(events)
    return json_response(d, 200, dict(POLL))


async def cancel(gw: Gateway, who: str, run: Stored) -> Response:
    status = run.data["status"]
    if status in TERMINAL or status == "cancelling":
        raise BadRequest(f"Cannot cancel run with status '{status}'.", code="invalid_request")
    task = gw.runs.tasks.get(run.id)
    if task is not None:  # executing here: stopped now, and stored as cancelled by its task
        task.cancel()
        await asyncio.wait([task], timeout=10)
        return json_response((await current(gw, who, run.parent or "", run.id)).data)
    if status == "in_progress":  # executing in another worker: it reads this before it stores its end
        run.data["status"] = "cancelling"
    else:
        run.data.update(status="cancelled", cancelled_at=int(time.time()), required_action=None)
    await gw.objects.save(run)
    return json_response(run.data)


async def dispatch(gw: Gateway, req: Request, key: Principal | None, who: str, thread: Stored,
                   parts: list[str], body: dict[str, Any] | None) -> Response | StreamResponse:
    """``{thread_id}/runs[/{run_id}[/cancel|/submit_tool_outputs|/steps[/{step_id}]]]`` (``parts`` after runs)."""
    method = req.method
    if not parts:
        if method == "POST":
            assert body is not None
            return await create(gw, key, who, thread, body)
        limit, order, after, before = page_query(req)
        runs, more = await gw.objects.page("run", who, thread.id, limit, order, after, before)
        for r in runs:
            if settle_stale(r, gw.runs.running(r.id)):
                await gw.objects.save(r)
        return json_response(page_of(runs, more))
    run = await current(gw, who, thread.id, parts[0])
    tail = parts[1:]
    if not tail:
        if method == "POST":
            assert body is not None
            await set_metadata(gw, run, body)
        return json_response(run.data, 200, dict(POLL))
    if tail == ["cancel"] and method == "POST":
        return await cancel(gw, who, run)
    if tail == ["submit_tool_outputs"] and method == "POST":
        assert body is not None
        return await submit_tool_outputs(gw, key, who, run, body)
    if tail[0] == "steps" and method == "GET":
        if len(tail) == 1:
            limit, order, after, before = page_query(req)
            return json_response(page_of(*await gw.objects.page("step", who, run.id, limit, order, after, before)))
        step = await gw.objects.get("step", tail[1], who) if len(tail) == 2 and len(tail[1]) <= 64 else None
        if step is None or step.parent != run.id:
            raise missing("run step", tail[1][:64] if len(tail) > 1 else "")
        return json_response(step.data)
    raise NotFound(f"Unknown route {method} {req.path}", code="unknown_route")
