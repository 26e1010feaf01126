"""InvokeModel bodies of the model families besides Anthropic's (docs/bedrock.md): Amazon Nova
(``schemaVersion: messages-v1``), Meta Llama (``prompt``, ``max_gen_len``), Mistral's text completion
(``prompt``, ``max_tokens``) and chat completion (``messages`` with ``max_tokens``), AI21 Jamba (``messages``
and its sampling fields), Amazon Titan Text (``inputText``, ``textGenerationConfig``) and Cohere Command R
(``message``, ``chat_history``). Each is translated to an OpenAI chat request (served by any model, through
the whole pipeline), and the answer back to the family's documented response, whole or as
InvokeModelWithResponseStream ``chunk`` events (``{"bytes": base64(JSON)}``), the last of which carries
``amazon-bedrock-invocationMetrics`` as Bedrock's do. Image generation bodies (Stability, Titan Image, Nova
Canvas) are refused: the gateway has no image generation to route them to."""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from relaygate.api.bedrock import translate as converse
from relaygate.core.call import Usage
from relaygate.core.errors import BadRequest
from relaygate.providers.aws import eventstream as es


def chunk_frame(data: dict[str, Any]) -> bytes:
    """One InvokeModelWithResponseStream ``chunk`` event: the JSON part, base64 in ``bytes``."""
    return es.event("chunk", orjson.dumps({"bytes": base64.b64encode(orjson.dumps(data)).decode()}))


def metrics(usage: Usage | None, started: float, first: float | None) -> dict[str, int]:
    u = usage or Usage()
    now = time.monotonic()
    return {"inputTokenCount": u.prompt_tokens, "outputTokenCount": u.completion_tokens,
            "invocationLatency": max(0, int((now - started) * 1000)),
            "firstByteLatency": max(0, int(((first or now) - started) * 1000))}


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise converse.bad(where, "must be a string")
    return value


def _set(req: dict[str, Any], body: dict[str, Any], pairs: tuple[tuple[str, str], ...]) -> None:
    for name, chat in pairs:
        if body.get(name) is not None:
            req[chat] = body[name]


def _stream(req: dict[str, Any], stream: bool) -> dict[str, Any]:
    if stream:
        req["stream"] = True
        req["stream_options"] = {"include_usage": True}
    return req


def _answer_text(data: dict[str, Any]) -> tuple[str, str]:
    """(text, finish_reason) of a whole chat.completion."""
    choice = (data.get("choices") or [{}])[0]
    msg = choice.get("message") or {}
    return str(msg.get("content") or ""), str(choice.get("finish_reason") or "stop")


def _usage(data: dict[str, Any], usage: Usage | None) -> Usage:
    return usage or Usage.from_openai(data.get("usage")) or Usage()


class TextWriter:
    """OpenAI chunks in, a text family's stream chunks out: each text delta one chunk, the finish and the usage
    (and Bedrock's invocation metrics) on the last. ``piece(text)`` and ``last(finish, usage)`` make a
    family's chunk JSON."""

    __slots__ = ("piece", "last", "started", "first", "finish", "sent")

    def __init__(self, piece: Callable[[str, int], dict[str, Any]],
                 last: Callable[[str, Usage], dict[str, Any]], started: float) -> None:
        self.piece = piece
        self.last = last
        self.started = started
        self.first: float | None = None
        self.finish = "stop"
        self.sent = 0  # text deltas sent (Titan's running count stands in for tokens until the usage comes)

    def chunk(self, chunk: dict[str, Any]) -> bytes:
        out = b""
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            text = (choice.get("delta") or {}).get("content")
            if text:
                if self.first is None:
                    self.first = time.monotonic()
                self.sent += 1
                out += chunk_frame(self.piece(text, self.sent))
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
        return out

    def error(self, err: dict[str, Any]) -> bytes:
        return converse.stream_exception(err)

    def end(self, usage: Usage | None) -> bytes:
        u = usage or Usage()
        data = self.last(self.finish, u)
        data["amazon-bedrock-invocationMetrics"] = metrics(u, self.started, self.first)
        return chunk_frame(data)


@dataclass(frozen=True, slots=True)
class Family:
    """One InvokeModel body family: its request as a chat request, its whole answer, its stream writer."""

    name: str
    request: Callable[[dict[str, Any], str, bool], tuple[dict[str, Any], list[str]]]
    whole: Callable[[dict[str, Any], Usage | None], dict[str, Any]]
    writer: Callable[[float], Any]


# ---- Meta Llama -------------------------------------------------------------------------------------------

_LLAMA_STOP = {"length": "length"}


def _llama_request(body: dict[str, Any], model: str, stream: bool) -> tuple[dict[str, Any], list[str]]:
    req = {"model": model, "messages": [{"role": "user", "content": _text(body.get("prompt"), "prompt")}]}
    _set(req, body, (("max_gen_len", "max_completion_tokens"), ("temperature", "temperature"), ("top_p", "top_p")))
    return _stream(req, stream), [n for n in ("images",) if body.get(n) is not None]


def _llama_whole(data: dict[str, Any], usage: Usage | None) -> dict[str, Any]:
    text, finish = _answer_text(data)
    u = _usage(data, usage)
    return {"generation": text, "prompt_token_count": u.prompt_tokens, "generation_token_count": u.completion_tokens,
            "stop_reason": _LLAMA_STOP.get(finish, "stop")}


def _llama_writer(started: float) -> TextWriter:
    return TextWriter(
        lambda text, n: {"generation": text, "prompt_token_count": None, "generation_token_count": n,
                         "stop_reason": None},
        lambda finish, u: {"generation": "", "prompt_token_count": u.prompt_tokens,
                           "generation_token_count": u.completion_tokens,
                           "stop_reason": _LLAMA_STOP.get(finish, "stop")}, started)


# ---- Mistral (text completion) --------------------------------------------------------------------------

def _mistral_request(body: dict[str, Any], model: str, stream: bool) -> tuple[dict[str, Any], list[str]]:
    req = {"model": model, "messages": [{"role": "user", "content": _text(body.get("prompt"), "prompt")}]}
    _set(req, body, (("max_tokens", "max_completion_tokens"), ("temperature", "temperature"), ("top_p", "top_p"),
                     ("stop", "stop")))
    return _stream(req, stream), [n for n in ("top_k",) if body.get(n) is not None]


def _mistral_whole(data: dict[str, Any], usage: Usage | None) -> dict[str, Any]:
    text, finish = _answer_text(data)
    return {"outputs": [{"text": text, "stop_reason": "length" if finish == "length" else "stop"}]}


def _mistral_writer(started: float) -> TextWriter:
    return TextWriter(lambda text, n: {"outputs": [{"text": text, "stop_reason": None}]},
                      lambda finish, u: {"outputs": [{"text": "", "stop_reason":
                                                      "length" if finish == "length" else "stop"}]}, started)


# ---- Amazon Titan Text -------------------------------------------------------------------------------------

_TITAN_REASONS = {"length": "LENGTH", "content_filter": "CONTENT_FILTERED"}


def _titan_request(body: dict[str, Any], model: str, stream: bool) -> tuple[dict[str, Any], list[str]]:
    req = {"model": model, "messages": [{"role": "user", "content": _text(body.get("inputText"), "inputText")}]}
    cfg = body.get("textGenerationConfig")
    if cfg is not None:
        if not isinstance(cfg, dict):
            raise converse.bad("textGenerationConfig", "must be an object")
        _set(req, cfg, (("maxTokenCount", "max_completion_tokens"), ("temperature", "temperature"),
                        ("topP", "top_p")))
        if cfg.get("stopSequences"):
            req["stop"] = cfg["stopSequences"]
    return _stream(req, stream), []


def _titan_whole(data: dict[str, Any], usage: Usage | None) -> dict[str, Any]:
    text, finish = _answer_text(data)
    u = _usage(data, usage)
    return {"inputTextTokenCount": u.prompt_tokens, "results": [{
        "tokenCount": u.completion_tokens, "outputText": text,
        "completionReason": _TITAN_REASONS.get(finish, "FINISH")}]}


def _titan_writer(started: float) -> TextWriter:
    return TextWriter(
        lambda text, n: {"outputText": text, "index": 0, "totalOutputTextTokenCount": n, "completionReason": None,
                         "inputTextTokenCount": None},
        lambda finish, u: {"outputText": "", "index": 0, "totalOutputTextTokenCount": u.completion_tokens,
                           "completionReason": _TITAN_REASONS.get(finish, "FINISH"),
                           "inputTextTokenCount": u.prompt_tokens}, started)


# ---- Cohere Command R --------------------------------------------------------------------------------------

_COHERE_REASONS = {"length": "MAX_TOKENS", "tool_calls": "COMPLETE", "content_filter": "ERROR_TOXIC"}
_COHERE_DROPPED = ("documents", "search_queries_only", "tools", "tool_results", "k", "prompt_truncation",
                   "return_prompt", "raw_prompting", "force_single_step")


def _cohere_request(body: dict[str, Any], model: str, stream: bool) -> tuple[dict[str, Any], list[str]]:
    messages: list[dict[str, Any]] = []
    if body.get("preamble") is not None:
        messages.append({"role": "system", "content": _text(body["preamble"], "preamble")})
    history = body.get("chat_history") or []
    if not isinstance(history, list):
        raise converse.bad("chat_history", "must be a list")
    roles = {"USER": "user", "CHATBOT": "assistant", "SYSTEM": "system"}
    for i, turn in enumerate(history):
        role = roles.get(str(turn.get("role", "")).upper()) if isinstance(turn, dict) else None
        if role is None:
            raise converse.bad(f"chat_history[{i}].role", "must be USER, CHATBOT or SYSTEM")
        messages.append({"role": role, "content": _text(turn.get("message"), f"chat_history[{i}].message")})
    messages.append({"role": "user", "content": _text(body.get("message"), "message")})
    req = {"model": model, "messages": messages}
    _set(req, body, (("max_tokens", "max_completion_tokens"), ("temperature", "temperature"), ("p", "top_p"),
                     ("stop_sequences", "stop"), ("seed", "seed"), ("frequency_penalty", "frequency_penalty"),
                     ("presence_penalty", "presence_penalty")))
    return _stream(req, stream), [n for n in _COHERE_DROPPED if body.get(n) is not None]


def _cohere_whole(data: dict[str, Any], usage: Usage | None) -> dict[str, Any]:
    text, finish = _answer_text(data)
    u = _usage(data, usage)
    return {"response_id": str(uuid.uuid4()), "text": text, "generation_id": str(uuid.uuid4()),
            "finish_reason": _COHERE_REASONS.get(finish, "COMPLETE"),
            "meta": {"billed_units": {"input_tokens": u.prompt_tokens, "output_tokens": u.completion_tokens}}}


class _CohereWriter(TextWriter):
    """Command R's stream: ``stream-start``, ``text-generation`` events, ``stream-end`` with the whole response."""

    __slots__ = ("text", "ids", "begun")

    def __init__(self, started: float) -> None:
        super().__init__(self._piece, self._last, started)
        self.begun = False
        self.text: list[str] = []
        self.ids = (str(uuid.uuid4()), str(uuid.uuid4()))

    def _piece(self, text: str, n: int) -> dict[str, Any]:
        self.text.append(text)
        return {"is_finished": False, "event_type": "text-generation", "text": text}

    def _last(self, finish: str, u: Usage) -> dict[str, Any]:
        reason = _COHERE_REASONS.get(finish, "COMPLETE")
        return {"is_finished": True, "event_type": "stream-end", "finish_reason": reason, "response": {
            "response_id": self.ids[0], "text": "".join(self.text), "generation_id": self.ids[1],
            "finish_reason": reason,
            "meta": {"billed_units": {"input_tokens": u.prompt_tokens, "output_tokens": u.completion_tokens}}}}

    def chunk(self, chunk: dict[str, Any]) -> bytes:
        start = b""
        if not self.begun:
            self.begun = True
            start = chunk_frame({"is_finished": False, "event_type": "stream-start", "generation_id": self.ids[1]})
        return start + super().chunk(chunk)

    def end(self, usage: Usage | None) -> bytes:
        return self.chunk({}) + super().end(usage) if not self.begun else super().end(usage)


# ---- Amazon Nova (messages-v1) -----------------------------------------------------------------------------

_NOVA_INFERENCE = {"max_new_tokens": "maxTokens", "temperature": "temperature", "top_p": "topP",
                   "stopSequences": "stopSequences"}


def _nova_converse(body: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The Nova body as the Converse request it mirrors (Nova's inferenceConfig names its fields otherwise)."""
    out = {k: v for k, v in body.items() if k not in ("schemaVersion", "inferenceConfig")}
    dropped: list[str] = []
    cfg = body.get("inferenceConfig")
    if cfg is not None:
        if not isinstance(cfg, dict):
            raise converse.bad("inferenceConfig", "must be an object")
        mapped: dict[str, Any] = {}
        for name, value in cfg.items():
            target = _NOVA_INFERENCE.get(name) or (name if name in ("maxTokens", "topP") else None)
            if target is None:
                dropped.append(f"inferenceConfig.{name}")
            else:
                mapped[target] = value
        out["inferenceConfig"] = mapped
    return out, dropped


def _nova_request(body: dict[str, Any], model: str, stream: bool) -> tuple[dict[str, Any], list[str]]:
    request, dropped = _nova_converse(body)
    req, more = converse.to_openai_request(request, model, stream)
    return req, dropped + more


def _nova_whole(data: dict[str, Any], usage: Usage | None) -> dict[str, Any]:
    out = converse.to_converse_response(data, usage, time.monotonic())
    out.pop("metrics", None)
    u = out["usage"]
    for ours, nova in (("cacheReadInputTokens", "cacheReadInputTokenCount"),
                       ("cacheWriteInputTokens", "cacheWriteInputTokenCount")):
        if ours in u:
            u[nova] = u.pop(ours)
    return out


class _NovaWriter(converse.EventWriter):
    """ConverseStream's events (the Converse writer's), each framed as one chunk ``{"<event>": {...}}`` where
    Converse frames it as its own event: Nova's stream."""

    __slots__ = ("first", "usage")

    def __init__(self, started: float) -> None:
        super().__init__(started)
        self.first: float | None = None
        self.usage: Usage | None = None  # the call's, for the invocation metrics beside the last event

    def event(self, kind: str, data: dict[str, Any]) -> bytes:
        if kind == "metadata":
            return chunk_frame({"metadata": {"usage": data.get("usage"), "metrics": {}, "trace": {}},
                                "amazon-bedrock-invocationMetrics": metrics(self.usage, self.since, self.first)})
        if self.first is None:
            self.first = time.monotonic()
        return chunk_frame({kind: data})

    def end(self, usage: Usage | None) -> bytes:
        self.usage = usage
        return super().end(usage)


# ---- Mistral chat completion and AI21 Jamba: OpenAI-like messages -------------------------------------------

_MISTRAL_CHAT_FIELDS = (("max_tokens", "max_completion_tokens"), ("temperature", "temperature"), ("top_p", "top_p"),
                        ("tools", "tools"))
_JAMBA_FIELDS = (*_MISTRAL_CHAT_FIELDS, ("stop", "stop"), ("n", "n"), ("frequency_penalty", "frequency_penalty"),
                 ("presence_penalty", "presence_penalty"), ("response_format", "response_format"),
                 ("tool_choice", "tool_choice"))
_JAMBA_ONLY = ("n", "stop", "frequency_penalty", "presence_penalty", "response_format", "documents")


def _chat_messages(body: dict[str, Any]) -> list[Any]:
    """The body's OpenAI-like ``messages``, an assistant's tool calls typed as chat wants them (Mistral leaves
    out ``type``)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise converse.bad("messages", "must be a non-empty list")
    out = []
    for m in messages:
        calls = m.get("tool_calls") if isinstance(m, dict) else None
        if isinstance(calls, list):
            m = {**m, "tool_calls": [{"type": "function", **c} if isinstance(c, dict) else c for c in calls]}
        out.append(m)
    return out


def _openai_like(fields: tuple[tuple[str, str], ...], body: dict[str, Any], model: str,
                 stream: bool) -> tuple[dict[str, Any], list[str]]:
    req = {"model": model, "messages": _chat_messages(body)}
    _set(req, body, fields)
    known = {"messages", *(name for name, _ in fields)}
    return _stream(req, stream), [n for n in body if n not in known]


def _mistral_chat_request(body: dict[str, Any], model: str, stream: bool) -> tuple[dict[str, Any], list[str]]:
    req, dropped = _openai_like(_MISTRAL_CHAT_FIELDS, body, model, stream)
    choice = body.get("tool_choice")
    if choice is not None:  # Mistral's "any" is OpenAI's "required"
        req["tool_choice"] = "required" if choice == "any" else choice
        dropped.remove("tool_choice")
    return req, dropped


def _tool_calls(message: dict[str, Any]) -> dict[str, Any]:
    calls = message.get("tool_calls")
    return {"tool_calls": calls} if calls else {}


def _mistral_chat_whole(data: dict[str, Any], usage: Usage | None) -> dict[str, Any]:
    text, finish = _answer_text(data)
    message = ((data.get("choices") or [{}])[0].get("message")) or {}
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": text, **_tool_calls(message)},
                         "stop_reason": finish}]}


class _MistralChatWriter(TextWriter):
    """Mistral's chat stream: each text delta one ``choices[0].message`` chunk; tool calls (whose arguments come
    in pieces) gathered and sent whole in one chunk, as Mistral sends them; the last chunk with the stop reason."""

    __slots__ = ("calls",)

    def __init__(self, started: float) -> None:
        super().__init__(lambda text, n: self._message({"content": text}, None),
                         lambda finish, u: self._message({"content": ""}, finish), started)
        self.calls: dict[int, dict[str, Any]] = {}

    @staticmethod
    def _message(message: dict[str, Any], stop: str | None) -> dict[str, Any]:
        return {"choices": [{"index": 0, "message": {"role": "assistant", **message}, "stop_reason": stop}]}

    def chunk(self, chunk: dict[str, Any]) -> bytes:
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            for piece in (choice.get("delta") or {}).get("tool_calls") or ():
                call = self.calls.setdefault(piece.get("index", 0), {"id": "", "type": "function", "function": {
                    "name": "", "arguments": ""}})
                call["id"] = piece.get("id") or call["id"]
                function = piece.get("function") or {}
                call["function"]["name"] += function.get("name") or ""
                call["function"]["arguments"] += function.get("arguments") or ""
        return super().chunk(chunk)

    def end(self, usage: Usage | None) -> bytes:
        calls = [self.calls[i] for i in sorted(self.calls)]
        head = chunk_frame(self._message({"content": "", "tool_calls": calls}, None)) if calls else b""
        return head + super().end(usage)


def _jamba_request(body: dict[str, Any], model: str, stream: bool) -> tuple[dict[str, Any], list[str]]:
    return _openai_like(_JAMBA_FIELDS, body, model, stream)


def _jamba_whole(data: dict[str, Any], usage: Usage | None) -> dict[str, Any]:
    """Jamba answers as OpenAI's chat completion does (an id, choices with their finish reasons, usage); the id
    is relaygate's own, of AI21's kind (a uuid), never the chat answer's that served it."""
    u = _usage(data, usage)
    return {"id": str(uuid.uuid4()), "choices": data.get("choices") or [],
            "usage": {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
                      "total_tokens": u.total_tokens}, "model": str(data.get("model") or "")}


class _JambaWriter:
    """Jamba's stream is OpenAI's chunks: each chunk's choices as they are, but the one that finishes the answer
    (its finish reason) goes last, with the usage and Bedrock's invocation metrics."""

    __slots__ = ("started", "first", "id", "last")

    def __init__(self, started: float) -> None:
        self.started = started
        self.first: float | None = None
        self.id = str(uuid.uuid4())  # relaygate's own (as _jamba_whole's), never the chunks' that served it
        self.last: list[Any] = []  # the choices of the chunk with a finish reason

    def chunk(self, chunk: dict[str, Any]) -> bytes:
        choices = chunk.get("choices")
        if not choices:
            return b""
        if self.first is None:
            self.first = time.monotonic()
        if any(c.get("finish_reason") for c in choices):
            self.last += choices
            return b""
        return chunk_frame({"id": self.id, "choices": choices})

    def error(self, err: dict[str, Any]) -> bytes:
        return converse.stream_exception(err)

    def end(self, usage: Usage | None) -> bytes:
        u = usage or Usage()
        return chunk_frame({"id": self.id, "choices": self.last, "usage": {
            "prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens, "total_tokens": u.total_tokens},
            "amazon-bedrock-invocationMetrics": metrics(u, self.started, self.first)})


FAMILIES = {
    "nova": Family("nova", _nova_request, _nova_whole, _NovaWriter),
    "llama": Family("llama", _llama_request, _llama_whole, _llama_writer),
    "mistral": Family("mistral", _mistral_request, _mistral_whole, _mistral_writer),
    "mistral-chat": Family("mistral-chat", _mistral_chat_request, _mistral_chat_whole, _MistralChatWriter),
    "jamba": Family("jamba", _jamba_request, _jamba_whole, _JambaWriter),
    "titan": Family("titan", _titan_request, _titan_whole, _titan_writer),
    "cohere": Family("cohere", _cohere_request, _cohere_whole, _CohereWriter),
}

# image generation bodies: Stability's (SDXL's text_prompts; SD3, Stable Image Core and Ultra's prompt with image
# options), Titan Image's and Nova Canvas's (taskType)
_IMAGE_FIELDS = ("text_prompts", "taskType", "aspect_ratio", "output_format", "negative_prompt", "cfg_scale",
                 "style_preset")


def _refuse_images(body: dict[str, Any], model_id: str) -> None:
    """An image generation body is refused with a ValidationException that says so: relaygate has no image
    generation to route InvokeModel to (OpenAI's images API is passed through on /v1/images/* only)."""
    if "stability" in model_id.lower() or any(n in body for n in _IMAGE_FIELDS):
        raise BadRequest("this gateway serves no image generation through InvokeModel: Stability, Titan Image and "
                         "Nova Canvas bodies are not served (use an OpenAI-compatible images deployment through "
                         "/v1/images/generations)", param="body")


def family_of(body: dict[str, Any], model_id: str) -> Family | None:
    """The family an InvokeModel body is written for, by its fields (the model id decides between those that
    take the same fields: a bare ``prompt``, ``messages`` with ``max_tokens``); None for a body of none of
    them. An image generation body is refused (BadRequest)."""
    _refuse_images(body, model_id)
    low = model_id.lower()
    if body.get("schemaVersion") == "messages-v1":
        return FAMILIES["nova"]
    if "messages" in body and "anthropic_version" not in body:
        if "nova" in low:
            return FAMILIES["nova"]
        if "ai21" in low or "jamba" in low or any(n in body for n in _JAMBA_ONLY):
            return FAMILIES["jamba"]
        if "mistral" in low or "max_tokens" in body:
            return FAMILIES["mistral-chat"]
        return FAMILIES["nova"]
    if "inputText" in body:
        return FAMILIES["titan"]
    if isinstance(body.get("message"), str):
        return FAMILIES["cohere"]
    if "prompt" in body:
        if "max_gen_len" in body:
            return FAMILIES["llama"]
        if any(n in body for n in ("max_tokens", "top_k", "stop")):
            return FAMILIES["mistral"]
        return FAMILIES["mistral"] if "mistral" in model_id.lower() else FAMILIES["llama"]
    return None
