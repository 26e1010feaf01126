"""``POST /v1/embeddings``: validate the input shapes OpenAI accepts, then route by model."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from relaygate.api.common import body_call, check, check_int, require, respond
from relaygate.core.call import Route
from relaygate.core.errors import BadRequest
from relaygate.core.shapes.openai import EmbeddingRequest
from relaygate.server.http import Request, Response, StreamResponse

if TYPE_CHECKING:
    from relaygate.gateway import Gateway

ENCODINGS = ("float", "base64")
# inputs per request: OpenAI takes 2048 per call and the providers split longer arrays into batches
# (embedding_batch_size); 16 of OpenAI's batches bound the upstream calls one request can make
MAX_INPUTS = 16 * 2048


def validate_input(value: Any) -> None:
    """A string, an array of strings, an array of tokens, or an array of token arrays; never empty."""
    if isinstance(value, str):
        if not value:
            raise BadRequest("'input' must not be an empty string", param="input")
        return
    if not isinstance(value, list):
        raise BadRequest("'input' must be a string, an array of strings or an array of token arrays",
                         param="input", code="invalid_type")
    if not value:
        raise BadRequest("'input' must not be an empty array", param="input")
    first = value[0]
    if isinstance(first, int) and not isinstance(first, bool):
        if not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in value):
            raise BadRequest("a token array must contain only non-negative integers", param="input")
        return
    if len(value) > MAX_INPUTS:
        raise BadRequest(f"Invalid 'input': array too long. Expected an array with maximum length {MAX_INPUTS}, "
                         f"but got an array with length {len(value)} instead.", param="input",
                         code="array_above_max_length")
    for i, item in enumerate(value):
        if isinstance(item, str):
            if not item:
                raise BadRequest(f"input[{i}] must not be an empty string", param=f"input[{i}]")
        elif isinstance(item, list):
            if not item or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in item):
                raise BadRequest(f"input[{i}] must be a non-empty array of non-negative integer tokens",
                                 param=f"input[{i}]")
        else:
            raise BadRequest(f"input[{i}] must be a string or an array of tokens, not {type(item).__name__}",
                             param=f"input[{i}]", code="invalid_type")


def validate_embeddings(body: dict[str, Any]) -> None:
    model = require(body, "model", str, "a string")
    if not model:
        raise BadRequest("'model' must not be empty", param="model")
    if "input" not in body or body["input"] is None:
        raise BadRequest("you must provide the 'input' parameter", param="input", code="missing_required_parameter")
    validate_input(body["input"])
    fmt = check(body, "encoding_format", str, "a string")
    if fmt is not None and fmt not in ENCODINGS:
        raise BadRequest(f"'encoding_format' must be one of {', '.join(ENCODINGS)}, not {fmt!r}",
                         param="encoding_format")
    check_int(body, "dimensions", 1)  # no maximum: it is the model's (OpenAI's spec has none either)
    check(body, "user", str, "a string")


async def embeddings(gw: Gateway, req: Request) -> Response | StreamResponse:
    call = await body_call(gw, req, Route.EMBEDDINGS, validate_embeddings, EmbeddingRequest)
    return respond(call, await gw.handle(call))


ROUTES = [
    ("POST", "/v1/embeddings", embeddings),
    ("POST", "/embeddings", embeddings),
]
