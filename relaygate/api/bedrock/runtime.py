"""Bedrock Runtime in front of any configured model: ``POST /model/{modelId}/converse``, ``/converse-stream``,
``/invoke`` and ``/invoke-with-response-stream`` (Anthropic-on-Bedrock bodies), for boto3's ``bedrock-runtime``
client pointed at the gateway (docs/bedrock.md).

The caller is a SigV4 signature made with a key's derived AWS secret (auth/aws.py), or the key itself as
``Authorization: Bearer`` (how Bedrock API keys are sent). The modelId names a relaygate model; an ARN names
the model after its last ``/``-separated resource part. Errors are Bedrock's: ``x-amzn-ErrorType`` and
``{"message": ...}``, with AWS's statuses.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING
from urllib.parse import quote

import orjson

from relaygate.api.bedrock import converse, invoke
from relaygate.api.bedrock.errors import bedrock_error
from relaygate.api.common import audit_refused
from relaygate.auth.authenticator import caller
from relaygate.auth.aws import SigV4Refused, credentials, sigv4_caller
from relaygate.auth.principal import Principal
from relaygate.core.errors import AuthError, BadRequest, GatewayError, NotFound
from relaygate.providers.aws.sigv4 import (
    Presigned,
    SignatureError,
    SignedBy,
    is_presigned,
    parse_authorization,
    parse_presigned,
)
from relaygate.server.http import Request, Response, StreamResponse

if TYPE_CHECKING:
    from relaygate.gateway import Gateway


async def bedrock_caller(gw: Gateway, req: Request) -> Principal | None:
    """The caller: a SigV4 signature (the ``Authorization`` header, or a presigned URL's ``X-Amz-*`` query)
    verified against its key's derived secret (the body is read for its hash only once the key is known, and
    the hash kept in ``req.body_sha256``), else the usual bearer key."""
    auth = gw.auth
    if auth is None:  # an open gateway: no signature checked
        return None
    header = req.headers.get("authorization", "")
    signed = header.startswith("AWS4-HMAC-SHA256")
    presigned = not signed and not header and is_presigned(req.query)
    if not (signed or presigned):
        return await caller(auth, req.headers)
    try:
        by: SignedBy | Presigned = parse_authorization(header) if signed else parse_presigned(req.query)
    except SignatureError as e:
        raise SigV4Refused(e.error_type, e.message) from None
    raw = req.scope.get("raw_path")
    path = raw.decode("latin-1") if isinstance(raw, bytes) else quote(req.path)
    key, req.body_sha256 = await sigv4_caller(auth, by, req.method, path, req.query, req.headers,
                                              lambda: req.body(gw.config.server.max_body_bytes))
    return key


def model_name(gw: Gateway, model_id: str) -> str:
    """The relaygate model a modelId names: itself, or for an ARN (foundation-model/…, inference-profile/…,
    application-inference-profile/…) the name after its last ``/``."""
    if model_id in gw.table.models or not model_id.startswith("arn:"):
        return model_id
    _, slash, name = model_id.rpartition("/")
    if not slash or not name:
        raise BadRequest(f"the model ARN {model_id[:200]!r} names no model", param="modelId")
    return name


async def runtime(gw: Gateway, req: Request) -> Response | StreamResponse:
    """``/model/{modelId}/{action}``: the id may hold ``/`` (an ARN, sent as %2F): the action is the last part."""
    model_id, _, action = req.params.get("rest", "").rpartition("/")
    try:
        key = await bedrock_caller(gw, req)  # before anything else: no key, no answer about the route
        handler = ACTIONS.get(action)
        if handler is None or not model_id:
            raise NotFound(f"Unknown operation {action!r} on /model/{{modelId}}/")
        return await handler(gw, req, key, model_name(gw, model_id))
    except GatewayError as e:
        audit_refused(gw, req, e)
        return bedrock_error(e, req.id)


async def aws_credentials(gw: Gateway, req: Request) -> Response:
    """``GET /bedrock/credentials``: the SigV4 pair of the key presented as bearer (auth/aws.py)."""
    if gw.auth is None:
        raise NotFound("the gateway is open (no master key): AWS SDKs may sign with any credentials")
    key = await caller(gw.auth, req.headers)
    if key is None or key.id == "master":
        raise AuthError("present a virtual key (not the master key) to learn its AWS credentials")
    return Response(orjson.dumps(credentials(gw.auth, key)), 200, {"cache-control": "no-store"})


Action = Callable[["Gateway", Request, Principal | None, str], Awaitable[Response | StreamResponse]]
ACTIONS: dict[str, Action] = {
    "converse": partial(converse.converse, stream=False), "converse-stream": partial(converse.converse, stream=True),
    "invoke": invoke.invoke, "invoke-with-response-stream": invoke.invoke_stream}

ROUTES = [
    ("POST", "/model/{rest}", runtime),
    ("GET", "/bedrock/credentials", aws_credentials),
]
