"""OpenAI chat requests to Gemini ``generateContent`` bodies, and Gemini responses back to OpenAI's format.

Pure functions (no I/O), shared by the AI Studio and Vertex AI adapters in ``gemini.py``.
Gemini 3 returns tool-call ids and wants them back on the results; older models give none, so we derive
stable ones from the call. Either way ids travel on ``functionCall``/``functionResponse``, and tool
results are mapped back to function names through the assistant messages that made the calls.
"""

from __future__ import annotations

import hashlib
from typing import Any
from urllib.parse import urlsplit

import orjson

from relaygate.core import jsonvalue
from relaygate.core.call import Usage, token_count
from relaygate.core.errors import BadRequest, Unsupported
from relaygate.providers.openai_format import Image, completion, content_parts, text_of, tool_calls_of

# Google's documented placeholder for function calls whose thought signature was lost (foreign histories)
SKIP_SIGNATURE = "skip_thought_signature_validator"

# Gemini's finishReason -> OpenAI's finish_reason, for answers that ended as answers end (AI Studio's and
# Vertex AI's lists; "tool_calls" when a STOP answer called tools)
FINISH_REASONS = {
    "STOP": "stop", "MAX_TOKENS": "length", "SAFETY": "content_filter", "RECITATION": "content_filter",
    "LANGUAGE": "content_filter", "BLOCKLIST": "content_filter", "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter", "MODEL_ARMOR": "content_filter", "IMAGE_SAFETY": "content_filter",
    "IMAGE_PROHIBITED_CONTENT": "content_filter", "IMAGE_RECITATION": "content_filter",
}
# reasons that say the generation failed rather than finished: the call is an upstream error, so that a retry
# or a fallback can act (OTHER comes with a finishMessage such as an internal error, and no content)
FAILED_FINISH = frozenset((
    "OTHER", "FINISH_REASON_UNSPECIFIED", "IMAGE_OTHER", "NO_IMAGE", "MALFORMED_FUNCTION_CALL",
    "UNEXPECTED_TOOL_CALL", "TOO_MANY_TOOL_CALLS",
))
# the request was at fault: the same request fails again anywhere
REQUEST_FINISH = frozenset(("MISSING_THOUGHT_SIGNATURE",))

_TOOL_MODES = {"none": "NONE", "auto": "AUTO", "required": "ANY"}


def finish_reason(gemini_reason: str | None, called_tools: bool) -> str:
    """OpenAI's finish_reason for a finished candidate (a reason Gemini adds later reads as ``stop``)."""
    if called_tools and gemini_reason in (None, "STOP"):
        return "tool_calls"
    return FINISH_REASONS.get(gemini_reason or "STOP", "stop")


def finish_failure(candidate: dict[str, Any]) -> tuple[str, str] | None:
    """(reason, Gemini's finishMessage) when the candidate's generation failed instead of finishing."""
    reason = candidate.get("finishReason")
    if reason in FAILED_FINISH or reason in REQUEST_FINISH:
        return str(reason), str(candidate.get("finishMessage") or "")
    return None


def _wants_signatures(model: str) -> bool:
    """Gemini 3 and later reject function calls without a thought signature; 1.x and 2.x do not check."""
    name = model.rsplit("/", 1)[-1]
    return not name.startswith(("gemini-1", "gemini-2"))


# media types Gemini accepts, by file extension (a fixed table: the system's mimetypes database varies)
_MEDIA_TYPES = {
    "png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "webp": "image/webp", "gif": "image/gif",
    "heic": "image/heic", "heif": "image/heif", "pdf": "application/pdf", "txt": "text/plain",
    "wav": "audio/wav", "mp3": "audio/mp3", "aiff": "audio/aiff", "aac": "audio/aac", "ogg": "audio/ogg",
    "flac": "audio/flac", "mp4": "video/mp4", "mpeg": "video/mpeg", "mov": "video/mov", "avi": "video/avi",
    "webm": "video/webm", "wmv": "video/wmv", "flv": "video/x-flv", "3gp": "video/3gpp",
}


def _image_part(img: Image, param: str) -> dict[str, Any]:
    if img.data is not None:
        mime = img.media_type or "image/png"
        return {"inlineData": {"mimeType": "image/jpeg" if mime == "image/jpg" else mime, "data": img.b64}}
    url = img.url or ""
    path = urlsplit(url).path
    name = path.rsplit("/", 1)[-1]
    guessed = _MEDIA_TYPES.get(name.rsplit(".", 1)[-1].lower()) if "." in name else None
    if guessed is None:
        raise BadRequest(f"cannot tell the media type of image URL {url[:200]!r} from its extension; send a "
                         "data: URI or a URL ending in .png, .jpg, .webp, .gif or .heic", param=param)
    return {"fileData": {"mimeType": guessed, "fileUri": url}}


def _user_parts(content: Any, param: str) -> list[dict[str, Any]]:
    if isinstance(content, str):  # the common case, without the generic walk
        return [{"text": content}] if content else []
    parts: list[dict[str, Any]] = []
    for item in content_parts(content, param, media=True):
        if isinstance(item, str):
            if item:
                parts.append({"text": item})
        else:
            parts.append(_image_part(item, param))
    return parts


def _function_response(content: Any) -> dict[str, Any]:
    """A tool result as the Struct Gemini requires: a JSON object as is, anything else under ``output``."""
    text = text_of(content)
    if text.startswith("{"):
        try:
            value = jsonvalue.loads(text, jsonvalue.ROOM)
        except jsonvalue.JSONRejected:
            value = None  # sent as text, like any other result
        if isinstance(value, dict):
            return value
    return {"output": text}


def _signature(tc: dict[str, Any]) -> str | None:
    extra = tc.get("extra_content")
    google = extra.get("google") if isinstance(extra, dict) else None
    sig = google.get("thought_signature") if isinstance(google, dict) else None
    return sig if isinstance(sig, str) and sig else None


def to_contents(messages: list[Any], model: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(contents, system parts) for a list of OpenAI messages."""
    contents: list[dict[str, Any]] = []
    system: list[dict[str, Any]] = []
    calls: dict[str, tuple[str, int]] = {}  # tool_call_id -> (function name, position in its turn)
    pending: list[tuple[int, dict[str, Any]]] = []  # consecutive tool results, merged into one turn
    signatures = _wants_signatures(model)

    def flush() -> None:
        if pending:
            pending.sort(key=lambda p: p[0])
            contents.append({"role": "user", "parts": [p for _, p in pending]})
            pending.clear()

    for i, m in enumerate(messages):
        role = m.get("role")
        param = "messages[%d]" % i  # noqa: UP031  (cheaper than an f-string on this hot loop)
        if role in ("tool", "function"):
            call_id = m.get("tool_call_id")
            known = calls.get(call_id) if isinstance(call_id, str) else None
            name = known[0] if known else m.get("name")
            if not isinstance(name, str) or not name:
                raise BadRequest(f"{param}.tool_call_id {call_id!r} does not match a tool call of an earlier "
                                 "assistant message", param=f"{param}.tool_call_id")
            response: dict[str, Any] = {"name": name, "response": _function_response(m.get("content"))}
            if known:
                response["id"] = call_id  # Gemini 3 pairs results with calls by id
            pending.append((known[1] if known else len(pending), {"functionResponse": response}))
            continue
        flush()
        if role in ("system", "developer"):
            text = text_of(m.get("content"))
            if text:
                system.append({"text": text})
        elif role == "user":
            parts = _user_parts(m.get("content"), f"{param}.content")
            if parts:
                contents.append({"role": "user", "parts": parts})
        elif role == "assistant":
            text = text_of(m.get("content"))
            parts = [{"text": text}] if text else []
            for j, (tc, name, arguments) in enumerate(tool_calls_of(m, param)):
                call: dict[str, Any] = {"name": name, "args": arguments}
                if isinstance(tc.get("id"), str) and tc["id"]:
                    call["id"] = tc["id"]
                part: dict[str, Any] = {"functionCall": call}
                sig = _signature(tc)
                if sig or (signatures and j == 0):
                    part["thoughtSignature"] = sig or SKIP_SIGNATURE
                parts.append(part)
                if isinstance(tc.get("id"), str):
                    calls[tc["id"]] = (name, j)
            if parts:
                contents.append({"role": "model", "parts": parts})
        else:
            raise BadRequest(f"{param}.role {role!r} is not supported", param=f"{param}.role")
    flush()
    if not contents:
        raise BadRequest("the request has no user, assistant or tool messages to send", param="messages")
    return contents, system


def _tools(body: dict[str, Any]) -> tuple[list[dict[str, Any]] | None, dict[str, Any] | None]:
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if not tools:
        return None, None
    decls = []
    for i, t in enumerate(tools):
        if not isinstance(t, dict) or t.get("type", "function") != "function":
            raise Unsupported(f"tools[{i}]: only function tools are supported by Gemini", param=f"tools[{i}]")
        fn = t.get("function")
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise BadRequest(f"tools[{i}].function.name is required", param=f"tools[{i}].function")
        decl: dict[str, Any] = {"name": fn["name"]}
        if fn.get("description"):
            decl["description"] = fn["description"]
        if isinstance(fn.get("parameters"), dict):
            decl["parametersJsonSchema"] = fn["parameters"]  # full JSON Schema, unlike the older `parameters`
        decls.append(decl)
    config: dict[str, Any] | None = None
    if isinstance(choice, str):
        mode = _TOOL_MODES.get(choice)
        if mode is None:
            raise BadRequest(f"tool_choice {choice!r} must be none, auto, required or a function",
                             param="tool_choice")
        config = {"functionCallingConfig": {"mode": mode}}
    elif isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        if not isinstance(name, str):
            raise BadRequest("tool_choice.function.name is required", param="tool_choice")
        config = {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [name]}}
    return [{"functionDeclarations": decls}], config


# Google's own mapping of OpenAI's reasoning_effort to thinking budgets (Gemini 2.5)
_THINKING_BUDGETS = {"none": 0, "minimal": 128, "low": 1024, "medium": 8192, "high": 24576}


def _thinking(effort: Any, model: str) -> dict[str, Any]:
    if effort not in _THINKING_BUDGETS:
        raise BadRequest(f"reasoning_effort must be one of {', '.join(_THINKING_BUDGETS)}", param="reasoning_effort")
    if model.rsplit("/", 1)[-1].startswith("gemini-2"):
        return {"thinkingBudget": _THINKING_BUDGETS[effort]}
    return {"thinkingLevel": "minimal" if effort == "none" else effort}  # Gemini 3 and later: levels


def _generation_config(body: dict[str, Any], model: str) -> dict[str, Any]:
    if body.get("logprobs"):
        raise Unsupported("logprobs are not available through the Gemini adapter", param="logprobs")
    gc: dict[str, Any] = {}
    for ours, theirs in (("temperature", "temperature"), ("top_p", "topP"), ("seed", "seed"),
                         ("presence_penalty", "presencePenalty"), ("frequency_penalty", "frequencyPenalty"),
                         ("n", "candidateCount")):
        value = body.get(ours)
        if value is not None:
            gc[theirs] = value
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if limit is not None:
        gc["maxOutputTokens"] = limit
    stop = body.get("stop")
    if stop:
        gc["stopSequences"] = [stop] if isinstance(stop, str) else list(stop)
    effort = body.get("reasoning_effort")
    if effort is not None:
        gc["thinkingConfig"] = _thinking(effort, model)
    rf = body.get("response_format")
    if isinstance(rf, dict):
        kind = rf.get("type")
        if kind in ("json_object", "json_schema"):
            gc["responseMimeType"] = "application/json"
            schema = (rf.get("json_schema") or {}).get("schema") if kind == "json_schema" else None
            if isinstance(schema, dict):
                gc["responseJsonSchema"] = schema
        elif kind not in (None, "text"):
            raise BadRequest(f"response_format type {kind!r} is not supported", param="response_format")
    return gc


def to_request(body: dict[str, Any], model: str) -> dict[str, Any]:
    """The ``generateContent`` body for an OpenAI chat completions body."""
    contents, system = to_contents(body["messages"], model)
    out: dict[str, Any] = {"contents": contents}
    if system:
        out["systemInstruction"] = {"parts": system}
    tools, tool_config = _tools(body)
    if tools:
        out["tools"] = tools
    if tool_config and tools:
        out["toolConfig"] = tool_config
    gc = _generation_config(body, model)
    google = _google_options(body)
    if "thinking_config" in google:
        gc["thinkingConfig"] = google["thinking_config"]
    if gc:
        out["generationConfig"] = gc
    if "safety_settings" in google:
        out["safetySettings"] = google["safety_settings"]
    if "cached_content" in google:
        out["cachedContent"] = google["cached_content"]
    return out


_GOOGLE_OPTIONS = {"safety_settings": list, "thinking_config": dict, "cached_content": str}


def _google_options(body: dict[str, Any]) -> dict[str, Any]:
    """Gemini-only options the way Google's own OpenAI-compatible endpoint takes them:
    ``{"extra_body": {"google": {"safety_settings": [...], "thinking_config": {...}, "cached_content": "..."}}}``."""
    extra = body.get("extra_body")
    google = extra.get("google") if isinstance(extra, dict) else None
    if google is None:
        return {}
    if not isinstance(google, dict):
        raise BadRequest("extra_body.google must be an object", param="extra_body.google")
    for key, value in google.items():
        kind = _GOOGLE_OPTIONS.get(key)
        if kind is None:
            raise BadRequest(f"extra_body.google.{key} is not supported; expected one of "
                             f"{', '.join(_GOOGLE_OPTIONS)}", param=f"extra_body.google.{key}")
        if not isinstance(value, kind):
            what = {list: "an array", dict: "an object"}.get(kind, "a string")
            raise BadRequest(f"extra_body.google.{key} must be {what}", param=f"extra_body.google.{key}")
    return google


# ---- responses ---------------------------------------------------------------------------------------

def usage_of(meta: Any) -> Usage | None:
    """OpenAI usage from ``usageMetadata`` (thinking tokens are billed as output)."""
    if not isinstance(meta, dict):
        return None
    return Usage(prompt_tokens=token_count(meta.get("promptTokenCount")),
                 completion_tokens=token_count(meta.get("candidatesTokenCount"))
                 + token_count(meta.get("thoughtsTokenCount")),
                 cached_tokens=token_count(meta.get("cachedContentTokenCount")))


def tool_call(fc: dict[str, Any], position: int, signature: str | None, salt: str = "") -> dict[str, Any]:
    """An OpenAI tool call for a ``functionCall`` part. When Gemini gives no id, the id is derived from the
    response id (``salt``), the position and the call: the same in a stream and a whole answer, and
    different when a later turn makes the same call again."""
    args = orjson.dumps(fc.get("args") or {}).decode()
    name = str(fc.get("name", ""))
    call_id = fc.get("id") or "call_" + hashlib.sha1(
        f"{salt}\0{name}\0{args}\0{position}".encode()).hexdigest()[:24]
    out: dict[str, Any] = {"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}
    if signature:
        out["extra_content"] = {"google": {"thought_signature": signature}}
    return out


def read_parts(parts: Any, first_position: int = 0, salt: str = "") -> tuple[str, list[dict[str, Any]]]:
    """(visible text, tool calls) of a candidate's parts; thoughts are not shown as content."""
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for p in parts or []:
        if not isinstance(p, dict) or p.get("thought"):
            continue
        if "text" in p:
            texts.append(str(p["text"]))
        elif isinstance(p.get("functionCall"), dict):
            calls.append(tool_call(p["functionCall"], first_position + len(calls), p.get("thoughtSignature"),
                                   salt))
    return "".join(texts), calls


def to_completion(data: dict[str, Any], model: str, id: str) -> dict[str, Any]:
    """A ``chat.completion`` for a whole ``GenerateContentResponse`` (one choice per candidate)."""
    usage = usage_of(data.get("usageMetadata"))
    candidates = sorted((c for c in data.get("candidates") or [] if isinstance(c, dict)),
                        key=lambda c: int(c.get("index") or 0))
    choices = []
    for k, cand in enumerate(candidates or [{}]):
        text, calls = read_parts((cand.get("content") or {}).get("parts"), 0, f"{data.get('responseId')}/{k}")
        body = completion(id=id, model=model, content=text or None, tool_calls=calls or None,
                          finish_reason=finish_reason(cand.get("finishReason"), bool(calls)), usage=usage)
        choice = body["choices"][0]
        choice["index"] = k
        choices.append(choice)
    body["choices"] = choices
    return body


def blocked_reason(data: dict[str, Any]) -> str | None:
    """Why Gemini refused the prompt (``promptFeedback.blockReason``), when it did."""
    fb = data.get("promptFeedback")
    if isinstance(fb, dict) and fb.get("blockReason") and not data.get("candidates"):
        return str(fb["blockReason"])
    return None
