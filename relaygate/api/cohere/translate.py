"""Cohere v2 ``/v2/chat`` request -> OpenAI chat request, and OpenAI replies (whole or streamed) -> Cohere's
chat response / its stream events. Pure translation, used by ``/v2/chat`` to serve any configured model."""

from __future__ import annotations

import uuid
from typing import Any

import orjson

from relaygate.api.chunks import ChatChunkWalk, stream_error_message
from relaygate.core.call import Usage
from relaygate.core.errors import BadRequest, GatewayError, Unsupported

# Cohere request fields with no OpenAI counterpart: dropped and named in x-relaygate-dropped-params
DROPPED = ("k", "safety_mode", "citation_options", "thinking", "priority", "logprobs", "strict_tools")
SAME = ("temperature", "seed", "frequency_penalty", "presence_penalty")
# OpenAI's finish_reason -> Cohere's
FINISH = {"stop": "COMPLETE", "length": "MAX_TOKENS", "tool_calls": "TOOL_CALL", "function_call": "TOOL_CALL",
          "content_filter": "ERROR"}


def _bad(message: str, param: str) -> BadRequest:
    return BadRequest(f"invalid request: {message}", param=param)


def to_openai_request(body: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """(OpenAI chat body, names of dropped fields) for a Cohere v2 chat request."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("model must be a non-empty string", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages must be a non-empty list", "messages")
    out: list[dict[str, Any]] = []
    documents = body.get("documents")
    if documents:
        out.append({"role": "system", "content": _documents(documents)})
    for i, m in enumerate(messages):
        out.append(_message(m, i))
    req: dict[str, Any] = {"model": model, "messages": out}
    dropped = [name for name in DROPPED if body.get(name) is not None]
    for name in SAME:
        if body.get(name) is not None:
            req[name] = body[name]
    if body.get("p") is not None:
        req["top_p"] = body["p"]
    if body.get("max_tokens") is not None:
        req["max_completion_tokens"] = body["max_tokens"]
    if body.get("stop_sequences"):
        req["stop"] = body["stop_sequences"]
    tools = body.get("tools")
    if tools:
        if not isinstance(tools, list):
            raise _bad("tools must be a list", "tools")
        req["tools"] = [_tool(t, i) for i, t in enumerate(tools)]
        choice = body.get("tool_choice")
        if choice is not None:
            mapped = {"REQUIRED": "required", "NONE": "none"}.get(str(choice).upper())
            if mapped is None:
                raise _bad("tool_choice must be REQUIRED or NONE", "tool_choice")
            req["tool_choice"] = mapped
    rf = body.get("response_format")
    if isinstance(rf, dict) and rf.get("type") == "json_object":
        schema = rf.get("json_schema") or rf.get("schema")
        req["response_format"] = {"type": "json_schema", "json_schema": {"name": "response", "schema": schema}} \
            if isinstance(schema, dict) else {"type": "json_object"}
    if body.get("stream"):
        req["stream"] = True
        req["stream_options"] = {"include_usage": True}
    return req, dropped


def _documents(documents: Any) -> str:
    """Cohere's grounding documents as a system message (OpenAI has no documents)."""
    if not isinstance(documents, list):
        raise _bad("documents must be a list", "documents")
    lines = []
    for i, d in enumerate(documents):
        data = d.get("data", d) if isinstance(d, dict) else d
        text = data if isinstance(data, str) else orjson.dumps(data).decode()
        ident = d.get("id") if isinstance(d, dict) and isinstance(d.get("id"), str) else f"doc_{i}"
        lines.append(f"[{ident}] {text}")
    return "Answer using these documents:\n" + "\n".join(lines)


def _text(content: Any, where: str, images: bool) -> str | list[dict[str, Any]]:
    """Cohere's content (a string or a list of parts) as OpenAI's."""
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if not isinstance(content, list):
        raise _bad(f"{where}.content must be a string or a list", where)
    parts: list[dict[str, Any]] = []
    for j, p in enumerate(content):
        kind = p.get("type") if isinstance(p, dict) else None
        if kind == "text":
            parts.append({"type": "text", "text": str(p.get("text", ""))})
        elif kind == "image_url" and images and isinstance(p.get("image_url"), dict):
            parts.append({"type": "image_url", "image_url": p["image_url"]})
        elif kind == "document" and isinstance(p.get("document"), dict):
            data = p["document"].get("data")
            parts.append({"type": "text", "text": data if isinstance(data, str) else orjson.dumps(data).decode()})
        elif kind == "thinking":
            continue  # the model's own reasoning: not sent back to another kind of model
        else:
            raise Unsupported(f"{where}.content[{j}]: parts of type {str(kind)[:40]!r} are not supported here",
                              param=where)
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts) if len(parts) != 1 else parts[0]["text"]
    return parts


def _message(m: Any, i: int) -> dict[str, Any]:
    where = f"messages[{i}]"
    if not isinstance(m, dict):
        raise _bad(f"{where} must be an object", where)
    role = m.get("role")
    if role in ("system", "user"):
        return {"role": role, "content": _text(m.get("content"), where, role == "user")}
    if role == "assistant":
        msg: dict[str, Any] = {"role": "assistant"}
        content = _text(m.get("content"), where, False)
        text = content if isinstance(content, str) else ""
        calls = m.get("tool_calls")
        if calls:
            if not isinstance(calls, list):
                raise _bad(f"{where}.tool_calls must be a list", f"{where}.tool_calls")
            msg["tool_calls"] = [_tool_call(tc, f"{where}.tool_calls[{j}]") for j, tc in enumerate(calls)]
            text = text or str(m.get("tool_plan") or "")  # the plan is what the model said before calling
        msg["content"] = text or None
        return msg
    if role == "tool":
        call_id = m.get("tool_call_id")
        if not isinstance(call_id, str) or not call_id:
            raise _bad(f"{where}.tool_call_id is required", f"{where}.tool_call_id")
        content = _text(m.get("content"), where, False)
        return {"role": "tool", "tool_call_id": call_id,
                "content": content if isinstance(content, str) else orjson.dumps(content).decode()}
    raise _bad(f"{where}.role must be one of system, user, assistant, tool", f"{where}.role")


def _tool_call(tc: Any, where: str) -> dict[str, Any]:
    fn = tc.get("function") if isinstance(tc, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise _bad(f"{where}.function.name is required", where)
    args = fn.get("arguments")
    return {"id": str(tc.get("id") or ""), "type": "function", "function": {
        "name": fn["name"], "arguments": args if isinstance(args, str) and args.strip() not in ("", "null")
        else orjson.dumps(args or {}).decode() if isinstance(args, dict) else "{}"}}


def _tool(t: Any, i: int) -> dict[str, Any]:
    fn = t.get("function") if isinstance(t, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise _bad(f"tools[{i}].function.name is required", f"tools[{i}]")
    out: dict[str, Any] = {"name": fn["name"], "parameters": fn.get("parameters") or {"type": "object"}}
    if isinstance(fn.get("description"), str):
        out["description"] = fn["description"]
    return {"type": "function", "function": out}


# ---- replies -------------------------------------------------------------------------------------------

def message_id() -> str:
    """A new id in Cohere's shape (a UUID): a translated answer gets one of its own."""
    return str(uuid.uuid4())


def usage_block(usage: Usage | None, fallback: Any = None) -> dict[str, Any]:
    u = usage if usage is not None else (Usage.from_openai(fallback) or Usage())
    counts = {"input_tokens": u.prompt_tokens, "output_tokens": u.completion_tokens}
    out: dict[str, Any] = {"billed_units": counts, "tokens": dict(counts)}
    if u.cached_tokens:
        out["cached_tokens"] = u.cached_tokens
    return out


def _calls(calls: Any) -> list[dict[str, Any]]:
    return [{"id": tc.get("id") or "", "type": "function",
             "function": {"name": (tc.get("function") or {}).get("name") or "",
                          "arguments": (tc.get("function") or {}).get("arguments") or "{}"}}
            for tc in calls or () if isinstance(tc, dict)]


def to_cohere_response(data: dict[str, Any], usage: Usage | None) -> dict[str, Any]:
    """A whole OpenAI chat.completion as Cohere's chat response (its first choice)."""
    choice = (data.get("choices") or [{}])[0]
    msg = choice.get("message") or {}
    message: dict[str, Any] = {"role": "assistant"}
    content: list[dict[str, Any]] = []
    reasoning = msg.get("reasoning_content") or msg.get("reasoning")
    if isinstance(reasoning, str) and reasoning:
        content.append({"type": "thinking", "thinking": reasoning})
    calls = _calls(msg.get("tool_calls"))
    if calls:  # what the model said before calling is Cohere's tool plan
        message["tool_plan"] = msg.get("content") or ""
        message["tool_calls"] = calls
    elif msg.get("content") is not None or not content:
        content.append({"type": "text", "text": msg.get("content") or ""})
    if content:
        message["content"] = content
    return {"id": message_id(), "finish_reason": FINISH.get(choice.get("finish_reason") or "stop", "COMPLETE"),
            "message": message, "usage": usage_block(usage, data.get("usage"))}


def error_body(err: GatewayError) -> dict[str, Any]:
    """Cohere's error shape: ``{"id", "message"}``."""
    return {"id": message_id(), "message": err.message}


def event(kind: str, data: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **data}) + b"\n\n"


def error_event(err: GatewayError) -> bytes:
    """The event that ends a stream that failed after its first byte: Cohere ends a failed generation with
    ``message-end``, finish_reason ERROR."""
    return event("message-end", {"delta": {"finish_reason": "ERROR", "error": err.message}})


class EventWriter(ChatChunkWalk):
    """OpenAI chunks in, Cohere's v2 stream events out: content blocks and tool calls opened and closed in
    order, the tool plan before the calls, the usage on message-end.

    With ``plans`` (the request offered tools), the text that comes before any tool call is held: when a tool
    call follows, it was the model's plan and goes out as ``tool-plan-delta`` events before
    ``tool-call-start``, as Cohere streams a plan; when the answer ends without one, it goes out as the
    answer's text content. (Without tools there is no plan: text streams as content at once.)"""

    __slots__ = ("index", "open_kind", "tool_open", "plans", "held")

    def __init__(self, plans: bool = False) -> None:
        super().__init__()
        self.plans = plans
        self.held: list[str] = []  # text that may be the tool plan, while no tool call has begun
        self.index = -1  # the current content block
        self.open_kind: str | None = None  # "text" / "thinking" while a content block is open
        self.tool_open: int | None = None

    def begin(self, chunk: dict[str, Any]) -> bytes:
        return event("message-start", {"id": message_id(), "delta": {"message": {
            "role": "assistant", "content": [], "tool_plan": "", "tool_calls": [], "citations": []}}})

    def _close(self) -> bytes:
        out = b""
        if self.open_kind is not None:
            self.open_kind = None
            out += event("content-end", {"index": self.index})
        if self.tool_open is not None:
            out += event("tool-call-end", {"index": self.tool_open})
            self.tool_open = None
        return out

    def _content(self, kind: str, text: str) -> bytes:
        out = b""
        if self.open_kind != kind:
            out += self._close()
            self.index += 1
            self.open_kind = kind
            out += event("content-start", {"index": self.index,
                                           "delta": {"message": {"content": {"type": kind, kind: ""}}}})
        return out + event("content-delta", {"index": self.index, "delta": {"message": {"content": {kind: text}}}})

    def reasoning(self, text: str) -> bytes:
        return self._content("thinking", text)

    def text(self, text: str) -> bytes:
        if self.plans and not self.tools:
            self.held.append(text)
            return b""
        return self._content("text", text)

    def tool_start(self, call_id: Any, name: str) -> tuple[int, bytes]:
        out = self._close()
        if self.held:  # the text before the first tool call was its plan
            out += b"".join(event("tool-plan-delta", {"delta": {"message": {"tool_plan": t}}}) for t in self.held)
            self.held.clear()
        i = self.tool_open = len(self.tools)
        out += event("tool-call-start", {"index": i, "delta": {"message": {"tool_calls": {
            "id": call_id or "", "type": "function", "function": {"name": name, "arguments": ""}}}}})
        return i, out

    def tool_arguments(self, index: int, arguments: str) -> bytes:
        return event("tool-call-delta", {"index": index, "delta": {"message": {"tool_calls": {
            "function": {"arguments": arguments}}}}})

    def error(self, err: dict[str, Any]) -> bytes:
        """An error object the upstream put inside its stream."""
        return event("message-end", {"delta": {"finish_reason": "ERROR", "error": stream_error_message(err)}})

    def end(self, usage: Usage | None) -> bytes:
        out = self.opening({})
        if self.held:  # no tool call followed: the held text was the answer
            out += b"".join(self._content("text", t) for t in self.held)
            self.held.clear()
        out += self._close()
        return out + event("message-end", {"delta": {
            "finish_reason": FINISH.get(self.finish or "stop", "COMPLETE"), "usage": usage_block(usage, self.chunk_usage)}})
