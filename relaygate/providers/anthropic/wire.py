"""Facts about Anthropic's Messages API wire format shared by the provider, the ``/v1/messages`` route and
the emulator: API versions, error types, stop reasons, SSE framing."""

from __future__ import annotations

import re
from typing import Any

from relaygate.providers.streaming import sse

VERSION_2023 = "2023-06-01"
VERSION_2026 = "2026-10-21"  # released 21 Oct 2026; the anthropic SDK 2.x default
API_VERSIONS = (VERSION_2023, VERSION_2026)
VERTEX_VERSION = "vertex-2023-10-16"  # Vertex AI's name for the 2023-06-01 API (sent in the body)

# sampling parameters a version rejects with 400 (even at their default values)
REJECTED_PARAMS: dict[str, tuple[str, ...]] = {
    VERSION_2023: (),
    VERTEX_VERSION: (),
    VERSION_2026: ("temperature", "top_p", "top_k"),
}


def bearer_auth(version: str) -> bool:
    """Whether a client of this version sends its key as ``Authorization: Bearer`` (else ``x-api-key``)."""
    return version != VERSION_2023


_VERSION = re.compile(r"^claude-(?:[a-z]+-)?(\d+)(?:-(\d)(?=-|$))?")


def claude_version(model: str) -> tuple[int, int] | None:
    """(major, minor) of a Claude model id (``claude-sonnet-4-6`` -> (4, 6); ``claude-3-7-sonnet`` -> (3, 7))."""
    m = _VERSION.match(model)
    return (int(m.group(1)), int(m.group(2) or 0)) if m else None


def thinking_forms(model: str) -> tuple[str, ...]:
    """The ``thinking.type`` values a model takes: adaptive thinking arrived with 4.6, and later models
    take nothing else; earlier (and unknown) ones only know the budget form."""
    v = claude_version(model)
    if v is None or v < (4, 6):
        return ("enabled", "disabled")
    if v == (4, 6):
        return ("enabled", "disabled", "adaptive")
    return ("adaptive",)


ERROR_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 402: "billing_error", 403: "permission_error",
    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
    504: "timeout_error", 529: "overloaded_error",
}


def error_type(status: int) -> str:
    """Anthropic's error ``type`` for an HTTP status."""
    return ERROR_TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")


def error_body(kind: str, message: str, request_id: str | None = None) -> dict[str, Any]:
    """Anthropic's error object: ``{"type":"error","error":{"type","message"}}``."""
    body: dict[str, Any] = {"type": "error", "error": {"type": kind, "message": message}}
    if request_id:
        body["request_id"] = request_id
    return body


# Anthropic stop_reason -> OpenAI finish_reason, and back
STOP_TO_FINISH = {
    "end_turn": "stop", "stop_sequence": "stop", "pause_turn": "stop", "max_tokens": "length",
    "model_context_window_exceeded": "length", "tool_use": "tool_calls", "refusal": "content_filter",
}
FINISH_TO_STOP = {
    "stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use",
    "content_filter": "refusal",
}


def sse_event(name: bytes, data: Any) -> bytes:
    """One named server-sent event as Anthropic frames them."""
    return sse(data, name)
