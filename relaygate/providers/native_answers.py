"""What the gateway reads of an answer relayed untouched to a client of the upstream's own dialect (Gemini,
Cohere, Bedrock Converse, Anthropic Messages): the usage, and whether the generation failed (a fallback can still act on it).

As for OpenAI's answers (openai/usage.py), a msgspec ``Struct`` naming only those fields makes the decoder
skip every other value instead of building it: the text, the tool calls and the rest of the answer are
never made into Python objects. An answer whose fields do not fit the typed ones (a count that is not an
integer, a body that is not an object) comes back as ``None``: the caller then parses it whole, as
before, so the result is always what parsing the whole answer would give.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from relaygate.core.call import Usage, token_count

# a token count as ``token_count`` takes one without a second look (an integer from 0 to 2^62); any other
# value fails the typed decode, and the answer is read whole, where ``token_count`` makes it 0
Count = Annotated[int, msgspec.Meta(ge=0, lt=2 ** 62)]


def _cache_apart(uncached: int, output: int, read: int, write: int) -> Usage:
    """``Usage.cache_apart`` of counts decoded as ``Count``s (no second look): prompt tokens include cache
    reads and writes, as OpenAI's do."""
    return Usage(uncached + read + write, output, read, write)


class _GeminiCandidate(msgspec.Struct):
    finishReason: str | None = None  # noqa: N815 (Google's names)
    finishMessage: str | None = None  # noqa: N815


class _GeminiUsage(msgspec.Struct):
    promptTokenCount: Count = 0  # noqa: N815
    candidatesTokenCount: Count = 0  # noqa: N815
    thoughtsTokenCount: Count = 0  # noqa: N815
    cachedContentTokenCount: Count = 0  # noqa: N815


class GeminiAnswer(msgspec.Struct):
    candidates: list[_GeminiCandidate] | None = None
    usageMetadata: _GeminiUsage | None = None  # noqa: N815

    def usage(self) -> Usage | None:
        """As ``gemini.format.usage_of`` reads ``usageMetadata`` (thinking tokens billed as output)."""
        m = self.usageMetadata
        if m is None:
            return None
        return Usage(m.promptTokenCount, m.candidatesTokenCount + m.thoughtsTokenCount, m.cachedContentTokenCount)

    def finishes(self) -> list[dict[str, str | None]]:
        """The candidates' finish reasons and messages, in the shape ``raise_failed`` reads."""
        return [{"finishReason": c.finishReason, "finishMessage": c.finishMessage} for c in self.candidates or ()]

    def reasons(self) -> set[str | None]:
        """The candidates' finish reasons."""
        return {c.finishReason for c in self.candidates or ()}


class _CohereCounts(msgspec.Struct):
    input_tokens: int | float | None = None
    output_tokens: int | float | None = None


class _CohereUsage(msgspec.Struct):
    tokens: _CohereCounts | None = None
    billed_units: _CohereCounts | None = None
    cached_tokens: int | float | None = None


class CohereAnswer(msgspec.Struct):
    finish_reason: str | None = None
    usage: _CohereUsage | None = None

    def tokens(self) -> Usage | None:
        """As ``cohere.usage_of`` reads ``usage``: ``tokens`` (what the model processed), else ``billed_units``."""
        u = self.usage
        if u is None:
            return None
        counts = u.tokens
        if counts is None or (counts.input_tokens is None and counts.output_tokens is None):
            counts = u.billed_units if u.billed_units is not None else counts
        if counts is None:
            return None
        return Usage(token_count(counts.input_tokens), token_count(counts.output_tokens),
                     token_count(u.cached_tokens))


class _ConverseUsage(msgspec.Struct):
    inputTokens: Count = 0  # noqa: N815 (AWS's names)
    outputTokens: Count = 0  # noqa: N815
    cacheReadInputTokens: Count = 0  # noqa: N815
    cacheWriteInputTokens: Count = 0  # noqa: N815


class ConverseAnswer(msgspec.Struct):
    usage: _ConverseUsage | None = None

    def tokens(self) -> Usage | None:
        """As ``bedrock_format.usage_of`` reads it: cache reads and writes are part of the prompt."""
        u = self.usage
        if u is None:
            return None
        return _cache_apart(u.inputTokens, u.outputTokens, u.cacheReadInputTokens, u.cacheWriteInputTokens)


class _MessagesUsage(msgspec.Struct):
    input_tokens: Count = 0
    output_tokens: Count = 0
    cache_read_input_tokens: Count = 0
    cache_creation_input_tokens: Count = 0


class MessagesAnswer(msgspec.Struct):
    type: str | None = None
    usage: _MessagesUsage | None = None

    def tokens(self) -> Usage | None:
        """As ``anthropic.relay.usage_of`` reads ``usage``: cache reads and writes are part of the prompt."""
        u = self.usage
        if u is None:
            return None
        return _cache_apart(u.input_tokens, u.output_tokens, u.cache_read_input_tokens, u.cache_creation_input_tokens)


_gemini = msgspec.json.Decoder(GeminiAnswer).decode
_cohere = msgspec.json.Decoder(CohereAnswer).decode
_converse = msgspec.json.Decoder(ConverseAnswer).decode
_messages = msgspec.json.Decoder(MessagesAnswer).decode


def gemini_answer(raw: bytes) -> GeminiAnswer | None:
    try:
        return _gemini(raw)
    except msgspec.DecodeError:  # (ValidationError included): read whole by the caller
        return None


def cohere_answer(raw: bytes) -> CohereAnswer | None:
    try:
        return _cohere(raw)
    except msgspec.DecodeError:
        return None


def converse_answer(raw: bytes) -> ConverseAnswer | None:
    try:
        return _converse(raw)
    except msgspec.DecodeError:
        return None


def messages_answer(raw: bytes) -> MessagesAnswer | None:
    try:
        return _messages(raw)
    except msgspec.DecodeError:
        return None
