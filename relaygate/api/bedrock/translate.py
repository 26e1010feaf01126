"""Bedrock Converse request -> OpenAI chat request, and OpenAI replies (whole or streamed) -> Converse's answer /
ConverseStream events in AWS event-stream framing. The reverse of providers/aws/bedrock_format.py, whose
tables (stop reasons, image formats, tool id rules) it shares."""

from __future__ import annotations

import time
from typing import Any

import orjson

from relaygate.api.chunks import ChatChunkWalk, arguments_object, stream_error_message
from relaygate.core.call import Usage
from relaygate.core.errors import BadRequest, GatewayError, Unsupported
from relaygate.providers.aws import eventstream as es
from relaygate.providers.aws.bedrock_format import IMAGE_FORMATS, STOP_REASONS, tool_use_id

# OpenAI finish_reason -> Converse stopReason (the first Converse reason of each, read from bedrock_format)
FINISH_TO_STOP = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
                  "content_filter": "content_filtered", "function_call": "tool_use"}
assert set(FINISH_TO_STOP.values()) <= set(STOP_REASONS)
MEDIA_TYPES = {fmt: media for media, fmt in IMAGE_FORMATS.items() if media != "image/jpg"}
# Converse request fields with no chat counterpart: dropped and named in x-relaygate-dropped-params
DROPPED = ("guardrailConfig", "promptVariables", "additionalModelResponseFieldPaths", "requestMetadata",
           "performanceConfig", "serviceTier")
KNOWN = {"messages", "system", "inferenceConfig", "toolConfig", "additionalModelRequestFields", "outputConfig",
         "modelId", *DROPPED}
# additionalModelRequestFields that name a chat field (the rest is model-specific: dropped and named)
ADDITIONAL = {"top_k": None, "topK": None, "seed": "seed", "presence_penalty": "presence_penalty",
              "frequency_penalty": "frequency_penalty", "reasoning_effort": "reasoning_effort"}


def bad(where: str, what: str) -> BadRequest:
    return BadRequest(f"{where}: {what}", param=where)


def to_openai_request(body: dict[str, Any], model: str, stream: bool) -> tuple[dict[str, Any], list[str]]:
    """(OpenAI chat body, names of dropped fields) for a Converse request to ``model``."""
    unknown = sorted(set(body) - KNOWN)
    if unknown:
        raise bad(unknown[0], "extraneous key is not permitted")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad("messages", "at least one message is required")
    out: list[dict[str, Any]] = []
    system = body.get("system")
    if system is not None:
        if not isinstance(system, list):
            raise bad("system", "must be a list of SystemContentBlock")
        text = "\n\n".join(str(b["text"]) for b in system if isinstance(b, dict) and isinstance(b.get("text"), str))
        if text:
            out.append({"role": "system", "content": text})
    for i, m in enumerate(messages):
        _message(m, i, out)
    req: dict[str, Any] = {"model": model, "messages": out}
    dropped = [name for name in DROPPED if body.get(name) is not None]
    _inference(body.get("inferenceConfig"), req)
    tools = body.get("toolConfig")
    if tools is not None:
        _tools(tools, req)
    extra = body.get("additionalModelRequestFields")
    if isinstance(extra, dict):
        for name, value in extra.items():
            chat = ADDITIONAL.get(name)
            if chat is None:
                dropped.append(f"additionalModelRequestFields.{name}")
            else:
                req[chat] = value
    fmt = body.get("outputConfig")
    if isinstance(fmt, dict):
        req["response_format"] = _response_format(fmt)
    if stream:
        req["stream"] = True
        req["stream_options"] = {"include_usage": True}
    return req, dropped


def _inference(cfg: Any, req: dict[str, Any]) -> None:
    if cfg is None:
        return
    if not isinstance(cfg, dict):
        raise bad("inferenceConfig", "must be an object")
    for name, chat in (("maxTokens", "max_completion_tokens"), ("temperature", "temperature"), ("topP", "top_p"),
                       ("stopSequences", "stop")):
        if cfg.get(name) is not None:
            req[chat] = cfg[name]


def _image(block: dict[str, Any], where: str) -> dict[str, Any]:
    fmt = block.get("format")
    source = block.get("source")
    data = source.get("bytes") if isinstance(source, dict) else None
    if fmt not in MEDIA_TYPES:
        raise bad(f"{where}.format", f"must be one of {', '.join(sorted(MEDIA_TYPES))}")
    if not isinstance(data, str):
        raise Unsupported(f"{where}.source: only inline bytes are supported here (not s3Location)",
                          param=f"{where}.source")
    return {"type": "image_url", "image_url": {"url": f"data:{MEDIA_TYPES[fmt]};base64,{data}"}}


def _document(block: dict[str, Any], where: str) -> dict[str, Any]:
    source = block.get("source")
    data = source.get("bytes") if isinstance(source, dict) else None
    if block.get("format") == "pdf" and isinstance(data, str):
        file: dict[str, Any] = {"file_data": f"data:application/pdf;base64,{data}"}
        if isinstance(block.get("name"), str):
            file["filename"] = block["name"]
        return {"type": "file", "file": file}
    if isinstance(source, dict) and isinstance(source.get("text"), str):
        return {"type": "text", "text": source["text"]}
    raise Unsupported(f"{where}: only PDF bytes and text documents are supported here", param=where)


def _tool_result(block: dict[str, Any], where: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A toolResult as an OpenAI tool message (text only: JSON serialised) and its images, for the user turn."""
    texts: list[str] = []
    images: list[dict[str, Any]] = []
    content = block.get("content")
    for j, c in enumerate(content if isinstance(content, list) else ()):
        if not isinstance(c, dict):
            continue
        if isinstance(c.get("text"), str):
            texts.append(c["text"])
        elif "json" in c:
            texts.append(orjson.dumps(c["json"]).decode())
        elif isinstance(c.get("image"), dict):
            images.append(_image(c["image"], f"{where}.content.{j}.image"))
    text = "\n".join(texts)
    if block.get("status") == "error":
        text = "Error: " + text
    call_id = block.get("toolUseId")
    if not isinstance(call_id, str) or not call_id:
        raise bad(f"{where}.toolUseId", "is required")
    return {"role": "tool", "tool_call_id": call_id, "content": text}, images


def _message(m: Any, i: int, out: list[dict[str, Any]]) -> None:
    where = f"messages.{i}"
    if not isinstance(m, dict):
        raise bad(where, "must be an object")
    role = m.get("role")
    content = m.get("content")
    if role not in ("user", "assistant"):
        raise bad(f"{where}.role", "must be user or assistant")
    if not isinstance(content, list):
        raise bad(f"{where}.content", "must be a list of ContentBlock")
    parts: list[dict[str, Any]] = []
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, b in enumerate(content):
        at = f"{where}.content.{j}"
        if not isinstance(b, dict):
            raise bad(at, "must be an object")
        if isinstance(b.get("text"), str):
            if role == "user":
                parts.append({"type": "text", "text": b["text"]})
            else:
                texts.append(b["text"])
        elif isinstance(b.get("image"), dict) and role == "user":
            parts.append(_image(b["image"], f"{at}.image"))
        elif isinstance(b.get("document"), dict) and role == "user":
            parts.append(_document(b["document"], f"{at}.document"))
        elif isinstance(b.get("toolResult"), dict) and role == "user":
            tool, images = _tool_result(b["toolResult"], f"{at}.toolResult")
            out.append(tool)
            parts.extend(images)
        elif isinstance(b.get("toolUse"), dict) and role == "assistant":
            tu = b["toolUse"]
            if not isinstance(tu.get("toolUseId"), str) or not isinstance(tu.get("name"), str):
                raise bad(f"{at}.toolUse", "toolUseId and name are required")
            calls.append({"id": tu["toolUseId"], "type": "function", "function": {
                "name": tu["name"], "arguments": orjson.dumps(tu.get("input") or {}).decode()}})
        elif "cachePoint" in b or "reasoningContent" in b or "guardContent" in b:
            continue  # no chat counterpart (a Bedrock deployment gets the request as it came: see converse.py)
        else:
            kind = next(iter(b), "?")
            raise Unsupported(f"{at}: content block {kind!r} is not supported here for role {role}", param=at)
    if role == "user":
        if parts:
            out.append({"role": "user", "content": parts})
    elif texts or calls:
        msg: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
        if calls:
            msg["tool_calls"] = calls
        out.append(msg)


def _tools(cfg: Any, req: dict[str, Any]) -> None:
    if not isinstance(cfg, dict) or not isinstance(cfg.get("tools"), list):
        raise bad("toolConfig.tools", "is required")
    functions = []
    for i, t in enumerate(cfg["tools"]):
        spec = t.get("toolSpec") if isinstance(t, dict) else None
        if spec is None and isinstance(t, dict) and "cachePoint" in t:
            continue
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise bad(f"toolConfig.tools.{i}", "a toolSpec with a name is required")
        schema = spec.get("inputSchema")
        fn: dict[str, Any] = {"name": spec["name"], "parameters": (schema.get("json") if isinstance(schema, dict)
                                                                  else None) or {"type": "object"}}
        if isinstance(spec.get("description"), str):
            fn["description"] = spec["description"]
        if isinstance(spec.get("strict"), bool):
            fn["strict"] = spec["strict"]
        functions.append({"type": "function", "function": fn})
    if functions:
        req["tools"] = functions
    choice = cfg.get("toolChoice")
    if isinstance(choice, dict):
        if "auto" in choice:
            req["tool_choice"] = "auto"
        elif "any" in choice:
            req["tool_choice"] = "required"
        elif isinstance(choice.get("tool"), dict) and isinstance(choice["tool"].get("name"), str):
            req["tool_choice"] = {"type": "function", "function": {"name": choice["tool"]["name"]}}
        else:
            raise bad("toolConfig.toolChoice", "must set one of auto, any, tool")


def _response_format(cfg: dict[str, Any]) -> dict[str, Any]:
    tf = cfg.get("textFormat")
    structure = tf.get("structure") if isinstance(tf, dict) else None
    js = structure.get("jsonSchema") if isinstance(structure, dict) else None
    if not isinstance(js, dict) or not isinstance(js.get("schema"), str):
        raise bad("outputConfig.textFormat", "a json_schema structure with a schema string is required")
    try:
        schema = orjson.loads(js["schema"])
    except orjson.JSONDecodeError:
        raise bad("outputConfig.textFormat.structure.jsonSchema.schema", "is not JSON") from None
    out: dict[str, Any] = {"name": js.get("name") or "output", "schema": schema}
    if isinstance(js.get("description"), str):
        out["description"] = js["description"]
    return {"type": "json_schema", "json_schema": out}


# ---- answers -------------------------------------------------------------------------------------------

def usage_block(usage: Usage | None) -> dict[str, int]:
    """Converse's usage: inputTokens excludes cache reads and writes (OpenAI's prompt_tokens includes them)."""
    u = usage or Usage()
    out = {"inputTokens": u.uncached_prompt_tokens,
           "outputTokens": u.completion_tokens, "totalTokens": u.total_tokens}
    if u.cached_tokens:
        out["cacheReadInputTokens"] = u.cached_tokens
    if u.cache_write_tokens:
        out["cacheWriteInputTokens"] = u.cache_write_tokens
    return out


def to_converse_response(data: dict[str, Any], usage: Usage | None, started: float) -> dict[str, Any]:
    """A whole OpenAI chat.completion as a Converse response."""
    choice = (data.get("choices") or [{}])[0]
    msg = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    if msg.get("content"):
        content.append({"text": msg["content"]})
    for tc in msg.get("tool_calls") or ():
        fn = tc.get("function") or {}
        content.append({"toolUse": {"toolUseId": tool_use_id(str(tc.get("id") or "tooluse")),
                                    "name": fn.get("name") or "", "input": arguments_object(fn.get("arguments"))}})
    if usage is None:
        usage = Usage.from_openai(data.get("usage"))
    return {"output": {"message": {"role": "assistant", "content": content}},
            "stopReason": FINISH_TO_STOP.get(choice.get("finish_reason") or "stop", "end_turn"),
            "usage": usage_block(usage), "metrics": {"latencyMs": latency_ms(started)}}


def latency_ms(started: float) -> int:
    return max(0, int((time.monotonic() - started) * 1000))


# the exceptions a ConverseStream may carry (botocore's model), by the HTTP status they stand for
STREAM_EXCEPTIONS = {400: "validationException", 429: "throttlingException", 503: "serviceUnavailableException",
                     502: "modelStreamErrorException", 424: "modelStreamErrorException"}


def exception_frame(err: GatewayError) -> bytes:
    """The ``exception`` message that ends a stream that failed after its first byte."""
    member = STREAM_EXCEPTIONS.get(err.status, "internalServerException")
    return es.exception(member, orjson.dumps({"message": err.message}))


def stream_exception(err: dict[str, Any]) -> bytes:
    """The exception frame for an error object the upstream put inside its stream."""
    return es.exception("modelStreamErrorException", orjson.dumps({"message": stream_error_message(err)}))


class EventWriter(ChatChunkWalk):
    """OpenAI chunks in, ConverseStream events out: text and tool blocks opened and closed in order, the stop
    reason and the usage (``metadata``) at the end. Converse has no reasoning block here: it is left out."""

    __slots__ = ("since", "index", "open_kind")

    def __init__(self, since: float) -> None:
        super().__init__()
        self.since = since  # when the call began (the latency in ``metadata``)
        self.index = -1
        self.open_kind: str | None = None  # "text" / "tool" while a block is open

    def event(self, kind: str, data: dict[str, Any]) -> bytes:
        """One ConverseStream event, framed (a subclass may frame it otherwise)."""
        return es.event(kind, orjson.dumps(data))

    def begin(self, chunk: dict[str, Any]) -> bytes:
        return self.event("messageStart", {"role": "assistant"})

    def _close(self) -> bytes:
        if self.open_kind is None:
            return b""
        self.open_kind = None
        return self.event("contentBlockStop", {"contentBlockIndex": self.index})

    def _next(self, kind: str) -> bytes:
        out = self._close()
        self.index += 1
        self.open_kind = kind
        return out

    def text(self, text: str) -> bytes:
        out = b"" if self.open_kind == "text" else self._next("text")
        return out + self.event("contentBlockDelta", {"contentBlockIndex": self.index, "delta": {"text": text}})

    def tool_start(self, call_id: Any, name: str) -> tuple[int, bytes]:
        out = self._next("tool")
        return self.index, out + self.event("contentBlockStart", {"contentBlockIndex": self.index, "start": {"toolUse": {
            "toolUseId": tool_use_id(str(call_id or "tooluse")), "name": name}}})

    def tool_arguments(self, index: int, arguments: str) -> bytes:
        return self.event("contentBlockDelta", {"contentBlockIndex": index, "delta": {"toolUse": {"input": arguments}}})

    def error(self, err: dict[str, Any]) -> bytes:
        return stream_exception(err)

    def end(self, usage: Usage | None) -> bytes:
        out = self.opening({}) + self._close()
        stop = FINISH_TO_STOP.get(self.finish or "stop", "end_turn")
        out += self.event("messageStop", {"stopReason": stop})
        return out + self.event("metadata", {"usage": usage_block(usage),
                                         "metrics": {"latencyMs": latency_ms(self.since)}})
