"""Cohere's answers as OpenAI's: a whole v2 chat response as a ``chat.completion``, its stream's events as
chunks, the usage and the finish reason (a failed generation raises)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from relaygate.core.call import Reply, Usage, token_count
from relaygate.core.errors import Unavailable, UpstreamTimeout
from relaygate.providers.openai_format import ChunkWriter, completion, completion_id

FINISH = {"COMPLETE": "stop", "STOP_SEQUENCE": "stop", "MAX_TOKENS": "length", "TOOL_CALL": "tool_calls"}


def finish_reason(reason: Any, error: Any) -> str:
    """OpenAI's finish_reason for Cohere's; a failed generation raises instead."""
    mapped = FINISH.get(reason) if isinstance(reason, str) else None
    if mapped is not None:
        return mapped
    detail = str(error) if error else "the generation failed"
    if reason == "TIMEOUT":
        raise UpstreamTimeout(f"cohere: generation timed out ({detail})")
    if reason == "ERROR":
        raise Unavailable(f"cohere: {detail}", status=502)
    return "stop"


def arguments(raw: Any) -> str:
    """A tool call's arguments: Cohere says ``"null"`` (or nothing) for a call without any; OpenAI ``"{}"``."""
    return raw if isinstance(raw, str) and raw.strip() not in ("", "null") else "{}"


class ToolArguments:
    """The argument text of streamed tool calls, held back while it may still be Cohere's ``null``."""

    __slots__ = ("undecided",)

    def __init__(self) -> None:
        self.undecided: dict[str, str] = {}  # tool call key -> text held so far (a prefix of "null")

    def start(self, w: ChunkWriter, key: str, fragment: str) -> bytes:
        self.undecided[key] = ""
        return self.feed(w, key, fragment)

    def feed(self, w: ChunkWriter, key: str, fragment: str) -> bytes:
        held = self.undecided.get(key)
        if held is None:
            return w.tool_args(key, fragment)
        text = held + fragment
        if "null".startswith(text.strip()):
            self.undecided[key] = text
            return b""
        del self.undecided[key]
        return w.tool_args(key, text)

    def end(self, w: ChunkWriter, key: str) -> bytes:
        held = self.undecided.pop(key, None)
        out = w.tool_args(key, held) if held is not None and held.strip() not in ("", "null") else b""
        return out + w.tool_end(key)

    def end_all(self, w: ChunkWriter) -> bytes:
        return b"".join(self.end(w, key) for key in list(self.undecided))


def usage_of(u: Any) -> Usage | None:
    """``usage.tokens`` (what the model processed), else ``billed_units``."""
    if not isinstance(u, dict):
        return None
    counts = u.get("tokens") or u.get("billed_units")
    if not isinstance(counts, dict):
        return None
    return Usage(prompt_tokens=token_count(counts.get("input_tokens")),
                 completion_tokens=token_count(counts.get("output_tokens")),
                 cached_tokens=token_count(u.get("cached_tokens")))


def chat_completion(data: dict[str, Any], model: str, usage: Usage | None) -> dict[str, Any]:
    """A Cohere chat response as an OpenAI ``chat.completion``."""
    message = data.get("message") or {}
    text = "".join(str(p.get("text", "")) for p in message.get("content") or []
                   if isinstance(p, dict) and p.get("type") == "text")
    tool_calls = [{"id": tc.get("id") or "", "type": "function",
                   "function": {"name": (tc.get("function") or {}).get("name") or "",
                                "arguments": arguments((tc.get("function") or {}).get("arguments"))}}
                  for tc in message.get("tool_calls") or [] if isinstance(tc, dict)]
    if not text and tool_calls:
        text = message.get("tool_plan") or ""
    reason = finish_reason(data.get("finish_reason"), None)
    return completion(id=completion_id(), model=model,
                      content=text if text or not tool_calls else None, tool_calls=tool_calls or None,
                      finish_reason=reason, usage=usage)


async def relay(events: AsyncIterator[dict[str, Any]], first: dict[str, Any], reply: Reply,
                w: ChunkWriter) -> AsyncIterator[bytes]:
    """Cohere's stream events as OpenAI chunks, each as soon as its event arrived."""
    ev: dict[str, Any] | None = first
    args = ToolArguments()
    while ev is not None:
        out = chunks_of(ev, reply, w, args)
        if out:
            yield out
        if ev.get("type") == "message-end":
            yield w.done()
            return
        ev = await anext(events, None)
    raise Unavailable("upstream cohere stream ended before message-end", status=502)


def chunks_of(ev: dict[str, Any], reply: Reply, w: ChunkWriter, args: ToolArguments) -> bytes:
    """One Cohere stream event as OpenAI chunks (often none)."""
    kind = ev.get("type")
    message = ((ev.get("delta") or {}).get("message")) or {}
    if kind == "content-delta":
        return w.text((message.get("content") or {}).get("text") or "")
    if kind == "tool-plan-delta":
        return w.text(message.get("tool_plan") or "")
    if kind == "tool-call-start":
        tc = message.get("tool_calls") or {}
        fn = tc.get("function") or {}
        key = str(ev.get("index", 0))
        start = w.tool_start(key, tc.get("id") or "", fn.get("name") or "")
        return start + args.start(w, key, fn.get("arguments") or "")
    if kind == "tool-call-delta":
        fn = (message.get("tool_calls") or {}).get("function") or {}
        return args.feed(w, str(ev.get("index", 0)), fn.get("arguments") or "")
    if kind == "tool-call-end":
        return args.end(w, str(ev.get("index", 0)))
    if kind == "message-start":
        return w.role()
    if kind == "message-end":
        delta = ev.get("delta") or {}
        reply.usage = usage_of(delta.get("usage"))
        return args.end_all(w) + w.finish(finish_reason(delta.get("finish_reason"), delta.get("error"))) \
            + w.usage(reply.usage)
    return b""  # content-start/-end, citations, debug: nothing for an OpenAI client
