"""OpenAI's Responses API in the emulator (``POST /v1/responses``, Azure's ``/openai/v1/responses``), for
tests of deployments that serve it natively (``responses_native``).

The model is the echo model (relaygate/providers/echo.py) on the conversation the items make; the answer is
a Response object, or OpenAI's documented event sequence with its ``sequence_number``s. It stores responses
(``store``, the default) so that ``previous_response_id`` chains on them, and runs the ``web_search`` built-in
tool itself (a ``web_search_call`` item and a cited answer), which no translated model could.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from relaygate.providers.echo import answer
from relaygate.testing.base import STATE_KEY, json_response, send_sse, tracked
from relaygate.testing.openai import auth_error, error_body, planned_fault

if TYPE_CHECKING:
    from relaygate.testing.openai import OpenAIEmulatorOptions

RESPONSES_KEY: web.AppKey[dict[str, dict[str, Any]]] = web.AppKey("emulator_responses", dict)
SEARCHES = ("web_search", "web_search_preview")
CITED_URL = "https://example.com/emulated-search"


def _id(prefix: str) -> str:
    return prefix + os.urandom(12).hex()


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def chat_messages(items: list[Any]) -> list[dict[str, Any]]:
    """The conversation the items make, as the chat messages the echo model reads."""
    out: list[dict[str, Any]] = []
    for it in items:
        if not isinstance(it, dict):
            continue
        kind = it.get("type", "message")
        if kind == "message":
            out.append({"role": it.get("role"), "content": _text(it.get("content"))})
        elif kind == "function_call":
            out.append({"role": "assistant", "content": None, "tool_calls": [
                {"id": it.get("call_id"), "type": "function",
                 "function": {"name": it.get("name"), "arguments": it.get("arguments")}}]})
        elif kind == "function_call_output":
            out.append({"role": "tool", "tool_call_id": it.get("call_id"), "content": _text(it.get("output"))})
    return out


def _items(value: Any) -> list[Any] | None:
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    return value if isinstance(value, list) else None


def respond(body: dict[str, Any], history: list[Any], prefix: str, words: int) -> tuple[dict[str, Any], list[Any]]:
    """The Response object for a request whose earlier conversation is ``history`` (with its own items)."""
    items = history + (_items(body.get("input")) or [])
    messages = chat_messages(items)
    if isinstance(body.get("instructions"), str):
        messages.insert(0, {"role": "system", "content": body["instructions"]})
    tools = [t for t in body.get("tools") or () if isinstance(t, dict)]
    functions = [{"type": "function", "function": {"name": t.get("name"), "parameters": t.get("parameters")}}
                 for t in tools if t.get("type") == "function"]
    chat: dict[str, Any] = {"messages": messages, "tools": functions, "max_completion_tokens": body.get(
        "max_output_tokens")}
    fmt = (body.get("text") or {}).get("format") if isinstance(body.get("text"), dict) else None
    if isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema"):
        chat["response_format"] = {"type": fmt["type"]}
    output: list[dict[str, Any]] = []
    searched = any(t.get("type") in SEARCHES for t in tools) and messages and messages[-1]["role"] == "user"
    if searched:
        chat["tools"] = []
        output.append({"type": "web_search_call", "id": _id("ws_"), "status": "completed",
                       "action": {"type": "search", "query": messages[-1]["content"]}})
    a = answer(chat, prefix, words_at_least=words)
    if a.tool_call is not None:
        fn = a.tool_call["function"]
        output.append({"type": "function_call", "id": _id("fc_"), "call_id": a.tool_call["id"], "name": fn["name"],
                       "arguments": fn["arguments"], "status": "completed"})
    else:
        text = a.text or ""
        notes = [{"type": "url_citation", "start_index": 0, "end_index": len(text), "url": CITED_URL,
                  "title": "Emulated search"}] if searched else []
        output.append({"type": "message", "id": _id("msg_"), "status": "completed", "role": "assistant",
                       "content": [{"type": "output_text", "text": text, "annotations": notes, "logprobs": []}]})
    incomplete = a.finish_reason == "length"
    response = {
        "id": _id("resp_"), "object": "response", "created_at": int(time.time()),
        "status": "incomplete" if incomplete else "completed", "background": False, "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "instructions": body.get("instructions"), "max_output_tokens": body.get("max_output_tokens"),
        "model": body.get("model"), "output": output, "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"), "reasoning": {"effort": None, "summary": None},
        "store": body.get("store", True) is not False, "temperature": body.get("temperature", 1.0),
        "text": {"format": fmt if isinstance(fmt, dict) else {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"), "tools": tools, "top_p": body.get("top_p", 1.0),
        "truncation": body.get("truncation", "disabled"), "user": None, "metadata": body.get("metadata") or {},
        "usage": {"input_tokens": a.prompt_tokens, "input_tokens_details": {"cached_tokens": 0},
                  "output_tokens": a.completion_tokens, "output_tokens_details": {"reasoning_tokens": 0},
                  "total_tokens": a.prompt_tokens + a.completion_tokens},
    }
    return response, items


def events(response: dict[str, Any]) -> Iterator[bytes]:
    """The documented event sequence that delivers ``response``, text word by word."""
    seq = 0

    def event(kind: str, **fields: Any) -> bytes:
        nonlocal seq
        data = {"type": kind, "sequence_number": seq, **fields}
        seq += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

    final = response
    shell = {**response, "status": "in_progress", "output": [], "usage": None, "incomplete_details": None}
    yield event("response.created", response=shell)
    yield event("response.in_progress", response=shell)
    for i, item in enumerate(final["output"]):
        iid = item["id"]
        kind = item["type"]
        if kind == "message":
            part = item["content"][0]
            yield event("response.output_item.added", output_index=i,
                        item={**item, "status": "in_progress", "content": []})
            yield event("response.content_part.added", item_id=iid, output_index=i, content_index=0,
                        part={**part, "text": "", "annotations": []})
            words = part["text"].split(" ")
            for n, w in enumerate(words):
                yield event("response.output_text.delta", item_id=iid, output_index=i, content_index=0,
                            delta=w if n == 0 else " " + w, logprobs=[])
            for a, note in enumerate(part["annotations"]):
                yield event("response.output_text.annotation.added", item_id=iid, output_index=i, content_index=0,
                            annotation_index=a, annotation=note)
            yield event("response.output_text.done", item_id=iid, output_index=i, content_index=0,
                        text=part["text"], logprobs=[])
            yield event("response.content_part.done", item_id=iid, output_index=i, content_index=0, part=part)
        elif kind == "function_call":
            yield event("response.output_item.added", output_index=i,
                        item={**item, "status": "in_progress", "arguments": ""})
            yield event("response.function_call_arguments.delta", item_id=iid, output_index=i,
                        delta=item["arguments"])
            yield event("response.function_call_arguments.done", item_id=iid, output_index=i,
                        name=item["name"], arguments=item["arguments"])
        else:  # web_search_call
            yield event("response.output_item.added", output_index=i, item={**item, "status": "in_progress"})
            for step in ("in_progress", "searching", "completed"):
                yield event(f"response.web_search_call.{step}", item_id=iid, output_index=i)
        yield event("response.output_item.done", output_index=i, item=item)
    yield event("response.completed" if final["status"] == "completed" else "response.incomplete", response=final)


def add_responses_routes(app: web.Application, opts: OpenAIEmulatorOptions) -> None:
    app[RESPONSES_KEY] = {}

    async def create(request: web.Request, azure: bool = False) -> web.StreamResponse:
        state = request.app[STATE_KEY]
        raw = await request.read()
        state.remember(request, raw)
        denied = auth_error(request, opts, azure)
        if denied is not None:
            return denied
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return json_response(error_body(400, "We could not parse the JSON body of your request."), 400)
        plan, faulted = await planned_fault(request)
        if faulted is not None:
            return faulted
        model = body.get("model") if isinstance(body, dict) else None
        if not isinstance(model, str) or not model:
            return json_response(error_body(400, "Missing required parameter: 'model'."), 400)
        if not azure and opts.models and model not in opts.models:
            return json_response(error_body(404, f"The model `{model}` does not exist or you do not have "
                                                 "access to it.", "model_not_found"), 404)
        if _items(body.get("input")) is None:
            return json_response(error_body(400, "Invalid type for 'input': expected a string or an array."), 400)
        history: list[Any] = []
        prev = body.get("previous_response_id")
        if prev is not None:
            stored = request.app[RESPONSES_KEY].get(prev) if isinstance(prev, str) else None
            if stored is None:
                err = error_body(404, f"Previous response with id '{prev}' not found.", "previous_response_not_found")
                err["error"]["param"] = "previous_response_id"
                return json_response(err, 404)
            history = stored["items"] + stored["response"]["output"]
        response, items = respond(body, history, opts.prefix, opts.answer_words)
        window = opts.context_windows.get(model, opts.context_window)
        if response["usage"]["input_tokens"] > window:
            err = error_body(400, f"Your input exceeds the context window of this model ({window} tokens). Please "
                                  "adjust your input and try again.", "context_length_exceeded")
            err["error"]["param"] = "input"
            return json_response(err, 400)
        if response["store"]:
            request.app[RESPONSES_KEY][response["id"]] = {"items": items, "response": response}
        if not body.get("stream"):
            return json_response(response)
        return await send_sse(request, events(response), plan, done=b"")

    async def azure_create(request: web.Request) -> web.StreamResponse:
        return await create(request, azure=True)

    app.router.add_post("/v1/responses", tracked(create))
    app.router.add_post("/openai/v1/responses", tracked(azure_create))
