"""Anthropic Messages request -> OpenAI chat request, and OpenAI replies (whole or streamed) -> Anthropic's
Message / SSE events. Pure translation, used by ``/v1/messages`` to serve any configured model."""

from __future__ import annotations

import os
import time
from typing import Any

import orjson

from relaygate.api.chunks import ChatChunkWalk, arguments_object, stream_error_message
from relaygate.api.chunks import translate_stream as translate_stream  # re-exported: tests use it here
from relaygate.api.query import Query
from relaygate.core.call import Usage
from relaygate.core.errors import BadRequest, GatewayError, Unsupported
from relaygate.providers.anthropic.wire import FINISH_TO_STOP, error_body, error_type, sse_event

# Anthropic request fields with no OpenAI counterpart: dropped and named in x-relaygate-dropped-params
DROPPED = ("top_k", "thinking", "service_tier", "container", "inference_geo", "speed", "cache_control",
           "diagnostics", "mcp_servers", "context_management")


def require(body: dict[str, Any], name: str, kind: type | tuple[type, ...], what: str) -> Any:
    value = body.get(name)
    if value is None:
        raise BadRequest(f"{name}: Field required", param=name)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise BadRequest(f"{name}: Input should be {what}", param=name)
    return value


def to_openai_request(body: dict[str, Any], keep_cache: bool = False) -> tuple[dict[str, Any], list[str]]:
    """(OpenAI chat body, names of dropped fields) for an Anthropic Messages request.

    ``keep_cache``: carry ``cache_control`` marks over (on content parts and tools) for upstreams that
    understand them (relaygate's anthropic provider); otherwise they are left out."""
    model = require(body, "model", str, "a valid string")
    max_tokens = require(body, "max_tokens", int, "a valid integer")
    messages = require(body, "messages", list, "a valid list")
    if not messages:
        raise BadRequest("messages: at least one message is required", param="messages")
    out: list[dict[str, Any]] = []
    system = body.get("system")
    if system:
        out.append({"role": "system", "content": _system_content(system, keep_cache)})
    for i, m in enumerate(messages):
        _message(m, i, out, keep_cache)
    req: dict[str, Any] = {"model": model, "messages": out, "max_completion_tokens": max_tokens}
    dropped = [name for name in DROPPED if body.get(name) is not None]
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            req[name] = body[name]
    stops = body.get("stop_sequences")
    if stops:
        req["stop"] = stops
    tools = body.get("tools")
    if tools:
        if not isinstance(tools, list):
            _bad("tools")
        functions = []
        for i, t in enumerate(tools):
            if isinstance(t, dict) and t.get("type") not in (None, "custom"):
                dropped.append(f"tools.{t.get('name') or t.get('type')}")  # server tools run at Anthropic only
                continue
            functions.append(_tool(t, i, keep_cache))
        if functions:
            req["tools"] = functions
            choice = body.get("tool_choice")
            if choice is not None:
                req.update(_tool_choice(choice))
    user = (body.get("metadata") or {}).get("user_id") if isinstance(body.get("metadata"), dict) else None
    if isinstance(user, str) and user:
        req["user"] = user
    fmt = (body.get("output_config") or {}).get("format") if isinstance(body.get("output_config"), dict) else None
    if isinstance(fmt, dict) and isinstance(fmt.get("schema"), dict):
        req["response_format"] = {"type": "json_schema", "json_schema": {"name": "output", "schema": fmt["schema"]}}
    if body.get("stream"):
        req["stream"] = True
        req["stream_options"] = {"include_usage": True}
    return req, dropped


def _bad(name: str) -> Any:
    raise BadRequest(f"{name}: Input should be a valid list", param=name)


def _system_content(system: Any, keep_cache: bool) -> str | list[dict[str, Any]]:
    if isinstance(system, str):
        return system
    if isinstance(system, list):
        blocks = [b for b in system if isinstance(b, dict) and b.get("type") == "text"]
        if keep_cache and any("cache_control" in b for b in blocks):
            return [_text_part(b, True) for b in blocks]
        return "\n\n".join(str(b.get("text", "")) for b in blocks)
    raise BadRequest("system: Input should be a valid string or a list of text blocks", param="system")


def _text_part(block: dict[str, Any], keep_cache: bool) -> dict[str, Any]:
    part: dict[str, Any] = {"type": "text", "text": str(block.get("text", ""))}
    if keep_cache and "cache_control" in block:
        part["cache_control"] = block["cache_control"]
    return part


def _image_part(block: dict[str, Any], where: str) -> dict[str, Any]:
    src = block.get("source")
    if isinstance(src, dict) and src.get("type") == "base64":
        url = f"data:{src.get('media_type')};base64,{src.get('data')}"
    elif isinstance(src, dict) and src.get("type") == "url" and isinstance(src.get("url"), str):
        url = src["url"]
    else:
        raise Unsupported(f"{where}.source: only base64 and url image sources are supported", param=where)
    return {"type": "image_url", "image_url": {"url": url}}


def _document_part(block: dict[str, Any], where: str) -> dict[str, Any]:
    """A document as OpenAI sees one: a PDF ``file`` part, or plain text."""
    src = block.get("source")
    if not isinstance(src, dict):
        src = {}
    kind = src.get("type")
    if kind == "text":
        return {"type": "text", "text": str(src.get("data", ""))}
    if kind == "base64" and src.get("media_type") == "application/pdf":
        file = {"file_data": f"data:application/pdf;base64,{src.get('data')}"}
        if isinstance(block.get("title"), str):
            file["filename"] = block["title"]
        return {"type": "file", "file": file}
    raise Unsupported(f"{where}.source: only base64 PDF and text documents are supported here", param=where)


def _blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise BadRequest(f"{where}.content: Input should be a valid string or list of blocks", param=where)
    for j, b in enumerate(content):
        if not isinstance(b, dict):
            raise BadRequest(f"{where}.content.{j}: Input should be a valid dictionary", param=where)
    return content


def _tool_result_text(block: dict[str, Any], where: str) -> tuple[str, list[dict[str, Any]]]:
    """A tool_result's text (OpenAI tool messages carry text only) and its images, moved to the user turn."""
    content = block.get("content")
    if content is None:
        return "", []
    texts: list[str] = []
    images: list[dict[str, Any]] = []
    for b in _blocks(content, where):
        if b.get("type") == "text":
            texts.append(str(b.get("text", "")))
        elif b.get("type") == "image":
            images.append(_image_part(b, where))
    text = "\n".join(texts)
    return ("Error: " + text if block.get("is_error") else text), images


def _message(m: Any, i: int, out: list[dict[str, Any]], keep_cache: bool) -> None:
    where = f"messages.{i}"
    if not isinstance(m, dict):
        raise BadRequest(f"{where}: Input should be a valid dictionary", param=where)
    role = m.get("role")
    content = m.get("content")
    if role == "user":
        if isinstance(content, str):
            out.append({"role": "user", "content": content})
            return
        parts: list[dict[str, Any]] = []
        for j, b in enumerate(_blocks(content, where)):
            kind = b.get("type")
            if kind == "text":
                parts.append(_text_part(b, keep_cache))
            elif kind == "image":
                parts.append(_image_part(b, f"{where}.content.{j}"))
            elif kind == "tool_result":
                text, images = _tool_result_text(b, f"{where}.content.{j}")
                tool: dict[str, Any] = {"role": "tool", "tool_call_id": str(b.get("tool_use_id", "")),
                                        "content": text}
                if keep_cache and "cache_control" in b:
                    tool["cache_control"] = b["cache_control"]
                out.append(tool)
                parts.extend(images)
            elif kind == "document":
                parts.append(_document_part(b, f"{where}.content.{j}"))
            else:
                raise Unsupported(f"{where}.content.{j}: block type {kind!r} is not supported here",
                                  param=f"{where}.content.{j}.type")
        if parts:
            out.append({"role": "user", "content": parts})
    elif role == "assistant":
        if isinstance(content, str):
            out.append({"role": "assistant", "content": content})
            return
        texts: list[str] = []
        calls: list[dict[str, Any]] = []
        for b in _blocks(content, where):
            kind = b.get("type")
            if kind == "text":
                texts.append(str(b.get("text", "")))
            elif kind == "tool_use":
                calls.append({"id": str(b.get("id", "")), "type": "function", "function": {
                    "name": str(b.get("name", "")), "arguments": orjson.dumps(b.get("input") or {}).decode()}})
            # thinking blocks have no OpenAI counterpart: left out
        msg: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
        if calls:
            msg["tool_calls"] = calls
        if texts or calls:
            out.append(msg)
    else:
        raise BadRequest(f"{where}.role: Input should be 'user' or 'assistant'", param=f"{where}.role")


def _tool(t: Any, i: int, keep_cache: bool) -> dict[str, Any]:
    if not isinstance(t, dict) or not isinstance(t.get("name"), str):
        raise BadRequest(f"tools.{i}.name: Field required", param=f"tools.{i}")
    fn: dict[str, Any] = {"name": t["name"], "parameters": t.get("input_schema") or {"type": "object"}}
    if t.get("description"):
        fn["description"] = t["description"]
    if isinstance(t.get("strict"), bool):
        fn["strict"] = t["strict"]
    out: dict[str, Any] = {"type": "function", "function": fn}
    if keep_cache and "cache_control" in t:
        out["cache_control"] = t["cache_control"]
    return out


def _tool_choice(choice: Any) -> dict[str, Any]:
    kind = choice.get("type") if isinstance(choice, dict) else None
    mapped: Any
    if kind == "auto":
        mapped = "auto"
    elif kind == "any":
        mapped = "required"
    elif kind == "none":
        return {"tool_choice": "none"}
    elif kind == "tool" and isinstance(choice.get("name"), str):
        mapped = {"type": "function", "function": {"name": choice["name"]}}
    else:
        raise BadRequest("tool_choice: Input tag does not match any of the expected tags: 'auto', 'any', "
                         "'tool', 'none'", param="tool_choice")
    out: dict[str, Any] = {"tool_choice": mapped}
    if choice.get("disable_parallel_tool_use"):
        out["parallel_tool_calls"] = False
    return out


# ---- models in Anthropic's shape (Claude Code discovers a gateway's models this way) ---------------------

def anthropic_model(name: str, created: float) -> dict[str, Any]:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created))
    return {"type": "model", "id": name, "display_name": name, "created_at": stamp, "lifecycle": "active"}


def anthropic_model_page(names: list[str], created: float, query: str) -> dict[str, Any]:
    """Anthropic's Models list page: ``limit`` (1-1000, default 20), ``after_id`` / ``before_id`` cursors."""
    q = Query(query)
    limit = q.integer("limit", 1, 1000, 20) or 20
    params = {name: value for name in ("after_id", "before_id") if (value := q.text(name, 200)) is not None}
    start, end = 0, len(names)
    if "after_id" in params:
        start = names.index(params["after_id"]) + 1 if params["after_id"] in names else end
    if "before_id" in params:
        end = names.index(params["before_id"]) if params["before_id"] in names else 0
        start = max(start, end - limit)
    page = names[start:min(end, start + limit)]
    return {"data": [anthropic_model(n, created) for n in page],
            "has_more": start + len(page) < end if "before_id" not in params else start > 0,
            "first_id": page[0] if page else None, "last_id": page[-1] if page else None}


# ---- replies -------------------------------------------------------------------------------------------

_ID_CHARS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def anthropic_id(prefix: str) -> str:
    """A new id in Anthropic's shape (``msg_01`` + 22 letters and digits): a translated answer gets an id of
    its own, never the upstream's under another prefix."""
    return prefix + "01" + "".join(_ID_CHARS[b % 62] for b in os.urandom(22))


def usage_block(usage: Usage | None, fallback: Any = None) -> dict[str, int]:
    """Anthropic's usage: input_tokens excludes cache reads and writes (OpenAI's prompt_tokens includes them)."""
    u = usage if usage is not None else (Usage.from_openai(fallback) or Usage())
    return {"input_tokens": u.uncached_prompt_tokens,
            "cache_creation_input_tokens": u.cache_write_tokens, "cache_read_input_tokens": u.cached_tokens,
            "output_tokens": u.completion_tokens}


def to_anthropic_message(data: dict[str, Any], usage: Usage | None, model: str) -> dict[str, Any]:
    """A whole OpenAI chat.completion as an Anthropic Message."""
    choice = (data.get("choices") or [{}])[0]
    msg = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    reasoning = msg.get("reasoning_content") or msg.get("reasoning")
    if isinstance(reasoning, str) and reasoning:
        content.append({"type": "thinking", "thinking": reasoning, "signature": ""})  # unsigned: not Claude's
    if msg.get("content"):
        content.append({"type": "text", "text": msg["content"]})
    for tc in msg.get("tool_calls") or ():
        fn = tc.get("function") or {}
        content.append({"type": "tool_use", "id": tc.get("id") or anthropic_id("toolu_"), "name": fn.get("name"),
                        "input": arguments_object(fn.get("arguments"))})
    return {"id": anthropic_id("msg_"), "type": "message", "role": "assistant",
            "model": data.get("model") or model, "content": content,
            "stop_reason": FINISH_TO_STOP.get(choice.get("finish_reason") or "stop", "end_turn"),
            "stop_sequence": None, "usage": usage_block(usage, data.get("usage"))}


def error_event(err: GatewayError) -> bytes:
    """The ``error`` event that ends a stream that failed after its first byte."""
    return sse_event(b"error", error_body(anthropic_error_type(err), err.message))


def anthropic_error_type(err: GatewayError) -> str:
    if err.code == "overloaded":
        return "overloaded_error"
    return error_type(err.status)


class EventWriter(ChatChunkWalk):
    """OpenAI chunks in, Anthropic SSE events out, one chunk at a time; blocks are opened and closed in order."""

    __slots__ = ("model", "index", "open_kind")

    def __init__(self, model: str) -> None:
        super().__init__()
        self.model = model
        self.index = -1  # the current content block
        self.open_kind: str | None = None  # "thinking" / "text" / "tool_use" while a block is open

    def begin(self, chunk: dict[str, Any]) -> bytes:
        message: dict[str, Any] = {"id": anthropic_id("msg_"), "type": "message", "role": "assistant",
                   "model": chunk.get("model") or self.model, "content": [], "stop_reason": None,
                   "stop_sequence": None, "usage": {"input_tokens": 0, "output_tokens": 0}}
        return sse_event(b"message_start", {"type": "message_start", "message": message})

    def _close(self) -> bytes:
        if self.open_kind is None:
            return b""
        self.open_kind = None
        return sse_event(b"content_block_stop", {"type": "content_block_stop", "index": self.index})

    def _open(self, block: dict[str, Any], kind: str) -> bytes:
        out = self._close()
        self.index += 1
        self.open_kind = kind
        return out + sse_event(b"content_block_start", {"type": "content_block_start", "index": self.index,
                                                        "content_block": block})

    def reasoning(self, text: str) -> bytes:
        out = b"" if self.open_kind == "thinking" else self._open(
            {"type": "thinking", "thinking": "", "signature": ""}, "thinking")
        return out + sse_event(b"content_block_delta", {"type": "content_block_delta", "index": self.index,
                                                        "delta": {"type": "thinking_delta", "thinking": text}})

    def text(self, text: str) -> bytes:
        out = b"" if self.open_kind == "text" else self._open({"type": "text", "text": ""}, "text")
        return out + sse_event(b"content_block_delta", {"type": "content_block_delta", "index": self.index,
                                                        "delta": {"type": "text_delta", "text": text}})

    def tool_start(self, call_id: Any, name: str) -> tuple[int, bytes]:
        out = self._open({"type": "tool_use", "id": call_id or anthropic_id("toolu_"), "name": name, "input": {}},
                         "tool_use")
        return self.index, out

    def tool_arguments(self, index: int, arguments: str) -> bytes:
        return sse_event(b"content_block_delta", {"type": "content_block_delta", "index": index,
                                                  "delta": {"type": "input_json_delta", "partial_json": arguments}})

    def error(self, err: dict[str, Any]) -> bytes:
        """An error object the upstream put inside its stream."""
        return sse_event(b"error", error_body("api_error", stream_error_message(err)))

    def end(self, usage: Usage | None) -> bytes:
        out = self.opening({}) + self._close()
        stop = FINISH_TO_STOP.get(self.finish or "stop", "end_turn")
        out += sse_event(b"message_delta", {
            "type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
            "usage": usage_block(usage, self.chunk_usage)})
        return out + sse_event(b"message_stop", {"type": "message_stop"})
