"""The Assistants API's objects (assistants, threads, messages, runs, run steps) as OpenAI documented them,
built from checked request fields, and thread messages as chat messages."""

from __future__ import annotations

import time
from typing import Any

from relaygate.core.errors import BadRequest, Unsupported

HOSTED_TOOLS = ("code_interpreter", "file_search")


def now() -> int:
    return int(time.time())


def tools(value: Any, param: str = "tools") -> list[dict[str, Any]]:
    """Function tools (checked); ``code_interpreter`` and ``file_search`` are a clear 400: they ran at OpenAI."""
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > 128:
        raise BadRequest(f"'{param}' must be an array of at most 128 tools", param=param, code="invalid_type")
    for i, t in enumerate(value):
        kind = t.get("type") if isinstance(t, dict) else None
        if kind in HOSTED_TOOLS:
            raise Unsupported(f"the {kind} tool ({param}[{i}]) ran at OpenAI and is not available on this gateway's "
                              "hosted Assistants API; use function tools", param=f"{param}[{i}].type",
                              code="unsupported_tool")
        fn = t.get("function") if isinstance(t, dict) else None
        if kind != "function" or not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise BadRequest(f"{param}[{i}] must be a function tool with a name", param=f"{param}[{i}]",
                             code="invalid_value")
    return value


def response_format(value: Any) -> Any:
    if value is None or value == "auto":
        return "auto"
    if isinstance(value, dict) and value.get("type") in ("text", "json_object", "json_schema"):
        return value
    raise BadRequest("'response_format' must be auto or {\"type\": text | json_object | json_schema}",
                     param="response_format", code="invalid_value")


def number(body: dict[str, Any], name: str, lo: float, hi: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise BadRequest(f"'{name}' must be a number between {lo:g} and {hi:g}", param=name, code="invalid_value")
    return value


def text(body: dict[str, Any], name: str, limit: int = 256_000) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise BadRequest(f"'{name}' must be a string of at most {limit} characters", param=name, code="invalid_value")
    return value


def message_content(value: Any, param: str = "content") -> list[dict[str, Any]]:
    """A message's content (a string or text / image_url parts) in the stored form."""
    if isinstance(value, str):
        return [{"type": "text", "text": {"value": value, "annotations": []}}]
    if not isinstance(value, list) or not value:
        raise BadRequest(f"'{param}' must be a string or a non-empty array of content parts", param=param,
                         code="invalid_type")
    out: list[dict[str, Any]] = []
    for i, p in enumerate(value):
        kind = p.get("type") if isinstance(p, dict) else None
        if kind == "text" and isinstance(p.get("text"), str):
            out.append({"type": "text", "text": {"value": p["text"], "annotations": []}})
        elif kind == "image_url" and isinstance(p.get("image_url"), dict) and isinstance(p["image_url"].get("url"), str):
            out.append({"type": "image_url", "image_url": {"url": p["image_url"]["url"],
                                                          "detail": p["image_url"].get("detail") or "auto"}})
        elif kind == "image_file":
            raise Unsupported(f"{param}[{i}]: image_file needs OpenAI's file store; send image_url (a URL or a "
                              "data: URL)", param=f"{param}[{i}].type")
        else:
            raise BadRequest(f"{param}[{i}] must be a text or image_url part", param=f"{param}[{i}]",
                             code="invalid_value")
    return out


def message(thread_id: str, role: Any, content: Any, meta: dict[str, str] | None, param: str = "") -> dict[str, Any]:
    """The data of a new thread message (without id and created_at)."""
    if role not in ("user", "assistant"):
        raise BadRequest(f"'{param}role' must be user or assistant", param=f"{param}role", code="invalid_value")
    return {"object": "thread.message", "thread_id": thread_id, "role": role, "status": "completed",
            "content": message_content(content, f"{param}content"), "assistant_id": None, "run_id": None,
            "attachments": [], "metadata": meta or {}, "completed_at": now(), "incomplete_at": None,
            "incomplete_details": None}


def chat_message(m: dict[str, Any]) -> dict[str, Any]:
    """A stored thread message as a chat message."""
    parts: list[dict[str, Any]] = []
    for p in m.get("content") or ():
        if p.get("type") == "text":
            parts.append({"type": "text", "text": p["text"]["value"]})
        elif p.get("type") == "image_url":
            parts.append({"type": "image_url", "image_url": {"url": p["image_url"]["url"]}})
    if m["role"] == "assistant" or all(p["type"] == "text" for p in parts):
        return {"role": m["role"], "content": "".join(p["text"] for p in parts if p["type"] == "text")}
    return {"role": m["role"], "content": parts}


def run_usage(usage: dict[str, int] | None, prompt: int, completion: int) -> dict[str, int]:
    u = usage or {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    p, c = u["prompt_tokens"] + prompt, u["completion_tokens"] + completion
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}
