"""What the response cache keeps for one answer (``Entry``), its bytes in a shared level, and the two ways a
chat answer changes form: a stream gathered into one completion, a completion replayed as a stream.

An answer is kept whole whichever way it was asked for: a streamed answer is gathered into the
``chat.completion`` a non-streamed request would have had, so a streamed request can be served from a
non-streamed answer and the reverse.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from relaygate.core.call import Usage
from relaygate.providers.streaming import SSE_DONE, SSEDecoder, sse

if TYPE_CHECKING:
    from relaygate.routing.deployment import Deployment

UNPRICED = -1  # an entry's cost_nano before it is worked out

CHAT = "chat"  # body: a chat.completion (replayed as SSE for a streamed request)
WHOLE = "whole"  # body: any other whole answer (embeddings JSON, speech audio), served as it is


@dataclass(slots=True)
class Entry:
    """One cached answer, never changed once made; ``created`` is wall time (``age`` is shared across
    instances through Redis). Not a frozen dataclass: its checked ``__init__`` costs a miss ~10 % more."""

    kind: str
    body: bytes
    media_type: str
    created: float
    model: str  # the client-facing model (stats, purge by model)
    usage: Usage | None
    cost_nano: int  # what the answer cost when it was made: what each hit saves (UNPRICED: not worked out yet)
    compressed: bool = False
    # a whole chat answer is kept unread: whether it is one to serve again (no refusal, nothing filtered) is
    # looked at when it is first asked for, or before it goes to a shared level (cache/layer.py: ``_checked``);
    # None: looked at and found not to serve (the calls that waited for it all hold it; it is counted once)
    checked: bool | None = True
    # an answer kept UNPRICED: the deployment that made it and the model it was asked for, whose price the usage
    # is worked out at when a hit or a shared level first needs the cost (cache/layer.py: ``_cost``); most
    # answers kept are never asked for again, and nothing else prices a call on a gateway without a request log
    deployment: Deployment | None = None
    asked: str = ""

    def content(self) -> bytes:
        return zlib.decompress(self.body) if self.compressed else self.body

    def age(self, now: float | None = None) -> float:
        return max(0.0, (time.time() if now is None else now) - self.created)

    @property
    def size(self) -> int:
        """The bytes it holds, with a fixed allowance for the object itself."""
        return len(self.body) + len(self.model) + 256


def encode(entry: Entry) -> bytes:
    """The entry as bytes for a shared level: a JSON head (no raw line breaks), a line break, the body; a
    priced entry only (cache/layer.py prices it before it writes it)."""
    u = entry.usage
    head = {"k": entry.kind, "t": entry.media_type, "c": entry.created, "m": entry.model, "$": entry.cost_nano,
            "u": None if u is None else [u.prompt_tokens, u.completion_tokens, u.cached_tokens,
                                         u.cache_write_tokens, u.audio_seconds, u.characters]}
    return orjson.dumps(head) + b"\n" + entry.content()


def decode(data: bytes) -> Entry | None:
    """An entry from ``encode``'s bytes; None for bytes that are not one (another version's, damaged)."""
    cut = data.find(b"\n")
    if cut < 0:
        return None
    try:
        head = orjson.loads(data[:cut])
        u = head["u"]
        usage = None if u is None else Usage(int(u[0]), int(u[1]), int(u[2]), int(u[3]), True, float(u[4]),
                                             int(u[5]))
        return Entry(str(head["k"]), data[cut + 1:], str(head["t"]), float(head["c"]), str(head["m"]), usage,
                     int(head["$"]))
    except (ValueError, KeyError, TypeError, IndexError):
        return None


def compressed(entry: Entry) -> Entry:
    """The entry with its body zlib-compressed (level 1: most of the gain on JSON for little CPU)."""
    if entry.compressed:
        return entry
    return Entry(entry.kind, zlib.compress(entry.body, 1), entry.media_type, entry.created, entry.model,
                 entry.usage, entry.cost_nano, True, entry.checked, entry.deployment, entry.asked)


# ---- a stream gathered into a completion ----------------------------------------------------------------

class Unfinished(ValueError):
    """A stream that is not a whole, clean answer: it is not cached."""


def gather(events: bytes, usage: Usage | None) -> dict[str, Any]:
    """The ``chat.completion`` of a whole OpenAI chat stream (its SSE bytes as the client got them).

    Raises ``Unfinished`` for a stream without ``[DONE]``, a choice without a finish reason, an error event or
    a refusal: only a complete, clean answer is worth serving again."""
    decoder = SSEDecoder()
    datas = [d for _, d in decoder.feed(events)] + [d for _, d in decoder.end()]
    if not datas or datas[-1].strip() != b"[DONE]":
        raise Unfinished("the stream did not end with [DONE]")
    out: dict[str, Any] = {}
    choices: dict[int, dict[str, Any]] = {}
    for data in datas[:-1]:
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise Unfinished("an event is not JSON") from None
        if not isinstance(chunk, dict) or "error" in chunk:
            raise Unfinished("an error event")
        for name in ("id", "created", "model", "system_fingerprint", "service_tier"):
            if name in chunk and chunk[name] is not None:
                out[name] = chunk[name]
        if isinstance(chunk.get("usage"), dict):
            out["usage"] = chunk["usage"]
        for c in chunk.get("choices") or ():
            _add_delta(choices.setdefault(int(c.get("index") or 0), {}), c)
    if not choices:
        raise Unfinished("no choices")
    done = []
    for index in sorted(choices):
        c = choices[index]
        if not c.get("finish_reason"):
            raise Unfinished("a choice has no finish reason")
        content = c.get("content")
        if not content and c.get("tool_calls"):  # the role chunk's "" is no content of a tool-call answer
            content = None
        message: dict[str, Any] = {"role": c.get("role") or "assistant", "content": content, "refusal": None}
        for name, value in c.get("extra", {}).items():
            message[name] = value
        if c.get("tool_calls"):
            message["tool_calls"] = [c["tool_calls"][i] for i in sorted(c["tool_calls"])]
        done.append({"index": index, "message": message, "finish_reason": c["finish_reason"],
                     "logprobs": {"content": c["logprobs"]} if c.get("logprobs") else None})
    result = {"id": out.get("id", ""), "object": "chat.completion", "created": out.get("created", int(time.time())),
              "model": out.get("model", ""), "choices": done}
    for name in ("system_fingerprint", "service_tier"):
        if name in out:
            result[name] = out[name]
    if "usage" in out:
        result["usage"] = out["usage"]
    elif usage is not None and usage.known:  # the usage chunk was dropped for this client: the provider read it
        result["usage"] = usage.as_openai()
    return result


def _add_delta(acc: dict[str, Any], choice: dict[str, Any]) -> None:
    delta = choice.get("delta") or {}
    if not isinstance(delta, dict):
        raise Unfinished("a delta is not an object")
    for name, value in delta.items():
        if value is None:
            continue
        if name == "role":
            acc["role"] = value
        elif name == "content":
            acc["content"] = (acc.get("content") or "") + str(value)
        elif name == "refusal":
            raise Unfinished("a refusal")  # never served again
        elif name == "tool_calls":
            calls = acc.setdefault("tool_calls", {})
            for tc in value:
                i = int(tc.get("index") or 0)
                got = calls.setdefault(i, {"id": None, "type": "function", "function": {"name": "", "arguments": ""}})
                for k, v in tc.items():
                    if k == "function" and isinstance(v, dict):
                        fn = got["function"]
                        fn["name"] += v.get("name") or ""
                        fn["arguments"] += v.get("arguments") or ""
                        for fk, fv in v.items():
                            if fk not in ("name", "arguments"):
                                fn[fk] = fv
                    elif k != "index" and v is not None:
                        got[k] = v
        elif isinstance(value, str):  # reasoning_content and other text deltas: concatenated
            extra = acc.setdefault("extra", {})
            extra[name] = extra.get(name, "") + value
        else:  # lists (thinking_blocks) are concatenated, objects keep the last
            extra = acc.setdefault("extra", {})
            extra[name] = extra.get(name, []) + value if isinstance(value, list) else value
    lp = choice.get("logprobs")
    if isinstance(lp, dict) and isinstance(lp.get("content"), list):
        acc.setdefault("logprobs", []).extend(lp["content"])
    if choice.get("finish_reason"):
        acc["finish_reason"] = choice["finish_reason"]


def refused(completion: dict[str, Any]) -> bool:
    """Whether a completion is a refusal or was filtered (never cached)."""
    for c in completion.get("choices") or ():
        if not isinstance(c, dict):
            return True
        message = c.get("message")
        if c.get("finish_reason") == "content_filter" or (isinstance(message, dict) and message.get("refusal")):
            return True
    return False


# ---- a completion replayed as a stream ------------------------------------------------------------------

def replay(completion: dict[str, Any], include_usage: bool) -> bytes:
    """The SSE events of a whole ``chat.completion``, as OpenAI streams one: per choice a role chunk, the
    content (with its logprobs), the tool calls, the finish; then the usage chunk when asked for; ``[DONE]``."""
    head = {"id": completion.get("id", ""), "object": "chat.completion.chunk",
            "created": completion.get("created", 0), "model": completion.get("model", "")}
    for name in ("system_fingerprint", "service_tier"):
        if name in completion:
            head[name] = completion[name]
    out: list[bytes] = []

    def chunk(index: int, delta: dict[str, Any], finish: str | None = None, logprobs: Any = None) -> None:
        c: dict[str, Any] = {**head, "choices": [{"index": index, "delta": delta, "logprobs": logprobs,
                                                  "finish_reason": finish}]}
        if include_usage:
            c["usage"] = None
        out.append(sse(c))

    for choice in completion.get("choices") or ():
        index = choice.get("index", 0)
        message = choice.get("message") or {}
        chunk(index, {"role": message.get("role") or "assistant", "content": ""})
        for name, value in message.items():
            if name not in ("role", "content", "refusal", "tool_calls") and value is not None:
                chunk(index, {name: value})
        lp = choice.get("logprobs")
        if message.get("content") or lp:
            chunk(index, {"content": message.get("content") or ""}, logprobs=lp)
        for i, tc in enumerate(message.get("tool_calls") or ()):
            chunk(index, {"tool_calls": [{"index": i, **tc}]})
        chunk(index, {}, choice.get("finish_reason") or "stop")
    if include_usage:
        out.append(sse({**head, "choices": [], "usage": completion.get("usage")}))
    out.append(SSE_DONE)
    return b"".join(out)
