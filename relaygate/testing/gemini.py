"""An emulator of Google's Gemini wire format: AI Studio (``/v1beta/models/{m}:generateContent``) and
Vertex AI (``/v1/projects/{p}/locations/{l}/publishers/google/models/{m}:generateContent``).

Answers are deterministic functions of the request (like the OpenAI emulator's): the model echoes the last
user text, calls the first offered function unless the last turn is a function response (``PARALLEL_WORD``
makes it call every function), reports images and other files, the system instruction and the turn count.
Prompts containing ``BLOCKED_WORD`` are blocked (``promptFeedback.blockReason``); prompts containing
``UNSAFE_WORD`` end in ``finishReason: SAFETY`` unless ``safetySettings`` turn off dangerous-content blocking.
Requests are checked as strictly as the real API does (``gemini_checks``), so translation bugs show.
A fault plan with ``status`` and ``disconnect_after_chunks`` fails a stream after that many events with
an in-stream error event, as Google does. Also served: ``countTokens``, ``embedContent``/``batchEmbedContents``, ``GET /v1beta/models`` and the OAuth
``POST /token`` endpoint a service account's ``token_uri`` can point at.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import re
import struct
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from relaygate.providers.echo import arguments_for
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
from relaygate.testing.gemini_checks import ApiError, normalise, validate

DEFAULT_MODELS = ("gemini-2.5-flash", "gemini-2.5-pro", "gemini-2.0-flash", "gemini-3-pro-preview",
                  "text-embedding-004", "gemini-embedding-001")
EMBEDDING_DIMS = {"text-embedding-004": 768, "gemini-embedding-001": 3072}
TASK_TYPES = ("TASK_TYPE_UNSPECIFIED", "RETRIEVAL_QUERY", "RETRIEVAL_DOCUMENT", "SEMANTIC_SIMILARITY",
              "CLASSIFICATION", "CLUSTERING", "QUESTION_ANSWERING", "FACT_VERIFICATION", "CODE_RETRIEVAL_QUERY")
BLOCKED_WORD = "forbidden-topic"
UNSAFE_WORD = "unsafe-output"
PARALLEL_WORD = "use-all-tools"  # in the last user text: call every offered function at once

_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
           409: "ABORTED", 429: "RESOURCE_EXHAUSTED", 499: "CANCELLED", 500: "INTERNAL", 501: "NOT_IMPLEMENTED",
           503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}
_DEFAULT_MESSAGES = {
    429: "You exceeded your current quota, please check your plan and billing details. For more information on "
         "this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.",
    500: "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/"
         "troubleshooting",
    503: "The model is overloaded. Please try again later.",
    504: "Deadline expired before operation could complete.",
}


@dataclass
class GeminiEmulatorOptions:
    api_key: str | None = None  # AI Studio: required in x-goog-api-key or ?key= when set
    bearer_token: str | None = None  # Vertex AI: required as "Authorization: Bearer" when set
    models: tuple[str, ...] = DEFAULT_MODELS
    context_window: int = 1_048_576  # prompts longer than this (emulated tokens) get 400
    context_windows: dict[str, int] = field(default_factory=dict)
    prefix: str = "Hello! You said: "
    cached_tokens: int = 0  # reported as usageMetadata.cachedContentTokenCount (capped by the prompt)
    token_lifetime: int = 3600  # seconds, for access tokens from POST /token (a service account's token_uri)


def error_body(status: int, message: str | None = None, details: list[dict[str, Any]] | None = None,
               status_name: str | None = None) -> dict[str, Any]:
    """Google's error JSON: ``{"error": {"code", "message", "status", "details"?}}``."""
    err: dict[str, Any] = {"code": status, "message": message or _DEFAULT_MESSAGES.get(status, f"HTTP {status}"),
                           "status": status_name or _STATUS.get(status, "UNKNOWN")}
    if details:
        err["details"] = details
    return {"error": err}


def _error_response(e: ApiError) -> web.Response:
    return json_response(error_body(e.status, e.message, e.details), e.status)


def fault_response(plan: FaultPlan) -> web.Response:
    """An injected failure; ``retry_after`` becomes a ``google.rpc.RetryInfo`` detail, as Gemini sends it."""
    assert plan.status is not None
    return json_response(fault_body(plan), plan.status)


def fault_body(plan: FaultPlan) -> dict[str, Any]:
    assert plan.status is not None
    details: list[dict[str, Any]] = []
    if plan.status == 429:
        details.append({"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{
            "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
            "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"}]})
    if plan.retry_after is not None:
        details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo",
                        "retryDelay": f"{plan.retry_after:g}s"})
    return error_body(plan.status, plan.message, details, plan.error_code)


# ---- the answer: a pure function of the request ------------------------------------------------------

def _texts(content: Any) -> str:
    parts = content.get("parts") if isinstance(content, dict) else None
    return " ".join(str(p["text"]) for p in parts or [] if isinstance(p, dict) and "text" in p
                    and not p.get("thought"))


def count_tokens(body: dict[str, Any]) -> int:
    """Emulated tokens: words, 4 per content, 258 per image (Gemini's flat image cost)."""
    n = len(_texts(body.get("systemInstruction")).split())
    for c in body.get("contents") or []:
        n += 4 + len(_texts(c).split())
        for p in c.get("parts") or []:
            if "inlineData" in p or "fileData" in p:
                n += 258
            elif "functionCall" in p or "functionResponse" in p:
                n += len(orjson.dumps(p).split()) + 3
    return max(n, 1)


def _functions_to_call(body: dict[str, Any], last_user: str) -> list[dict[str, Any]]:
    decls = [d for t in body.get("tools") or [] if isinstance(t, dict)
             for d in t.get("functionDeclarations") or [] if isinstance(d, dict)]
    cfg = ((body.get("toolConfig") or {}).get("functionCallingConfig") or {})
    mode = str(cfg.get("mode", "AUTO")).upper()
    if not decls or mode == "NONE":
        return []
    last = (body.get("contents") or [{}])[-1]
    if any("functionResponse" in p for p in last.get("parts") or []):
        return []  # answer the function's result instead of calling again
    allowed = cfg.get("allowedFunctionNames") or []
    calls = [{"name": d.get("name", ""), "args": arguments_for(d.get("parametersJsonSchema", d.get("parameters")),
                                                             last_user)}
             for d in decls if not allowed or d.get("name") in allowed]
    return calls if PARALLEL_WORD in last_user else calls[:1]


@dataclass
class Answer:
    parts: list[dict[str, Any]]
    finish_reason: str
    prompt_tokens: int
    output_tokens: int
    blocked: bool = False
    thoughts: int = 0  # thinking tokens (billed as output, reported apart)


def _images(body: dict[str, Any]) -> list[str]:
    return [str((p.get("inlineData") or p.get("fileData") or {}).get("mimeType"))
            for c in body.get("contents") or [] for p in c.get("parts") or []
            if "inlineData" in p or "fileData" in p]


def answer(body: dict[str, Any], model: str, prefix: str = "Hello! You said: ") -> Answer:
    """What the emulated model says to a (validated) generateContent request."""
    contents = body.get("contents") or []
    user_turns = [c for c in contents if c.get("role", "user") == "user" and _texts(c)]
    last_user = _texts(user_turns[-1]) if user_turns else ""
    system = _texts(body.get("systemInstruction"))
    prompt_tokens = count_tokens(body)
    everything = system + " " + " ".join(_texts(c) for c in contents)
    if BLOCKED_WORD in everything:
        return Answer([], "", prompt_tokens, 0, blocked=True)
    calls = _functions_to_call(body, last_user)
    if calls:
        parts: list[dict[str, Any]] = []
        for i, call in enumerate(calls):
            if model.startswith("gemini-3"):  # ids on every call; a signature on the first of a turn
                digest = hashlib.sha256(orjson.dumps([call, i, len(contents)])).digest()
                call = {**call, "id": f"call_{int.from_bytes(digest[:4], 'big')}"}
            part: dict[str, Any] = {"functionCall": call}
            if model.startswith("gemini-3") and i == 0:
                part["thoughtSignature"] = base64.b64encode(hashlib.sha256(orjson.dumps(call)).digest()).decode()
            parts.append(part)
        return Answer(parts, "STOP", prompt_tokens, len(orjson.dumps(calls).split()) + 5)
    last = contents[-1] if contents else {}
    results = [p["functionResponse"] for p in last.get("parts") or [] if "functionResponse" in p]
    if results:
        text = "The tool returned: " + "; ".join(
            f"{r.get('name')}={orjson.dumps(r.get('response')).decode()}" for r in results)
    else:
        text = prefix + last_user
        media = _images(body)
        images = [m for m in media if m.startswith("image/")]
        others = [m for m in media if not m.startswith("image/")]
        if images:
            text += f" (I see {len(images)} image{'s' if len(images) != 1 else ''}: {', '.join(images)})"
        if others:
            text += f" (I got {len(others)} file{'s' if len(others) != 1 else ''}: {', '.join(others)})"
        if system:
            text += f" [system: {system}]"
        if len(user_turns) > 1:
            text += f" [turn {len(user_turns)}]"
    relaxed = any(isinstance(r, dict) and r.get("category") == "HARM_CATEGORY_DANGEROUS_CONTENT"
                  and r.get("threshold") in ("BLOCK_NONE", "OFF") for r in body.get("safetySettings") or [])
    if UNSAFE_WORD in everything and not relaxed:
        return Answer([{"text": text.split(UNSAFE_WORD)[0]}], "SAFETY", prompt_tokens, len(text.split()))
    gc = body.get("generationConfig") or {}
    if gc.get("responseMimeType") == "application/json":
        text = orjson.dumps({"answer": text}).decode()
    words = text.split(" ")
    finish = "STOP"
    limit = gc.get("maxOutputTokens")
    if isinstance(limit, int) and 0 < limit < len(words):
        words, finish = words[:limit], "MAX_TOKENS"
    text = " ".join(words)
    for s in gc.get("stopSequences") or []:
        if isinstance(s, str) and s and s in text:
            text, finish = text[: text.index(s)], "STOP"
    thinking = gc.get("thinkingConfig")
    thoughts = 0 if not isinstance(thinking, dict) or thinking.get("thinkingBudget") == 0 else 12
    return Answer([{"text": text}], finish, prompt_tokens, max(1, len(text.split())), thoughts=thoughts)


_SAFE = ("HARM_CATEGORY_HATE_SPEECH", "HARM_CATEGORY_DANGEROUS_CONTENT", "HARM_CATEGORY_HARASSMENT",
         "HARM_CATEGORY_SEXUALLY_EXPLICIT")


def _ratings(blocked: bool) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for cat in _SAFE:
        r: dict[str, Any] = {"category": cat, "probability": "NEGLIGIBLE"}
        if blocked and cat == "HARM_CATEGORY_DANGEROUS_CONTENT":
            r = {"category": cat, "probability": "HIGH", "blocked": True}
        out.append(r)
    return out


def _usage(a: Answer, cached: int, final: bool = True) -> dict[str, Any]:
    u: dict[str, Any] = {"promptTokenCount": a.prompt_tokens,
                         "totalTokenCount": a.prompt_tokens + (a.output_tokens if final else 0),
                         "promptTokensDetails": [{"modality": "TEXT", "tokenCount": a.prompt_tokens}]}
    if final and a.output_tokens:
        u["candidatesTokenCount"] = a.output_tokens
    if final and a.thoughts:
        u["thoughtsTokenCount"] = a.thoughts
        u["totalTokenCount"] += a.thoughts
    if cached:
        u["cachedContentTokenCount"] = min(cached, a.prompt_tokens)
    return u


def _response_id(body: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(hashlib.sha1(orjson.dumps(body.get("contents"))).digest()[:15]).decode()


def _candidate(a: Answer, index: int, parts: list[dict[str, Any]] | None, finish: str | None) -> dict[str, Any]:
    c: dict[str, Any] = {"index": index}
    if parts:
        c["content"] = {"parts": parts, "role": "model"}
    if finish:
        c["finishReason"] = finish
        if finish == "SAFETY":
            c["safetyRatings"] = _ratings(True)
    return c


def generate(body: dict[str, Any], model: str, prefix: str, cached: int = 0) -> dict[str, Any]:
    """A whole ``GenerateContentResponse``."""
    a = answer(body, model, prefix)
    out: dict[str, Any] = {"modelVersion": model, "responseId": _response_id(body)}
    if a.blocked:
        out["promptFeedback"] = {"blockReason": "SAFETY", "safetyRatings": _ratings(True)}
        out["usageMetadata"] = _usage(a, cached)
        return out
    n = (body.get("generationConfig") or {}).get("candidateCount") or 1
    out["candidates"] = [_candidate(a, i, a.parts, a.finish_reason) for i in range(n)]
    out["usageMetadata"] = _usage(a, cached)
    return out


def stream_events(body: dict[str, Any], model: str, prefix: str, cached: int = 0) -> list[dict[str, Any]]:
    """The ``GenerateContentResponse`` chunks of a streamed answer: text a few words at a time, a function
    call whole, the finish reason and full usage on the last chunk."""
    a = answer(body, model, prefix)
    rid = _response_id(body)
    if a.blocked:
        return [{"promptFeedback": {"blockReason": "SAFETY", "safetyRatings": _ratings(True)},
                 "usageMetadata": _usage(a, cached), "modelVersion": model, "responseId": rid}]
    pieces: list[list[dict[str, Any]]] = []
    for p in a.parts:
        if "text" in p:
            words = p["text"].split(" ")
            for i in range(0, len(words), 3):
                chunk = " ".join(words[i:i + 3]) + (" " if i + 3 < len(words) else "")
                pieces.append([{"text": chunk}])
        else:
            pieces.append([p])
    if not pieces:
        pieces.append([])
    n = (body.get("generationConfig") or {}).get("candidateCount") or 1
    out = []
    for i, parts in enumerate(pieces):
        last = i == len(pieces) - 1
        out.append({"candidates": [_candidate(a, k, parts, a.finish_reason if last else None) for k in range(n)],
                    "usageMetadata": _usage(a, cached, final=last), "modelVersion": model, "responseId": rid})
    return out


# ---- embeddings -----------------------------------------------------------------------------------------

def embed(text: str, dims: int) -> list[float]:
    """A deterministic unit vector for ``text``."""
    raw = b""
    counter = 0
    while len(raw) < dims * 4:
        raw += hashlib.sha256(f"{counter}:{text}".encode()).digest()
        counter += 1
    ints = struct.unpack(f"<{dims}i", raw[: dims * 4])
    vec = [v / 2**31 for v in ints]
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    return [round(v / norm, 6) for v in vec]


def _embed_one(req: dict[str, Any], model: str, where: str) -> tuple[list[float], int]:
    content = req.get("content")
    if not isinstance(content, dict) or not content.get("parts"):
        raise ApiError(400, f"* EmbedContentRequest{where}.content: contents is not specified\n")
    cfg = req.get("embedContentConfig") or {}  # Vertex nests the options; AI Studio has them at the top
    dims = cfg.get("outputDimensionality", req.get("outputDimensionality")) or EMBEDDING_DIMS.get(model, 768)
    if not isinstance(dims, int) or not 1 <= dims <= EMBEDDING_DIMS.get(model, 3072):
        raise ApiError(400, f"* EmbedContentRequest{where}.output_dimensionality: must be between 1 and "
                            f"{EMBEDDING_DIMS.get(model, 3072)}\n")
    task = cfg.get("taskType", req.get("taskType"))
    if task is not None and task not in TASK_TYPES:
        raise ApiError(400, f"Invalid value at '{where.lstrip('.')}task_type' (type.googleapis.com/google.ai."
                            f'generativelanguage.v1beta.TaskType), "{task}"')
    text = _texts(content)
    return embed(f"{task or ''}:{text}", dims), max(1, len(text.split()))  # the task changes the vector


# ---- the app ------------------------------------------------------------------------------------------

_METHOD = re.compile(r"^(?P<model>[^:]+):(?P<method>[A-Za-z]+)$")


def create_app(options: GeminiEmulatorOptions | None = None, state: EmulatorState | None = None) -> web.Application:
    """The emulator as an aiohttp app (AI Studio and Vertex AI URL forms)."""
    opts = options or GeminiEmulatorOptions()
    app = new_app(state)

    def check_auth(request: web.Request, vertex: bool) -> None:
        if vertex:
            if opts.bearer_token is None:
                return
            auth = request.headers.get("authorization", "")
            if auth[:7].lower() == "bearer " and auth[7:] == opts.bearer_token:
                return
            raise ApiError(401, "Request had invalid authentication credentials. Expected OAuth 2 access token, "
                                "login cookie or other valid authentication credential. See https://developers."
                                "google.com/identity/sign-in/web/devconsole-project.",
                           [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                             "reason": "ACCESS_TOKEN_TYPE_UNSUPPORTED" if auth else "CREDENTIALS_MISSING",
                             "domain": "googleapis.com"}])
        if opts.api_key is None:
            return
        given = request.headers.get("x-goog-api-key") or request.query.get("key")
        if not given:
            raise ApiError(403, "Method doesn't allow unregistered callers (callers without established "
                                "identity). Please use API Key or other form of API consumer identity to call "
                                "this API.")
        if given != opts.api_key:
            raise ApiError(400, "API key not valid. Please pass a valid API key.",
                           [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
                             "domain": "googleapis.com",
                             "metadata": {"service": "generativelanguage.googleapis.com"}}])

    async def handle(request: web.Request) -> web.StreamResponse:
        state = request.app[STATE_KEY]
        raw = await request.read()
        state.remember(request, raw)
        vertex = "project" in request.match_info
        try:
            m = _METHOD.match(request.match_info["call"])
            if m is None:
                raise ApiError(404, "Requested entity was not found.")
            model, method = m.group("model"), m.group("method")
            check_auth(request, vertex)
            try:
                sent = orjson.loads(raw) if raw else {}
            except orjson.JSONDecodeError:
                raise ApiError(400, "Invalid JSON payload received. Unexpected token.") from None
            if not isinstance(sent, dict):
                raise ApiError(400, "Invalid JSON payload received. Expected an object.")
            body = normalise(sent)
            plan = state.take_fault(request.path)
            await apply_latency(plan)
            # status + disconnect_after_chunks on a stream: that many events, then an in-stream error event
            in_stream = plan is not None and bool(plan.status) and plan.disconnect_after_chunks is not None \
                and method == "streamGenerateContent"
            if plan is not None and (plan.drop_connection or (plan.status and not in_stream)):
                return await drop_connection(request) if plan.drop_connection else fault_response(plan)
            if opts.models and model not in opts.models:
                version = request.match_info.get("version", "v1beta")
                raise ApiError(404, f"models/{model} is not found for API version {version}, or is not "
                                    f"supported for {method}. Call ListModels to see the list of available "
                                    "models and their supported methods.")
            if method in ("embedContent", "batchEmbedContents"):
                return embeddings(body, model, method, vertex)
            if method == "countTokens":  # {"contents": [...]} or {"generateContentRequest": {...}}
                req = body.get("generateContentRequest", body)
                validate(req, model)
                return json_response({"totalTokens": count_tokens(req)})
            if method not in ("generateContent", "streamGenerateContent"):
                raise ApiError(404, f"Method {method} is not found for model {model}.")
            validate(sent, model)
            window = opts.context_windows.get(model, opts.context_window)
            tokens = count_tokens(body)
            if tokens > window:
                raise ApiError(400, f"The input token count ({tokens}) exceeds the maximum number of tokens "
                                    f"allowed ({window}).")
        except ApiError as e:
            return _error_response(e)
        if method == "generateContent":
            return json_response(generate(body, model, opts.prefix, opts.cached_tokens))
        return await stream(request, body, model, plan)

    async def stream(request: web.Request, body: dict[str, Any], model: str,
                     plan: FaultPlan | None) -> web.StreamResponse:
        events = stream_events(body, model, opts.prefix, opts.cached_tokens)
        if plan is not None and plan.status and plan.disconnect_after_chunks is not None:
            events = [*events[:plan.disconnect_after_chunks], fault_body(plan)]
            plan = None
        if request.query.get("alt") != "sse":  # without alt=sse the "stream" is one JSON array
            return json_response(events)
        # Google frames events with CRLF pairs and sends no terminator
        return await send_sse(request, (b"data: " + orjson.dumps(ev) + b"\r\n\r\n" for ev in events), plan,
                              done=b"")

    def embeddings(body: dict[str, Any], model: str, method: str, vertex: bool) -> web.Response:
        if method == "embedContent":
            vec, tokens = _embed_one(body, model, "")
            out: dict[str, Any] = {"embedding": {"values": vec}}
            if vertex:
                out["usageMetadata"] = {"promptTokenCount": tokens, "totalTokenCount": tokens}
            return json_response(out)
        requests = body.get("requests")
        if not isinstance(requests, list) or not requests:
            raise ApiError(400, "* BatchEmbedContentsRequest.requests: requests is not specified\n")
        if len(requests) > 100:
            raise ApiError(400, "* BatchEmbedContentsRequest.requests: at most 100 requests can be in one batch\n")
        vectors, total = [], 0
        for i, r in enumerate(requests):
            if not isinstance(r, dict):
                raise ApiError(400, f"Invalid value at 'requests[{i}]'")
            want = r.get("model")
            if want is not None and str(want).removeprefix("models/") != model:
                raise ApiError(400, f"* BatchEmbedContentsRequest.requests[{i}].model: the model in each request "
                                    "must match the model of the batch\n")
            vec, tokens = _embed_one(r, model, f".requests[{i}]")
            vectors.append({"values": vec})
            total += tokens
        out = {"embeddings": vectors}
        if vertex:
            out["usageMetadata"] = {"promptTokenCount": total, "totalTokenCount": total}
        return json_response(out)

    async def list_models(request: web.Request) -> web.Response:
        try:
            check_auth(request, False)
        except ApiError as e:
            return _error_response(e)
        try:  # models.list pages: pageSize (default 50, at most 1000) and the pageToken of the last page
            size = min(int(request.query.get("pageSize") or 50), 1000)
            start = int(request.query.get("pageToken") or 0)
        except ValueError:
            return _error_response(ApiError(400, "Invalid value at 'page_size' or 'page_token'"))
        page = opts.models[start:start + max(size, 1)]
        body: dict[str, Any] = {"models": [
            {"name": f"models/{m}", "version": "001", "displayName": m,
             "inputTokenLimit": 2048 if m in EMBEDDING_DIMS else opts.context_windows.get(m, opts.context_window),
             "outputTokenLimit": 1 if m in EMBEDDING_DIMS else 65536, "supportedGenerationMethods":
                ["embedContent"] if m in EMBEDDING_DIMS else ["generateContent", "countTokens"],
             **({} if m in EMBEDDING_DIMS else {"thinking": m.startswith(("gemini-2.5", "gemini-3"))})}
            for m in page]}
        if start + len(page) < len(opts.models):
            body["nextPageToken"] = str(start + len(page))
        return json_response(body)

    async def token(request: web.Request) -> web.Response:
        """Google's OAuth token endpoint for service accounts (JWT bearer grant); the JWT is read, not verified."""
        form = await request.post()
        request.app[STATE_KEY].remember(request, b"")
        assertion = str(form.get("assertion", ""))
        try:
            claims = orjson.loads(base64.urlsafe_b64decode(assertion.split(".")[1] + "=="))
        except (IndexError, ValueError, binascii.Error):
            claims = None
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer" or not isinstance(claims, dict) \
                or "cloud-platform" not in str(claims.get("scope", "")):
            return json_response({"error": "invalid_grant", "error_description": "Invalid JWT Signature."}, 400)
        return json_response({"access_token": opts.bearer_token or "ya29.emulated", "token_type": "Bearer",
                              "expires_in": opts.token_lifetime})

    app.router.add_post("/token", token)
    for version in ("v1beta", "v1", "v1alpha"):
        app.router.add_post(f"/{version}/models/{{call}}", tracked(handle))
        app.router.add_get(f"/{version}/models", list_models)
    app.router.add_post("/{version:v1|v1beta1}/projects/{project}/locations/{location}/publishers/google/"
                        "models/{call}", tracked(handle))
    return app
