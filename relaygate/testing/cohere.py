"""An emulator of Cohere's API v2 wire format: ``POST /v2/chat`` (whole or SSE), ``POST /v2/embed``,
``POST /v2/audio/transcriptions`` and ``GET /v1/models[/{model}]``.

Shapes follow Cohere's OpenAPI spec (cohere-ai/cohere-developer-experience, ``cohere-openapi.yaml``) and the
official ``cohere`` SDK's types, which the tests use as the oracle. Answers are deterministic and shared with
the OpenAI emulator (``testing.openai.answer``): echo the last user text, call the first offered tool unless
the last turn is a tool result. The emulator is stricter than Cohere may be about unknown request fields so
that a translating client cannot leak OpenAI-only parameters unnoticed.

Fault injection (``FaultPlan``) as in every emulator; in addition ``error_code`` "ERROR" or "TIMEOUT" with no
``status`` answers 200 but ends the generation with that ``finish_reason`` (what Cohere does when generation
fails after it started).
"""

from __future__ import annotations

import base64
import hashlib
import math
import struct
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import BodyPartReader, web

from relaygate.providers.echo import Answer, answer, count_tokens
from relaygate.testing.base import (
    STATE_KEY,
    FaultPlan,
    apply_latency,
    drop_connection,
    json_response,
    new_app,
    send_sse,
    tracked,
)
from relaygate.testing.openai_audio import transcript_of

CHAT_MODELS = ("command-a-03-2025", "command-r-plus-08-2024", "command-r-08-2024", "command-r7b-12-2024",
               "command-a-vision-07-2025", "command-a-reasoning-08-2025")
EMBED_MODELS = ("embed-v4.0", "embed-english-v3.0", "embed-multilingual-v3.0")
TRANSCRIBE_MODELS = ("cohere-transcribe-03-2026",)
AUDIO_EXTENSIONS = ("flac", "mp3", "mpeg", "mpga", "ogg", "wav")
INPUT_TYPES = ("search_document", "search_query", "classification", "clustering", "image")
EMBEDDING_TYPES = ("float", "int8", "uint8", "binary", "ubinary", "base64")
PROMPT_OVERHEAD = 64  # Cohere's ``tokens.input_tokens`` counts its prompt template; ``billed_units`` does not

CHAT_FIELDS = frozenset({
    "stream", "model", "messages", "tools", "strict_tools", "documents", "citation_options", "response_format",
    "safety_mode", "max_tokens", "stop_sequences", "temperature", "seed", "frequency_penalty",
    "presence_penalty", "k", "p", "logprobs", "tool_choice", "thinking", "priority",
})
EMBED_FIELDS = frozenset({"texts", "images", "model", "input_type", "inputs", "max_tokens", "output_dimension",
                          "embedding_types", "truncate", "priority"})

DEFAULT_MESSAGES = {
    400: "invalid request: the request body is not valid",
    401: "invalid api token",
    403: "You do not have access to this resource.",
    404: "404 page not found",
    422: "invalid request: the request could not be processed",
    429: "You are past the per minute request limit, please wait and try again later.",
    498: "blocked output: please adjust your prompt and try again, as this generation may be a "
         "potential violation of our Usage Policy",
    499: "request cancelled",
    500: "internal server error, this has been reported to our developers",
    503: "service unavailable, please try again later",
    504: "request timed out, please try again later",
}


@dataclass
class CohereEmulatorOptions:
    api_key: str | None = None  # when set, requests must carry ``Authorization: Bearer <key>``
    chat_models: tuple[str, ...] = CHAT_MODELS
    embed_models: tuple[str, ...] = EMBED_MODELS
    transcribe_models: tuple[str, ...] = TRANSCRIBE_MODELS
    context_window: int = 128_000  # prompts longer than this (emulated tokens) get 400 "too many tokens"
    dimensions: int = 256  # embedding size when output_dimension is not given
    prefix: str = "Hello! You said: "


def error_body(status: int, message: str | None = None) -> dict[str, Any]:
    """Cohere's error body: ``{"id": ..., "message": ...}``."""
    return {"id": str(uuid.uuid4()), "message": message or DEFAULT_MESSAGES.get(status, f"HTTP {status}")}


def error_response(status: int, message: str | None = None, headers: dict[str, str] | None = None) -> web.Response:
    return json_response(error_body(status, message), status, headers)


def fault_response(plan: FaultPlan) -> web.Response:
    assert plan.status is not None
    headers = {}
    if plan.retry_after is not None:
        headers["retry-after"] = str(max(1, math.ceil(plan.retry_after)))
    return error_response(plan.status, plan.message, headers)


# ---- chat: translate to the shared answer, then into Cohere's shapes -------------------------------------

class Invalid(Exception):
    """A request Cohere would refuse with 400."""


def _check_messages(messages: Any) -> None:
    if not isinstance(messages, list) or not messages:
        raise Invalid("invalid request: messages must be a non-empty list")
    tool_ids: set[str] = set()
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant", "system", "tool"):
            raise Invalid(f"invalid request: message at index {i} must have a role of user, assistant, "
                          "system or tool")
        role = m["role"]
        if role == "assistant":
            for tc in m.get("tool_calls") or []:
                if not isinstance(tc, dict) or tc.get("type") != "function":
                    raise Invalid("tool call must be of type function")
                if not isinstance(tc.get("id"), str) or tc["id"] in tool_ids:
                    raise Invalid("cannot have duplicate tool ids")
                tool_ids.add(tc["id"])
            if "content" not in m and not m.get("tool_calls"):
                raise Invalid("message must not be empty in a turn")
        elif role == "tool":
            if not m.get("tool_call_id"):
                raise Invalid("tool call id must be provided with tool message")
            if m["tool_call_id"] not in tool_ids:
                raise Invalid("tool call id not found in previous tool calls")
        elif "content" not in m:
            raise Invalid(f"invalid request: message at index {i} must have content")


def _check_chat(body: dict[str, Any]) -> None:
    for name in body:
        if name not in CHAT_FIELDS:
            raise Invalid(f"invalid request: unknown field: parameter '{name}' is not a valid field")
    _check_messages(body.get("messages"))
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise Invalid("invalid request: tools must be a list")
        for t in tools:
            fn = t.get("function") if isinstance(t, dict) else None
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or "parameters" not in fn:
                raise Invalid("invalid request: each tool must be a function with a name and parameters")
    choice = body.get("tool_choice")
    if choice is not None:
        if choice not in ("REQUIRED", "NONE"):
            raise Invalid("invalid request: tool_choice must be one of REQUIRED or NONE")
        if not tools:
            raise Invalid("invalid request: tools must be provided when tool_choice is specified")
    temperature = body.get("temperature")
    if temperature is not None and not (isinstance(temperature, int | float) and 0 <= temperature <= 1):
        raise Invalid("invalid request: temperature must be between 0 and 1.0 inclusive.")
    p = body.get("p")
    if p is not None and not (isinstance(p, int | float) and 0.01 <= p <= 0.99):
        raise Invalid("invalid request: p must be between 0.01 and 0.99 inclusive.")
    for name in ("frequency_penalty", "presence_penalty"):
        value = body.get(name)
        if value is not None and not (isinstance(value, int | float) and 0 <= value <= 1):
            raise Invalid(f"invalid request: {name} must be between 0 and 1 inclusive.")
    stops = body.get("stop_sequences")
    if stops is not None and (not isinstance(stops, list) or len(stops) > 5
                              or not all(isinstance(s, str) for s in stops)):
        raise Invalid("invalid request: stop_sequences must be a list of up to 5 strings")
    docs = body.get("documents")
    if docs is not None and (not isinstance(docs, list) or not all(
            isinstance(d, str) or (isinstance(d, dict) and isinstance(d.get("data"), dict)) for d in docs)):
        raise Invalid("invalid request: each document must be a string or an object with data")
    k = body.get("k")
    if k is not None and not (isinstance(k, int) and 0 <= k <= 500):
        raise Invalid("invalid request: k must be between 0 and 500 inclusive.")
    if body.get("safety_mode") not in (None, "CONTEXTUAL", "STRICT", "OFF"):
        raise Invalid("invalid request: safety_mode must be one of CONTEXTUAL, STRICT or OFF")
    thinking = body.get("thinking")
    if thinking is not None:
        budget = thinking.get("token_budget") if isinstance(thinking, dict) else None
        if not isinstance(thinking, dict) or thinking.get("type", "enabled") not in ("enabled", "disabled") \
                or (budget is not None and (not isinstance(budget, int) or budget < 1)):
            raise Invalid("invalid request: thinking must have type enabled or disabled and a positive "
                          "token_budget")
    rf = body.get("response_format")
    if rf is not None and (not isinstance(rf, dict) or rf.get("type") not in ("text", "json_object")):
        raise Invalid("invalid request: response_format type must be one of text or json_object")


def _as_openai(body: dict[str, Any]) -> dict[str, Any]:
    """The request in the shape the shared ``answer()`` reads (same messages; OpenAI's option names)."""
    choice = {"REQUIRED": "required", "NONE": "none"}.get(body.get("tool_choice") or "", "auto")
    return {"messages": [_documents_read(m) for m in body["messages"]], "tools": body.get("tools"), "tool_choice": choice,
            "max_tokens": body.get("max_tokens"), "response_format": body.get("response_format")}


def _documents_read(m: Any) -> Any:
    """A tool result's ``document`` parts as the text the model reads (Cohere grounds on their data)."""
    content = m.get("content") if isinstance(m, dict) and m.get("role") == "tool" else None
    if not isinstance(content, list):
        return m
    parts = [{"type": "text", "text": d if isinstance(d := (p.get("document") or {}).get("data"), str)
              else orjson.dumps(d).decode()} if isinstance(p, dict) and p.get("type") == "document" else p
             for p in content]
    return {**m, "content": parts}


@dataclass
class Reply:
    """The emulated generation in Cohere's terms."""

    id: str
    text: str | None
    tool_plan: str | None
    tool_call: dict[str, Any] | None
    finish_reason: str
    usage: dict[str, Any]
    thinking: str | None = None  # reasoning models think first (unless ``thinking.type`` is "disabled")
    citations: list[dict[str, Any]] | None = None  # grounded answers cite their documents


def reply_for(body: dict[str, Any], prefix: str, forced_finish: str | None = None) -> Reply:
    a: Answer = answer(_as_openai(body), prefix)
    text, finish = a.text, {"stop": "COMPLETE", "length": "MAX_TOKENS", "tool_calls": "TOOL_CALL"}[a.finish_reason]
    docs = body.get("documents") or []
    if text is not None and docs:  # grounded answers name what they read
        titles = [d if isinstance(d, str) else str((d.get("data") or {}).get("title", "untitled")) for d in docs]
        text += f" [documents: {', '.join(titles)}]"
    for s in body.get("stop_sequences") or []:
        if text is not None and s and s in text:
            text, finish = text[: text.index(s)], "STOP_SEQUENCE"
            break
    tool_call = plan = None
    if a.tool_call is not None:
        fn = a.tool_call["function"]
        # Cohere's tool call ids look like "<tool name>_<random>"
        tool_call = {"id": f"{fn['name']}_{a.tool_call['id'][5:17]}", "type": "function",
                     "function": {"name": fn["name"], "arguments": fn["arguments"]}}
        plan = f"I will use the {fn['name']} tool to answer."
    if forced_finish is not None:
        finish = forced_finish
    thinking = None
    setting = body.get("thinking")
    if "reasoning" in body["model"] and not (isinstance(setting, dict) and setting.get("type") == "disabled"):
        thinking = "The user wants an echo, so I will repeat what they said."
    billed_in, out = a.prompt_tokens, a.completion_tokens + (len(thinking.split()) if thinking else 0)
    usage = {"billed_units": {"input_tokens": billed_in, "output_tokens": out},
             "tokens": {"input_tokens": billed_in + PROMPT_OVERHEAD, "output_tokens": out}}
    rid = str(uuid.UUID(hashlib.md5(orjson.dumps(body["messages"])).hexdigest()))
    return Reply(rid, text, plan, tool_call, finish, usage, thinking, _citations(text, docs, thinking is not None))


def _citations(text: str | None, docs: list[Any], after_thinking: bool) -> list[dict[str, Any]] | None:
    """The answer's " [documents: …]" part, cited to every document."""
    start = text.find(" [documents: ") + 1 if text else 0
    if not docs or not text or start == 0:
        return None
    sources = [{"type": "document", "id": f"doc_{i}" if isinstance(d, str) else d.get("id", f"doc_{i}"),
                "document": {"snippet": d} if isinstance(d, str) else d["data"]} for i, d in enumerate(docs)]
    return [{"start": start, "end": len(text), "text": text[start:], "sources": sources,
             "content_index": 1 if after_thinking else 0, "type": "TEXT_CONTENT"}]


def chat_response(r: Reply) -> dict[str, Any]:
    """The non-streamed ``/v2/chat`` body."""
    message: dict[str, Any] = {"role": "assistant"}
    if r.tool_call is not None:
        message["tool_plan"] = r.tool_plan
        message["tool_calls"] = [r.tool_call]
    else:
        message["content"] = [{"type": "text", "text": r.text or ""}]
    if r.thinking is not None:
        message["content"] = [{"type": "thinking", "thinking": r.thinking}, *message.get("content", [])]
    if r.citations:
        message["citations"] = r.citations
    return {"id": r.id, "message": message, "finish_reason": r.finish_reason, "usage": r.usage}


def stream_events(r: Reply, error: str | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """The ``(event, data)`` pairs of a streamed ``/v2/chat`` answer, in order."""
    yield "message-start", {"id": r.id, "type": "message-start", "delta": {"message": {
        "role": "assistant", "content": [], "tool_plan": "", "tool_calls": [], "citations": []}}}
    index = 0
    if r.thinking is not None:
        yield "content-start", {"type": "content-start", "index": 0,
                                "delta": {"message": {"content": {"type": "thinking", "thinking": ""}}}}
        for word in _pieces(r.thinking):
            yield "content-delta", {"type": "content-delta", "index": 0,
                                    "delta": {"message": {"content": {"thinking": word}}}}
        yield "content-end", {"type": "content-end", "index": 0}
        index = 1
    if r.tool_call is not None:
        for word in _pieces(r.tool_plan or ""):
            yield "tool-plan-delta", {"type": "tool-plan-delta", "delta": {"message": {"tool_plan": word}}}
        fn = r.tool_call["function"]
        yield "tool-call-start", {"type": "tool-call-start", "index": 0, "delta": {"message": {"tool_calls": {
            "id": r.tool_call["id"], "type": "function", "function": {"name": fn["name"], "arguments": ""}}}}}
        # a call without arguments: no tool-call-delta at all after the empty start (as recorded)
        args = "" if fn["arguments"] in ("{}", "null") else fn["arguments"]
        step = max(1, len(args) // 3)
        for i in range(0, len(args), step):
            yield "tool-call-delta", {"type": "tool-call-delta", "index": 0, "delta": {"message": {
                "tool_calls": {"function": {"arguments": args[i:i + step]}}}}}
        yield "tool-call-end", {"type": "tool-call-end", "index": 0}
    else:
        yield "content-start", {"type": "content-start", "index": index,
                                "delta": {"message": {"content": {"type": "text", "text": ""}}}}
        for word in _pieces(r.text or ""):
            yield "content-delta", {"type": "content-delta", "index": index,
                                    "delta": {"message": {"content": {"text": word}}}}
        for i, citation in enumerate(r.citations or []):  # once the cited text went out
            yield "citation-start", {"type": "citation-start", "index": i,
                                     "delta": {"message": {"citations": citation}}}
            yield "citation-end", {"type": "citation-end", "index": i}
        yield "content-end", {"type": "content-end", "index": index}
    delta: dict[str, Any] = {"finish_reason": r.finish_reason, "usage": r.usage}
    if error is not None:
        delta["error"] = error
    yield "message-end", {"type": "message-end", "delta": delta}


def _pieces(text: str) -> list[str]:
    words = text.split(" ")
    return [w if i == len(words) - 1 else w + " " for i, w in enumerate(words)]


# ---- embed ------------------------------------------------------------------------------------------------

def embed_vector(model: str, input_type: str, text: str, dims: int) -> list[float]:
    """A deterministic unit vector for a text (the same text always maps to the same vector)."""
    out: list[float] = []
    counter = 0
    while len(out) < dims:
        digest = hashlib.sha256(f"{model}|{input_type}|{text}|{counter}".encode()).digest()
        out.extend((b - 127.5) / 127.5 for b in digest)
        counter += 1
    vec = out[:dims]
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    return [round(v / norm, 8) for v in vec]


def _packed_bits(vec: list[float]) -> list[int]:
    """One bit per dimension (1 when positive), packed 8 per byte, most significant bit first."""
    out = []
    for i in range(0, len(vec), 8):
        byte = 0
        for j, v in enumerate(vec[i:i + 8]):
            if v > 0:
                byte |= 0x80 >> j
        out.append(byte)
    return out


def encode_embedding(vec: list[float], kind: str) -> Any:
    """One vector in one of Cohere's ``embedding_types``."""
    if kind == "float":
        return vec
    if kind == "int8":
        return [max(-128, min(127, round(v * 127))) for v in vec]
    if kind == "uint8":
        return [max(0, min(255, round((v + 1) * 127.5))) for v in vec]
    if kind == "ubinary":
        return _packed_bits(vec)
    if kind == "binary":
        return [b - 128 for b in _packed_bits(vec)]
    # base64: the float32 little-endian bytes of the vector
    return base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode()


def _embed_inputs(body: dict[str, Any]) -> list[str]:
    texts, images, inputs = body.get("texts"), body.get("images"), body.get("inputs")
    if sum(x is not None for x in (texts, images, inputs)) != 1:
        raise Invalid("invalid request: exactly one of texts, images or inputs must be provided")
    if images is not None:
        if body.get("input_type") != "image":
            raise Invalid("invalid request: images must be used with input_type=image")
        items = images
    elif inputs is not None:
        if not isinstance(inputs, list):
            raise Invalid("invalid request: inputs must be a list")
        items = [" ".join(str(c.get("text") or (c.get("image_url") or {}).get("url", ""))
                          for c in (i.get("content") or []) if isinstance(c, dict))
                 for i in inputs if isinstance(i, dict)]
    else:
        items = texts
    if not isinstance(items, list) or not items or not all(isinstance(t, str) for t in items):
        raise Invalid("invalid request: texts must be a non-empty list of strings")
    if len(items) > 96:
        raise Invalid(f"invalid request: total number of texts must be at most 96 - received {len(items)}")
    for i, t in enumerate(items):
        if not t:
            raise Invalid(f"invalid request: inputs contains an element that is the empty string at index {i}")
    return items


def embed_response(body: dict[str, Any], default_dims: int) -> dict[str, Any]:
    """The ``/v2/embed`` body for a validated request."""
    for name in body:
        if name not in EMBED_FIELDS:
            raise Invalid(f"invalid request: unknown field: parameter '{name}' is not a valid field")
    input_type = body.get("input_type")
    if input_type not in INPUT_TYPES:
        raise Invalid("invalid request: valid input_type must be provided with the provided model")
    items = _embed_inputs(body)
    kinds = body.get("embedding_types") or ["float"]
    if not isinstance(kinds, list) or any(k not in EMBEDDING_TYPES for k in kinds):
        raise Invalid(f"invalid request: embedding_types must be a list of {', '.join(EMBEDDING_TYPES)}")
    dims = body.get("output_dimension") or default_dims
    if not isinstance(dims, int) or not 8 <= dims <= 4096:
        raise Invalid("invalid request: output_dimension must be one of 256, 512, 1024, 1536")
    vectors = [embed_vector(body["model"], input_type, t, dims) for t in items]
    embeddings = {k: [encode_embedding(v, k) for v in vectors] for k in dict.fromkeys(kinds)}
    out: dict[str, Any] = {"id": str(uuid.uuid4()), "embeddings": embeddings,
                           "meta": {"api_version": {"version": "2"},
                                    "billed_units": {"input_tokens": sum(len(t.split()) for t in items)}}}
    if body.get("texts") is not None:
        out["texts"] = items
    return out


# ---- the app ----------------------------------------------------------------------------------------------

def create_app(options: CohereEmulatorOptions | None = None) -> web.Application:
    """The emulator as an aiohttp app serving ``/v2/chat`` and ``/v2/embed``."""
    opts = options or CohereEmulatorOptions()
    app = new_app()

    def check_auth(request: web.Request) -> web.Response | None:
        if opts.api_key is None:
            return None
        auth = request.headers.get("authorization", "")
        if not auth:
            return error_response(401, "no api key supplied")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or token != opts.api_key:
            return error_response(401, "invalid api token")
        return None

    async def prelude(request: web.Request, models: tuple[str, ...],
                      ) -> tuple[dict[str, Any] | None, FaultPlan | None, web.StreamResponse | None]:
        """Record, authenticate, parse, apply faults and check the model: common to both routes."""
        state = request.app[STATE_KEY]
        raw = await request.read()
        state.remember(request, raw)
        denied = check_auth(request)
        if denied is not None:
            return None, None, denied
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            return None, None, error_response(400, f"invalid json syntax: {e.msg}")
        if not isinstance(body, dict):
            return None, None, error_response(400, "invalid request: the body must be a JSON object")
        plan = state.take_fault(request.path)
        await apply_latency(plan)
        if plan is not None and plan.drop_connection:
            return None, None, await drop_connection(request)
        if plan is not None and plan.status:
            return None, None, fault_response(plan)
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return None, None, error_response(400, "a model parameter is required for this endpoint.")
        if model not in models:
            return None, None, error_response(404, f"model '{model}' not found, make sure the correct model ID "
                                                   "was used and that you have access to the model.")
        return body, plan, None

    async def chat(request: web.Request) -> web.StreamResponse:
        body, plan, early = await prelude(request, opts.chat_models)
        if early is not None or body is None:
            assert early is not None
            return early
        try:
            _check_chat(body)
        except Invalid as e:
            return error_response(400, str(e))
        tokens = count_tokens(_as_openai(body))
        if tokens > opts.context_window:
            return error_response(400, f"too many tokens: size limit exceeded by {tokens - opts.context_window} "
                                       "tokens. Try using shorter or fewer inputs.")
        forced = plan.error_code if plan is not None and plan.error_code in ("ERROR", "TIMEOUT") else None
        r = reply_for(body, opts.prefix, forced)
        if not body.get("stream"):
            return json_response(chat_response(r))
        error = ((plan.message if plan else None) or "internal error during generation") if forced else None
        return await send_sse(request, (b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"
                                        for event, data in stream_events(r, error)), plan)

    async def embed(request: web.Request) -> web.StreamResponse:
        body, _plan, early = await prelude(request, opts.embed_models)
        if early is not None or body is None:
            assert early is not None
            return early
        try:
            return json_response(embed_response(body, opts.dimensions))
        except Invalid as e:
            return error_response(400, str(e))

    async def transcribe(request: web.Request) -> web.StreamResponse:
        """``POST /v2/audio/transcriptions``: multipart model, language, temperature and file -> ``{"text"}``."""
        state = request.app[STATE_KEY]
        denied = check_auth(request)
        if denied is not None:
            state.remember(request, b"")
            return denied
        fields: dict[str, Any] = {}
        audio, filename = b"", ""
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                return error_response(400, "invalid request: nested multipart bodies are not accepted")
            if part.filename is not None:
                filename, audio = part.filename, await part.read()
            else:
                fields[part.name or ""] = await part.text()
        state.remember(request, orjson.dumps({**fields, "file": {"filename": filename, "size": len(audio)}}))
        plan = state.take_fault(request.path)
        await apply_latency(plan)
        if plan is not None and plan.status:
            return fault_response(plan)
        unknown = sorted(set(fields) - {"model", "language", "temperature"})
        if unknown:
            return error_response(400, f"invalid request: unknown field: parameter '{unknown[0]}' is not a valid field")
        if fields.get("model") not in opts.transcribe_models:
            return error_response(404, f"model '{fields.get('model')}' not found, make sure the correct model ID "
                                       "was used and that you have access to the model.")
        if not fields.get("language"):
            return error_response(400, "invalid request: language is required")
        if not filename or filename.rsplit(".", 1)[-1].lower() not in AUDIO_EXTENSIONS:
            return error_response(400, "invalid request: the file must be one of " + ", ".join(AUDIO_EXTENSIONS))
        return json_response({"text": transcript_of(audio)[0]})

    def model_info(name: str) -> dict[str, Any]:
        # CompatibleEndpoint names no audio endpoint: a transcription model lists none
        endpoints = ["embed"] if name in opts.embed_models else ["chat"] if name in opts.chat_models else []
        return {"name": name, "is_deprecated": False, "endpoints": endpoints, "finetuned": False,
                "context_length": opts.context_window if endpoints == ["chat"] else 512,
                "default_endpoints": endpoints, "features": ["tools"] if endpoints == ["chat"] else []}

    async def models(request: web.Request) -> web.StreamResponse:
        """``GET /v1/models`` and ``GET /v1/models/{model}`` (free; the provider's health probe)."""
        state = request.app[STATE_KEY]
        state.remember(request, b"")
        denied = check_auth(request)
        if denied is not None:
            return denied
        plan = state.take_fault(request.path)
        await apply_latency(plan)
        if plan is not None and plan.status:
            return fault_response(plan)
        known = opts.chat_models + opts.embed_models + opts.transcribe_models
        name = request.match_info.get("model")
        if name is None:  # pages of page_size (default 20, at most 1000), next_page_token to go on
            try:
                size = min(int(request.query.get("page_size") or 20), 1000)
                start = int(request.query.get("page_token") or 0)
            except ValueError:
                return error_response(400, "invalid request: page_size and page_token must be integers")
            page = known[start:start + max(size, 1)]
            more = start + len(page) < len(known)
            return json_response({"models": [model_info(m) for m in page],
                                  **({"next_page_token": str(start + len(page))} if more else {})})
        if name not in known:
            return error_response(404, f"model '{name}' not found, make sure the correct model ID was used "
                                       "and that you have access to the model.")
        return json_response(model_info(name))

    app.router.add_get("/v1/models", models)
    app.router.add_get("/v1/models/{model}", models)
    app.router.add_post("/v2/audio/transcriptions", tracked(transcribe))
    app.router.add_post("/v2/chat", tracked(chat))
    app.router.add_post("/v2/embed", tracked(embed))
    return app
