"""The gateway's error classes: every failure, ours or an upstream's, becomes one of these.

Retry, fallback, circuit breaking and condensation decide on the class (``kind``), never on
provider-specific strings. ``body()`` is OpenAI's error format.
"""

from __future__ import annotations

import asyncio
from typing import Any


class GatewayError(Exception):
    """Base of all errors the gateway reports to a client."""

    status: int = 500
    type: str = "api_error"
    code: str | None = None
    kind: str = "internal"  # the class name fallbacks and breakers match on
    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.retry_after = retry_after
        self.headers: dict[str, str] = dict(headers or {})
        if retry_after is not None and "retry-after" not in self.headers:
            self.headers["retry-after"] = str(max(0, int(retry_after + 0.999)))

    def body(self) -> dict[str, Any]:
        """The OpenAI-format error body."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.status}, {self.message!r})"


class BadRequest(GatewayError):
    status = 400
    type = "invalid_request_error"
    kind = "bad_request"


class ContextTooLong(BadRequest):
    code = "context_length_exceeded"
    kind = "context_too_long"


# what providers say when a prompt does not fit the model's context window (Anthropic, Bedrock, Gemini,
# OpenAI and OpenAI-compatible servers), lower case; read only on answers that are client errors
CONTEXT_TOO_LONG_PHRASES = (
    "prompt is too long", "exceed context limit", "context window", "too many total text bytes",
    "input is too long", "too many input tokens", "context length", "exceeds the maximum number of tokens",
    "input token count",
)


def says_context_too_long(message: str) -> bool:
    """Whether an upstream's client-error message says the prompt is too long for the model."""
    low = message.lower()
    if any(phrase in low for phrase in CONTEXT_TOO_LONG_PHRASES):
        return True
    # Cohere's "too many tokens: ..." is about the prompt unless it names max tokens (the output's limit)
    return "too many tokens" in low and "max tokens" not in low and "max_tokens" not in low


class ContentFiltered(BadRequest):
    code = "content_filter"
    kind = "content_filtered"


class Unsupported(BadRequest):
    code = "unsupported"
    kind = "unsupported"


class AuthError(GatewayError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"
    kind = "auth"


class PermissionDenied(GatewayError):
    status = 403
    type = "permission_error"
    code = "permission_denied"
    kind = "permission"


class NotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"
    kind = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class MethodNotAllowed(GatewayError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"
    kind = "bad_request"


class PayloadTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"
    kind = "bad_request"


class RequestTimeout(GatewayError):
    """The client sent its request too slowly (server.header_timeout, server.body_timeout)."""

    status = 408
    type = "invalid_request_error"
    code = "request_timeout"
    kind = "bad_request"


class HeadTooLarge(GatewayError):
    status = 431
    type = "invalid_request_error"
    code = "request_header_fields_too_large"
    kind = "bad_request"


class RateLimited(GatewayError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"
    kind = "rate_limited"
    retryable = True


class BudgetExceeded(GatewayError):
    status = 429
    type = "insufficient_quota"
    code = "budget_exceeded"
    kind = "budget"
    left_nano: int | None = None  # what the refusing scope's budget has left, spent and reserved counted


class Unavailable(GatewayError):
    """The upstream failed (5xx, overloaded, connection refused): another deployment may do."""

    status = 503
    type = "api_error"
    code = "upstream_unavailable"
    kind = "unavailable"
    retryable = True


class UpstreamTimeout(GatewayError):
    status = 504
    type = "api_error"
    code = "timeout"
    kind = "timeout"
    retryable = True


class ServerBusy(GatewayError):
    """The gateway itself is out of room (its connection cap, file descriptors): not the upstream's fault,
    so neither a breaker nor a fallback acts on it."""

    status = 503
    type = "api_error"
    code = "server_busy"
    kind = "server_busy"


class ServerShutdown(GatewayError):
    """A call the server ended because it is stopping (the drain timeout passed, or a second SIGTERM)."""

    status = 503
    type = "api_error"
    code = "server_shutdown"
    kind = "server_shutdown"


# the message the server cancels calls with when it stops (server/serve.py): whoever sees a CancelledError
# carrying it knows the server, not the client, ended the call
SHUTDOWN_CUT = "relaygate: the server is shutting down"


def cut_by_shutdown(error: BaseException) -> bool:
    """Whether ``error`` is the cancellation the server sends calls it ends at shutdown."""
    return isinstance(error, asyncio.CancelledError) and error.args[:1] == (SHUTDOWN_CUT,)


def shutdown_error() -> ServerShutdown:
    return ServerShutdown("the gateway is shutting down and ended this call before it was complete; retry it",
                          retry_after=1.0)


def from_status(status: int, message: str, *, retry_after: float | None = None,
                code: str | None = None, param: str | None = None) -> GatewayError:
    """Map an upstream HTTP status (after the provider looked for specific codes) to an error class."""
    if status == 429:
        return RateLimited(message, retry_after=retry_after, code=code)
    if status in (401,):
        return AuthError(message, code=code or "upstream_auth_failed")
    if status == 403:
        return PermissionDenied(message, code=code)
    if status == 404:
        return NotFound(message, code=code or "not_found")
    if status == 413:
        return PayloadTooLarge(message, code=code)
    if status in (408, 504):
        return UpstreamTimeout(message, status=504)
    if status >= 500:
        return Unavailable(message, status=status if status in (500, 502, 503) else 502, code=code)
    return BadRequest(message, status=status if 400 <= status < 500 else 400, code=code, param=param)


def mark_recorded(error: BaseException) -> None:
    """Note on a failure that the pipeline logged and counted it, so the server does not do it again."""
    try:
        error.audited = True  # type: ignore[attr-defined]
    except AttributeError:  # an exception type without a __dict__: keep raising it as it is
        pass
