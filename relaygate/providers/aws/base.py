"""What the AWS providers share: credentials, SigV4-signed JSON POSTs, AWS error shapes → gateway errors."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import urlsplit

import orjson

from relaygate.config import AwsFields, BedrockDeployment
from relaygate.core.call import Reply
from relaygate.core.errors import (
    AuthError,
    BadRequest,
    ContextTooLong,
    GatewayError,
    NotFound,
    PermissionDenied,
    RateLimited,
    Unavailable,
    UpstreamTimeout,
    from_status,
    says_context_too_long,
)
from relaygate.providers.aws.credentials import BotocoreSource, CredentialSource
from relaygate.providers.aws.eventstream import EventMessage, EventStreamDecoder, EventStreamError
from relaygate.providers.aws.sigv4 import AwsCredentials, SigV4Signer
from relaygate.providers.base import Provider, error_json, retry_after_seconds
from relaygate.providers.streaming import UpstreamBody
from relaygate.upstream import Response

SIGNING_SERVICE = "bedrock"  # both bedrock-runtime and bedrock-agent-runtime sign as "bedrock"

# error types that mean the credentials themselves were refused
_AUTH_ERRORS = {"UnrecognizedClientException", "InvalidSignatureException", "IncompleteSignatureException",
                "MissingAuthenticationTokenException", "MissingAuthenticationToken", "ExpiredTokenException",
                "InvalidClientTokenId", "SignatureDoesNotMatch", "ExpiredToken"}


def credential_source(config: AwsFields, region: str) -> CredentialSource:
    """The deployment's keys, else botocore's credential chain (see ``credentials``)."""
    key_id = config.aws_access_key_id.get_secret_value() if config.aws_access_key_id else None
    secret = config.aws_secret_access_key.get_secret_value() if config.aws_secret_access_key else None
    token = config.aws_session_token.get_secret_value() if config.aws_session_token else None
    if key_id is not None or secret is not None:
        if not key_id or not secret:
            raise ValueError("aws_access_key_id and aws_secret_access_key must be given together")
        return CredentialSource(AwsCredentials(key_id, secret, token))
    if token is not None:
        raise ValueError("aws_session_token goes with aws_access_key_id and aws_secret_access_key")
    return BotocoreSource(region)


def bearer_token(config: BedrockDeployment, env: Mapping[str, str]) -> str | None:
    """A Bedrock API key: ``api_key``, else AWS_BEARER_TOKEN_BEDROCK unless access keys are configured."""
    if config.api_key is not None and config.api_key.get_secret_value():
        return str(config.api_key.get_secret_value())
    if config.aws_access_key_id is None and config.aws_secret_access_key is None:
        return env.get("AWS_BEARER_TOKEN_BEDROCK") or None
    return None


def map_error(error_type: str, status: int, message: str, retry_after: float | None = None) -> GatewayError:
    """An AWS error (``x-amzn-errortype`` / ``:exception-type``) as a gateway error class."""
    t = error_type[:1].upper() + error_type[1:]  # stream members are lowerCamel (throttlingException)
    low = message.lower()
    if t in _AUTH_ERRORS or low.startswith("authentication failed"):  # the latter: a bad Bedrock API key
        return AuthError(message, code="upstream_auth_failed")
    if t in ("ThrottlingException", "ServiceQuotaExceededException", "TooManyRequestsException"):
        return RateLimited(message, retry_after=retry_after)
    if t == "ModelNotReadyException":  # the model is loading: another deployment may serve now
        return Unavailable(message, retry_after=retry_after, code="model_not_ready")
    if t == "ModelTimeoutException":
        return UpstreamTimeout(message)
    if t in ("ServiceUnavailableException", "InternalServerException", "InternalServerError"):
        return Unavailable(message, status=503 if t == "ServiceUnavailableException" else 500)
    if t in ("ModelErrorException", "ModelStreamErrorException", "BadGatewayException",
             "DependencyFailedException"):
        return Unavailable(message, status=502)
    if t == "AccessDeniedException":
        return PermissionDenied(message)
    if t == "ResourceNotFoundException":
        return NotFound(message)
    if t == "ValidationException":
        if says_context_too_long(message):
            return ContextTooLong(message, param="messages")
        return BadRequest(message)  # a guardrail that intervenes is a stopReason, not an error
    return from_status(status, message, retry_after=retry_after)


class AwsProvider(Provider):
    """A provider that POSTs JSON to an AWS endpoint, SigV4-signed (or with a Bedrock API key); subclasses
    name the endpoint."""

    config: AwsFields
    endpoint_prefix = "bedrock-runtime"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        env = os.environ  # read once, when the gateway is built (never per request)
        # Bedrock Runtime also takes Bedrock API keys (bearer tokens); Agent Runtime does not
        self.bearer = bearer_token(self.config, env) if isinstance(self.config, BedrockDeployment) else None
        region = self.config.region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
        if not region:
            raise ValueError("AWS region missing: set region, or the AWS_REGION environment variable")
        self.region = region
        self.base = self.config.api_base or f"https://{self.endpoint_prefix}.{region}.amazonaws.com"
        parts = urlsplit(self.base)
        self.host = parts.netloc
        self.base_path = parts.path.rstrip("/")
        self._headers = {**{k.lower(): v for k, v in self.config.headers.items()},
                         "content-type": "application/json"}
        self.credentials: CredentialSource | None = None
        self.signer: SigV4Signer | None = None
        self._fixed: SigV4Signer | None = None  # the signer of keys in the config (never renewed): no await
        self._posts: dict[str, dict[str, str]] = {}  # a POST's headers by its accept type (made once)
        if self.bearer is not None:
            self._headers["authorization"] = "Bearer " + self.bearer
            self.scrub.dynamic((id(self), "bearer"), [self.bearer])  # it may come from the environment
        else:
            self.credentials = credential_source(self.config, region)
            if type(self.credentials) is CredentialSource:
                self._fixed = self._signer_of(self.credentials.credentials)

    async def start(self) -> None:
        if self.credentials is not None:
            await self.credentials.start()

    async def _signer(self) -> SigV4Signer:
        """The signer for the current credentials (temporary ones are renewed before they expire)."""
        assert self.credentials is not None
        creds = await self.credentials.get()
        signer = self.signer
        if signer is None or signer.credentials is not creds:
            signer = self._signer_of(creds)
        return signer

    def _signer_of(self, creds: AwsCredentials | None) -> SigV4Signer:
        assert creds is not None
        signer = self.signer = SigV4Signer(creds, self.region, SIGNING_SERVICE)
        self.scrub.dynamic((id(self), "credentials"), (creds.secret_key, creds.session_token, creds.access_key))
        return signer

    async def post_json(self, deadline: float, path: str, body: dict[str, Any], accept: str = "application/json",
                        raw: tuple[bytes, str | None] | None = None) -> Response:
        """POST ``body`` to ``path`` (already percent-encoded), signed; an error status is raised mapped.
        ``raw``: ``body`` serialised already, sent instead of serialising it again, and their SHA-256 (hex)
        when it is known (``NativeRequest.raw``, ``.sha256``)."""
        data, digest = raw if raw is not None else (orjson.dumps(body), None)
        fixed = self._posts.get(accept) or self._posts.setdefault(accept, {**self._headers, "accept": accept})
        if self.credentials is not None:
            signer = self._fixed or await self._signer()
            headers = signer.sign_encoded("POST", self.host, self.base_path + path, data, fixed, body_sha256=digest)
        else:  # a Bedrock API key: the same headers every time, encoded once
            headers = self.encoded(fixed)
        # sent as given: %3A / %2F stay exactly as signed
        resp = await self.request(deadline, "POST", self.base + path, headers=headers, data=data)
        if resp.status >= 400:
            raise await self.aws_error(resp)
        return resp

    async def aws_error(self, resp: Response) -> GatewayError:
        """Map an AWS JSON error response, without leaking secrets."""
        data = error_json(await self.error_body(resp))
        error_type = resp.headers.get("x-amzn-errortype", "") or str(data.get("__type") or data.get("code") or "")
        error_type = error_type.split(":", 1)[0].rsplit("#", 1)[-1]
        message = str(data.get("message") or data.get("Message")
                      or f"upstream {self.kind} returned HTTP {resp.status} {error_type}".rstrip())
        return map_error(error_type, resp.status, message, retry_after_seconds(resp.headers))

    def stream_exception(self, msg: EventMessage) -> GatewayError:
        """An ``exception`` / ``error`` frame inside an event stream as a gateway error."""
        if msg.message_type == "error":
            code = str(msg.headers.get(":error-code", ""))
            return map_error(code, 500, str(msg.headers.get(":error-message") or code))
        etype = str(msg.headers.get(":exception-type", ""))
        try:
            data = orjson.loads(msg.payload) if msg.payload else {}
        except orjson.JSONDecodeError:
            data = {}
        message = data.get("message") or data.get("Message") if isinstance(data, dict) else None
        # an exception type AWS does not document says only that the stream failed: a 502
        return map_error(etype, 502, str(message or f"upstream {self.kind} stream failed: {etype}"))

    async def events(self, upstream: UpstreamBody) -> AsyncIterator[EventMessage]:
        """Decode the event stream as bytes arrive; exception frames are raised as gateway errors."""
        decoder = EventStreamDecoder()
        try:
            async for chunk in upstream:
                for msg in decoder.feed(chunk):
                    if msg.message_type != "event":
                        raise self.stream_exception(msg)
                    yield msg
        except EventStreamError as e:
            raise Unavailable(f"upstream {self.kind} sent a malformed event stream ({e})", status=502) from None
        if decoder.pending:
            raise Unavailable(f"upstream {self.kind} stream ended inside a message", status=502)


def stream_reply(headers: dict[str, str] | None = None) -> Reply:
    return Reply(media_type="text/event-stream", headers=headers or {}, first_byte_at=time.monotonic())
