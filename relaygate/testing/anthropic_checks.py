"""Request checks of the Anthropic emulator: what the Messages API refuses with 400, version by version."""

from __future__ import annotations

import hashlib
from typing import Any

from relaygate.providers.anthropic.wire import REJECTED_PARAMS, VERSION_2023, thinking_forms

IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
TOP_LEVEL = frozenset((
    "model", "messages", "max_tokens", "system", "stream", "stop_sequences", "temperature", "top_p", "top_k",
    "tools", "tool_choice", "metadata", "thinking", "service_tier", "output_config", "cache_control",
    "container", "inference_geo", "speed",
))


class Invalid(Exception):
    """A request the real API refuses with 400 invalid_request_error."""


def blocks_of(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [b for b in content if isinstance(b, dict)] if isinstance(content, list) else []


def text_of(content: Any) -> str:
    return " ".join(b.get("text", "") for b in blocks_of(content) if b.get("type") == "text")


def _check_image(block: dict[str, Any], where: str) -> None:
    src = block.get("source")
    if not isinstance(src, dict):
        raise Invalid(f"{where}.source: Field required")
    kind = src.get("type")
    if kind == "base64":
        if src.get("media_type") not in IMAGE_TYPES:
            raise Invalid(f"{where}.source.base64.media_type: Input should be "
                          + ", ".join(repr(t) for t in IMAGE_TYPES))
        if not isinstance(src.get("data"), str) or not src["data"]:
            raise Invalid(f"{where}.source.base64.data: Field required")
    elif kind == "url":
        if not isinstance(src.get("url"), str) or not src["url"].startswith(("http://", "https://")):
            raise Invalid(f"{where}.source.url.url: must be an http(s) URL")
    else:
        raise Invalid(f"{where}.source: Input tag {kind!r} found using 'type' does not match any of the "
                      "expected tags: 'base64', 'url', 'file'")


def _check_document(block: dict[str, Any], where: str) -> None:
    src = block.get("source")
    if not isinstance(src, dict):
        src = {}
    kind = src.get("type")
    if kind == "base64":
        if src.get("media_type") != "application/pdf" or not isinstance(src.get("data"), str):
            raise Invalid(f"{where}.source.base64: a base64 document must be application/pdf data")
    elif kind == "text":
        if not isinstance(src.get("data"), str):
            raise Invalid(f"{where}.source.text.data: Field required")
    elif kind != "url":
        raise Invalid(f"{where}.source: Input tag {kind!r} found using 'type' does not match any of the "
                      "expected tags: 'base64', 'text', 'url', 'content', 'file'")


def validate(body: dict[str, Any], version: str) -> None:
    """Raise Invalid the way the Messages API does for a malformed request."""
    for name in body:
        if name not in TOP_LEVEL or name in REJECTED_PARAMS[version]:
            raise Invalid(f"{name}: Extra inputs are not permitted")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise Invalid("model: Field required")
    mt = body.get("max_tokens")
    if mt is None:
        raise Invalid("max_tokens: Field required")
    if not isinstance(mt, int) or isinstance(mt, bool) or mt < 0:
        raise Invalid("max_tokens: Input should be a valid integer greater than or equal to 0")
    for name, hi in (("temperature", 1.0), ("top_p", 1.0)):
        v = body.get(name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= hi):
            raise Invalid(f"{name}: Input should be a number between 0 and {hi}")
    system = body.get("system")
    if system is not None and not isinstance(system, (str, list)):
        raise Invalid("system: Input should be a valid string or a list of text blocks")
    for i, b in enumerate(system if isinstance(system, list) else []):
        if not isinstance(b, dict) or b.get("type") != "text" or not isinstance(b.get("text"), str):
            raise Invalid(f"system.{i}: Input should be a text block")
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise Invalid("messages: Field required")
    if not messages:
        raise Invalid("messages: at least one message is required")
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise Invalid("tools: Input should be a valid list")
        for i, t in enumerate(tools):
            if not isinstance(t, dict) or not isinstance(t.get("name"), str) or not t["name"]:
                raise Invalid(f"tools.{i}.name: Field required")
            if not isinstance(t.get("input_schema"), dict):
                raise Invalid(f"tools.{i}.input_schema: Field required")
    choice = body.get("tool_choice")
    if choice is not None:
        if not isinstance(choice, dict) or choice.get("type") not in ("auto", "any", "tool", "none"):
            raise Invalid("tool_choice: Input tag does not match any of the expected tags: "
                          "'auto', 'any', 'tool', 'none'")
        if choice["type"] == "tool" and not any(t.get("name") == choice.get("name") for t in tools or []):
            raise Invalid(f"tool_choice.name: tool {choice.get('name')!r} is not in 'tools'")
    _validate_thinking(body)
    _validate_messages(messages, version)
    if thinking_on(body):
        _check_thinking_turn(messages)


def thinking_on(body: dict[str, Any]) -> bool:
    t = body.get("thinking")
    return isinstance(t, dict) and t.get("type") in ("enabled", "adaptive")


def sign(thinking: str) -> str:
    """The emulator's signature of a thinking block (checked when the block comes back)."""
    return hashlib.sha256(b"relaygate-emulator-thinking:" + thinking.encode()).hexdigest()[:48]


def _validate_thinking(body: dict[str, Any]) -> None:
    t = body.get("thinking")
    if t is None:
        return
    if not isinstance(t, dict) or t.get("type") not in ("enabled", "disabled", "adaptive"):
        raise Invalid("thinking: Input tag does not match any of the expected tags: 'enabled', 'disabled', "
                      "'adaptive'")
    if t["type"] not in thinking_forms(body["model"]):
        if thinking_forms(body["model"]) == ("adaptive",):
            raise Invalid(f'"thinking.type.{t["type"]}" is not supported for this model. Use '
                          '"thinking.type.adaptive" and "output_config.effort" to control thinking behavior.')
        raise Invalid(f'thinking.type: "{t["type"]}" is not supported for this model')
    if t["type"] == "enabled":
        budget = t.get("budget_tokens")
        if not isinstance(budget, int) or budget < 1024:
            raise Invalid("thinking.enabled.budget_tokens: Input should be greater than or equal to 1024")
        if budget >= body["max_tokens"]:
            raise Invalid("`max_tokens` must be greater than `thinking.budget_tokens`")
    if t["type"] != "disabled":
        if body.get("temperature") not in (None, 1, 1.0):
            raise Invalid("`temperature` may only be set to 1 when thinking is enabled or in adaptive mode")
        if (body.get("tool_choice") or {}).get("type") in ("any", "tool"):
            raise Invalid("Thinking may not be enabled when tool_choice forces tool use.")


def _check_thinking_turn(messages: list[dict[str, Any]]) -> None:
    """With thinking on, the assistant turn being continued with tool results must start with its thinking."""
    if len(messages) < 2 or not any(b.get("type") == "tool_result" for b in blocks_of(messages[-1].get("content"))):
        return
    i = len(messages) - 2
    first = (blocks_of(messages[i].get("content")) or [{}])[0]
    if first.get("type") not in ("thinking", "redacted_thinking"):
        raise Invalid(f"messages.{i}.content.0.type: Expected `thinking` or `redacted_thinking`, but found "
                      f"`{first.get('type')}`. When `thinking` is enabled, a final `assistant` message must "
                      "start with a thinking block (preceeding the lastmost set of `tool_use` and "
                      "`tool_result` blocks).")


def _validate_messages(messages: list[Any], version: str) -> None:
    pending: set[str] = set()  # tool_use ids of the previous assistant turn awaiting results
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise Invalid(f"messages.{i}: Input should be a valid dictionary")
        role, content = m.get("role"), m.get("content")
        if role not in ("user", "assistant"):
            raise Invalid(f"messages.{i}.role: Input should be 'user' or 'assistant'")
        if not isinstance(content, (str, list)):
            raise Invalid(f"messages.{i}.content: Field required")
        if isinstance(content, list) and not content and not (role == "assistant" and i == len(messages) - 1):
            raise Invalid(f"messages.{i}: all messages must have non-empty content except for the optional "
                          "final assistant message")
        results: set[str] = set()
        uses: set[str] = set()
        for j, b in enumerate(blocks_of(content)):
            where = f"messages.{i}.content.{j}"
            kind = b.get("type")
            if kind == "text":
                if not isinstance(b.get("text"), str):
                    raise Invalid(f"{where}.text: Field required")
                if version != VERSION_2023 and role == "user" and b.get("citations"):
                    raise Invalid(f"{where}.citations: citations are not accepted on user text blocks")
            elif kind == "image":
                if role != "user":
                    raise Invalid(f"{where}: image blocks are only allowed in user messages")
                _check_image(b, where)
            elif kind == "tool_use":
                if role != "assistant":
                    raise Invalid(f"{where}: tool_use blocks are only allowed in assistant messages")
                if not isinstance(b.get("id"), str) or not isinstance(b.get("name"), str) \
                        or not isinstance(b.get("input"), dict):
                    raise Invalid(f"{where}: tool_use blocks need 'id', 'name' and an object 'input'")
                uses.add(b["id"])
            elif kind == "tool_result":
                if role != "user":
                    raise Invalid(f"{where}: tool_result blocks are only allowed in user messages")
                tid = b.get("tool_use_id")
                if tid not in pending:
                    raise Invalid(f"messages.{i}.content.{j}: unexpected `tool_use_id` found in `tool_result` "
                                  f"blocks: {tid}. Each `tool_result` block must have a corresponding "
                                  "`tool_use` block in the previous message.")
                results.add(tid)
                for k, inner in enumerate(blocks_of(b.get("content", []))):
                    if inner.get("type") == "image":
                        _check_image(inner, f"{where}.content.{k}")
                    if "cache_control" in inner:
                        raise Invalid(f"{where}.tool_result.content.{k}.cache_control: cache_control may not be "
                                      "specified within `tool_result.content`. Instead, place it directly on "
                                      "`tool_result`")
            elif kind == "document":
                if role == "assistant" and version != VERSION_2023:
                    raise Invalid(f"{where}: document blocks are not accepted in assistant messages")
                _check_document(b, where)
            elif kind == "thinking":
                if b.get("signature") != sign(str(b.get("thinking", ""))):
                    raise Invalid(f"{where}: Invalid `signature` in `thinking` block")
            elif kind != "redacted_thinking":
                raise Invalid(f"{where}.type: Input tag {kind!r} found using 'type' does not match any of the "
                              "expected tags")
        if pending and pending - results:
            raise Invalid(f"messages.{i}: `tool_use` ids were found without `tool_result` blocks immediately "
                          f"after: {', '.join(sorted(pending - results))}. Each `tool_use` block must have a "
                          "corresponding `tool_result` block in the next message.")
        pending = uses
