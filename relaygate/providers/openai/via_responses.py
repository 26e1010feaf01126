"""Chat calls to an upstream that serves only OpenAI's Responses API (``responses_only``: OpenAI's o1-pro,
o3-pro, codex and computer-use models, a server without /chat/completions): the chat request becomes a
Responses request, and the answer a ``chat.completion`` or its chunks, event by event (so every client
dialect, translated to chat, reaches such a model). The ids are the gateway's own (``chatcmpl-…``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

from relaygate.core.call import Call, Reply, Usage, delivered_of
from relaygate.core.errors import BadRequest, Unavailable, Unsupported
from relaygate.providers.openai_format import ChunkWriter, completion, completion_id
from relaygate.providers.streaming import SSEDecoder, UpstreamBody

# chat parameters the Responses API has no counterpart for: left out, and named in x-relaygate-dropped-params
DROPPED = ("stop", "seed", "logit_bias", "logprobs", "top_logprobs", "frequency_penalty", "presence_penalty",
           "modalities", "audio", "prediction", "web_search_options")
INCOMPLETE = {"max_output_tokens": "length", "content_filter": "content_filter"}


def _text(content: Any) -> str:
    if isinstance(content, list):
        return "".join(str(p.get("text") or "") for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


def _part(p: Any, where: str) -> dict[str, Any]:
    kind = p.get("type") if isinstance(p, dict) else None
    if kind == "text":
        return {"type": "input_text", "text": str(p.get("text") or "")}
    if kind == "image_url":
        image = p.get("image_url") or {}
        out: dict[str, Any] = {"type": "input_image", "image_url": image.get("url")}
        if isinstance(image.get("detail"), str):
            out["detail"] = image["detail"]
        return out
    if kind == "file":
        return {"type": "input_file", **{k: v for k, v in (p.get("file") or {}).items()
                                          if k in ("file_data", "file_id", "filename")}}
    raise Unsupported(f"{where}.type {kind!r} cannot be sent to a Responses API upstream", param=f"{where}.type")


def input_items(messages: list[Any]) -> list[dict[str, Any]]:
    """Chat messages as Responses input items (tool calls and results as function call items)."""
    out: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        role = m.get("role") if isinstance(m, dict) else None
        where = f"messages[{i}]"
        if role == "tool":
            out.append({"type": "function_call_output", "call_id": str(m.get("tool_call_id") or ""),
                        "output": _text(m.get("content"))})
        elif role == "assistant":
            text = _text(m.get("content"))
            if text:
                out.append({"role": "assistant", "content": text})
            for tc in m.get("tool_calls") or ():
                fn = tc.get("function") or {}
                out.append({"type": "function_call", "call_id": str(tc.get("id") or ""),
                            "name": str(fn.get("name") or ""), "arguments": str(fn.get("arguments") or "{}")})
        elif role in ("system", "developer", "user"):
            content = m.get("content")
            if isinstance(content, list):
                content = [_part(p, f"{where}.content[{j}]") for j, p in enumerate(content)]
            out.append({"role": role, "content": content if content is not None else ""})
        else:
            raise BadRequest(f"{where}.role {role!r} is not a chat role", param=f"{where}.role")
    return out


def responses_request(call: Call, model: str) -> tuple[dict[str, Any], list[str]]:
    """The Responses request for the call's chat body, and the chat parameters it had to leave out."""
    body = call.body
    if body.get("n") not in (None, 1):
        raise Unsupported("a Responses API upstream answers one choice: 'n' must be 1", param="n")
    req: dict[str, Any] = {"model": model, "input": input_items(body.get("messages") or []), "store": False}
    tools = [t.get("function") or {} for t in body.get("tools") or () if isinstance(t, dict)]
    if tools:
        req["tools"] = [{"type": "function", **{k: v for k, v in fn.items()
                                                if k in ("name", "description", "parameters", "strict")}}
                        for fn in tools]
        choice = body.get("tool_choice")
        if isinstance(choice, dict):
            req["tool_choice"] = {"type": "function", "name": (choice.get("function") or {}).get("name")}
        elif choice is not None:
            req["tool_choice"] = choice
        if isinstance(body.get("parallel_tool_calls"), bool):
            req["parallel_tool_calls"] = body["parallel_tool_calls"]
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        req["text"] = {"format": {"type": "json_schema", **(fmt.get("json_schema") or {})}}
    elif isinstance(fmt, dict) and fmt.get("type") == "json_object":
        req["text"] = {"format": {"type": "json_object"}}
    cap = body.get("max_completion_tokens") or body.get("max_tokens") or call.output_cap
    if cap is not None:
        req["max_output_tokens"] = cap
    for name in ("temperature", "top_p", "user", "metadata", "prompt_cache_key", "safety_identifier",
                 "service_tier"):
        if body.get(name) is not None:
            req[name] = body[name]
    if body.get("reasoning_effort") is not None:
        req["reasoning"] = {"effort": body["reasoning_effort"]}
    if call.stream:
        req["stream"] = True
    return req, [k for k in DROPPED if body.get(k) is not None]


def _finish(response: dict[str, Any], calls: bool) -> str:
    if response.get("status") == "incomplete":
        reason = (response.get("incomplete_details") or {}).get("reason")
        return INCOMPLETE.get(str(reason), "length")
    return "tool_calls" if calls else "stop"


def whole(response: dict[str, Any], usage: Usage | None) -> dict[str, Any]:
    """A whole Response object as a ``chat.completion``."""
    texts: list[str] = []
    refusals: list[str] = []
    reasoning: list[str] = []
    calls: list[dict[str, Any]] = []
    for item in response.get("output") or ():
        kind = item.get("type")
        if kind == "message":
            for p in item.get("content") or ():
                if p.get("type") == "output_text":
                    texts.append(str(p.get("text") or ""))
                elif p.get("type") == "refusal":
                    refusals.append(str(p.get("refusal") or ""))
        elif kind == "function_call":
            calls.append({"id": item["call_id"], "type": "function",
                          "function": {"name": item["name"], "arguments": item.get("arguments") or "{}"}})
        elif kind == "reasoning":
            reasoning += [str(s.get("text") or "") for s in item.get("summary") or ()]
    out = completion(id=completion_id(), model=str(response.get("model") or ""),
                     content="".join(texts) if texts or not calls else None, tool_calls=calls,
                     finish_reason=_finish(response, bool(calls)), usage=usage)
    message = out["choices"][0]["message"]
    if refusals:
        message["refusal"] = "".join(refusals)
    if reasoning:
        message["reasoning_content"] = "\n".join(reasoning)
    return out


async def chunks(body: UpstreamBody, reply: Reply, model: str, include_usage: bool) -> AsyncIterator[bytes]:
    """The upstream's Responses events as chat chunks, each event's at once."""
    w = ChunkWriter(model, include_usage=include_usage, delivered=delivered_of(reply))
    decoder = SSEDecoder()
    calls = False
    try:
        async for piece in body:
            out: list[bytes] = []
            for _, data in decoder.feed(piece):
                e = orjson.loads(data)
                kind = e.get("type")
                if kind == "response.output_text.delta":
                    out.append(w.text(e["delta"]))
                elif kind == "response.refusal.delta":
                    out.append(w.delta({"refusal": e["delta"]}))
                elif kind in ("response.reasoning_summary_text.delta", "response.reasoning_text.delta"):
                    out.append(w.delta({"reasoning_content": e["delta"]}))
                elif kind == "response.output_item.added" and e["item"].get("type") == "function_call":
                    calls = True
                    item = e["item"]
                    out.append(w.tool_start(str(e["output_index"]), item["call_id"], item["name"]))
                    out.append(w.tool_args(str(e["output_index"]), item.get("arguments") or ""))
                elif kind == "response.function_call_arguments.delta":
                    out.append(w.tool_args(str(e["output_index"]), e["delta"]))
                elif kind in ("response.completed", "response.incomplete"):
                    response = e["response"]
                    reply.usage = Usage.from_openai(response.get("usage")) or reply.usage
                    out += [w.finish(_finish(response, calls)), w.usage(reply.usage), w.done()]
                    body.leave()  # the end: never wait on the body's end (UpstreamBody.leave)
                    yield b"".join(out)
                    return
                elif kind in ("response.failed", "error"):
                    err = (e.get("response") or {}).get("error") or e
                    yield b"".join(out)
                    raise Unavailable(f"upstream openai failed: {err.get('message') or 'no reason given'}",
                                      status=502, code="upstream_error")
            if out:
                yield b"".join(out)
    finally:
        body.close()
