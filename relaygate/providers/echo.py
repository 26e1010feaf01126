"""The echo model: a deterministic answer to an OpenAI chat request, written once for the built-in ``demo``
model and for the provider emulators in relaygate/testing (which import it from here: emulators stay out of
the gateway's import graph, this module is part of it).

The answer echoes the last user message (with its images and the system prompt noted), calls the first
offered tool (arguments made from its schema), or reports a tool result; ``max_tokens``, ``stop``, ``n``,
``logprobs`` and ``response_format`` act on it as they do on a real model's. ``complete()`` and
``stream_chunks()`` give it as a whole ``chat.completion`` or as the chunks of a stream.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any

import orjson

MAX_CHOICES = 128  # n (chat and completions), as OpenAI's OpenAPI spec bounds it
MAX_ANSWER_CHARS = 64 * 1024  # ~16k tokens, gpt-4o's output limit: an echo of a huge prompt stops there


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def _images_in(content: Any) -> int:
    if isinstance(content, list):
        return sum(1 for p in content if isinstance(p, dict) and p.get("type") == "image_url")
    return 0


def count_tokens(body: dict[str, Any]) -> int:
    """An emulated token count: whitespace-separated words, plus 4 per message."""
    n = 0
    for m in body.get("messages") or []:
        if isinstance(m, dict):
            n += 4 + len(_text_of(m.get("content")).split()) + 85 * _images_in(m.get("content"))
    return max(n, 1)


def arguments_for(schema: Any, text: str) -> dict[str, Any]:
    props = schema.get("properties", {}) if isinstance(schema, dict) else {}
    required = schema.get("required", list(props)) if isinstance(schema, dict) else []
    args: dict[str, Any] = {}
    for name in required:
        t = props.get(name, {}).get("type") if isinstance(props.get(name), dict) else "string"
        t = str(t).lower()  # Gemini's Schema spells types in capitals ("STRING")
        if t in ("number", "integer"):
            args[name] = 1
        elif t == "boolean":
            args[name] = True
        elif t == "array":
            args[name] = [text]
        elif t == "object":
            args[name] = {}
        else:
            enum = props.get(name, {}).get("enum") if isinstance(props.get(name), dict) else None
            args[name] = enum[0] if enum else text
    return args


def _tool_to_call(body: dict[str, Any], last_user: str) -> dict[str, Any] | None:
    tools = body.get("tools")
    choice = body.get("tool_choice", "auto")
    if not tools or choice == "none":
        return None
    messages = body.get("messages") or []
    if messages and isinstance(messages[-1], dict) and messages[-1].get("role") == "tool":
        return None  # answer the tool result instead of calling again
    wanted = None
    if isinstance(choice, dict):
        wanted = (choice.get("function") or {}).get("name")
    for t in tools:
        fn = t.get("function", {}) if isinstance(t, dict) else {}
        if wanted is None or fn.get("name") == wanted:
            args = orjson.dumps(arguments_for(fn.get("parameters"), last_user)).decode()
            digest = hashlib.sha1(f"{fn.get('name')}{args}".encode()).hexdigest()[:24]
            return {"id": f"call_{digest}", "type": "function",
                    "function": {"name": fn.get("name", ""), "arguments": args}}
    return None


@dataclass
class Answer:
    text: str | None
    tool_call: dict[str, Any] | None
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


def answer(body: dict[str, Any], prefix: str = "Hello! You said: ", max_chars: int = MAX_ANSWER_CHARS,
           words_at_least: int = 0) -> Answer:
    """What the emulated model says to this request (at most ``max_chars`` of it, as a model's output limit;
    padded with "more" to ``words_at_least`` words)."""
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    last_user = next((_text_of(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")
    system = next((_text_of(m.get("content")) for m in messages if m.get("role") in ("system", "developer")), "")
    prompt_tokens = count_tokens(body)
    call = _tool_to_call(body, last_user)
    if call is not None:
        return Answer(None, call, "tool_calls", prompt_tokens, len(call["function"]["arguments"].split()) + 5)
    last = messages[-1] if messages else {}
    if last.get("role") == "tool":
        text = f"The tool returned: {_text_of(last.get('content'))}"
    else:
        text = prefix + last_user
        images = sum(_images_in(m.get("content")) for m in messages)
        if images:
            text += f" (I see {images} image{'s' if images != 1 else ''})"
        if system:
            text += f" [system: {system}]"
        turns = sum(1 for m in messages if m.get("role") == "user")
        if turns > 1:
            text += f" [turn {turns}]"
    rf = body.get("response_format")
    if isinstance(rf, dict) and rf.get("type") in ("json_object", "json_schema"):
        text = orjson.dumps({"answer": text}).decode()
    finish = "stop"
    if len(text) > max_chars:  # cut first: splitting a huge echo would cost more than the answer is worth
        text, finish = text[:max_chars], "length"
    words = text.split(" ")
    if len(words) < words_at_least:
        words += ["more"] * (words_at_least - len(words))
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    if isinstance(limit, int) and 0 < limit < len(words):
        words, finish = words[:limit], "length"
    text = " ".join(words)
    stop = body.get("stop")
    for s in [stop] if isinstance(stop, str) else (stop or []):
        if isinstance(s, str) and s and s in text:
            text, finish = text[: text.index(s)], "stop"
    return Answer(text, None, finish, prompt_tokens, max(1, len(text.split())))


def _usage(a: Answer) -> dict[str, Any]:
    return {"prompt_tokens": a.prompt_tokens, "completion_tokens": a.completion_tokens,
            "total_tokens": a.prompt_tokens + a.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}


def _logprobs(text: str | None) -> dict[str, Any]:
    toks = (text or "").split(" ")
    return {"content": [{"token": t, "logprob": -0.01, "bytes": list(t.encode()), "top_logprobs": []}
                        for t in toks], "refusal": None}


def _completion_id(body: dict[str, Any]) -> str:
    return "chatcmpl-" + hashlib.sha1(orjson.dumps(body.get("messages"))).hexdigest()[:24]


def complete(body: dict[str, Any], prefix: str = "Hello! You said: ",
             max_chars: int = MAX_ANSWER_CHARS, words_at_least: int = 0) -> dict[str, Any]:
    """A whole ``chat.completion`` object."""
    a = answer(body, prefix, max_chars, words_at_least)
    n_raw = body.get("n")
    n = min(n_raw, MAX_CHOICES) if isinstance(n_raw, int) and n_raw > 0 else 1
    message: dict[str, Any] = {"role": "assistant", "content": a.text, "refusal": None, "annotations": []}
    if a.tool_call:
        message["tool_calls"] = [a.tool_call]
    logprobs = _logprobs(a.text) if body.get("logprobs") else None  # the same for every choice: built once
    choices = [{"index": i, "message": message, "finish_reason": a.finish_reason, "logprobs": logprobs}
               for i in range(n)]
    return {"id": _completion_id(body), "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model"), "choices": choices, "usage": _usage(a),
            "service_tier": "default", "system_fingerprint": "fp_relaygate_emu"}


def stream_chunks(body: dict[str, Any], prefix: str = "Hello! You said: ",
                  max_chars: int = MAX_ANSWER_CHARS, words_at_least: int = 0) -> list[dict[str, Any]]:
    """The ``chat.completion.chunk`` objects of a streamed answer, in order (usage chunk if asked)."""
    a = answer(body, prefix, max_chars, words_at_least)
    cid, created, model = _completion_id(body), int(time.time()), body.get("model")
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

    def chunk(delta: dict[str, Any], finish: str | None = None, logprobs: Any = None) -> dict[str, Any]:
        c: dict[str, Any] = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                             "system_fingerprint": "fp_relaygate_emu",
                             "choices": [{"index": 0, "delta": delta, "logprobs": logprobs,
                                          "finish_reason": finish}]}
        if include_usage:
            c["usage"] = None
        return c

    out = [chunk({"role": "assistant", "content": "" if a.tool_call is None else None, "refusal": None})]
    if a.tool_call:
        tc = a.tool_call
        out.append(chunk({"tool_calls": [{"index": 0, "id": tc["id"], "type": "function",
                                          "function": {"name": tc["function"]["name"], "arguments": ""}}]}))
        args = tc["function"]["arguments"]
        step = max(1, len(args) // 3)
        for i in range(0, len(args), step):
            out.append(chunk({"tool_calls": [{"index": 0, "function": {"arguments": args[i:i + step]}}]}))
    else:
        words = (a.text or "").split(" ")
        for i, w in enumerate(words):
            piece = w if i == len(words) - 1 else w + " "
            out.append(chunk({"content": piece}, logprobs=_logprobs(piece) if body.get("logprobs") else None))
    out.append(chunk({}, a.finish_reason))
    if include_usage:
        out.append({"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                    "system_fingerprint": "fp_relaygate_emu", "choices": [], "usage": _usage(a)})
    return out
