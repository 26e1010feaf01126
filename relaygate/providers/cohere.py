"""Cohere's API v2: OpenAI chat requests to ``/v2/chat`` and back, embeddings to ``/v2/embed``.

Streams are translated event by event into OpenAI chunks. The model's ``tool_plan`` (its reasoning before
calling tools) is surfaced as assistant content, and assistant content sent back with tool calls becomes the
``tool_plan`` again, so a tool round trip keeps what the model said. A Cohere client's own request
(``/v2/chat``, ``Call.native``) is sent as it came and the answer relayed untouched (``Reply.native``).
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, ClassVar
from urllib.parse import quote

import orjson

from relaygate.config import CohereDeployment
from relaygate.core.call import Call, Dialect, Reply, Route, Usage, delivered_of, token_count
from relaygate.core.errors import (
    BadRequest,
    ContentFiltered,
    ContextTooLong,
    GatewayError,
    PermissionDenied,
    Unavailable,
    Unsupported,
    UpstreamTimeout,
    from_status,
    says_context_too_long,
)
from relaygate.providers.base import Provider, error_json, model_segment, retry_after_seconds
from relaygate.providers.batching import embed_in_batches, needs_batches
from relaygate.providers.delivered import HOLD_EVENTS, cohere_events
from relaygate.providers.listing import MAX_MODELS, MAX_PAGES, ListedModel, cohere_models
from relaygate.providers.native_answers import cohere_answer
from relaygate.providers.openai_format import (
    ADJUSTED_HEADER,
    DROPPED_HEADER,
    ChunkWriter,
    Image,
    completion,
    completion_id,
    content_parts,
    embeddings_response,
    text_of,
)
from relaygate.providers.streaming import UpstreamBody, closing, peek, sse_events, sse_frame
from relaygate.upstream import Response

DEFAULT_BASE = "https://api.cohere.com"
INPUT_TYPES = ("search_document", "search_query", "classification", "clustering")
DEFAULT_INPUT_TYPE = "search_document"
TRANSCRIBE_FIELDS = frozenset({"model", "language", "temperature"})  # the multipart fields Cohere accepts
MAX_TEXTS = 96  # Cohere's limit of texts per /v2/embed call; larger requests are split (embedding_batch_size)
FINISH = {"COMPLETE": "stop", "STOP_SEQUENCE": "stop", "MAX_TOKENS": "length", "TOOL_CALL": "tool_calls"}
# reasoning_effort -> Cohere's thinking: none disables it and high leaves it unbounded, as Cohere's own
# OpenAI-compatible API does; minimal/low/medium (which that API refuses) get budgets instead of an error
THINKING = {"none": {"type": "disabled"}, "minimal": {"type": "disabled"},
            "low": {"type": "enabled", "token_budget": 1024}, "medium": {"type": "enabled", "token_budget": 8192},
            "high": {"type": "enabled"}}
# OpenAI options Cohere has no counterpart for: not forwarded, named in the x-relaygate-dropped-params header
NO_COUNTERPART = ("logit_bias", "top_logprobs", "prediction", "modalities", "audio", "verbosity",
                  "web_search_options", "service_tier")
# Cohere's own chat options, forwarded as they are when a client sends them (extra_body with the openai SDK)
NATIVE = ("k", "safety_mode", "priority", "documents", "citation_options", "thinking")
# OpenAI options with the same meaning under another name (or the same) in Cohere's v2 chat
RENAMED = {"seed": "seed", "max_tokens": "max_tokens", "max_completion_tokens": "max_tokens"}
# sampling options whose range is narrower at Cohere: (Cohere name, low, high); values outside are moved to
# the nearest bound and named in x-relaygate-adjusted-params (top_p=1, OpenAI's default, becomes p=0.99)
RANGED = {"temperature": ("temperature", 0.0, 1.0), "top_p": ("p", 0.01, 0.99),
          "frequency_penalty": ("frequency_penalty", 0.0, 1.0), "presence_penalty": ("presence_penalty", 0.0, 1.0)}


class CohereProvider(Provider):
    """Cohere's native API (``api_base`` is the host root, e.g. https://api.cohere.com)."""

    config: CohereDeployment
    routes: ClassVar[frozenset[Route]] = frozenset({Route.CHAT, Route.EMBEDDINGS, Route.TRANSCRIPTIONS})
    relays: ClassVar[Dialect | None] = Dialect.COHERE

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        base = (self.config.api_base or DEFAULT_BASE).rstrip("/")
        self.base = base[: -len("/v2")] if base.endswith("/v2") else base
        self.input_type = self.config.input_type or DEFAULT_INPUT_TYPE
        if self.input_type not in INPUT_TYPES:
            raise ValueError(f"input_type must be one of {', '.join(INPUT_TYPES)}")
        self._headers = {"content-type": "application/json", **self.config.headers}
        if self.config.api_key is not None and self.config.api_key.get_secret_value():
            self._headers["authorization"] = "Bearer " + self.config.api_key.get_secret_value()

    async def probe(self, deadline: float) -> None:
        """``GET /v1/models/{model}``: free, and fails on a bad key, an unknown model or an outage."""
        model = self.config.model
        if model == "*":
            return
        resp = await self.request(deadline, "GET", f"{self.base}/v1/models/{model_segment(model)}",
                                  headers=self._headers)
        if resp.status >= 400:
            raise await self.upstream_error(resp)
        resp.release()

    lists_models = True

    async def list_models(self, deadline: float) -> list[ListedModel]:
        """``GET /v1/models``, page by page (``page_token``)."""
        url = f"{self.base}/v1/models?page_size=1000"
        found: list[ListedModel] = []
        page = await self.get_json(deadline, url, self._headers, self.upstream_error)
        for _ in range(MAX_PAGES):
            found += cohere_models(page)
            token = page.get("next_page_token")
            if not isinstance(token, str) or not token or len(found) >= MAX_MODELS:
                break
            page = await self.get_json(deadline, f"{url}&page_token={quote(token, safe='')}", self._headers,
                                       self.upstream_error)
        return found

    # -- chat -----------------------------------------------------------------------------------------

    async def chat(self, call: Call) -> Reply:
        assert call.deployment is not None
        model = call.deployment.upstream_model(call.model)
        if call.native is not None and call.native.dialect is Dialect.COHERE:
            return await self._native(call, {**call.native.body, "model": model, "stream": call.stream})
        body, headers = chat_request(call.body, model, call.stream)
        resp = await self._post(call.deadline, "/v2/chat", body)
        if call.stream:
            return await self._start_stream(resp, headers, model, call.wants_usage)
        data = await self.read_json_object(resp)
        reply = Reply(headers=headers, first_byte_at=time.monotonic())
        reply.usage = usage_of(data.get("usage"))
        reply.body = orjson.dumps(chat_completion(data, model, reply.usage))
        return reply

    async def _native(self, call: Call, body: dict[str, Any]) -> Reply:
        """Send the client's v2 chat body as it came (model and stream set) and relay the answer untouched;
        only the usage is read, and a generation that failed is raised (a fallback can still act)."""
        resp = await self._post(call.deadline, "/v2/chat", body)
        if not call.stream:
            try:
                raw = await self.read_body(resp)
            finally:
                resp.release()
            read = cohere_answer(raw)  # only the usage and the finish reason are decoded
            if read is not None:
                finish_reason(read.finish_reason, None)
                return Reply(body=raw, usage=read.tokens(), first_byte_at=time.monotonic(), native=True)
            data = orjson.loads(raw)  # not shaped as expected: read whole (a 502 when it is not an answer)
            finish_reason(data.get("finish_reason"), None)
            return Reply(body=raw, usage=usage_of(data.get("usage")), first_byte_at=time.monotonic(), native=True)
        upstream = UpstreamBody(resp, self.kind)
        events = sse_events(upstream)
        first = await peek(upstream, anext(events, None))
        reply = Reply(media_type="text/event-stream", first_byte_at=time.monotonic(), native=True)
        reply.stream = closing(upstream, self._relay_native(events, first, reply))
        return reply

    async def _relay_native(self, events: AsyncIterator[tuple[str, bytes]], first: tuple[str, bytes],
                            reply: Reply) -> AsyncIterator[bytes]:
        """Cohere's events as they came, up to message-end (the only one parsed, for the usage); held for
        their text to be counted should the usage never come (``providers/delivered.py``)."""
        event, data = first
        delivered = delivered_of(reply)
        held = delivered.hold(cohere_events)
        while data != b"[DONE]":
            held.append((event, data))
            if len(held) > HOLD_EVENTS:
                delivered.fold()
            yield sse_frame(data, event.encode())
            if event == "message-end" or (not event and data.find(b'"message-end"', 0, 40) >= 0):
                reply.usage = usage_of((orjson.loads(data).get("delta") or {}).get("usage"))
                return
            got = await anext(events, None)
            if got is None:
                break
            event, data = got
        raise Unavailable("upstream cohere stream ended before message-end", status=502)

    async def _start_stream(self, resp: Response, headers: dict[str, str], model: str,
                            include_usage: bool) -> Reply:
        """Wait for Cohere's first event before answering, so a stream that breaks at once is still retryable."""
        upstream = UpstreamBody(resp, self.kind)
        events = self._events(upstream)
        first = await peek(upstream, anext(events, None))
        reply = Reply(media_type="text/event-stream", headers=headers, first_byte_at=time.monotonic())
        w = ChunkWriter(model, include_usage=include_usage, delivered=delivered_of(reply))
        reply.stream = closing(upstream, self._relay(events, first, reply, w))
        return reply

    async def _events(self, upstream: UpstreamBody) -> AsyncGenerator[dict[str, Any], None]:
        async for _event, raw in sse_events(upstream):
            if raw == b"[DONE]":
                return
            try:
                ev = orjson.loads(raw)
            except orjson.JSONDecodeError:
                raise Unavailable("upstream cohere sent an unreadable stream event", status=502) from None
            if isinstance(ev, dict):
                yield ev

    async def _relay(self, events: AsyncIterator[dict[str, Any]], first: dict[str, Any], reply: Reply,
                     w: ChunkWriter) -> AsyncIterator[bytes]:
        """Cohere's stream events as OpenAI chunks, each as soon as its event arrived."""
        ev: dict[str, Any] | None = first
        args = ToolArguments()
        while ev is not None:
            out = self._translate(ev, reply, w, args)
            if out:
                yield out
            if ev.get("type") == "message-end":
                yield w.done()
                return
            ev = await anext(events, None)
        raise Unavailable("upstream cohere stream ended before message-end", status=502)

    def _translate(self, ev: dict[str, Any], reply: Reply, w: ChunkWriter, args: ToolArguments) -> bytes:
        kind = ev.get("type")
        message = ((ev.get("delta") or {}).get("message")) or {}
        if kind == "content-delta":
            return w.text((message.get("content") or {}).get("text") or "")
        if kind == "tool-plan-delta":
            return w.text(message.get("tool_plan") or "")
        if kind == "tool-call-start":
            tc = message.get("tool_calls") or {}
            fn = tc.get("function") or {}
            key = str(ev.get("index", 0))
            start = w.tool_start(key, tc.get("id") or "", fn.get("name") or "")
            return start + args.start(w, key, fn.get("arguments") or "")
        if kind == "tool-call-delta":
            fn = (message.get("tool_calls") or {}).get("function") or {}
            return args.feed(w, str(ev.get("index", 0)), fn.get("arguments") or "")
        if kind == "tool-call-end":
            return args.end(w, str(ev.get("index", 0)))
        if kind == "message-start":
            return w.role()
        if kind == "message-end":
            delta = ev.get("delta") or {}
            reply.usage = usage_of(delta.get("usage"))
            return args.end_all(w) + w.finish(finish_reason(delta.get("finish_reason"), delta.get("error"))) \
                + w.usage(reply.usage)
        return b""  # content-start/-end, citations, debug: nothing for an OpenAI client

    # -- embeddings -----------------------------------------------------------------------------------

    async def embeddings(self, call: Call) -> Reply:
        size = min(self.config.embedding_batch_size or MAX_TEXTS, MAX_TEXTS)
        if needs_batches(call.body, size):
            return await embed_in_batches(call, size, self._embed)
        return await self._embed(call)

    async def _embed(self, call: Call) -> Reply:
        """One ``/v2/embed`` call for all of the call's inputs."""
        assert call.deployment is not None
        model = call.deployment.upstream_model(call.model)
        texts = embedding_inputs(call.body.get("input"))
        fmt = call.body.get("encoding_format") or "float"
        if fmt not in ("float", "base64"):
            raise BadRequest("encoding_format must be 'float' or 'base64'", param="encoding_format")
        input_type = call.body.get("input_type", self.input_type)
        if input_type not in INPUT_TYPES:
            raise BadRequest(f"input_type must be one of {', '.join(INPUT_TYPES)}", param="input_type")
        # always ask for floats: base64 for the client is packed the way OpenAI does it, by embeddings_response
        body: dict[str, Any] = {"model": model, "texts": texts, "input_type": input_type,
                                "embedding_types": ["float"]}
        dims = call.body.get("dimensions")
        if dims is not None:
            body["output_dimension"] = dims
        data = await self.read_json_object(await self._post(call.deadline, "/v2/embed", body))
        vectors = (data.get("embeddings") or {}).get("float")
        if not isinstance(vectors, list) or len(vectors) != len(texts):
            raise Unavailable("upstream cohere returned no float embeddings", status=502)
        units = ((data.get("meta") or {}).get("billed_units") or {}).get("input_tokens")
        usage = Usage(prompt_tokens=int(units)) if isinstance(units, int | float) else Usage(known=False)
        out = embeddings_response(vectors, model, usage, fmt)
        return Reply(body=orjson.dumps(out), usage=usage if usage.known else None, first_byte_at=time.monotonic())

    # -- audio --------------------------------------------------------------------------------------

    async def transcriptions(self, call: Call) -> Reply:
        """``/v2/audio/transcriptions``: the upload streams on with only the fields Cohere knows."""
        assert call.deployment is not None and call.upload is not None
        fmt = call.body.get("response_format") or "json"
        if fmt not in ("json", "text"):
            raise Unsupported(f"Cohere returns plain transcripts; response_format {fmt!r} is not available "
                              "(use json or text)", param="response_format")
        for name in ("stream", "timestamp_granularities[]", "timestamp_granularities"):
            if call.body.get(name) not in (None, "false"):
                raise Unsupported(f"'{name.rstrip('[]')}' is not available with Cohere transcription", param=name)
        if str(call.body.get("language") or "auto").strip().lower() == "auto":
            raise BadRequest("Cohere needs the audio's 'language' (ISO-639-1, e.g. 'en'); it does not detect it",
                             param="language")
        model = call.deployment.upstream_model(call.model)
        upload = call.upload
        resp = await self.send_upload(call.deadline, self.base + "/v2/audio/transcriptions", self._headers, upload, model,
                                      lambda name, _: name in TRANSCRIBE_FIELDS, buffer=self.config.buffer_uploads)
        if resp.status >= 400:
            raise await self.upstream_error(resp)
        text = (await self.read_json_object(resp)).get("text")
        if not isinstance(text, str):
            raise Unavailable("upstream cohere returned no transcript", status=502)
        dropped = [n for n in call.body if n not in TRANSCRIBE_FIELDS and n not in ("response_format", "stream")]
        notes = {DROPPED_HEADER: ",".join(dropped)} if dropped else {}
        if fmt == "text":
            return Reply(body=(text + "\n").encode(), media_type="text/plain; charset=utf-8", headers=notes,
                         usage=Usage(known=False), first_byte_at=time.monotonic())
        return Reply(body=orjson.dumps({"text": text}), headers=notes, usage=Usage(known=False),
                     first_byte_at=time.monotonic())

    # -- HTTP -----------------------------------------------------------------------------------------

    async def _post(self, deadline: float, path: str, body: dict[str, Any]) -> Response:
        resp = await self.request(deadline, "POST", self.base + path, headers=self.encoded(self._headers),
                                  data=orjson.dumps(body))
        if resp.status >= 400:
            raise await self.upstream_error(resp)
        return resp

    async def upstream_error(self, resp: Response) -> GatewayError:
        """Cohere's ``{"message": ...}`` errors as gateway errors (secrets and addresses never leak)."""
        raw = await self.error_body(resp)
        message = str(error_json(raw).get("message") or f"upstream returned HTTP {resp.status}")
        return error_for(resp.status, message, retry_after_seconds(resp.headers))


def error_for(status: int, message: str, retry_after: float | None) -> GatewayError:
    """The gateway error class for a Cohere status and message."""
    text = f"cohere: {message}"
    if status in (400, 422) and says_context_too_long(message):
        return ContextTooLong(text, param="messages")
    if status == 498:  # Cohere's "blocked input/output": a deny-listed token in the request or answer
        return ContentFiltered(text)
    if status == 402:
        return PermissionDenied(text, code="payment_required")
    if status == 499:  # cancelled on Cohere's side, not by our client: another attempt may succeed
        return Unavailable(text, status=502)
    return from_status(status, text, retry_after=retry_after)


def finish_reason(reason: Any, error: Any) -> str:
    """OpenAI's finish_reason for Cohere's; a failed generation raises instead."""
    mapped = FINISH.get(reason) if isinstance(reason, str) else None
    if mapped is not None:
        return mapped
    detail = str(error) if error else "the generation failed"
    if reason == "TIMEOUT":
        raise UpstreamTimeout(f"cohere: generation timed out ({detail})")
    if reason == "ERROR":
        raise Unavailable(f"cohere: {detail}", status=502)
    return "stop"


def arguments(raw: Any) -> str:
    """A tool call's arguments: Cohere says ``"null"`` (or nothing) for a call without any; OpenAI ``"{}"``."""
    return raw if isinstance(raw, str) and raw.strip() not in ("", "null") else "{}"


class ToolArguments:
    """The argument text of streamed tool calls, held back while it may still be Cohere's ``null``."""

    __slots__ = ("undecided",)

    def __init__(self) -> None:
        self.undecided: dict[str, str] = {}  # tool call key -> text held so far (a prefix of "null")

    def start(self, w: ChunkWriter, key: str, fragment: str) -> bytes:
        self.undecided[key] = ""
        return self.feed(w, key, fragment)

    def feed(self, w: ChunkWriter, key: str, fragment: str) -> bytes:
        held = self.undecided.get(key)
        if held is None:
            return w.tool_args(key, fragment)
        text = held + fragment
        if "null".startswith(text.strip()):
            self.undecided[key] = text
            return b""
        del self.undecided[key]
        return w.tool_args(key, text)

    def end(self, w: ChunkWriter, key: str) -> bytes:
        held = self.undecided.pop(key, None)
        out = w.tool_args(key, held) if held is not None and held.strip() not in ("", "null") else b""
        return out + w.tool_end(key)

    def end_all(self, w: ChunkWriter) -> bytes:
        return b"".join(self.end(w, key) for key in list(self.undecided))


def usage_of(u: Any) -> Usage | None:
    """``usage.tokens`` (what the model processed), else ``billed_units``."""
    if not isinstance(u, dict):
        return None
    counts = u.get("tokens") or u.get("billed_units")
    if not isinstance(counts, dict):
        return None
    return Usage(prompt_tokens=token_count(counts.get("input_tokens")),
                 completion_tokens=token_count(counts.get("output_tokens")),
                 cached_tokens=token_count(u.get("cached_tokens")))


def chat_completion(data: dict[str, Any], model: str, usage: Usage | None) -> dict[str, Any]:
    """A Cohere chat response as an OpenAI ``chat.completion``."""
    message = data.get("message") or {}
    text = "".join(str(p.get("text", "")) for p in message.get("content") or []
                   if isinstance(p, dict) and p.get("type") == "text")
    tool_calls = [{"id": tc.get("id") or "", "type": "function",
                   "function": {"name": (tc.get("function") or {}).get("name") or "",
                                "arguments": arguments((tc.get("function") or {}).get("arguments"))}}
                  for tc in message.get("tool_calls") or [] if isinstance(tc, dict)]
    if not text and tool_calls:
        text = message.get("tool_plan") or ""
    reason = finish_reason(data.get("finish_reason"), None)
    return completion(id=completion_id(), model=model,
                      content=text if text or not tool_calls else None, tool_calls=tool_calls or None,
                      finish_reason=reason, usage=usage)


# ---- OpenAI request -> Cohere request ---------------------------------------------------------------------

def chat_request(body: dict[str, Any], model: str, stream: bool) -> tuple[dict[str, Any], dict[str, str]]:
    """Cohere's ``/v2/chat`` body for an OpenAI chat request, and response headers naming the parameters
    left out or moved into Cohere's ranges (BadRequest for what Cohere cannot do at all)."""
    n = body.get("n")
    if n not in (None, 1):
        raise Unsupported("Cohere returns one choice per request; 'n' must be 1", param="n")
    if body.get("logprobs"):
        raise Unsupported("logprobs are not available through Cohere on this gateway", param="logprobs")
    for legacy in ("functions", "function_call"):
        if body.get(legacy) is not None:
            raise Unsupported(f"the legacy '{legacy}' parameter is not translated for Cohere; use 'tools' and "
                              "'tool_choice'", param=legacy)
    documents: list[dict[str, Any]] = []  # text file parts, which Cohere reads as request-level documents
    out: dict[str, Any] = {"model": model,
                           "messages": [_message(m, i, documents) for i, m in enumerate(body["messages"])]}
    if stream:
        out["stream"] = True
    adjusted = []
    for src, dst in RENAMED.items():
        if body.get(src) is not None:
            out[dst] = body[src]
    for src, (dst, low, high) in RANGED.items():
        value = body.get(src)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise BadRequest(f"'{src}' must be a number", param=src, code="invalid_type")
        out[dst] = min(high, max(low, value))
        if out[dst] != value:
            adjusted.append(src)
    stop = body.get("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise BadRequest("'stop' must be a string or an array of strings", param="stop")
        if stops:
            out["stop_sequences"] = stops
    for name in NATIVE:
        if body.get(name) is not None:
            out[name] = body[name]
    if documents:
        given = out.get("documents")
        out["documents"] = (given if isinstance(given, list) else []) + documents
    effort = body.get("reasoning_effort")
    if effort is not None and "thinking" not in out:
        if effort not in THINKING:
            raise BadRequest(f"reasoning_effort must be one of {', '.join(THINKING)}", param="reasoning_effort")
        out["thinking"] = THINKING[effort]
    rf = _response_format(body.get("response_format"))
    if rf is not None:
        out["response_format"] = rf
    tools, strict = _tools(body.get("tools"))
    choice = body.get("tool_choice")
    if tools:
        out["tools"] = tools
        if strict:
            out["strict_tools"] = True
        if choice == "required":
            out["tool_choice"] = "REQUIRED"
        elif choice == "none":
            out["tool_choice"] = "NONE"
        elif isinstance(choice, dict):
            # Cohere cannot name one tool: offer only that one and require a call
            wanted = (choice.get("function") or {}).get("name")
            chosen = [t for t in tools if t["function"]["name"] == wanted]
            if not chosen:
                raise BadRequest(f"tool_choice names {wanted!r}, which is not in 'tools'", param="tool_choice")
            out["tools"], out["tool_choice"] = chosen, "REQUIRED"
        elif choice not in (None, "auto"):
            raise BadRequest("tool_choice must be 'auto', 'none', 'required' or a function", param="tool_choice")
    dropped = [name for name in NO_COUNTERPART if body.get(name) is not None]
    if body.get("parallel_tool_calls") is False and tools:  # Cohere may always call tools in parallel
        dropped.append("parallel_tool_calls")
    notes = {DROPPED_HEADER: ",".join(dropped), ADJUSTED_HEADER: ",".join(adjusted)}
    return out, {k: v for k, v in notes.items() if v}


def _message(m: dict[str, Any], i: int, documents: list[dict[str, Any]]) -> dict[str, Any]:
    role = m.get("role")
    param = f"messages[{i}]"
    content = m.get("content")
    if role in ("system", "developer"):
        return {"role": "system", "content": _text(content, param)}
    if role == "user":
        return {"role": "user", "content": _user_content(content, param, documents)}
    if role == "assistant":
        out: dict[str, Any] = {"role": "assistant"}
        text = _text(content, param) if content is not None else ""
        calls = m.get("tool_calls")
        if calls:
            out["tool_calls"] = [_tool_call(tc, f"{param}.tool_calls[{j}]") for j, tc in enumerate(calls)]
            if text:
                out["tool_plan"] = text
        else:
            out["content"] = text
        return out
    if role == "tool":
        tool_call_id = m.get("tool_call_id")
        if not isinstance(tool_call_id, str) or not tool_call_id:
            raise BadRequest(f"{param}.tool_call_id is required for tool messages", param=f"{param}.tool_call_id")
        return {"role": "tool", "tool_call_id": tool_call_id, "content": _text(content, param)}
    raise BadRequest(f"{param}.role {role!r} is not supported by Cohere (use system, user, assistant or tool)",
                     param=f"{param}.role")


def _text(content: Any, param: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        if any(isinstance(p, dict) and p.get("type") != "text" for p in content):
            raise BadRequest(f"{param}.content may only contain text parts for this role", param=f"{param}.content")
        return text_of(content)
    if content is None:
        return ""
    raise BadRequest(f"{param}.content must be a string or an array of content parts", param=f"{param}.content")


def _user_content(content: Any, param: str, documents: list[dict[str, Any]]) -> Any:
    """Text stays a string; parts become Cohere's text and image_url blocks (data: URIs and web URLs), and
    text ``file`` parts become ``documents`` (Cohere has no file blocks in messages)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise BadRequest(f"{param}.content must be a string or an array of content parts", param=f"{param}.content")
    parts: list[dict[str, Any]] = []
    for j, p in enumerate(content):
        where = f"{param}.content[{j}]"
        kind = p.get("type") if isinstance(p, dict) else None
        if kind == "text":
            parts.append({"type": "text", "text": str(p.get("text", ""))})
        elif kind == "image_url":
            iu = p.get("image_url")
            url = iu.get("url") if isinstance(iu, dict) else iu
            if not isinstance(url, str) or not url.startswith(("data:", "http://", "https://")):
                raise BadRequest(f"{where}.image_url.url must be an http(s) URL or a data: URI", param=where)
            image: dict[str, Any] = {"url": url}
            if isinstance(iu, dict) and iu.get("detail") in ("auto", "low", "high"):
                image["detail"] = iu["detail"]
            parts.append({"type": "image_url", "image_url": image})
        elif kind == "file":
            documents.append(_document(p, where, len(documents)))
        else:
            raise BadRequest(f"content part type {kind!r} is not supported by Cohere", param=f"{where}.type")
    return parts or ""


def _document(part: dict[str, Any], param: str, n: int) -> dict[str, Any]:
    """A text ``file`` part as a Cohere document (PDFs and other binary files are refused)."""
    media = content_parts([part], param, media=True)[0]
    kind = media.media_type if isinstance(media, Image) else None
    if kind is None or not (kind.startswith("text/") or kind in ("application/json", "application/xml")):
        raise Unsupported(f"Cohere reads text documents only, not {kind or 'this file'}", param=f"{param}.file")
    assert isinstance(media, Image)
    try:
        text = (media.data or b"").decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("a text file part must be UTF-8", param=f"{param}.file") from None
    name = part["file"].get("filename")
    title = name if isinstance(name, str) and name else f"document {n + 1}"
    return {"id": f"doc_{n}", "data": {"title": title, "snippet": text}}


def _tool_call(tc: Any, param: str) -> dict[str, Any]:
    fn = tc.get("function") if isinstance(tc, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not isinstance(tc.get("id"), str):
        raise BadRequest(f"{param} must have an id and a function with a name", param=param)
    args = fn.get("arguments")
    return {"id": tc["id"], "type": "function",
            "function": {"name": fn["name"], "arguments": args if isinstance(args, str) and args else "{}"}}


def _tools(tools: Any) -> tuple[list[dict[str, Any]], bool]:
    if not tools:
        return [], False
    out = []
    strict = False
    for i, t in enumerate(tools):
        fn = t.get("function") if isinstance(t, dict) and t.get("type") == "function" else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise Unsupported("Cohere only offers function tools with a name", param=f"tools[{i}]")
        spec: dict[str, Any] = {"name": fn["name"],
                                "parameters": fn.get("parameters") or {"type": "object", "properties": {}}}
        if fn.get("description"):
            spec["description"] = fn["description"]
        strict = strict or bool(fn.get("strict"))
        out.append({"type": "function", "function": spec})
    return out, strict


def _response_format(rf: Any) -> dict[str, Any] | None:
    if rf is None:
        return None
    kind = rf.get("type") if isinstance(rf, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        schema = (rf.get("json_schema") or {}).get("schema")
        return {"type": "json_object", **({"json_schema": schema} if isinstance(schema, dict) else {})}
    raise BadRequest("response_format.type must be 'text', 'json_object' or 'json_schema'",
                     param="response_format")


def embedding_inputs(value: Any) -> list[str]:
    """OpenAI's ``input`` as a list of texts (Cohere embeds text, not token ids)."""
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not texts:
        raise BadRequest("'input' must be a non-empty string or array of strings", param="input")
    if not all(isinstance(t, str) for t in texts):
        raise Unsupported("Cohere embeds text only; token-id inputs are not supported", param="input")
    for i, t in enumerate(texts):
        if not t:
            raise BadRequest(f"input[{i}] must not be empty", param="input")
    return texts
