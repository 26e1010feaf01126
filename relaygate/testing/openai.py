"""An emulator of OpenAI's REST wire format (chat completions, models, the Responses API; Azure's URLs too).

Answers are deterministic functions of the request, so tests can check what reached the upstream:
the reply echoes the last user message, calls the first offered tool, reports tool results and images.
The answers are the echo model's (relaygate/providers/echo.py), which the built-in ``demo`` model serves too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from relaygate.providers.echo import MAX_CHOICES, complete, count_tokens, stream_chunks
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

DEFAULT_MODELS = ("gpt-4o-mini", "gpt-4o", "gpt-4.1", "o4-mini")
# what OpenAI accepts (its OpenAPI spec): beyond these the emulator answers 400, as OpenAI does
MAX_TOP_LOGPROBS = 20
MAX_BEST_OF = 20  # completions
MAX_EMBEDDING_INPUTS = 2048
MAX_EMBEDDING_DIMS = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072}  # others: 3072
MAX_IMAGES = 10  # images n
OPENAI_VOICES = ("alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer", "verse",
                 "marin", "cedar")


@dataclass
class OpenAIEmulatorOptions:
    api_key: str | None = None  # when set, requests must carry it (Bearer, or api-key for Azure paths)
    models: tuple[str, ...] = DEFAULT_MODELS
    context_window: int = 1_000_000  # prompts longer than this (in emulated tokens) get 400
    context_windows: dict[str, int] = field(default_factory=dict)  # per model
    prefix: str = "Hello! You said: "
    voices: tuple[str, ...] | None = OPENAI_VOICES  # text-to-speech voices accepted (None: any)
    auto_language: bool = False  # transcriptions take language=auto, as whisper.cpp's server does (OpenAI refuses it)
    # a model that talks at length: each answer padded to this many words (tokens), max_tokens still cutting it
    answer_words: int = 0
    ollama: bool = False  # also serve Ollama's GET /api/tags (an Ollama server answers /v1 and /api alike)
    # models served by the Responses API only (as OpenAI's o1-pro, o3-pro, codex): chat completions refuse them
    responses_only: tuple[str, ...] = ()


# ---- errors in OpenAI's shape -------------------------------------------------------------------------

def error_body(status: int, message: str | None = None, code: str | None = None) -> dict[str, Any]:
    types = {400: "invalid_request_error", 401: "invalid_request_error", 403: "invalid_request_error",
             404: "invalid_request_error", 429: "requests", 500: "server_error", 502: "server_error",
             503: "server_error"}
    default_msgs = {
        429: "Rate limit reached for requests. Please try again in 1s.",
        500: "The server had an error while processing your request. Sorry about that!",
        502: "Bad gateway.",
        503: "The engine is currently overloaded, please try again later.",
    }
    codes = {429: "rate_limit_exceeded", 503: "overloaded"}
    return {"error": {"message": message or default_msgs.get(status, f"HTTP {status}"),
                      "type": types.get(status, "server_error" if status >= 500 else "invalid_request_error"),
                      "param": None, "code": code or codes.get(status)}}


def fault_response(plan: FaultPlan) -> web.Response:
    assert plan.status is not None
    headers: dict[str, str] = {}
    if plan.retry_after is not None:
        headers["retry-after"] = str(int(plan.retry_after)) if plan.retry_after >= 1 else "1"
        headers["retry-after-ms"] = str(int(plan.retry_after * 1000))
    if plan.status == 429:
        headers.update({"x-ratelimit-limit-requests": "500", "x-ratelimit-remaining-requests": "0",
                        "x-ratelimit-reset-requests": "1s"})
    return json_response(error_body(plan.status, plan.message, plan.error_code), plan.status, headers)


async def planned_fault(request: web.Request) -> tuple[FaultPlan | None, web.StreamResponse | None]:
    """The armed fault plan that hits this request, and the answer it makes instead of the real one (an error
    status, a dropped connection; None when the request goes on, maybe slowed or cut later by the plan)."""
    plan = request.app[STATE_KEY].take_fault(request.path)
    await apply_latency(plan)
    if plan is not None and plan.drop_connection:
        return plan, await drop_connection(request)
    if plan is not None and plan.status:
        return plan, fault_response(plan)
    return plan, None


def auth_error(request: web.Request, opts: OpenAIEmulatorOptions, azure: bool) -> web.Response | None:
    """OpenAI's 401 when the emulator wants a key and the request does not carry it."""
    if opts.api_key is None:
        return None
    if azure:
        given = request.headers.get("api-key", "")
    else:
        auth = request.headers.get("authorization", "")
        given = auth[7:] if auth.lower().startswith("bearer ") else ""
    if given == opts.api_key:
        return None
    shown = (given[:3] + "*" * 4 + given[-4:]) if len(given) > 8 else "***"
    return json_response(error_body(
        401, f"Incorrect API key provided: {shown}. You can find your API key at "
             "https://platform.openai.com/account/api-keys.", "invalid_api_key"), 401)


def out_of_range(body: dict[str, Any], name: str, lo: int, hi: int) -> web.Response | None:
    """OpenAI's 400 for an integer parameter outside [lo, hi] (None when absent or in range)."""
    value = body.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or lo <= value <= hi:
        return None
    which, bound, sign, code = (("above maximum", hi, "<=", "integer_above_max_value") if value > hi
                                else ("below minimum", lo, ">=", "integer_below_min_value"))
    err = error_body(400, f"Invalid '{name}': integer {which} value. Expected a value {sign} {bound}, but got "
                          f"{value} instead.", code)
    err["error"]["param"] = name
    return json_response(err, 400)


def first_out_of_range(body: dict[str, Any], *bounds: tuple[str, int, int]) -> web.Response | None:
    for name, lo, hi in bounds:
        refused = out_of_range(body, name, lo, hi)
        if refused is not None:
            return refused
    return None


# ---- the app ------------------------------------------------------------------------------------------

def create_app(options: OpenAIEmulatorOptions | None = None, state: EmulatorState | None = None) -> web.Application:
    """The emulator as an aiohttp app (``/v1/...`` and Azure's ``/openai/deployments/{d}/...``)."""
    opts = options or OpenAIEmulatorOptions()
    app = new_app(state)

    def check_auth(request: web.Request, azure: bool) -> web.Response | None:
        return auth_error(request, opts, azure)

    async def read_json(request: web.Request) -> tuple[dict[str, Any] | None, web.Response | None]:
        raw = await request.read()
        request.app[STATE_KEY].remember(request, raw)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None, json_response(error_body(400, "We could not parse the JSON body of your request."), 400)
        if not isinstance(body, dict):
            return None, json_response(error_body(400, "The request body must be a JSON object."), 400)
        return body, None

    async def chat(request: web.Request, azure: bool = False) -> web.StreamResponse:
        body, err = await read_json(request)
        if err is not None or body is None:
            return err  # type: ignore[return-value]
        denied = check_auth(request, azure)
        if denied is not None:
            return denied
        if azure and "api-version" not in request.query:
            return json_response(error_body(404, "Resource not found"), 404)
        plan, faulted = await planned_fault(request)
        if faulted is not None:
            return faulted
        if azure:
            body.setdefault("model", request.match_info["deployment"])
        model = body.get("model")
        if not isinstance(body.get("messages"), list) or not body["messages"]:
            return json_response(error_body(400, "'messages' is a required property"), 400)
        if not azure and (not isinstance(model, str) or not model):
            return json_response(error_body(400, "you must provide a model parameter"), 400)
        if not azure and opts.models and model not in opts.models:
            return json_response(error_body(404, f"The model `{model}` does not exist or you do not have "
                                                 "access to it.", "model_not_found"), 404)
        if model in opts.responses_only:
            return json_response(error_body(404, "This model is only supported in v1/responses and not in "
                                                 "v1/chat/completions.", "model_not_found"), 404)
        refused = first_out_of_range(body, ("n", 1, MAX_CHOICES), ("top_logprobs", 0, MAX_TOP_LOGPROBS))
        if refused is not None:
            return refused
        window = opts.context_windows.get(str(model), opts.context_window)
        tokens = count_tokens(body)
        if tokens > window:
            return json_response(error_body(
                400, f"This model's maximum context length is {window} tokens. However, your messages "
                     f"resulted in {tokens} tokens. Please reduce the length of the messages.",
                "context_length_exceeded"), 400)
        if not body.get("stream"):
            return json_response(complete(body, opts.prefix, words_at_least=opts.answer_words),
                                 headers={"x-ratelimit-limit-requests": "10000",
                                          "x-ratelimit-remaining-requests": "9999"})
        return await send_sse(request, (b"data: " + orjson.dumps(c) + b"\n\n"
                                        for c in stream_chunks(body, opts.prefix, words_at_least=opts.answer_words)),
                              plan)

    async def azure_chat(request: web.Request) -> web.StreamResponse:
        return await chat(request, azure=True)

    async def models(request: web.Request) -> web.Response:
        denied = check_auth(request, False)
        if denied is not None:
            return denied
        return json_response({"object": "list", "data": [
            {"id": m, "object": "model", "created": 1700000000, "owned_by": "openai"} for m in opts.models]})

    app.router.add_post("/v1/chat/completions", tracked(chat))
    app.router.add_post("/openai/deployments/{deployment}/chat/completions", tracked(azure_chat))
    async def tags(request: web.Request) -> web.Response:
        """Ollama's ``GET /api/tags``: the local models (no auth, as Ollama has none)."""
        request.app[STATE_KEY].remember(request, b"")
        return json_response({"models": [
            {"name": m, "model": m, "modified_at": "2026-11-30T12:00:00.000000000Z", "size": 2019393189,
             "digest": "a80c4f17acd55265feec403c7aef86be0c25983ab279d83f3bcd3abbcb5b8b72",
             "details": {"parent_model": "", "format": "gguf", "family": "llama", "families": ["llama"],
                         "parameter_size": "3.2B", "quantization_level": "Q4_K_M"}} for m in opts.models]})

    app.router.add_get("/v1/models", models)
    if opts.ollama:
        app.router.add_get("/api/tags", tags)
    from relaygate.testing.openai_audio import (
        add_audio_routes,  # imported here: they build on this module's helpers
    )
    from relaygate.testing.openai_files import add_passthrough_routes
    from relaygate.testing.openai_responses import add_responses_routes

    add_audio_routes(app, opts)
    add_passthrough_routes(app, opts)
    add_responses_routes(app, opts)
    return app
