"""OpenAI chat ↔ Bedrock Converse: the request translated once, the answer (whole or event by event) back."""

from __future__ import annotations

import hashlib
import re
from typing import Any

import orjson

from relaygate.core.call import Usage
from relaygate.core.errors import BadRequest, ContextTooLong, Unavailable, Unsupported
from relaygate.providers.openai_format import (
    ChunkWriter,
    Image,
    completion,
    completion_id,
    content_parts,
    stop_sequences,
    tool_arguments,
)

ANTHROPIC_VERSION = "bedrock-2023-05-31"  # Claude's InvokeModel body: the Messages request, with this version
IMAGE_FORMATS = {"image/png": "png", "image/jpeg": "jpeg", "image/jpg": "jpeg", "image/gif": "gif",
                 "image/webp": "webp"}
STOP_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
                "model_context_window_exceeded": "length", "tool_use": "tool_calls",
                "guardrail_intervened": "content_filter", "content_filtered": "content_filter"}
_BAD_ID_CHARS = re.compile(r"[^a-zA-Z0-9_.:-]")


def _cache_point() -> dict[str, Any]:
    """A fresh cachePoint block (never a shared dict that a later step could change)."""
    return {"cachePoint": {"type": "default"}}


def finish_reason(stop_reason: Any) -> str:
    return STOP_REASONS.get(str(stop_reason), "stop")


def _image_block(img: Image, param: str) -> dict[str, Any]:
    if img.url is not None:
        raise BadRequest("Bedrock does not fetch image URLs; send the image inline as a base64 data: URI",
                         param=param)
    fmt = IMAGE_FORMATS.get((img.media_type or "").lower())
    if fmt is None:
        raise BadRequest(f"image type {img.media_type!r} is not supported by Bedrock (png, jpeg, gif, webp)",
                         param=param)
    return {"image": {"format": fmt, "source": {"bytes": img.b64}}}


def _blocks(content: Any, i: int) -> list[dict[str, Any]]:
    """Text and image blocks of messages[i]; a part with ``cache_control`` is followed by a cache point."""
    if isinstance(content, str):  # the common case, kept cheap: this runs for every message of every call
        return [{"text": content}] if content else []
    param = f"messages[{i}].content"
    blocks: list[dict[str, Any]] = []
    parts = content_parts(content, param)
    raw = content if isinstance(content, list) else [None] * len(parts)
    for j, (part, original) in enumerate(zip(parts, raw, strict=True)):
        if isinstance(part, str):
            if part:  # Bedrock refuses blank text blocks
                blocks.append({"text": part})
        else:
            blocks.append(_image_block(part, f"{param}[{j}]"))
        if isinstance(original, dict) and original.get("cache_control"):
            blocks.append(_cache_point())
    return blocks


def _tool_result(m: dict[str, Any], i: int) -> dict[str, Any]:
    call_id = m.get("tool_call_id")
    if not isinstance(call_id, str) or not call_id:
        raise BadRequest(f"messages[{i}].tool_call_id is required for tool messages",
                         param=f"messages[{i}].tool_call_id")
    content = m.get("content")
    if content is not None and not isinstance(content, (str, list)):
        raise BadRequest(f"messages[{i}].content must be a string or an array of text parts",
                         param=f"messages[{i}].content")
    text = content if isinstance(content, str) else "".join(
        str(p.get("text", "")) for p in content or [] if isinstance(p, dict))
    return {"toolResult": {"toolUseId": tool_use_id(call_id), "content": [{"text": text or " "}]}}


def tool_use_id(call_id: str) -> str:
    """A tool call id as Bedrock accepts it ([a-zA-Z0-9_.:-], at most 64), the same for a call and its
    result: ids minted by other providers (or clients) may use other characters."""
    if len(call_id) <= 64 and not _BAD_ID_CHARS.search(call_id):
        return call_id
    clean = _BAD_ID_CHARS.sub("_", call_id)
    if len(clean) <= 64:
        return clean
    return clean[:40] + "_" + hashlib.sha256(call_id.encode()).hexdigest()[:23]


def _tool_uses(m: dict[str, Any], i: int) -> list[dict[str, Any]]:
    out = []
    for j, tc in enumerate(m.get("tool_calls") or []):
        param = f"messages[{i}].tool_calls[{j}]"
        fn = tc.get("function") if isinstance(tc, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not isinstance(tc.get("id"), str):
            raise BadRequest(f"{param} must have an id and a function name", param=param)
        out.append({"toolUse": {"toolUseId": tool_use_id(tc["id"]), "name": fn["name"],
                                "input": tool_arguments(fn.get("arguments"), f"{param}.function.arguments")}})
    return out


def _messages(messages: list[Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(system blocks, alternating user/assistant messages); consecutive same-role turns are merged."""
    system: list[dict[str, Any]] = []
    out: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        role = m.get("role")
        if role in ("system", "developer"):
            system.extend(_blocks(m.get("content"), i))
            if m.get("cache_control"):
                system.append(_cache_point())
            continue
        if role == "user":
            bedrock_role, blocks = "user", _blocks(m.get("content"), i)
        elif role == "assistant":
            bedrock_role = "assistant"
            blocks = _blocks(m.get("content"), i)
            if m.get("tool_calls"):
                blocks += _tool_uses(m, i)
        elif role == "tool":
            bedrock_role, blocks = "user", [_tool_result(m, i)]
        else:
            raise BadRequest(f"messages[{i}].role {role!r} is not supported by Bedrock",
                             param=f"messages[{i}].role")
        if not blocks:
            continue
        if m.get("cache_control"):  # on a whole message (tool results, string content): cache up to its end
            blocks.append(_cache_point())
        if out and out[-1]["role"] == bedrock_role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": bedrock_role, "content": blocks})
    return system, out


def _tool_config(body: dict[str, Any], has_tool_blocks: bool) -> dict[str, Any] | None:
    tools = body.get("tools")
    if not tools:
        return None
    choice = body.get("tool_choice")
    if choice == "none" and not has_tool_blocks:
        return None  # Converse has no "none": offering no tools is the same thing
    specs = []
    for i, t in enumerate(tools):
        fn = t.get("function") if isinstance(t, dict) and t.get("type", "function") == "function" else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise BadRequest(f"tools[{i}] must be a function tool with a name", param=f"tools[{i}]")
        spec: dict[str, Any] = {"name": fn["name"],
                                "inputSchema": {"json": fn.get("parameters") or {"type": "object", "properties": {}}}}
        if fn.get("description"):
            spec["description"] = fn["description"]
        if isinstance(fn.get("strict"), bool):
            spec["strict"] = fn["strict"]
        specs.append({"toolSpec": spec})
        if t.get("cache_control"):  # the tool definitions up to here are cached
            specs.append(_cache_point())
    config: dict[str, Any] = {"tools": specs}
    if choice == "required":
        config["toolChoice"] = {"any": {}}
    elif choice == "auto":
        config["toolChoice"] = {"auto": {}}
    elif isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        if not isinstance(name, str):
            raise BadRequest("tool_choice.function.name must be a string", param="tool_choice")
        config["toolChoice"] = {"tool": {"name": name}}
    elif choice not in (None, "none"):
        raise BadRequest(f"tool_choice {choice!r} is not supported", param="tool_choice")
    return config


def _inference_config(body: dict[str, Any]) -> dict[str, Any]:
    cfg: dict[str, Any] = {}
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    if max_tokens is not None:
        cfg["maxTokens"] = max_tokens
    if body.get("temperature") is not None:
        cfg["temperature"] = body["temperature"]
    if body.get("top_p") is not None:
        cfg["topP"] = body["top_p"]
    stops = stop_sequences(body)
    if stops:
        cfg["stopSequences"] = stops
    return cfg


def _output_config(body: dict[str, Any]) -> dict[str, Any] | None:
    rf = body.get("response_format")
    if not isinstance(rf, dict) or rf.get("type") in (None, "text"):
        return None
    if rf.get("type") != "json_schema" or not isinstance(rf.get("json_schema"), dict):
        raise Unsupported("Bedrock Converse supports response_format json_schema (not json_object)",
                          param="response_format")
    js = rf["json_schema"]
    schema: dict[str, Any] = {"schema": orjson.dumps(js.get("schema") or {}).decode()}
    if isinstance(js.get("name"), str):
        schema["name"] = js["name"]
    if isinstance(js.get("description"), str):
        schema["description"] = js["description"]
    return {"textFormat": {"type": "json_schema", "structure": {"jsonSchema": schema}}}


def to_converse(body: dict[str, Any]) -> dict[str, Any]:
    """The Converse request for an OpenAI chat body (the model goes in the URL, not the body)."""
    if isinstance(body.get("n"), int) and body["n"] > 1:
        raise Unsupported("Bedrock returns one choice per request; 'n' must be 1", param="n")
    if body.get("logprobs"):
        raise Unsupported("Bedrock does not return logprobs", param="logprobs")
    system, messages = _messages(body["messages"])
    if not messages:
        raise BadRequest("Bedrock needs at least one user message besides system prompts", param="messages")
    req: dict[str, Any] = {"messages": messages}
    if system:
        req["system"] = system
    inference = _inference_config(body)
    if inference:
        req["inferenceConfig"] = inference
    has_tool_blocks = any("toolUse" in b or "toolResult" in b for m in messages for b in m["content"])
    tool_config = _tool_config(body, has_tool_blocks)
    if tool_config:
        req["toolConfig"] = tool_config
    output = _output_config(body)
    if output:
        req["outputConfig"] = output
    return req


def usage_of(u: Any) -> Usage | None:
    """Converse usage; ``inputTokens`` excludes cache reads and writes, OpenAI's prompt_tokens includes them."""
    if not isinstance(u, dict):
        return None
    return Usage.cache_apart(u.get("inputTokens"), u.get("outputTokens"), u.get("cacheReadInputTokens"),
                             u.get("cacheWriteInputTokens"))


def from_converse(data: dict[str, Any], model: str) -> tuple[dict[str, Any], Usage | None]:
    """An OpenAI ``chat.completion`` (and its usage) from a Converse response."""
    stop = data.get("stopReason")
    if stop == "model_context_window_exceeded" and not _message_content(data):
        raise ContextTooLong("the input exceeds the model's context window", param="messages")
    texts: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    for block in _message_content(data):
        if not isinstance(block, dict):
            continue
        if "text" in block:
            texts.append(str(block["text"]))
        elif "toolUse" in block and not _server_tool(block["toolUse"]):
            tu = block["toolUse"]
            tool_calls.append({"id": tu.get("toolUseId"), "type": "function",
                               "function": {"name": tu.get("name"),
                                            "arguments": orjson.dumps(tu.get("input") or {}).decode()}})
    usage = usage_of(data.get("usage"))
    body = completion(id=completion_id(), model=model, content="".join(texts) if texts else None,
                      tool_calls=tool_calls or None, finish_reason=finish_reason(stop), usage=usage)
    return body, usage


def _server_tool(tool_use: Any) -> bool:
    """A tool Bedrock ran itself (Nova's code interpreter): its call and result are not the client's to make."""
    return isinstance(tool_use, dict) and tool_use.get("type") == "server_tool_use"


def _message_content(data: dict[str, Any]) -> list[Any]:
    msg = (data.get("output") or {}).get("message") or {}
    content = msg.get("content") if isinstance(msg, dict) else None
    return content if isinstance(content, list) else []


class StreamTranslator:
    """ConverseStream events → OpenAI chunk bytes, one event at a time."""

    def __init__(self, writer: ChunkWriter) -> None:
        self.writer = writer
        self.usage: Usage | None = None
        self.stopped = False
        self._tools: set[str] = set()  # contentBlockIndex of tool calls started
        self._server_tools: set[str] = set()  # contentBlockIndex of tools Bedrock runs itself

    def feed(self, event_type: str, payload: bytes) -> bytes:
        try:
            data = orjson.loads(payload) if payload else {}
        except orjson.JSONDecodeError:
            raise Unavailable(f"Bedrock sent a {event_type} event that is not JSON", status=502) from None
        w = self.writer
        if event_type == "contentBlockDelta":
            delta = data.get("delta") or {}
            if "text" in delta:
                return w.text(str(delta["text"]))
            tool = delta.get("toolUse")
            if isinstance(tool, dict):
                key = str(data.get("contentBlockIndex"))
                if key in self._server_tools:
                    return b""
                if key not in self._tools:
                    raise Unavailable("Bedrock sent tool input before the tool call started", status=502)
                return w.tool_args(key, str(tool.get("input", "")))
            reasoning = delta.get("reasoningContent")
            if isinstance(reasoning, dict) and isinstance(reasoning.get("text"), str):
                # no OpenAI chunk shape, but billed as output: counted for a stream cut before its usage
                w.delivered.text(len(reasoning["text"]))
            return b""  # reasoning and citations have no OpenAI chunk shape
        if event_type == "contentBlockStart":
            tool = (data.get("start") or {}).get("toolUse")
            if isinstance(tool, dict):
                key = str(data.get("contentBlockIndex"))
                if _server_tool(tool):
                    self._server_tools.add(key)
                    return b""
                self._tools.add(key)
                return w.tool_start(key, str(tool.get("toolUseId", "")), str(tool.get("name", "")))
            return b""
        if event_type == "contentBlockStop":
            key = str(data.get("contentBlockIndex"))
            return w.tool_end(key) if key in self._tools else b""
        if event_type == "messageStart":
            return w.role()
        if event_type == "messageStop":
            self.stopped = True
            out = w.finish(finish_reason(data.get("stopReason")))
            # the usage chunk comes last, after the finish, whichever of the two events came first
            return out + w.usage(self.usage) if self.usage is not None else out
        if event_type == "metadata":
            self.usage = usage_of(data.get("usage"))
            return w.usage(self.usage) if self.stopped else b""
        return b""  # events added later carry nothing for OpenAI
