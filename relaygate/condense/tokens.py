"""How many tokens a chat request's prompt holds, estimated offline (nothing is downloaded at run time).

No tokenizer ships with relaygate (OpenAI's BPE files, Anthropic's and Google's tokenizers are downloads or
not public), so the count is an estimate that errs high: a third of a token per UTF-8 byte (English text
runs about four characters a token with OpenAI's and Anthropic's tokenizers, so ~25 % over; CJK text about
one token a character, three bytes, so about even), plus per message and per image allowances. Where it
still errs low the upstream's context-length error is the second trigger (docs/cache.md#condensation).
"""

from __future__ import annotations

from typing import Any

import orjson

PER_MESSAGE = 4  # the role and the framing of each message
PER_IMAGE = 1600  # an image part: about what a 1024x1024 image costs on OpenAI (high detail) and Anthropic
BYTES_PER_TOKEN = 3


def text_tokens(text: str) -> int:
    return -(-len(text.encode("utf-8", "surrogatepass")) // BYTES_PER_TOKEN)


def content_tokens(content: Any) -> int:
    if isinstance(content, str):
        return text_tokens(content)
    if isinstance(content, list):
        n = 0
        for part in content:
            if not isinstance(part, dict):
                continue
            kind = part.get("type")
            if kind in ("image_url", "input_image", "image"):
                n += PER_IMAGE
            elif isinstance(part.get("text"), str):
                n += text_tokens(part["text"])
            else:  # audio, files, anything else: its JSON
                n += -(-len(orjson.dumps(part)) // BYTES_PER_TOKEN)
        return n
    return 0


def message_tokens(message: Any) -> int:
    """One message: its content, its tool calls (their JSON), its name, and the framing."""
    if not isinstance(message, dict):
        return PER_MESSAGE
    n = PER_MESSAGE + content_tokens(message.get("content"))
    calls = message.get("tool_calls")
    if calls:
        n += -(-len(orjson.dumps(calls)) // BYTES_PER_TOKEN)
    return n


def prompt_tokens(body: dict[str, Any]) -> int:
    """The request's prompt: its messages and the tool definitions (they are sent as part of it)."""
    messages = body.get("messages")
    n = sum(message_tokens(m) for m in messages) if isinstance(messages, list) else 0
    tools = body.get("tools")
    if tools:
        n += -(-len(orjson.dumps(tools)) // BYTES_PER_TOKEN)
    return n
