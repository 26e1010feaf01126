"""An emulator of AWS Bedrock Runtime (Converse, ConverseStream, InvokeModel for Titan text embeddings and for
Claude's Anthropic bodies, InvokeModelWithResponseStream for the latter, CountTokens) and
Bedrock Agent Runtime (InvokeAgent), on one port, with the endpoints that hand out temporary credentials
(container credentials at ``/_aws/container-credentials``, STS AssumeRoleWithWebIdentity and AssumeRole at ``/``, IMDSv2
under ``/latest/``).
boto3/botocore pointed at it parse every answer.

Every request must carry a valid SigV4 signature made with the emulator's test credentials (service
``bedrock``). Errors are AWS's: an ``x-amzn-errortype`` header and ``{"message": ...}``. Answers are
deterministic: the last user text echoed, the first tool called when a toolConfig is given and the last
turn holds no toolResult. Faults (``POST /_emulator/faults``): ``status`` answers with the matching AWS error
(``error_code`` picks the type, e.g. ModelNotReadyException); ``status`` together with
``disconnect_after_chunks`` sends that error as an ``exception`` frame after so many stream events instead
(calls that do not stream answer normally);
``disconnect_after_chunks`` alone cuts the connection.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import random
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs
from xml.sax.saxutils import escape

import orjson
from aiohttp import web

from relaygate.providers.anthropic.wire import VERSION_2023
from relaygate.providers.aws import eventstream as es
from relaygate.providers.aws.eventstream import EVENTSTREAM
from relaygate.providers.aws.sigv4 import SignatureError, parse_authorization, verify
from relaygate.providers.echo import arguments_for
from relaygate.testing import anthropic as anthropic_emulator
from relaygate.testing import anthropic_checks
from relaygate.testing.base import (
    STATE_KEY,
    EmulatorState,
    FaultPlan,
    apply_latency,
    drop_connection,
    json_response,
    new_app,
    send_frames,
    tracked,
)
from relaygate.testing.bedrock_models import model_summaries

TEST_ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"  # AWS's documented example credentials
TEST_SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
TEST_API_KEY = "ABSKcmVsYXlnYXRlLWVtdWxhdG9yLXRlc3Qta2V5"  # a Bedrock API key (bearer token) for Bedrock Runtime

CONVERSE_FIELDS = {"messages", "system", "inferenceConfig", "toolConfig", "guardrailConfig",
                   "additionalModelRequestFields", "promptVariables", "additionalModelResponseFieldPaths",
                   "requestMetadata", "performanceConfig", "serviceTier", "outputConfig"}
INFERENCE_FIELDS = {"maxTokens", "temperature", "topP", "stopSequences"}
IMAGE_FORMATS = {"png", "jpeg", "gif", "webp"}

ERROR_TYPES = {400: "ValidationException", 403: "AccessDeniedException", 404: "ResourceNotFoundException",
               408: "ModelTimeoutException", 424: "ModelErrorException", 429: "ThrottlingException",
               500: "InternalServerException", 503: "ServiceUnavailableException"}
ERROR_STATUS = {v: k for k, v in ERROR_TYPES.items()} | {"ModelNotReadyException": 429,
                                                         "ServiceQuotaExceededException": 400}
MESSAGES = {
    "ValidationException": "Malformed input request, please reformat your input and try again.",
    "AccessDeniedException": "You don't have access to the model with the specified model ID.",
    "ResourceNotFoundException": "Could not resolve the foundation model from the provided model identifier.",
    "ModelTimeoutException": "Model has timed out in processing the request. Try your request again.",
    "ModelErrorException": "The model failed to process the request.",
    "ThrottlingException": "Too many requests, please wait before trying again.",
    "InternalServerException": "The server encountered an internal error while processing the request.",
    "ServiceUnavailableException": "Bedrock is unable to process your request.",
    "ModelNotReadyException": "Model is not ready to serve inference requests. The AWS SDK will automatically "
                              "retry the operation up to 5 times.",
    "ServiceQuotaExceededException": "Your request exceeds the service quota for your account.",
}
# the exception members each stream may carry (botocore's service models)
INVOKE_STREAM_EXCEPTIONS = {"internalServerException", "modelStreamErrorException", "validationException",
                            "throttlingException", "modelTimeoutException", "serviceUnavailableException"}
CONVERSE_STREAM_EXCEPTIONS = {"internalServerException", "modelStreamErrorException", "validationException",
                              "throttlingException", "serviceUnavailableException"}
AGENT_STREAM_EXCEPTIONS = {"accessDeniedException", "badGatewayException", "conflictException",
                           "dependencyFailedException", "internalServerException", "modelNotReadyException",
                           "resourceNotFoundException", "serviceQuotaExceededException", "throttlingException",
                           "validationException"}
_TOOL_USE_ID = re.compile(r"^[a-zA-Z0-9_.:-]{1,64}$")
_SESSION_ID = re.compile(r"^[0-9a-zA-Z._:-]{2,100}$")


@dataclass
class BedrockEmulatorOptions:
    credentials: dict[str, str] = field(default_factory=lambda: {TEST_ACCESS_KEY: TEST_SECRET_KEY})
    session_tokens: dict[str, str] = field(default_factory=dict)  # access key -> the token it must send
    api_keys: set[str] = field(default_factory=lambda: {TEST_API_KEY})  # bearer tokens (not for agents)
    region: str | None = None  # when set, signatures must be scoped to it
    max_skew_seconds: float = 300.0
    context_window: int = 200_000  # emulated tokens; longer input gets "Input is too long"
    prefix: str = "Hello! You said: "
    container_token: str = "container-auth-token"  # what the container credentials endpoint requires
    web_identity_token: str = "eyJ-web-identity-token"  # what STS AssumeRoleWithWebIdentity requires
    temporary_ttl: float = 3600.0  # lifetime of the temporary credentials both hand out
    guardrail_words: tuple[str, ...] = ("forbidden",)  # a guarded call whose last user text has one is blocked
    guardrail_message: str = "Sorry, the model cannot answer this question."


class AwsFailure(Exception):
    """An AWS error to answer with."""

    def __init__(self, error_type: str, message: str | None = None, status: int | None = None) -> None:
        super().__init__(message or MESSAGES.get(error_type, error_type))
        self.error_type = error_type
        self.message = message or MESSAGES.get(error_type, error_type)
        self.status = status or ERROR_STATUS.get(error_type, 400)


def aws_error(err: AwsFailure) -> web.Response:
    return json_response({"message": err.message}, err.status, headers={
        "x-amzn-errortype": f"{err.error_type}:http://internal.amazon.com/coral/com.amazon.bedrock/",
        "x-amzn-requestid": str(uuid.uuid4())})


def fault_failure(plan: FaultPlan) -> AwsFailure:
    assert plan.status is not None
    etype = plan.error_code or ERROR_TYPES.get(plan.status, "InternalServerException")
    return AwsFailure(etype, plan.message, plan.status)


# ---- SigV4 verification --------------------------------------------------------------------------------

def verify_signature(request: web.Request, body: bytes, opts: BedrockEmulatorOptions, service: str = "bedrock") -> None:
    """Raise AwsFailure unless the request is signed (SigV4, for ``service``) with known credentials, or
    carries a known Bedrock API key (Bedrock Runtime only)."""
    auth = request.headers.get("authorization", "")
    if auth.startswith("Bearer "):
        if auth[7:] not in opts.api_keys or request.path.startswith("/agents/"):
            raise AwsFailure("AccessDeniedException", "Authentication failed: Please make sure your API Key is "
                             "valid.", 403)
        return
    try:
        by = parse_authorization(auth)
        secret = opts.credentials.get(by.access_key)
        token = request.headers.get("x-amz-security-token")
        if secret is None or token != opts.session_tokens.get(by.access_key):
            raise AwsFailure("UnrecognizedClientException", "The security token included in the request is "
                             "invalid.", 403)
        if opts.region is not None and by.region != opts.region:
            raise AwsFailure("InvalidSignatureException", f"Credential should be scoped to a valid region and to "
                             f"the service '{service}', not '{by.region}/{by.service}'.", 403)
        headers = {h.lower(): ",".join(request.headers.getall(h, [])) for h in request.headers}
        path, _, query = request.raw_path.partition("?")
        verify(by, (secret,), service, request.method, path, query, headers, body, opts.max_skew_seconds)
    except SignatureError as e:
        raise AwsFailure(e.error_type, e.message, 403) from None


# ---- Converse: validation and the deterministic answer ----------------------------------------------------

def _texts(blocks: list[Any]) -> str:
    return " ".join(str(b["text"]) for b in blocks if isinstance(b, dict) and "text" in b)


def _tokens(text: str) -> int:
    return len(text.split())


def _check_block(b: Any, where: str) -> int:
    """Validate one content block; the number of images it holds."""
    if not isinstance(b, dict) or len(b) != 1:
        raise AwsFailure("ValidationException", f"{where} must set exactly one member of the ContentBlock union.")
    if "text" in b:
        if not isinstance(b["text"], str) or not b["text"].strip():
            raise AwsFailure("ValidationException", f"The text field in the ContentBlock object at {where} is "
                             "blank. Add text to the text field, and try again.")
    elif "image" in b:
        img = b["image"]
        if not isinstance(img, dict) or img.get("format") not in IMAGE_FORMATS:
            raise AwsFailure("ValidationException", f"{where}.image.format must be one of png, jpeg, gif, webp.")
        try:
            base64.b64decode((img.get("source") or {}).get("bytes", ""), validate=True)
        except (binascii.Error, ValueError, TypeError):
            raise AwsFailure("ValidationException", f"{where}.image.source.bytes is not valid base64.") from None
        return 1
    elif not any(k in b for k in ("toolUse", "toolResult", "cachePoint", "document", "reasoningContent")):
        raise AwsFailure("ValidationException", f"{where} has an unsupported content block {next(iter(b))!r}.")
    return 0


def validate_converse(req: Any) -> int:
    """Reject what Bedrock rejects; returns the number of images."""
    if not isinstance(req, dict):
        raise AwsFailure("ValidationException")
    extra = set(req) - CONVERSE_FIELDS
    if extra:
        raise AwsFailure("ValidationException", f"extraneous key [{sorted(extra)[0]}] is not permitted")
    messages = req.get("messages")
    if not isinstance(messages, list) or not messages:
        raise AwsFailure("ValidationException", "The messages field is required and must not be empty.")
    inference = req.get("inferenceConfig") or {}
    if not isinstance(inference, dict) or set(inference) - INFERENCE_FIELDS:
        raise AwsFailure("ValidationException", "inferenceConfig has an extraneous key.")
    images = 0
    tool_ids: set[str] = set()
    uses_tools = False
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
            raise AwsFailure("ValidationException", f"messages.{i}.role must be user or assistant.")
        if i == 0 and m["role"] != "user":
            raise AwsFailure("ValidationException", "A conversation must start with a user message. Try again "
                             "with a conversation that starts with a user message.")
        if i and messages[i - 1].get("role") == m["role"]:
            raise AwsFailure("ValidationException", "A conversation must alternate between user and assistant "
                             "roles. Make sure the conversation alternates between user and assistant roles and "
                             "try again.")
        content = m.get("content")
        if not isinstance(content, list) or not content:
            raise AwsFailure("ValidationException", f"messages.{i}.content must not be empty.")
        for j, b in enumerate(content):
            images += _check_block(b, f"messages.{i}.content.{j}")
            if "toolUse" in b:
                uses_tools = True
                tool_id = str(b["toolUse"].get("toolUseId"))
                if not _TOOL_USE_ID.match(tool_id):
                    raise AwsFailure("ValidationException", f"1 validation error detected: Value at 'messages.{i}."
                                     f"member.content.{j}.member.toolUse.toolUseId' failed to satisfy constraint: "
                                     "Member must satisfy regular expression pattern: [a-zA-Z0-9_.:-]+")
                tool_ids.add(tool_id)
            elif "toolResult" in b:
                uses_tools = True
                if b["toolResult"].get("toolUseId") not in tool_ids:
                    raise AwsFailure("ValidationException", f"messages.{i}.content.{j}.toolResult.toolUseId "
                                     "does not match any toolUse block of the previous turns.")
    for j, b in enumerate(req.get("system") or []):
        _check_block(b, f"system.{j}")
    if uses_tools and not req.get("toolConfig"):
        raise AwsFailure("ValidationException", "The toolConfig field must be defined when using toolUse and "
                         "toolResult content blocks.")
    return images


@dataclass
class ConverseAnswer:
    blocks: list[dict[str, Any]]
    stop_reason: str
    usage: dict[str, int]


def _pick_tool(req: dict[str, Any], last: dict[str, Any]) -> dict[str, Any] | None:
    config = req.get("toolConfig")
    if not config or any("toolResult" in b for b in last.get("content", [])):
        return None
    wanted = ((config.get("toolChoice") or {}).get("tool") or {}).get("name")
    for t in config.get("tools") or []:
        spec = t.get("toolSpec") if isinstance(t, dict) else None
        if isinstance(spec, dict) and (wanted is None or spec.get("name") == wanted):
            return spec
    return None


def _cache_tokens(req: dict[str, Any], seen: set[str]) -> tuple[int, int]:
    """(read, write): the text before the last cache point is cached the first time and read afterwards."""
    blocks = list(req.get("system") or []) + [b for m in req["messages"] for b in m["content"]]
    last = max((i for i, b in enumerate(blocks) if "cachePoint" in b), default=-1)
    if last < 0:
        return 0, 0
    prefix = blocks[:last]
    tokens = sum(_tokens(str(b.get("text", ""))) for b in prefix)
    key = hashlib.sha256(orjson.dumps(prefix)).hexdigest()
    if key in seen:
        return tokens, 0
    if len(seen) < 10_000:
        seen.add(key)
    return 0, tokens


_GUARDRAIL_ID = re.compile(r"^([a-z0-9]+|arn:aws(-[^:]+)?:bedrock:[a-z0-9-]{1,20}:[0-9]{12}:guardrail/[a-z0-9]+)$")
_GUARDRAIL_VERSION = re.compile(r"^([1-9][0-9]{0,7}|DRAFT)$")


def _guardrail_blocks(req: dict[str, Any], last_user: str, opts: BedrockEmulatorOptions) -> bool:
    """Validate ``guardrailConfig``; True when the guardrail intervenes on the input."""
    g = req.get("guardrailConfig")
    if g is None:
        return False
    if not isinstance(g, dict) or not _GUARDRAIL_ID.match(str(g.get("guardrailIdentifier", ""))) \
            or not _GUARDRAIL_VERSION.match(str(g.get("guardrailVersion", ""))):
        raise AwsFailure("ValidationException", "guardrailConfig needs a valid guardrailIdentifier and "
                         "guardrailVersion.")
    return any(w in last_user.lower() for w in opts.guardrail_words)


def converse_answer(req: dict[str, Any], images: int, opts: BedrockEmulatorOptions,
                    cache: set[str]) -> ConverseAnswer:
    """What the emulated model says to a validated Converse request."""
    messages = req["messages"]
    last = messages[-1]
    last_user = next((_texts(m["content"]) for m in reversed(messages)
                      if m["role"] == "user" and _texts(m["content"])), "")
    system = _texts(req.get("system") or [])
    prompt = sum(4 + _tokens(_texts(m["content"])) for m in messages) + _tokens(system) + 85 * images
    if prompt > opts.context_window:
        raise AwsFailure("ValidationException", "Input is too long for requested model.")
    read, write = _cache_tokens(req, cache)
    if _guardrail_blocks(req, last_user, opts):
        usage = {"inputTokens": prompt, "outputTokens": 0, "totalTokens": prompt}
        return ConverseAnswer([{"text": opts.guardrail_message}], "guardrail_intervened", usage)
    tool = _pick_tool(req, last)
    inference = req.get("inferenceConfig") or {}
    if tool is not None:
        args = arguments_for((tool.get("inputSchema") or {}).get("json"), last_user)
        digest = hashlib.sha1(orjson.dumps([tool.get("name"), args])).hexdigest()[:22]
        blocks: list[dict[str, Any]] = [{"text": f"I will use {tool.get('name')}."},
                  {"toolUse": {"toolUseId": f"tooluse_{digest}", "name": tool.get("name"), "input": args}}]
        stop = "tool_use"
    else:
        results = [b["toolResult"] for b in last["content"] if "toolResult" in b]
        if results:
            shown = [(_texts(r.get("content") or []) or orjson.dumps(r.get("content")).decode()) for r in results]
            text = "The tool returned: " + "; ".join(shown)
        else:
            text = opts.prefix + last_user
            if images:
                text += f" (I see {images} image{'s' if images != 1 else ''})"
            if system:
                text += f" [system: {system}]"
            turns = sum(1 for m in messages if m["role"] == "user" and _texts(m["content"]))
            if turns > 1:
                text += f" [turn {turns}]"
        words, stop = text.split(" "), "end_turn"
        limit = inference.get("maxTokens")
        if isinstance(limit, int) and 0 < limit < len(words):
            words, stop = words[:limit], "max_tokens"
        text = " ".join(words)
        for s in inference.get("stopSequences") or []:
            if s and s in text:
                text, stop = text[: text.index(s)], "stop_sequence"
        blocks = [{"text": text}]
    output = max(1, sum(_tokens(str(b.get("text", ""))) + (5 if "toolUse" in b else 0) for b in blocks))
    usage = {"inputTokens": prompt - read - write, "outputTokens": output,
             "totalTokens": prompt + output}
    if read or write:
        usage |= {"cacheReadInputTokens": read, "cacheWriteInputTokens": write}
    return ConverseAnswer(blocks, stop, usage)


def _payload(data: dict[str, Any]) -> bytes:
    # Bedrock pads every event with "p" so that lengths do not reveal the content; clients must ignore it
    return orjson.dumps({**data, "p": "abcdefghijklmnopqrstuvwxyzABCDEFGHIJ"[: 1 + len(data) * 7 % 30]})


def stream_events(answer: ConverseAnswer) -> list[bytes]:
    """The ConverseStream frames of an answer, in order."""
    out = [es.event("messageStart", _payload({"role": "assistant"}))]
    for i, b in enumerate(answer.blocks):
        if "text" in b:
            words = b["text"].split(" ")
            for j, w in enumerate(words):
                piece = w if j == len(words) - 1 else w + " "
                out.append(es.event("contentBlockDelta", _payload({"contentBlockIndex": i,
                                                                   "delta": {"text": piece}})))
        else:
            tu = b["toolUse"]
            out.append(es.event("contentBlockStart", _payload({"contentBlockIndex": i, "start": {"toolUse": {
                "toolUseId": tu["toolUseId"], "name": tu["name"]}}})))
            args = orjson.dumps(tu["input"]).decode()
            step = max(1, math.ceil(len(args) / 3))
            if not tu["input"]:  # a call without arguments: one delta with empty input (as recorded)
                args, step = "", 1
                out.append(es.event("contentBlockDelta", _payload({"contentBlockIndex": i, "delta": {
                    "toolUse": {"input": ""}}})))
            for k in range(0, len(args), step):
                out.append(es.event("contentBlockDelta", _payload({"contentBlockIndex": i, "delta": {
                    "toolUse": {"input": args[k:k + step]}}})))
        out.append(es.event("contentBlockStop", _payload({"contentBlockIndex": i})))
    out.append(es.event("messageStop", _payload({"stopReason": answer.stop_reason})))
    out.append(es.event("metadata", _payload({"usage": answer.usage, "metrics": {"latencyMs": 42}})))
    return out


def exception_frame(err: AwsFailure, allowed: set[str]) -> bytes:
    member = err.error_type[:1].lower() + err.error_type[1:]
    if member not in allowed:
        member = "internalServerException"
    return es.exception(member, orjson.dumps({"message": err.message}))


# ---- Claude on Bedrock: InvokeModel's Anthropic body ---------------------------------------------------------

CLAUDE_VERSION = "bedrock-2023-05-31"


def claude_answer(req: Any, model: str, opts: BedrockEmulatorOptions) -> tuple[dict[str, Any], list[bytes]]:
    """A Claude model's InvokeModel answer to an Anthropic body (``anthropic_version: bedrock-2023-05-31``, the
    Messages request without ``model`` and ``stream``): the Message, and its stream's ``chunk`` frames (each
    Messages event as ``{"bytes": base64(JSON)}``, the last with the invocation metrics)."""
    if not isinstance(req, dict) or req.get("anthropic_version") != CLAUDE_VERSION:
        raise AwsFailure("ValidationException", f"Malformed input request: anthropic_version must be "
                         f"{CLAUDE_VERSION!r}, please reformat your input and try again.")
    body = {k: v for k, v in req.items() if k not in ("anthropic_version", "anthropic_beta")}
    for name in ("model", "stream"):
        if name in body:
            raise AwsFailure("ValidationException", f"Malformed input request: #: extraneous key [{name}] is not "
                             "permitted, please reformat your input and try again.")
    beta = req.get("anthropic_beta", [])
    if not isinstance(beta, list) or not all(isinstance(b, str) for b in beta):
        raise AwsFailure("ValidationException", "Malformed input request: #/anthropic_beta: expected type: "
                         "JSONArray, please reformat your input and try again.")
    body["model"] = model
    try:
        anthropic_checks.validate(body, VERSION_2023)
    except anthropic_checks.Invalid as e:
        raise AwsFailure("ValidationException", f"Malformed input request: {e}") from None
    tokens = anthropic_emulator.count_tokens(body)
    if tokens > opts.context_window:
        raise AwsFailure("ValidationException", "Input is too long for requested model.")
    a = anthropic_emulator.answer(body, opts.prefix)
    usage = {"input_tokens": tokens, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
             "output_tokens": a.output_tokens}
    message = {**anthropic_emulator.message(body, a, usage), "id": "msg_bdrk_" + uuid.uuid4().hex[:24]}
    frames = []
    for sse in anthropic_emulator.stream_events(body, a, usage):
        data = orjson.loads(sse.split(b"data: ", 1)[1])
        if data["type"] == "ping":
            continue
        if data["type"] == "message_start":
            data["message"]["id"] = message["id"]
        if data["type"] == "message_stop":
            data["amazon-bedrock-invocationMetrics"] = {"inputTokenCount": tokens, "outputTokenCount": a.output_tokens,
                                                        "invocationLatency": 42, "firstByteLatency": 21}
        frames.append(es.event("chunk", orjson.dumps({"bytes": base64.b64encode(orjson.dumps(data)).decode()})))
    return message, frames


# ---- Titan text embeddings ----------------------------------------------------------------------------------

def titan_embedding(req: Any) -> dict[str, Any]:
    if not isinstance(req, dict) or not isinstance(req.get("inputText"), str) or not req["inputText"]:
        raise AwsFailure("ValidationException", "Malformed input request: #: required key [inputText] not "
                         "found, please reformat your input and try again.")
    extra = set(req) - {"inputText", "dimensions", "normalize", "embeddingTypes"}
    if extra:
        raise AwsFailure("ValidationException", f"Malformed input request: #: extraneous key "
                         f"[{sorted(extra)[0]}] is not permitted, please reformat your input and try again.")
    dims = req.get("dimensions", 1024)
    if dims not in (256, 512, 1024):
        raise AwsFailure("ValidationException", "Malformed input request: #/dimensions: 256, 512 or 1024 "
                         "expected, please reformat your input and try again.")
    text = req["inputText"]
    rng = random.Random(hashlib.sha256(text.encode()).digest())
    vec = [rng.uniform(-1, 1) for _ in range(dims)]
    if req.get("normalize", True):
        norm = math.sqrt(sum(v * v for v in vec)) or 1.0
        vec = [v / norm for v in vec]
    return {"embedding": vec, "embeddingsByType": {"float": vec}, "inputTextTokenCount": max(1, _tokens(text))}


# ---- the app ----------------------------------------------------------------------------------------------

SESSIONS_KEY: web.AppKey[dict[str, int]] = web.AppKey("bedrock_agent_sessions", dict)
CACHE_KEY: web.AppKey[set[str]] = web.AppKey("bedrock_prompt_cache", set)
OPTIONS_KEY: web.AppKey[BedrockEmulatorOptions] = web.AppKey("bedrock_options", BedrockEmulatorOptions)
PEERS_KEY: web.AppKey[list[int]] = web.AppKey("bedrock_client_ports", list)  # per request: was a connection reused?


def create_app(options: BedrockEmulatorOptions | None = None, state: EmulatorState | None = None) -> web.Application:
    """The emulator as an aiohttp app."""
    opts = options or BedrockEmulatorOptions()
    app = new_app(state)
    app[SESSIONS_KEY] = {}
    app[CACHE_KEY] = set()
    app[PEERS_KEY] = []
    app[OPTIONS_KEY] = opts  # tests may change options of a running emulator

    async def admit(request: web.Request) -> tuple[Any, FaultPlan | None]:
        """Record, verify the signature, apply faults; the parsed JSON body and the fault plan."""
        raw = await request.read()
        request.app[STATE_KEY].remember(request, raw)
        peers = request.app[PEERS_KEY]
        peer = request.transport.get_extra_info("peername") if request.transport else None
        peers.append(int(peer[1]) if peer else 0)
        del peers[:-1000]
        verify_signature(request, raw, opts)
        plan = request.app[STATE_KEY].take_fault(request.path)
        await apply_latency(plan)
        if plan is not None and plan.drop_connection:
            await drop_connection(request)
            raise AwsFailure("InternalServerException")  # never reaches the client: the socket is gone
        if plan is not None and plan.status and plan.disconnect_after_chunks is None:
            raise fault_failure(plan)
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            raise AwsFailure("SerializationException", "Unable to parse the request body as JSON.", 400) from None
        return body, plan

    async def stream(request: web.Request, frames: list[bytes], plan: FaultPlan | None, allowed: set[str],
                     headers: dict[str, str] | None = None) -> web.StreamResponse:
        cut_frame = exception_frame(fault_failure(plan), allowed) if plan is not None and plan.status else None
        return await send_frames(request, frames, plan, EVENTSTREAM, cut_frame=cut_frame,
                                 headers={"x-amzn-requestid": str(uuid.uuid4()), **(headers or {})})

    async def converse(request: web.Request) -> web.StreamResponse:
        streaming = request.path.endswith("/converse-stream")
        try:
            req, plan = await admit(request)
            images = validate_converse(req)
            answer = converse_answer(req, images, opts, request.app[CACHE_KEY])
        except AwsFailure as e:
            return aws_error(e)
        if streaming:
            return await stream(request, stream_events(answer), plan, CONVERSE_STREAM_EXCEPTIONS)
        return json_response({"output": {"message": {"role": "assistant", "content": answer.blocks}},
                              "stopReason": answer.stop_reason, "usage": answer.usage,
                              "metrics": {"latencyMs": 42}}, headers={"x-amzn-requestid": str(uuid.uuid4())})

    async def invoke(request: web.Request) -> web.StreamResponse:
        model = request.match_info["model"]
        streaming = request.path.endswith("/invoke-with-response-stream")
        try:
            req, plan = await admit(request)
            if "anthropic.claude" in model:
                message, events = claude_answer(req, model, opts)
            elif model.startswith("amazon.titan-embed-text") and not streaming:
                data = titan_embedding(req)
                return json_response(data, headers={
                    "x-amzn-bedrock-input-token-count": str(data["inputTextTokenCount"]),
                    "x-amzn-requestid": str(uuid.uuid4())})
            else:
                raise AwsFailure("ValidationException", "The provided model identifier is invalid.")
        except AwsFailure as e:
            return aws_error(e)
        usage = message["usage"]
        counts = {"x-amzn-bedrock-input-token-count": str(usage["input_tokens"]),
                  "x-amzn-bedrock-output-token-count": str(usage["output_tokens"])}
        if streaming:
            return await stream(request, events, plan, INVOKE_STREAM_EXCEPTIONS)
        return json_response(message, headers={**counts, "x-amzn-requestid": str(uuid.uuid4())})

    async def count_tokens(request: web.Request) -> web.StreamResponse:
        try:
            req, _ = await admit(request)
            inp = req.get("input") if isinstance(req, dict) else None
            if not isinstance(inp, dict) or len(inp) != 1 or not ({"converse", "invokeModel"} & set(inp)):
                raise AwsFailure("ValidationException", "input must set exactly one of converse, invokeModel.")
            if "converse" in inp:
                conv = inp["converse"]
                images = validate_converse(conv)
                tokens = sum(4 + _tokens(_texts(m["content"])) for m in conv["messages"]) + 85 * images \
                    + _tokens(_texts(conv.get("system") or []))
            else:
                tokens = _tokens(base64.b64decode(inp["invokeModel"].get("body", "")).decode("utf-8", "replace"))
        except AwsFailure as e:
            return aws_error(e)
        return json_response({"inputTokens": tokens})

    async def invoke_agent(request: web.Request) -> web.StreamResponse:
        agent, alias, session = (request.match_info[k] for k in ("agent", "alias", "session"))
        try:
            req, plan = await admit(request)
            if not _SESSION_ID.match(session):
                raise AwsFailure("ValidationException", "1 validation error detected: Value at 'sessionId' "
                                 "failed to satisfy constraint: Member must satisfy regular expression pattern: "
                                 "[0-9a-zA-Z._:-]+")
            if not isinstance(req, dict) or not isinstance(req.get("inputText"), str) or not req["inputText"]:
                raise AwsFailure("ValidationException", "inputText is required.")
        except AwsFailure as e:
            return aws_error(e)
        sessions = request.app[SESSIONS_KEY]
        key = f"{agent}/{alias}/{session}"
        turn = sessions.get(key, 0) + 1
        if req.get("endSession"):
            sessions.pop(key, None)
        elif key in sessions or len(sessions) < 10_000:
            sessions[key] = turn
        text = f"Agent {agent} answered: {req['inputText']} [session turn {turn}]".encode()
        streaming = bool((req.get("streamingConfigurations") or {}).get("streamFinalResponse"))
        # streamed: byte slices, so a character may straddle two chunks; else the answer comes as one chunk
        step = max(1, len(text) // 3 + 1) if streaming else len(text)
        frames = [es.event("chunk", orjson.dumps({"bytes": base64.b64encode(text[i:i + step]).decode()}))
                  for i in range(0, len(text), step)]
        return await stream(request, frames, plan, AGENT_STREAM_EXCEPTIONS, {
            "x-amzn-bedrock-agent-content-type": "application/json", "x-amz-bedrock-agent-session-id": session})

    def issue(prefix: str) -> dict[str, str]:
        """Temporary credentials that this emulator will accept from now on."""
        key = prefix + uuid.uuid4().hex[:16].upper()
        secret, token = uuid.uuid4().hex + uuid.uuid4().hex, "IQoJ" + uuid.uuid4().hex * 3
        if len(opts.credentials) > 10_000:  # a long-running emulator: forget the oldest issued sets
            for old in [k for k in opts.credentials if k.startswith("ASIA")][:5_000]:
                opts.credentials.pop(old, None)
                opts.session_tokens.pop(old, None)
        opts.credentials[key] = secret
        opts.session_tokens[key] = token
        expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + opts.temporary_ttl))
        return {"AccessKeyId": key, "SecretAccessKey": secret, "Token": token, "Expiration": expires}

    async def container_credentials(request: web.Request) -> web.Response:
        """The ECS / EKS Pod Identity credentials endpoint (AWS_CONTAINER_CREDENTIALS_FULL_URI)."""
        request.app[STATE_KEY].remember(request, b"")
        if request.headers.get("authorization") != opts.container_token:
            return json_response({"Code": "AccessDenied", "Message": "invalid authorization token"}, 403)
        return json_response({**issue("ASIACONTAINER"), "RoleArn": "arn:aws:iam::000000000000:role/emulated"})

    async def sts(request: web.Request) -> web.Response:
        """STS (query protocol, XML answers), at AWS_ENDPOINT_URL_STS: AssumeRoleWithWebIdentity (unsigned, the
        token is the proof), AssumeRole (signed for sts by credentials this emulator knows)."""
        raw = await request.read()
        request.app[STATE_KEY].remember(request, b"")
        form = {k: v[-1] for k, v in parse_qs(raw.decode("utf-8", "replace")).items()}
        ns = "https://sts.amazonaws.com/doc/2011-06-15/"
        action = form.get("Action")

        def error(code: str, message: str, status: int) -> web.Response:
            body = (f'<ErrorResponse xmlns="{ns}"><Error><Type>Sender</Type><Code>{code}</Code>'
                    f"<Message>{escape(message)}</Message></Error>"
                    "<RequestId>00000000-0000-0000-0000-000000000000</RequestId></ErrorResponse>")
            return web.Response(text=body, status=status, content_type="text/xml")

        if action == "AssumeRole":
            try:
                verify_signature(request, raw, opts, "sts")
            except AwsFailure as e:
                return error("SignatureDoesNotMatch" if "Signature" in e.error_type else "InvalidClientTokenId",
                             e.message, 403)
            c, extra = issue("ASIAASSUMEDROLE"), ""
        elif action == "AssumeRoleWithWebIdentity" and form.get("WebIdentityToken") == opts.web_identity_token:
            c, extra = issue("ASIAWEBIDENTITY"), "<SubjectFromWebIdentityToken>system:serviceaccount:emulated" \
                "</SubjectFromWebIdentityToken>"
        elif action == "AssumeRoleWithWebIdentity":
            return error("InvalidIdentityToken", "The web identity token is not valid.", 400)
        else:
            return error("InvalidAction", f"Could not find operation {action} for version 2011-06-15", 400)
        role = escape(form.get("RoleArn", ""))
        creds = "".join(f"<{k}>{v}</{k}>" for k, v in (("AccessKeyId", c["AccessKeyId"]),
                        ("SecretAccessKey", c["SecretAccessKey"]), ("SessionToken", c["Token"]),
                        ("Expiration", c["Expiration"])))
        body = (f'<{action}Response xmlns="{ns}"><{action}Result>'
                f"<Credentials>{creds}</Credentials>{extra}<AssumedRoleUser><Arn>{role}/session</Arn>"
                f"<AssumedRoleId>AROAEMULATED:session</AssumedRoleId></AssumedRoleUser></{action}Result>"
                f"<ResponseMetadata><RequestId>{uuid.uuid4()}</RequestId></ResponseMetadata></{action}Response>")
        return web.Response(text=body, content_type="text/xml")

    async def imds_token(request: web.Request) -> web.Response:
        """IMDSv2: a session token for the metadata requests that follow."""
        request.app[STATE_KEY].remember(request, b"")
        if not request.headers.get("x-aws-ec2-metadata-token-ttl-seconds", "").isdigit():
            return web.Response(status=400)
        return web.Response(text="imds-session-token")

    async def imds_credentials(request: web.Request) -> web.Response:
        """The instance's role name, or that role's credentials (IMDSv2 only: a token is required)."""
        request.app[STATE_KEY].remember(request, b"")
        if request.headers.get("x-aws-ec2-metadata-token") != "imds-session-token":
            return web.Response(status=401)
        role = request.match_info.get("role")
        if not role:
            return web.Response(text="emulated-instance-role")
        if role != "emulated-instance-role":
            return web.Response(status=404)
        creds = issue("ASIAINSTANCE")
        return json_response({"Code": "Success", "LastUpdated": creds["Expiration"], "Type": "AWS-HMAC", **creds})

    app.router.add_put("/latest/api/token", imds_token)
    app.router.add_get("/latest/meta-data/iam/security-credentials/", imds_credentials)
    app.router.add_get("/latest/meta-data/iam/security-credentials/{role}", imds_credentials)
    app.router.add_get("/_aws/container-credentials", container_credentials)
    app.router.add_post("/", sts)
    async def foundation_models(request: web.Request) -> web.StreamResponse:
        """The control plane's ListFoundationModels (signed for ``bedrock``, like the runtime)."""
        try:
            await admit(request)
        except AwsFailure as e:
            return aws_error(e)
        return json_response(model_summaries(opts.region or "us-east-1", request.query.get("byProvider")))

    app.router.add_get("/foundation-models", foundation_models)
    app.router.add_post("/model/{model}/converse", tracked(converse))
    app.router.add_post("/model/{model}/converse-stream", tracked(converse))
    app.router.add_post("/model/{model}/invoke", tracked(invoke))
    app.router.add_post("/model/{model}/invoke-with-response-stream", tracked(invoke))
    app.router.add_post("/model/{model}/count-tokens", tracked(count_tokens))
    app.router.add_post("/agents/{agent}/agentAliases/{alias}/sessions/{session}/text", tracked(invoke_agent))
    return app
