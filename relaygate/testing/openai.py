"""An emulator of OpenAI's REST wire format (chat completions, models; Azure's deployment URLs too).

Answers are deterministic functions of the request, so tests can check what reached the upstream:
the reply echoes the last user message, calls the first offered tool, reports tool results and images.
``complete()`` and ``stream_chunks()`` are pure and also serve the built-in ``demo`` model.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

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
MAX_CHOICES = 128  # n (chat and completions)
MAX_TOP_LOGPROBS = 20
MAX_BEST_OF = 20  # completions
MAX_EMBEDDING_INPUTS = 2048
MAX_EMBEDDING_DIMS = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072}  # others: 3072
MAX_IMAGES = 10  # images n
MAX_ANSWER_CHARS = 64 * 1024  # ~16k tokens, gpt-4o's output limit: an echo of a huge prompt stops there
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


# ---- the answer: a pure function of the request ------------------------------------------------------

def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def _images_in(content: Any) -> int:
    if isinstance(content, list):
        return sum(1 for p in content if isinstance(p, dict) and p.get("type") == "image_url")
    return 0


def count_tokens(body: dict[str, Any]) -> int:
    """An emulated token count: whitespace-separated words, plus 4 per message."""
    n = 0
    for m in body.get("messages") or []:
        if isinstance(m, dict):
            n += 4 + len(_text_of(m.get("content")).split()) + 85 * _images_in(m.get("content"))
    return max(n, 1)


def _args_for(schema: Any, text: str) -> dict[str, Any]:
    props = schema.get("properties", {}) if isinstance(schema, dict) else {}
    required = schema.get("required", list(props)) if isinstance(schema, dict) else []
    args: dict[str, Any] = {}
    for name in required:
        t = props.get(name, {}).get("type") if isinstance(props.get(name), dict) else "string"
        t = str(t).lower()  # Gemini's Schema spells types in capitals ("STRING")
        if t in ("number", "integer"):
            args[name] = 1
        elif t == "boolean":
            args[name] = True
        elif t == "array":
            args[name] = [text]
        elif t == "object":
            args[name] = {}
        else:
            enum = props.get(name, {}).get("enum") if isinstance(props.get(name), dict) else None
            args[name] = enum[0] if enum else text
    return args


def _tool_to_call(body: dict[str, Any], last_user: str) -> dict[str, Any] | None:
    tools = body.get("tools")
    choice = body.get("tool_choice", "auto")
    if not tools or choice == "none":
        return None
    messages = body.get("messages") or []
    if messages and isinstance(messages[-1], dict) and messages[-1].get("role") == "tool":
        return None  # answer the tool result instead of calling again
    wanted = None
    if isinstance(choice, dict):
        wanted = (choice.get("function") or {}).get("name")
    for t in tools:
        fn = t.get("function", {}) if isinstance(t, dict) else {}
        if wanted is None or fn.get("name") == wanted:
            args = orjson.dumps(_args_for(fn.get("parameters"), last_user)).decode()
            digest = hashlib.sha1(f"{fn.get('name')}{args}".encode()).hexdigest()[:24]
            return {"id": f"call_{digest}", "type": "function",
                    "function": {"name": fn.get("name", ""), "arguments": args}}
    return None


@dataclass
class Answer:
    text: str | None
    tool_call: dict[str, Any] | None
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


def answer(body: dict[str, Any], prefix: str = "Hello! You said: ", max_chars: int = MAX_ANSWER_CHARS) -> Answer:
    """What the emulated model says to this request (at most ``max_chars`` of it, as a model's output limit)."""
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    last_user = next((_text_of(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")
    system = next((_text_of(m.get("content")) for m in messages if m.get("role") in ("system", "developer")), "")
    prompt_tokens = count_tokens(body)
    call = _tool_to_call(body, last_user)
    if call is not None:
        return Answer(None, call, "tool_calls", prompt_tokens, len(call["function"]["arguments"].split()) + 5)
    last = messages[-1] if messages else {}
    if last.get("role") == "tool":
        text = f"The tool returned: {_text_of(last.get('content'))}"
    else:
        text = prefix + last_user
        images = sum(_images_in(m.get("content")) for m in messages)
        if images:
            text += f" (I see {images} image{'s' if images != 1 else ''})"
        if system:
            text += f" [system: {system}]"
        turns = sum(1 for m in messages if m.get("role") == "user")
        if turns > 1:
            text += f" [turn {turns}]"
    rf = body.get("response_format")
    if isinstance(rf, dict) and rf.get("type") in ("json_object", "json_schema"):
        text = orjson.dumps({"answer": text}).decode()
    finish = "stop"
    if len(text) > max_chars:  # cut first: splitting a huge echo would cost more than the answer is worth
        text, finish = text[:max_chars], "length"
    words = text.split(" ")
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    if isinstance(limit, int) and 0 < limit < len(words):
        words, finish = words[:limit], "length"
    text = " ".join(words)
    stop = body.get("stop")
    for s in [stop] if isinstance(stop, str) else (stop or []):
        if isinstance(s, str) and s and s in text:
            text, finish = text[: text.index(s)], "stop"
    return Answer(text, None, finish, prompt_tokens, max(1, len(text.split())))


def _usage(a: Answer) -> dict[str, Any]:
    return {"prompt_tokens": a.prompt_tokens, "completion_tokens": a.completion_tokens,
            "total_tokens": a.prompt_tokens + a.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}


def _logprobs(text: str | None) -> dict[str, Any]:
    toks = (text or "").split(" ")
    return {"content": [{"token": t, "logprob": -0.01, "bytes": list(t.encode()), "top_logprobs": []}
                        for t in toks], "refusal": None}


def _completion_id(body: dict[str, Any]) -> str:
    return "chatcmpl-" + hashlib.sha1(orjson.dumps(body.get("messages"))).hexdigest()[:24]


def complete(body: dict[str, Any], prefix: str = "Hello! You said: ",
             max_chars: int = MAX_ANSWER_CHARS) -> dict[str, Any]:
    """A whole ``chat.completion`` object."""
    a = answer(body, prefix, max_chars)
    n_raw = body.get("n")
    n = min(n_raw, MAX_CHOICES) if isinstance(n_raw, int) and n_raw > 0 else 1
    message: dict[str, Any] = {"role": "assistant", "content": a.text, "refusal": None, "annotations": []}
    if a.tool_call:
        message["tool_calls"] = [a.tool_call]
    logprobs = _logprobs(a.text) if body.get("logprobs") else None  # the same for every choice: built once
    choices = [{"index": i, "message": message, "finish_reason": a.finish_reason, "logprobs": logprobs}
               for i in range(n)]
    return {"id": _completion_id(body), "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model"), "choices": choices, "usage": _usage(a),
            "service_tier": "default", "system_fingerprint": "fp_relaygate_emu"}


def stream_chunks(body: dict[str, Any], prefix: str = "Hello! You said: ",
                  max_chars: int = MAX_ANSWER_CHARS) -> list[dict[str, Any]]:
    """The ``chat.completion.chunk`` objects of a streamed answer, in order (usage chunk if asked)."""
    a = answer(body, prefix, max_chars)
    cid, created, model = _completion_id(body), int(time.time()), body.get("model")
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

    def chunk(delta: dict[str, Any], finish: str | None = None, logprobs: Any = None) -> dict[str, Any]:
        c: dict[str, Any] = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                             "system_fingerprint": "fp_relaygate_emu",
                             "choices": [{"index": 0, "delta": delta, "logprobs": logprobs,
                                          "finish_reason": finish}]}
        if include_usage:
            c["usage"] = None
        return c

    out = [chunk({"role": "assistant", "content": "" if a.tool_call is None else None, "refusal": None})]
    if a.tool_call:
        tc = a.tool_call
        out.append(chunk({"tool_calls": [{"index": 0, "id": tc["id"], "type": "function",
                                          "function": {"name": tc["function"]["name"], "arguments": ""}}]}))
        args = tc["function"]["arguments"]
        step = max(1, len(args) // 3)
        for i in range(0, len(args), step):
            out.append(chunk({"tool_calls": [{"index": 0, "function": {"arguments": args[i:i + step]}}]}))
    else:
        words = (a.text or "").split(" ")
        for i, w in enumerate(words):
            piece = w if i == len(words) - 1 else w + " "
            out.append(chunk({"content": piece}, logprobs=_logprobs(piece) if body.get("logprobs") else None))
    out.append(chunk({}, a.finish_reason))
    if include_usage:
        out.append({"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                    "system_fingerprint": "fp_relaygate_emu", "choices": [], "usage": _usage(a)})
    return out


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
        state = request.app[STATE_KEY]
        body, err = await read_json(request)
        if err is not None or body is None:
            return err  # type: ignore[return-value]
        denied = check_auth(request, azure)
        if denied is not None:
            return denied
        if azure and "api-version" not in request.query:
            return json_response(error_body(404, "Resource not found"), 404)
        plan = state.take_fault(request.path)
        await apply_latency(plan)
        if plan is not None and plan.drop_connection:
            return await drop_connection(request)
        if plan is not None and plan.status:
            return fault_response(plan)
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
            return json_response(complete(body, opts.prefix),
                                 headers={"x-ratelimit-limit-requests": "10000",
                                          "x-ratelimit-remaining-requests": "9999"})
        return await send_sse(request, (b"data: " + orjson.dumps(c) + b"\n\n"
                                        for c in stream_chunks(body, opts.prefix)), plan)

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
    app.router.add_get("/v1/models", models)
    from relaygate.testing.openai_audio import (
        add_audio_routes,  # imported here: they build on this module's helpers
    )
    from relaygate.testing.openai_files import add_passthrough_routes

    add_audio_routes(app, opts)
    add_passthrough_routes(app, opts)
    return app
