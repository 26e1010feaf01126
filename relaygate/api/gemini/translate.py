"""Gemini ``generateContent`` request -> OpenAI chat request, and OpenAI replies (whole or streamed) ->
Gemini's ``GenerateContentResponse`` / its SSE events. Pure translation, used by ``/v1beta/models/…`` to
serve any configured model."""

from __future__ import annotations

import base64
import os
from typing import Any

import orjson

from relaygate.api.chunks import arguments_object, stream_error_message
from relaygate.core.call import Usage
from relaygate.core.errors import BadRequest, GatewayError, Unsupported

# generationConfig fields with no OpenAI counterpart: dropped and named in x-relaygate-dropped-params
DROPPED_CONFIG = frozenset(("topK", "responseModalities", "speechConfig", "mediaResolution", "responseLogprobs",
                  "logprobs", "enableEnhancedCivicAnswers", "imageConfig"))
# generationConfig fields with an OpenAI counterpart, and its name
_CONFIG_FIELDS = {"temperature": "temperature", "topP": "top_p", "seed": "seed", "presencePenalty": "presence_penalty",
                  "frequencyPenalty": "frequency_penalty", "candidateCount": "n",
                  "maxOutputTokens": "max_completion_tokens", "stopSequences": "stop"}
DROPPED_TOP = ("safetySettings", "cachedContent")
_MODES = {"AUTO": "auto", "ANY": "required", "NONE": "none", "VALIDATED": "auto"}
# OpenAI's finish_reason -> Gemini's finishReason
FINISH = {"stop": "STOP", "length": "MAX_TOKENS", "content_filter": "SAFETY", "tool_calls": "STOP",
          "function_call": "STOP"}
# HTTP status -> google.rpc.Code name, the ``status`` of Google's error body
STATUS_NAMES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                405: "UNIMPLEMENTED", 408: "DEADLINE_EXCEEDED", 409: "ABORTED", 413: "INVALID_ARGUMENT",
                429: "RESOURCE_EXHAUSTED", 499: "CANCELLED", 500: "INTERNAL", 501: "UNIMPLEMENTED",
                502: "UNAVAILABLE", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}


def camel(d: dict[str, Any]) -> dict[str, Any]:
    """``d`` with its field names in camelCase: Google's JSON takes a proto's fields by either name, and the
    SDK sends some nested ones in snake_case (``inline_data.mime_type``). One level only: what lies below
    (function arguments, schemas) is the client's data."""
    for k in d:
        if "_" in k:
            return {_camel_name(k) if "_" in k else k: v for k, v in d.items()}
    return d


def _camel_name(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(w[:1].upper() + w[1:] for w in rest)


def obj(value: Any) -> dict[str, Any] | None:
    return camel(value) if isinstance(value, dict) else None


def _bad(where: str, what: str) -> BadRequest:
    return BadRequest(f"Invalid value at '{where}': {what}", param=where)


def to_openai_request(body: dict[str, Any], model: str, stream: bool) -> tuple[dict[str, Any], list[str]]:
    """(OpenAI chat body, names of dropped fields) for a Gemini generateContent request to ``model``."""
    body = camel(body)
    contents = body.get("contents")
    if isinstance(contents, dict):
        contents = [contents]
    if not isinstance(contents, list) or not contents:
        raise BadRequest("* GenerateContentRequest.contents: contents is not specified", param="contents")
    messages: list[dict[str, Any]] = []
    system = body.get("systemInstruction")
    if system is not None:
        text = "\n".join(texts(system, "systemInstruction"))
        if text:
            messages.append({"role": "system", "content": text})
    unanswered: dict[str, list[str]] = {}  # function name -> ids of the calls the model turns made, in order
    for i, c in enumerate(contents):
        _content(c, i, messages, unanswered)
    req: dict[str, Any] = {"model": model, "messages": messages}
    dropped = [name for name in DROPPED_TOP if body.get(name) is not None]
    tools = body.get("tools")
    if tools is not None:
        functions = _tools(tools, dropped)
        if functions:
            req["tools"] = functions
            choice = _tool_choice(body.get("toolConfig"))
            if choice is not None:
                req["tool_choice"] = choice
    gc = body.get("generationConfig")
    if gc is not None:
        if not isinstance(gc, dict):
            raise _bad("generationConfig", "Proto field is not repeating, cannot start list.")
        _generation_config(camel(gc), req, dropped)
    if stream:
        req["stream"] = True
        req["stream_options"] = {"include_usage": True}
    return req, dropped


def _parts(content: Any, where: str) -> list[dict[str, Any]]:
    parts = content.get("parts") if isinstance(content, dict) else None
    if parts is None:
        return []
    out = []
    for p in parts if isinstance(parts, list) else (None,):
        if not isinstance(p, dict):
            raise _bad(f"{where}.parts", "Starting an object on a scalar field")
        out.append(camel(p))
    return out


def texts(content: Any, where: str) -> list[str]:
    if isinstance(content, str):  # the SDKs send a Content; REST users sometimes a bare string
        return [content]
    return [str(p["text"]) for p in _parts(content, where) if "text" in p and not p.get("thought")]


def _content(c: Any, i: int, out: list[dict[str, Any]], unanswered: dict[str, list[str]]) -> None:
    where = f"contents[{i}]"
    if not isinstance(c, dict):
        raise _bad(where, "Starting an object on a scalar field")
    role = c.get("role") or "user"
    parts = _parts(c, where)
    if role == "model":
        texts: list[str] = []
        thoughts: list[str] = []
        calls: list[dict[str, Any]] = []
        for j, p in enumerate(parts):
            fc = obj(p.get("functionCall"))
            if p.get("thought"):
                if isinstance(p.get("text"), str):
                    thoughts.append(p["text"])
            elif "text" in p:
                texts.append(str(p["text"]))
            elif isinstance(fc, dict):
                name = fc.get("name")
                if not isinstance(name, str) or not name:
                    raise _bad(f"{where}.parts[{j}].function_call.name", "Name cannot be empty.")
                given = fc.get("id")
                call_id = given if isinstance(given, str) and given else f"call_{i}_{j}"
                call: dict[str, Any] = {"id": call_id, "type": "function", "function": {
                    "name": name, "arguments": orjson.dumps(fc.get("args") or {}).decode()}}
                sig = p.get("thoughtSignature")
                if isinstance(sig, str) and sig:  # a Gemini upstream wants it back with the call
                    call["extra_content"] = {"google": {"thought_signature": sig}}
                calls.append(call)
                unanswered.setdefault(name, []).append(call_id)
            # executableCode, codeExecutionResult: results of Google's own tools, left out
        msg: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
        if thoughts:
            msg["reasoning_content"] = "".join(thoughts)
        if calls:
            msg["tool_calls"] = calls
        if texts or calls:
            out.append(msg)
        return
    if role not in ("user", "function", "tool"):
        raise _bad(f"{where}.role", f"Please use a valid role: user, model. (got {str(role)[:40]!r})")
    user: list[dict[str, Any]] = []
    for j, p in enumerate(parts):
        fr = obj(p.get("functionResponse"))
        if fr is not None:
            name = str(fr.get("name") or "")
            waiting = unanswered.get(name)
            given = fr.get("id")
            if isinstance(given, str) and given:
                call_id = given
                if waiting and given in waiting:
                    waiting.remove(given)
            elif waiting:
                call_id = waiting.pop(0)  # clients that drop ids answer the calls in order
            else:
                raise _bad(f"{where}.parts[{j}].function_response",
                           f"no earlier function call named {name[:80]!r} to answer")
            out.append({"role": "tool", "tool_call_id": call_id,
                        "content": orjson.dumps(fr.get("response") or {}).decode()})
        elif "text" in p:
            if not p.get("thought"):
                user.append({"type": "text", "text": str(p["text"])})
        elif isinstance(p.get("inlineData"), dict):
            user.append(_media(camel(p["inlineData"]), f"{where}.parts[{j}].inline_data", inline=True))
        elif isinstance(p.get("fileData"), dict):
            user.append(_media(camel(p["fileData"]), f"{where}.parts[{j}].file_data", inline=False))
    if user:
        if len(user) == 1 and user[0]["type"] == "text":
            out.append({"role": "user", "content": user[0]["text"]})
        else:
            out.append({"role": "user", "content": user})


def _media(blob: dict[str, Any], where: str, inline: bool) -> dict[str, Any]:
    mime = str(blob.get("mimeType") or "")
    if inline:
        data = blob.get("data")
        if not isinstance(data, str):
            raise _bad(f"{where}.data", "data is required")
        url = f"data:{mime};base64,{data}"
    else:
        uri = blob.get("fileUri")
        if not isinstance(uri, str):
            raise _bad(f"{where}.file_uri", "file_uri is required")
        url = uri
    if mime.startswith("image/"):
        return {"type": "image_url", "image_url": {"url": url}}
    if mime == "application/pdf" and inline:
        return {"type": "file", "file": {"file_data": url}}
    raise Unsupported(f"{where}: only images (and inline PDFs) can be sent to a model of another kind, not "
                      f"{mime[:80]!r}", param=where)


def _schema(value: Any) -> Any:
    """A Gemini ``Schema`` (OpenAPI subset, upper-case types) as JSON Schema."""
    if isinstance(value, list):
        return [_schema(v) for v in value]
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    value = camel(value)
    for k, v in value.items():
        if k == "type" and isinstance(v, str):
            out[k] = v.lower()
        elif k in ("propertyOrdering", "nullable"):
            continue
        elif k == "properties" and isinstance(v, dict):
            out[k] = {name: _schema(s) for name, s in v.items()}
        else:
            out[k] = _schema(v)
    if value.get("nullable") is True and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


def _tools(tools: Any, dropped: list[str]) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise _bad("tools", "Proto field is repeating, cannot start object.")
    functions: list[dict[str, Any]] = []
    for i, t in enumerate(tools):
        if not isinstance(t, dict):
            raise _bad(f"tools[{i}]", "Starting an object on a scalar field")
        t = camel(t)
        for other in t:
            if other != "functionDeclarations":
                dropped.append(f"tools.{other}")  # Google's own tools (search, code execution) run at Google only
        decls = t.get("functionDeclarations") or []
        if not isinstance(decls, list):
            raise _bad(f"tools[{i}].function_declarations", "Proto field is repeating, cannot start object.")
        for j, d in enumerate(decls):
            d = obj(d)
            if d is None or not isinstance(d.get("name"), str) or not d["name"]:
                raise _bad(f"tools[{i}].function_declarations[{j}].name", "Name cannot be empty.")
            fn: dict[str, Any] = {"name": d["name"]}
            if isinstance(d.get("description"), str):
                fn["description"] = d["description"]
            params = d.get("parametersJsonSchema")
            if not isinstance(params, dict):
                params = _schema(d["parameters"]) if isinstance(d.get("parameters"), dict) else None
            fn["parameters"] = params or {"type": "object", "properties": {}}
            functions.append({"type": "function", "function": fn})
    return functions


def _tool_choice(config: Any) -> Any:
    fcc = obj(camel(config).get("functionCallingConfig")) if isinstance(config, dict) else None
    if fcc is None or fcc.get("mode") is None:
        return None
    mode = _MODES.get(str(fcc["mode"]).upper())
    if mode is None:
        raise _bad("tool_config.function_calling_config.mode",
                   f"invalid value {str(fcc['mode'])[:40]!r}; expected AUTO, ANY, NONE or VALIDATED")
    allowed = fcc.get("allowedFunctionNames")
    if mode == "required" and isinstance(allowed, list) and len(allowed) == 1 and isinstance(allowed[0], str):
        return {"type": "function", "function": {"name": allowed[0]}}
    return mode


def _effort(thinking: dict[str, Any], dropped: list[str]) -> str | None:
    """OpenAI's reasoning_effort for a thinkingConfig: Google's own budgets for each effort, read back."""
    level = thinking.get("thinkingLevel")
    if isinstance(level, str) and level.lower() in ("minimal", "low", "medium", "high"):
        return level.lower()
    budget = thinking.get("thinkingBudget")
    if type(budget) is not int or budget < 0:
        return None  # absent, or -1: the model decides
    if budget == 0:
        dropped.append("generationConfig.thinkingConfig")  # "no thinking" is no effort a reasoner takes
        return None
    for limit, effort in ((128, "minimal"), (1024, "low"), (8192, "medium")):
        if budget <= limit:
            return effort
    return "high"


def _generation_config(gc: dict[str, Any], req: dict[str, Any], dropped: list[str]) -> None:
    for name, value in gc.items():  # the fields the client set (a few), not every field there is
        ours = _CONFIG_FIELDS.get(name)
        if ours is not None:
            if value is not None and (value or ours != "stop"):
                req[ours] = value
        elif name in DROPPED_CONFIG and value is not None:
            dropped.append(f"generationConfig.{name}")
    thinking = obj(gc.get("thinkingConfig"))
    if thinking is not None:
        effort = _effort(thinking, dropped)
        if effort is not None:
            req["reasoning_effort"] = effort
    schema = gc.get("responseJsonSchema")
    if not isinstance(schema, dict) and isinstance(gc.get("responseSchema"), dict):
        schema = _schema(gc["responseSchema"])
    if isinstance(schema, dict):
        req["response_format"] = {"type": "json_schema", "json_schema": {"name": "response", "schema": schema}}
    elif gc.get("responseMimeType") == "application/json":
        req["response_format"] = {"type": "json_object"}


# ---- replies -------------------------------------------------------------------------------------------

def response_id() -> str:
    """A new id in Gemini's shape (``responseId``): a translated answer gets one of its own."""
    return base64.urlsafe_b64encode(os.urandom(18)).decode().rstrip("=")


def usage_metadata(usage: Usage | None, fallback: Any = None) -> dict[str, int]:
    u = usage if usage is not None else (Usage.from_openai(fallback) or Usage())
    out = {"promptTokenCount": u.prompt_tokens, "candidatesTokenCount": u.completion_tokens,
           "totalTokenCount": u.prompt_tokens + u.completion_tokens}
    if u.cached_tokens:
        out["cachedContentTokenCount"] = u.cached_tokens
    return out


def _call_part(tc: dict[str, Any]) -> dict[str, Any]:
    fn = tc.get("function") or {}
    call: dict[str, Any] = {"name": fn.get("name") or "", "args": arguments_object(fn.get("arguments"))}
    if tc.get("id"):
        call["id"] = tc["id"]  # clients send it back on the functionResponse; other upstreams need it
    part: dict[str, Any] = {"functionCall": call}
    extra = tc.get("extra_content")
    google = extra.get("google") if isinstance(extra, dict) else None
    if isinstance(google, dict) and isinstance(google.get("thought_signature"), str):
        part["thoughtSignature"] = google["thought_signature"]
    return part


def _text_parts(msg: dict[str, Any]) -> list[dict[str, Any]]:
    """The thought and text parts of an OpenAI message or delta."""
    parts: list[dict[str, Any]] = []
    reasoning = msg.get("reasoning_content") or msg.get("reasoning")
    if isinstance(reasoning, str) and reasoning:
        parts.append({"text": reasoning, "thought": True})
    if msg.get("content"):
        parts.append({"text": msg["content"]})
    return parts


def to_gemini_response(data: dict[str, Any], usage: Usage | None, model: str) -> dict[str, Any]:
    """A whole OpenAI chat.completion as a GenerateContentResponse (a candidate per choice)."""
    candidates = []
    for k, choice in enumerate(data.get("choices") or ()):
        msg = choice.get("message") or {}
        parts = _text_parts(msg)
        parts.extend(_call_part(tc) for tc in msg.get("tool_calls") or ())
        candidates.append({"content": {"role": "model", "parts": parts},
                           "finishReason": FINISH.get(choice.get("finish_reason") or "stop", "OTHER"),
                           "index": choice.get("index", k)})
    return {"candidates": candidates, "usageMetadata": usage_metadata(usage, data.get("usage")),
            "modelVersion": data.get("model") or model, "responseId": response_id()}


def error_body(err: GatewayError) -> dict[str, Any]:
    """Google's error shape: ``{"error": {"code", "message", "status"}}``."""
    name = STATUS_NAMES.get(err.status, "INTERNAL" if err.status >= 500 else "FAILED_PRECONDITION")
    return {"error": {"code": err.status, "message": err.message, "status": name}}


def event(data: dict[str, Any]) -> bytes:
    """One SSE event as Google frames them."""
    return b"data: " + orjson.dumps(data) + b"\r\n\r\n"


def error_event(err: GatewayError) -> bytes:
    """The event that ends a stream that failed after its first byte (Gemini's in-stream error)."""
    return event(error_body(err))


class EventWriter:
    """OpenAI chunks in, Gemini's SSE events out: text as it comes; function calls (which Gemini sends
    whole) once complete, with the finish reason and the usage in the last event."""

    __slots__ = ("model", "id", "calls", "finish", "chunk_usage")

    def __init__(self, model: str) -> None:
        self.model = model
        self.id = response_id()
        self.calls: dict[int, dict[int, dict[str, Any]]] = {}  # candidate -> OpenAI tool index -> call so far
        self.finish: dict[int, str] = {}
        self.chunk_usage: Any = None

    def _event(self, candidates: list[dict[str, Any]], usage: dict[str, int] | None = None) -> bytes:
        data: dict[str, Any] = {"candidates": candidates}
        if usage is not None:
            data["usageMetadata"] = usage
        data["modelVersion"] = self.model
        data["responseId"] = self.id
        return event(data)

    def chunk(self, chunk: dict[str, Any]) -> bytes:
        if chunk.get("usage"):
            self.chunk_usage = chunk["usage"]
        if isinstance(chunk.get("model"), str) and chunk["model"]:
            self.model = chunk["model"]
        candidates = []
        for choice in chunk.get("choices") or ():
            k = choice.get("index", 0)
            delta = choice.get("delta") or {}
            parts = _text_parts(delta)
            for tc in delta.get("tool_calls") or ():
                calls = self.calls.setdefault(k, {})
                fn = tc.get("function") or {}
                held = calls.get(tc.get("index", 0))
                if held is None:
                    held = calls[tc.get("index", 0)] = {"id": tc.get("id"), "function": {
                        "name": fn.get("name") or "", "arguments": ""}}
                    if tc.get("extra_content"):
                        held["extra_content"] = tc["extra_content"]
                held["function"]["arguments"] += fn.get("arguments") or ""
            if choice.get("finish_reason"):
                self.finish[k] = choice["finish_reason"]
            if parts:
                candidates.append({"content": {"role": "model", "parts": parts}, "index": k})
        return self._event(candidates) if candidates else b""

    def error(self, err: dict[str, Any]) -> bytes:
        """An error object the upstream put inside its stream."""
        return event({"error": {"code": 500, "message": stream_error_message(err), "status": "INTERNAL"}})

    def end(self, usage: Usage | None) -> bytes:
        candidates = []
        for k in sorted(set(self.finish) | set(self.calls) or {0}):
            calls = self.calls.get(k, {})
            parts = [_call_part(calls[i]) for i in sorted(calls)] or [{"text": ""}]
            candidates.append({"content": {"role": "model", "parts": parts},
                               "finishReason": FINISH.get(self.finish.get(k) or "stop", "OTHER"), "index": k})
        return self._event(candidates, usage_metadata(usage, self.chunk_usage))
