"""An emulator of Anthropic's Messages API wire format (``POST /v1/messages``, stream and not; also as
Claude on Vertex AI serves it, ``…/publishers/anthropic/models/{model}:rawPredict``).

It enforces what the real API enforces and a gateway can get wrong: the ``anthropic-version`` header
(``2023-06-01`` takes the key as ``x-api-key``; ``2026-10-21`` as ``Authorization: Bearer`` and rejects
``temperature``, ``top_p``, ``top_k`` even at default values), a required ``max_tokens``, alternating
tool_use / tool_result pairs, image sources. Answers are deterministic functions of the request: the
last user text echoed, the first offered tool called, tool results and images reported. Prompt caching
is emulated: blocks marked ``cache_control`` write a prefix that later requests read.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from relaygate.providers.anthropic.wire import (
    API_VERSIONS,
    VERSION_2023,
    VERSION_2026,
    VERTEX_VERSION,
    error_body,
    error_type,
    sse_event,
)
from relaygate.providers.echo import arguments_for
from relaygate.testing.anthropic_checks import Invalid, blocks_of, sign, text_of, thinking_on, validate
from relaygate.testing.base import (
    STATE_KEY,
    EmulatorState,
    FaultPlan,
    apply_latency,
    drop_connection,
    json_response,
    new_app,
    send_sse,
    tracked,
)

DEFAULT_MODELS = ("claude-sonnet-4-6", "claude-sonnet-5-5", "claude-haiku-4-5", "claude-haiku-5-5", "claude-opus-4-7",
                  "claude-opus-5-5")
@dataclass
class AnthropicEmulatorOptions:
    api_key: str | None = None  # when set, requests must carry it
    strict_auth: bool = True  # the key must come in the header its version uses (the real API takes either)
    models: tuple[str, ...] = DEFAULT_MODELS
    context_window: int = 200_000  # prompts longer than this (emulated tokens) get "prompt is too long"
    prefix: str = "Hello! You said: "
    cache_min_tokens: int = 0  # prefixes shorter than this are not cached (the real API wants ~1024)
    max_cache_entries: int = 10_000


# ---- the answer: a pure function of the request -------------------------------------------------------

def count_tokens(body: dict[str, Any]) -> int:
    """Emulated input tokens: whitespace-separated words, 4 per message, 85 per image, 10 per tool."""
    n = len(text_of(body.get("system")).split()) + 10 * len(body.get("tools") or [])
    for m in body.get("messages") or []:
        n += 4
        for b in blocks_of(m.get("content")):
            n += _block_tokens(b)
    return max(n, 1)


def _block_tokens(b: dict[str, Any]) -> int:
    kind = b.get("type")
    if kind == "text":
        return len(str(b.get("text", "")).split())
    if kind == "image":
        return 85
    if kind == "tool_use":
        return 5 + len(orjson.dumps(b.get("input")).split())
    if kind == "tool_result":
        inner = b.get("content", "")
        return 2 + sum(_block_tokens(x) for x in blocks_of(inner))
    return 1


def _image_note(messages: list[dict[str, Any]]) -> str:
    seen = []
    for m in messages:
        for b in blocks_of(m.get("content")):
            inner = blocks_of(b.get("content")) if b.get("type") == "tool_result" else [b]
            for x in inner:
                if x.get("type") == "image":
                    src = x["source"]
                    seen.append(f"base64 {src['media_type']}" if src["type"] == "base64" else f"url {src['url']}")
    docs = [f"{b['source'].get('media_type', b['source']['type'])} {b.get('title', '')}".strip()
            for m in messages for b in blocks_of(m.get("content")) if b.get("type") == "document"]
    note = f" (I see {len(seen)} image{'s' if len(seen) != 1 else ''}: {', '.join(seen)})" if seen else ""
    if docs:
        note += f" (I read {len(docs)} document{'s' if len(docs) != 1 else ''}: {', '.join(docs)})"
    return note


@dataclass
class Answer:
    text: str
    tool_use: dict[str, Any] | None
    stop_reason: str
    stop_sequence: str | None
    output_tokens: int
    blocks: list[dict[str, Any]] = field(default_factory=list)


def _tool_to_use(body: dict[str, Any], last_user: str, after_results: bool) -> dict[str, Any] | None:
    tools = body.get("tools") or []
    choice = body.get("tool_choice") or {"type": "auto"}
    kind = choice.get("type")
    if not tools or kind == "none" or (kind == "auto" and after_results):
        return None
    tool = next((t for t in tools if t.get("name") == choice.get("name")), None) if kind == "tool" else tools[0]
    if tool is None:
        return None
    args = arguments_for(tool.get("input_schema"), last_user)
    digest = hashlib.sha1(f"{tool['name']}{orjson.dumps(args).decode()}".encode()).hexdigest()[:24]
    return {"type": "tool_use", "id": f"toolu_{digest}", "name": tool["name"], "input": args}


def answer(body: dict[str, Any], prefix: str = "Hello! You said: ") -> Answer:
    """What the emulated model says to this (valid) request; with thinking on, its thinking comes first."""
    a = _answer(body, prefix)
    if thinking_on(body):
        last = next((text_of(m.get("content")) for m in reversed(body["messages"]) if m.get("role") == "user"
                     and text_of(m.get("content"))), "")
        thought = f"Thinking about: {last or 'the tool results'}"
        a.blocks.insert(0, {"type": "thinking", "thinking": thought, "signature": sign(thought)})
        a.output_tokens += len(thought.split())
    return a


def _answer(body: dict[str, Any], prefix: str) -> Answer:
    messages = [m for m in body["messages"] if isinstance(m, dict)]
    users = [m for m in messages if m.get("role") == "user"]
    last_user = next((text_of(m.get("content")) for m in reversed(users) if text_of(m.get("content"))), "")
    last = messages[-1]
    results = [b for b in blocks_of(last.get("content")) if b.get("type") == "tool_result"]
    use = _tool_to_use(body, last_user, bool(results))
    if use is not None:
        text = f"I'll use {use['name']}."
        return Answer(text, use, "tool_use", None, 5 + len(orjson.dumps(use["input"]).split()),
                      [{"type": "text", "text": text}, use])
    if results:
        parts = []
        for r in results:
            got = r.get("content", "")
            got = got if isinstance(got, str) else text_of(got)
            parts.append(("error: " if r.get("is_error") else "") + got)
        text = "The tool returned: " + "; ".join(parts)
    else:
        text = prefix + last_user
    text += _image_note(messages)
    system = text_of(body.get("system"))
    if system:
        text += f" [system: {system}]"
    if len(users) > 1 and not results:
        text += f" [turn {len(users)}]"
    if isinstance((body.get("output_config") or {}).get("format"), dict):
        text = orjson.dumps({"answer": text}).decode()
    words = text.split(" ")
    stop, seq = "end_turn", None
    limit = body["max_tokens"]
    if limit < len(words):
        words, stop = words[:limit], "max_tokens"
    text = " ".join(words)
    for s in body.get("stop_sequences") or []:
        if isinstance(s, str) and s and s in text:
            text, stop, seq = text[: text.index(s)], "stop_sequence", s
            break
    return Answer(text, None, stop, seq, max(1, len(text.split())), [{"type": "text", "text": text}])


# ---- prompt caching -----------------------------------------------------------------------------------

def _segments(body: dict[str, Any]) -> list[tuple[bytes, int, bool]]:
    """The prompt in cache order (tools, system, messages) as (identity, tokens, is a breakpoint)."""
    out: list[tuple[bytes, int, bool]] = []
    for t in body.get("tools") or []:
        out.append((orjson.dumps({k: v for k, v in t.items() if k != "cache_control"}), 10,
                    "cache_control" in t))
    system = body.get("system")
    for b in blocks_of(system):
        out.append((orjson.dumps(b.get("text")), len(str(b.get("text", "")).split()), "cache_control" in b))
    for m in body["messages"]:
        blocks = blocks_of(m.get("content"))
        for k, b in enumerate(blocks):
            ident = orjson.dumps([m.get("role"), {x: y for x, y in b.items() if x != "cache_control"}])
            out.append((ident, _block_tokens(b) + (4 if k == 0 else 0), "cache_control" in b))
    return out


class PromptCache:
    """Prefix hashes written by earlier requests (one per emulator app)."""

    def __init__(self, min_tokens: int, max_entries: int) -> None:
        self.min_tokens = min_tokens
        self.max_entries = max_entries
        self.prefixes: set[bytes] = set()

    def use(self, body: dict[str, Any]) -> tuple[int, int]:
        """(cache_read_input_tokens, cache_creation_input_tokens) for this request; writes new prefixes."""
        h = hashlib.sha1()
        total = 0
        points: list[tuple[bytes, int]] = []
        for ident, tokens, breakpoint in _segments(body):
            h.update(ident)
            total += tokens
            if breakpoint and total >= self.min_tokens:
                points.append((h.digest(), total))
        if not points:
            return 0, 0
        read = max((tokens for digest, tokens in points if digest in self.prefixes), default=0)
        last_digest, last_tokens = points[-1]
        created = 0 if last_digest in self.prefixes else last_tokens - read
        if len(self.prefixes) > self.max_entries:
            self.prefixes.clear()
        self.prefixes.update(d for d, _ in points)
        return read, created


# ---- replies ------------------------------------------------------------------------------------------

def _message_id(body: dict[str, Any]) -> str:
    return "msg_" + hashlib.sha1(orjson.dumps(body.get("messages"))).hexdigest()[:24]


def request_id() -> str:
    return "req_" + os.urandom(12).hex()


def _usage(a: Answer | None, input_tokens: int, read: int, created: int) -> dict[str, Any]:
    return {"input_tokens": input_tokens, "cache_creation_input_tokens": created,
            "cache_read_input_tokens": read,
            "cache_creation": {"ephemeral_5m_input_tokens": created, "ephemeral_1h_input_tokens": 0},
            "output_tokens": a.output_tokens if a else 1, "service_tier": "standard"}


def message(body: dict[str, Any], a: Answer, usage: dict[str, Any]) -> dict[str, Any]:
    """The whole Message object."""
    return {"id": _message_id(body), "type": "message", "role": "assistant", "model": body["model"],
            "content": a.blocks, "stop_reason": a.stop_reason, "stop_sequence": a.stop_sequence,
            "usage": usage}


def stream_events(body: dict[str, Any], a: Answer, usage: dict[str, Any]) -> list[bytes]:
    """The SSE events of a streamed answer, in order."""
    start = {**message(body, a, {**usage, "output_tokens": 1}), "content": [], "stop_reason": None,
             "stop_sequence": None}
    out = [sse_event(b"message_start", {"type": "message_start", "message": start}),
           sse_event(b"ping", {"type": "ping"})]
    for index, block in enumerate(a.blocks):
        if block["type"] == "thinking":
            out.append(sse_event(b"content_block_start", {
                "type": "content_block_start", "index": index,
                "content_block": {"type": "thinking", "thinking": "", "signature": ""}}))
            words = block["thinking"].split(" ")
            for i, w in enumerate(words):
                out.append(sse_event(b"content_block_delta", {
                    "type": "content_block_delta", "index": index,
                    "delta": {"type": "thinking_delta", "thinking": w if i == len(words) - 1 else w + " "}}))
            out.append(sse_event(b"content_block_delta", {"type": "content_block_delta", "index": index,
                                                          "delta": {"type": "signature_delta",
                                                                    "signature": block["signature"]}}))
        elif block["type"] == "text":
            out.append(sse_event(b"content_block_start", {"type": "content_block_start", "index": index,
                                                          "content_block": {"type": "text", "text": ""}}))
            words = block["text"].split(" ")
            for i, w in enumerate(words):
                piece = w if i == len(words) - 1 else w + " "
                if piece:
                    out.append(sse_event(b"content_block_delta", {
                        "type": "content_block_delta", "index": index,
                        "delta": {"type": "text_delta", "text": piece}}))
        else:
            out.append(sse_event(b"content_block_start", {
                "type": "content_block_start", "index": index,
                "content_block": {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}}))
            # a call without arguments streams one empty input_json_delta and nothing else (as recorded)
            args = orjson.dumps(block["input"]).decode() if block["input"] else ""
            step = max(1, len(args) // 3)
            for piece in ["", *(args[i:i + step] for i in range(0, len(args), step))]:
                out.append(sse_event(b"content_block_delta", {
                    "type": "content_block_delta", "index": index,
                    "delta": {"type": "input_json_delta", "partial_json": piece}}))
        out.append(sse_event(b"content_block_stop", {"type": "content_block_stop", "index": index}))
    out.append(sse_event(b"message_delta", {
        "type": "message_delta", "delta": {"stop_reason": a.stop_reason, "stop_sequence": a.stop_sequence},
        "usage": {k: usage[k] for k in ("input_tokens", "cache_creation_input_tokens",
                                        "cache_read_input_tokens", "output_tokens")}}))
    out.append(sse_event(b"message_stop", {"type": "message_stop"}))
    return out


def _ratelimit_headers(remaining: int, reset_s: float) -> dict[str, str]:
    reset = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + reset_s))
    return {"anthropic-ratelimit-requests-limit": "50", "anthropic-ratelimit-requests-remaining": str(remaining),
            "anthropic-ratelimit-requests-reset": reset, "anthropic-ratelimit-tokens-limit": "100000",
            "anthropic-ratelimit-tokens-remaining": str(remaining * 2000),
            "anthropic-ratelimit-tokens-reset": reset}


DEFAULT_MESSAGES = {
    400: "Invalid request", 401: "invalid x-api-key", 403: "Your API key does not have permission to use the "
    "specified resource.", 404: "Not found", 413: "Request exceeds the maximum allowed number of bytes.",
    429: "Number of request tokens has exceeded your per-minute rate limit", 500: "Internal server error",
    504: "Request timed out", 529: "Overloaded",
}


def error_response(status: int, message: str | None = None, kind: str | None = None,
                   headers: dict[str, str] | None = None) -> web.Response:
    rid = request_id()
    h = {"request-id": rid, **(headers or {})}
    if status >= 500:
        h["x-should-retry"] = "true"
    msg = message or DEFAULT_MESSAGES.get(status, f"HTTP {status}")
    return json_response(error_body(kind or error_type(status), msg, rid), status, h)


def fault_response(plan: FaultPlan) -> web.Response:
    assert plan.status is not None
    headers: dict[str, str] = {}
    if plan.retry_after is not None:
        headers["retry-after"] = str(max(1, int(plan.retry_after + 0.999)))
    if plan.status == 429:
        headers.update(_ratelimit_headers(0, plan.retry_after or 1.0))
    return error_response(plan.status, plan.message, plan.error_code, headers)


# ---- the app ------------------------------------------------------------------------------------------

def create_app(options: AnthropicEmulatorOptions | None = None,
               state: EmulatorState | None = None) -> web.Application:
    """The emulator as an aiohttp app: ``POST /v1/messages`` and ``POST /v1/messages/count_tokens``."""
    opts = options or AnthropicEmulatorOptions()
    app = new_app(state)
    cache = PromptCache(opts.cache_min_tokens, opts.max_cache_entries)

    def check_headers(request: web.Request) -> tuple[str, web.Response | None]:
        version = request.headers.get("anthropic-version")
        if not version:
            return "", error_response(400, "anthropic-version: header is required")
        if version not in API_VERSIONS:
            return version, error_response(400, f"anthropic-version: invalid version {version!r}; "
                                                f"supported: {', '.join(API_VERSIONS)}")
        if opts.api_key is None:
            return version, None
        x_key = request.headers.get("x-api-key")
        auth = request.headers.get("authorization", "")
        bearer = auth[7:] if auth[:7].lower() == "bearer " else None
        if opts.strict_auth:
            given = x_key if version == VERSION_2023 else bearer
            where = "x-api-key" if version == VERSION_2023 else "Authorization: Bearer"
            if given is None:
                return version, error_response(401, f"anthropic-version {version} takes the API key in the "
                                                    f"{where} header")
        else:
            given = x_key if x_key is not None else bearer  # the real API prefers x-api-key
        if given != opts.api_key:
            return version, error_response(401, "invalid x-api-key")
        return version, None

    async def read_body(request: web.Request) -> tuple[dict[str, Any] | None, str, web.Response | None]:
        raw = await request.read()
        request.app[STATE_KEY].remember(request, raw)
        version, denied = check_headers(request)
        if denied is not None:
            return None, version, denied
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None, version, error_response(400, "There was an issue with your request body: not valid JSON")
        if not isinstance(body, dict):
            return None, version, error_response(400, "The request body must be a JSON object")
        return body, version, None

    async def read_vertex(request: web.Request) -> tuple[dict[str, Any] | None, str, web.Response | None]:
        """Vertex AI's form: a Google access token, the version in the body, the model in the URL."""
        raw = await request.read()
        request.app[STATE_KEY].remember(request, raw)
        if opts.api_key is not None and request.headers.get("authorization") != f"Bearer {opts.api_key}":
            return None, "", json_response({"error": {"code": 401, "status": "UNAUTHENTICATED", "message":
                                                      "Request had invalid authentication credentials."}}, 401)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None, "", error_response(400, "There was an issue with your request body: not valid JSON")
        if not isinstance(body, dict):
            return None, "", error_response(400, "The request body must be a JSON object")
        version = body.pop("anthropic_version", None)
        if version not in (VERTEX_VERSION, VERSION_2026):
            return None, "", error_response(400, f"anthropic_version: expected {VERTEX_VERSION!r} or "
                                                 f"{VERSION_2026!r}, got {version!r}")
        return body, VERSION_2023 if version == VERTEX_VERSION else version, None

    async def messages(request: web.Request) -> web.StreamResponse:
        body, version, err = await read_body(request)
        if err is not None or body is None:
            return err  # type: ignore[return-value]
        return await serve(request, body, version)

    async def vertex(request: web.Request) -> web.StreamResponse:
        body, version, err = await read_vertex(request)
        if err is not None or body is None:
            return err  # type: ignore[return-value]
        model, _, method = request.match_info["spec"].partition(":")
        if model == "count-tokens" and method == "rawPredict":
            return counted(body, version)
        if method not in ("rawPredict", "streamRawPredict"):
            return error_response(404, f"unknown method {method!r}")
        if "model" in body:
            return error_response(400, "model: Extra inputs are not permitted")
        body["model"] = model
        if method == "streamRawPredict":
            body["stream"] = True
        return await serve(request, body, version)

    async def serve(request: web.Request, body: dict[str, Any], version: str) -> web.StreamResponse:
        state = request.app[STATE_KEY]
        plan = state.take_fault(request.path)
        await apply_latency(plan)
        if plan is not None and plan.drop_connection:
            return await drop_connection(request)
        stream = bool(body.get("stream"))
        mid_stream_error = bool(plan is not None and plan.status and stream and plan.disconnect_after_chunks is not None)
        if plan is not None and plan.status and not mid_stream_error:
            return fault_response(plan)
        try:
            validate(body, version)
        except Invalid as e:
            return error_response(400, str(e))
        if opts.models and body["model"] not in opts.models:
            return error_response(404, f"model: {body['model']}")
        tokens = count_tokens(body)
        if tokens > opts.context_window:
            return error_response(400, f"prompt is too long: {tokens} tokens > {opts.context_window} maximum")
        a = answer(body, opts.prefix)
        read, created = cache.use(body)
        usage = _usage(a, tokens - read - created, read, created)
        headers = {"request-id": request_id(), **_ratelimit_headers(49, 1.0)}
        if not stream:
            return json_response(message(body, a, usage), headers=headers)
        cut_frame = None
        if mid_stream_error and plan is not None and plan.status:
            kind = plan.error_code or error_type(plan.status)
            msg = plan.message or DEFAULT_MESSAGES.get(plan.status, "error")
            cut_frame = sse_event(b"error", error_body(kind, msg, request_id()))
        return await send_sse(request, stream_events(body, a, usage), plan, done=b"", cut_frame=cut_frame,
                              headers=headers)

    async def count(request: web.Request) -> web.Response:
        body, version, err = await read_body(request)
        if err is not None or body is None:
            return err  # type: ignore[return-value]
        return counted(body, version)

    def counted(body: dict[str, Any], version: str) -> web.Response:
        try:
            validate({**body, "max_tokens": 1}, version)
        except Invalid as e:
            return error_response(400, str(e))
        return json_response({"input_tokens": count_tokens(body)}, headers={"request-id": request_id()})

    async def list_models(request: web.Request) -> web.Response:
        """``GET /v1/models``: newest first, paged by ``limit`` (1-1000, default 20) and ``after_id`` /
        ``before_id``, in the API's ModelInfo shape."""
        request.app[STATE_KEY].remember(request, b"")
        _, denied = check_headers(request)
        if denied is not None:
            return denied
        ids = list(reversed(opts.models))
        try:
            limit = int(request.query.get("limit", "20"))
        except ValueError:
            return error_response(400, "limit: Input should be a valid integer")
        if not 1 <= limit <= 1000:
            return error_response(400, "limit: Input should be between 1 and 1000")
        after, before = request.query.get("after_id"), request.query.get("before_id")
        for cursor in (after, before):
            if cursor is not None and cursor not in ids:
                return error_response(404, f"model: {cursor}")
        if before is not None:  # the page just before that id
            end = ids.index(before)
            page, more = ids[max(0, end - limit):end], end - limit > 0
        else:
            start = ids.index(after) + 1 if after is not None else 0
            page, more = ids[start:start + limit], start + limit < len(ids)
        data = [{"type": "model", "id": m, "display_name": m.replace("-", " ").title(),
                 "created_at": "2025-10-01T00:00:00Z", "lifecycle": "active",
                 "max_input_tokens": opts.context_window, "max_tokens": 64000} for m in page]
        return json_response({"data": data, "has_more": more, "first_id": page[0] if page else None,
                              "last_id": page[-1] if page else None})

    app.router.add_post("/v1/messages", tracked(messages))
    app.router.add_get("/v1/models", list_models)
    app.router.add_post("/v1/messages/count_tokens", count)
    app.router.add_post("/v1/projects/{project}/locations/{location}/publishers/anthropic/models/{spec}",
                        tracked(vertex))
    return app
