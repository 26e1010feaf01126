"""OpenAI chat request -> Anthropic Messages request (pure; no I/O)."""

from __future__ import annotations

import base64
import re
from typing import Any

from relaygate.core.errors import BadRequest, Unsupported
from relaygate.providers.anthropic.wire import thinking_forms
from relaygate.providers.openai_format import stop_sequences, text_of, tool_calls_of

IMAGE_TYPES = frozenset(("image/jpeg", "image/png", "image/gif", "image/webp"))
SAMPLING = ("temperature", "top_p", "top_k")
# OpenAI parameters the Messages API has no counterpart for: dropped (and reported), never forwarded
NO_COUNTERPART = ("presence_penalty", "frequency_penalty", "seed", "logit_bias", "logprobs", "top_logprobs",
                  "prediction", "modalities", "audio", "verbosity", "web_search_options")
# reasoning_effort -> adaptive thinking's effort (Claude 4.6+), or a thinking budget (earlier models)
EFFORTS = {"minimal": "low", "low": "low", "medium": "medium", "high": "high", "xhigh": "xhigh"}
BUDGETS = {"low": 1024, "medium": 4096, "high": 16384, "xhigh": 32768}
MIN_BUDGET = 1024
_TOOL_ID = re.compile(r"^[a-zA-Z0-9_-]+$")
_TOOL_ID_BAD = re.compile(r"[^a-zA-Z0-9_-]")


class Translated:
    """The Messages API body plus what was left out or changed on the way."""

    __slots__ = ("body", "dropped", "adjusted")

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body
        self.dropped: list[str] = []
        self.adjusted: list[str] = []


def to_messages_request(body: dict[str, Any], model: str, *, default_max_tokens: int,
                        rejected: tuple[str, ...], stream: bool) -> Translated:
    """Translate an OpenAI chat body for ``model``; parameters in ``rejected`` are dropped."""
    n = body.get("n")
    if n is not None and n != 1:
        raise Unsupported("anthropic models return one choice; 'n' must be 1", param="n")
    system, messages = convert_messages(body["messages"])
    limit = body.get("max_completion_tokens")
    if limit is None:
        limit = body.get("max_tokens")
    out: dict[str, Any] = {"model": model, "max_tokens": default_max_tokens if limit is None else limit,
                           "messages": messages}
    t = Translated(out)
    if system:
        out["system"] = system
    thinking = _thinking(body, model, out, t)
    for name in SAMPLING:
        value = body.get(name)
        if value is None:
            continue
        if name in rejected or thinking:
            t.dropped.append(name)  # the version refuses it, or thinking wants the default sampling
            continue
        if name == "temperature" and isinstance(value, (int, float)) and value > 1:
            value = 1.0  # OpenAI's range is 0..2, Anthropic's 0..1
            t.adjusted.append("temperature")
        out[name] = value
    seqs = stop_sequences(body)
    if seqs:
        out["stop_sequences"] = seqs
    tools = body.get("tools")
    if tools:
        out["tools"] = convert_tools(tools)
        choice = convert_tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"))
        if choice is not None:
            out["tool_choice"] = choice
    user = body.get("user")
    if isinstance(user, str) and user:
        out["metadata"] = {"user_id": user}
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema")
        if isinstance(schema, dict):
            out["output_config"] = {**out.get("output_config", {}),
                                    "format": {"type": "json_schema", "schema": schema}}
    elif isinstance(fmt, dict) and fmt.get("type") == "json_object":
        t.dropped.append("response_format")
    for name in NO_COUNTERPART:
        if body.get(name) is not None:
            t.dropped.append(name)
    if stream:
        out["stream"] = True
    return t


def _thinking(body: dict[str, Any], model: str, out: dict[str, Any], t: Translated) -> bool:
    """Set Anthropic's thinking from an explicit ``thinking`` object (passed as is) or from OpenAI's
    ``reasoning_effort``, in the form the model takes; True when thinking is on."""
    given = body.get("thinking")
    if isinstance(given, dict):
        out["thinking"] = given
        return given.get("type") in ("enabled", "adaptive")
    effort = EFFORTS.get(body.get("reasoning_effort") or "")
    if effort is None:
        if body.get("reasoning_effort") not in (None, "none"):
            raise BadRequest("reasoning_effort must be one of none, minimal, low, medium, high, xhigh",
                             param="reasoning_effort")
        return False
    if "adaptive" in thinking_forms(model):
        out["thinking"] = {"type": "adaptive"}
        out["output_config"] = {**out.get("output_config", {}), "effort": effort}
        return True
    budget = min(BUDGETS[effort], out["max_tokens"] - 1)  # the client's output cap holds, thinking included
    if budget < MIN_BUDGET:
        t.adjusted.append("reasoning_effort")  # too small a max_tokens to think in: answered without
        return False
    out["thinking"] = {"type": "enabled", "budget_tokens": budget}
    return True


def convert_messages(messages: list[Any]) -> tuple[str | list[dict[str, Any]], list[dict[str, Any]]]:
    """(system, messages): system/developer messages hoisted in order; consecutive same-role turns merged
    (so that consecutive tool results become one user turn)."""
    system: list[dict[str, Any]] = []
    out: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        param = f"messages[{i}]"
        role = m.get("role")
        content = m.get("content")
        if role in ("system", "developer"):
            blocks = [b for b in _text_blocks(content, param) if b["text"]]
            _message_cache_control(m, blocks)
            system.extend(blocks)
            continue
        if role == "user":
            blocks = _user_blocks(content, param)
        elif role == "assistant":
            blocks = _assistant_blocks(m, param)
        elif role == "tool":
            blocks = [_tool_result(m, param)]
            role = "user"
        else:
            raise BadRequest(f"{param}.role {role!r} is not supported; use system, developer, user, "
                             "assistant or tool", param=f"{param}.role")
        if not blocks:
            continue
        _message_cache_control(m, blocks)
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})
    if not out:
        raise BadRequest("messages must contain at least one user or assistant message", param="messages")
    if len(system) == 1 and "cache_control" not in system[0]:
        return system[0]["text"], out
    return system, out


def _message_cache_control(m: dict[str, Any], blocks: list[dict[str, Any]]) -> None:
    """A message-level ``cache_control`` (a common OpenAI-format convention) marks its last block."""
    cc = m.get("cache_control")
    if cc is not None and blocks:
        blocks[-1]["cache_control"] = cc


def _text_blocks(content: Any, param: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if content is None:
        return []
    if not isinstance(content, list):
        raise BadRequest(f"{param}.content must be a string or an array of content parts", param=param)
    out = []
    for j, p in enumerate(content):
        if not isinstance(p, dict) or p.get("type") != "text":
            raise BadRequest(f"{param}.content[{j}] must be a text part here", param=f"{param}.content[{j}]")
        out.append(_text_block(p))
    return out


def _text_block(part: dict[str, Any]) -> dict[str, Any]:
    return _cache_mark(part, {"type": "text", "text": str(part.get("text") or "")})


def _cache_mark(part: dict[str, Any], block: dict[str, Any]) -> dict[str, Any]:
    """Carry a part's cache breakpoint over: Anthropic's own ``cache_control``, or OpenAI's
    ``prompt_cache_breakpoint`` (its 12h lifetime asks for Anthropic's longest, 1h)."""
    if "cache_control" in part:
        block["cache_control"] = part["cache_control"]
    elif isinstance(part.get("prompt_cache_breakpoint"), dict):
        long = part["prompt_cache_breakpoint"].get("ttl") == "12h"
        block["cache_control"] = {"type": "ephemeral", "ttl": "1h"} if long else {"type": "ephemeral"}
    return block


def _user_blocks(content: Any, param: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise BadRequest(f"{param}.content must be a string or an array of content parts", param=param)
    out: list[dict[str, Any]] = []
    for j, p in enumerate(content):
        where = f"{param}.content[{j}]"
        kind = p.get("type") if isinstance(p, dict) else None
        if kind == "text":
            if p.get("text"):
                out.append(_text_block(p))
        elif kind == "image_url":
            iu = p.get("image_url")
            url = iu.get("url") if isinstance(iu, dict) else iu
            if not isinstance(url, str):
                raise BadRequest(f"{where}.image_url.url must be a string", param=where)
            out.append(_cache_mark(p, image_block(url, where)))
        elif kind == "file":
            out.append(_cache_mark(p, document_block(p.get("file"), where)))
        else:
            raise Unsupported(f"content part type {kind!r} is not supported by anthropic", param=f"{where}.type")
    return out


def image_block(url: str, param: str) -> dict[str, Any]:
    """An Anthropic image block from an OpenAI ``image_url`` (data URIs are passed on without decoding)."""
    if url.startswith("data:"):
        header, sep, payload = url.partition(",")
        media_type = header[5:].split(";", 1)[0]
        if not sep or ";base64" not in header or not payload:
            raise BadRequest("image data URIs must be base64 encoded", param=param)
        if media_type not in IMAGE_TYPES:
            raise BadRequest(f"image type {media_type!r} is not supported by anthropic; use "
                             + ", ".join(sorted(IMAGE_TYPES)), param=param)
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": payload}}
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise BadRequest("image_url.url must be an http(s) URL or a data: URI", param=param)


def document_block(file: Any, param: str) -> dict[str, Any]:
    """An Anthropic document block from an OpenAI ``file`` part carrying ``file_data`` (a PDF or text)."""
    data = file.get("file_data") if isinstance(file, dict) else None
    if not isinstance(data, str) or not data:
        raise Unsupported("file parts need 'file_data' for anthropic (uploaded file ids are OpenAI's)",
                          param=f"{param}.file")
    media_type = "application/pdf"
    if data.startswith("data:"):
        header, _, data = data.partition(",")
        media_type = header[5:].split(";", 1)[0] or media_type
    if media_type == "text/plain":
        try:
            text = base64.b64decode(data, validate=True).decode()
        except ValueError:
            raise BadRequest("file_data is not valid base64 text", param=f"{param}.file") from None
        source: dict[str, Any] = {"type": "text", "media_type": "text/plain", "data": text}
    elif media_type == "application/pdf":
        source = {"type": "base64", "media_type": media_type, "data": data}
    else:
        raise BadRequest(f"file type {media_type!r} is not supported by anthropic; use application/pdf "
                         "or text/plain", param=f"{param}.file")
    block: dict[str, Any] = {"type": "document", "source": source}
    if isinstance(file, dict) and isinstance(file.get("filename"), str):
        block["title"] = file["filename"]
    return block


def tool_id(value: Any) -> str:
    """A tool call id in the alphabet Anthropic accepts (the same mapping for calls and results)."""
    s = str(value or "")
    return s if _TOOL_ID.match(s) else (_TOOL_ID_BAD.sub("_", s) or "call")


def _assistant_blocks(m: dict[str, Any], param: str) -> list[dict[str, Any]]:
    content = m.get("content")
    out: list[dict[str, Any]] = [_thinking_block(b) for b in m.get("thinking_blocks") or () if _is_thinking(b)]
    if isinstance(content, str):
        if content:
            out.append({"type": "text", "text": content})
    elif isinstance(content, list):
        text = text_of(content)
        if text:
            out.append({"type": "text", "text": text})
    elif content is not None:
        raise BadRequest(f"{param}.content must be a string or an array of content parts", param=param)
    for tc, name, arguments in tool_calls_of(m, param):
        out.append({"type": "tool_use", "id": tool_id(tc.get("id")), "name": name, "input": arguments})
    return out


def _is_thinking(block: Any) -> bool:
    """A thinking block an earlier answer returned (``thinking_blocks``), complete with its signature."""
    if not isinstance(block, dict):
        return False
    if block.get("type") == "thinking":
        return isinstance(block.get("thinking"), str) and isinstance(block.get("signature"), str)
    return block.get("type") == "redacted_thinking" and isinstance(block.get("data"), str)


def _thinking_block(block: dict[str, Any]) -> dict[str, Any]:
    """The block as Anthropic wants it back: a streamed one also carries its position in the delta (``index``)."""
    if block.get("type") == "thinking":
        return {"type": "thinking", "thinking": block["thinking"], "signature": block["signature"]}
    return {"type": "redacted_thinking", "data": block["data"]}


def _tool_result(m: dict[str, Any], param: str) -> dict[str, Any]:
    call_id = m.get("tool_call_id")
    if not isinstance(call_id, str) or not call_id:
        raise BadRequest(f"{param}.tool_call_id is required for tool messages", param=f"{param}.tool_call_id")
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": tool_id(call_id)}
    content = m.get("content")
    if isinstance(content, str):
        if content:
            block["content"] = content
    elif isinstance(content, list):
        inner = _user_blocks(content, param)
        for b in inner:  # Anthropic takes cache_control on the tool_result only, never inside it
            cc = b.pop("cache_control", None)
            if cc is not None:
                block["cache_control"] = cc
        block["content"] = inner
    return block


def convert_tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise BadRequest("'tools' must be an array", param="tools")
    out = []
    for i, t in enumerate(tools):
        fn = t.get("function") if isinstance(t, dict) and t.get("type", "function") == "function" else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise Unsupported(f"tools[{i}]: only function tools with a name are supported by anthropic",
                              param=f"tools[{i}]")
        tool: dict[str, Any] = {"name": fn["name"],
                                "input_schema": fn.get("parameters") or {"type": "object", "properties": {}}}
        if fn.get("description"):
            tool["description"] = fn["description"]
        if isinstance(fn.get("strict"), bool):
            tool["strict"] = fn["strict"]  # schema-validated inputs, on both sides
        if "cache_control" in t:
            tool["cache_control"] = t["cache_control"]
        out.append(tool)
    return out


def convert_tool_choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
    """OpenAI tool_choice (auto/none/required/named) -> Anthropic's (auto/none/any/tool)."""
    if choice is None or choice == "auto":
        out: dict[str, Any] = {"type": "auto"}
        if parallel is not False:
            return None  # the default; nothing to send
    elif choice == "none":
        return {"type": "none"}
    elif choice == "required":
        out = {"type": "any"}
    elif isinstance(choice, dict) and isinstance((choice.get("function") or {}).get("name"), str):
        out = {"type": "tool", "name": choice["function"]["name"]}
    else:
        raise BadRequest("tool_choice must be 'auto', 'none', 'required' or a named function",
                         param="tool_choice")
    if parallel is False:
        out["disable_parallel_tool_use"] = True
    return out
