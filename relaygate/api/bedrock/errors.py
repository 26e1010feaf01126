"""Errors in Bedrock Runtime's shape: an ``x-amzn-ErrorType`` header naming the AWS error, ``{"message": ...}``,
and the status AWS answers it with."""

from __future__ import annotations

import orjson

from relaygate.auth.aws import SigV4Refused
from relaygate.core.errors import GatewayError
from relaygate.server.http import Response

ERROR_NAMESPACE = ":http://internal.amazon.com/coral/com.amazon.bedrock/"


def error_type(err: GatewayError) -> tuple[str, int]:
    """(AWS error type, status) for a gateway error, as Bedrock Runtime names them."""
    if isinstance(err, SigV4Refused):
        return err.error_type, 403
    code, status = err.code, err.status
    if code == "model_not_ready":
        return "ModelNotReadyException", 429
    if code == "budget_exceeded":
        return "ServiceQuotaExceededException", 400
    if status == 429:
        return "ThrottlingException", 429
    if code == "missing_api_key":
        return "MissingAuthenticationTokenException", 403
    if status == 401:  # Bedrock refuses a bad API key with 403
        return "AccessDeniedException", 403
    if status == 403:
        return "AccessDeniedException", 403
    if status == 404:
        return "ResourceNotFoundException", 404
    if status in (408, 504) and err.kind == "timeout":
        return "ModelTimeoutException", 408
    if status == 502:
        return "ModelErrorException", 424
    if status == 503:
        return "ServiceUnavailableException", 503
    if 400 <= status < 500:
        return "ValidationException", 400
    return "InternalServerException", 500


def bedrock_error(err: GatewayError, request_id: str) -> Response:
    kind, status = error_type(err)
    headers = {**err.headers, "x-amzn-errortype": kind + ERROR_NAMESPACE, "x-amzn-requestid": request_id}
    return Response(orjson.dumps({"message": err.message}), status, headers)
