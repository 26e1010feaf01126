"""Cohere's API v2: OpenAI chat requests to ``/v2/chat`` and back, embeddings to ``/v2/embed``.

Streams are translated event by event into OpenAI chunks. The model's ``tool_plan`` (its reasoning before
calling tools) is surfaced as assistant content, and assistant content sent back with tool calls becomes the
``tool_plan`` again, so a tool round trip keeps what the model said. A Cohere client's own request
(``/v2/chat``, ``Call.native``) is sent as it came and the answer relayed untouched (``Reply.native``).

This module speaks HTTP to Cohere; ``request.py`` writes its requests, ``answer.py`` reads its answers.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, ClassVar

import orjson

from relaygate.config import CohereDeployment
from relaygate.core.call import Call, Dialect, Reply, Route, Usage, delivered_of
from relaygate.core.errors import (
    BadRequest,
    ContentFiltered,
    ContextTooLong,
    GatewayError,
    PermissionDenied,
    Unavailable,
    Unsupported,
    from_status,
    says_context_too_long,
)
from relaygate.providers.base import Provider, error_json, model_segment, retry_after_seconds
from relaygate.providers.batching import embed_in_batches
from relaygate.providers.cohere.answer import chat_completion, finish_reason, relay, usage_of
from relaygate.providers.cohere.request import chat_request, embedding_inputs
from relaygate.providers.delivered import HOLD_EVENTS, cohere_events
from relaygate.providers.listing import ListedModel, cohere_models, read_pages, token_after
from relaygate.providers.native_answers import cohere_answer
from relaygate.providers.openai_format import DROPPED_HEADER, ChunkWriter, embeddings_response
from relaygate.providers.streaming import UpstreamBody, closing, peek, sse_events, sse_frame
from relaygate.upstream import Response

DEFAULT_BASE = "https://api.cohere.com"
INPUT_TYPES = ("search_document", "search_query", "classification", "clustering")
DEFAULT_INPUT_TYPE = "search_document"
TRANSCRIBE_FIELDS = frozenset({"model", "language", "temperature"})  # the multipart fields Cohere accepts
MAX_TEXTS = 96  # Cohere's limit of texts per /v2/embed call; larger requests are split (embedding_batch_size)


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
        return await read_pages(lambda url: self.get_json(deadline, url, self._headers, self.upstream_error),
                                f"{self.base}/v1/models?page_size=1000", cohere_models,
                                token_after("next_page_token", "page_token"))

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
            raw = await self.read_body(resp)
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
        reply.stream = closing(upstream, relay(events, first, reply, w))
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
                if ev.get("type") == "message-end":  # the last event: a reader may stop at what is made of it
                    upstream.leave()
                    yield ev
                    return
                yield ev

    # -- embeddings -----------------------------------------------------------------------------------

    async def embeddings(self, call: Call) -> Reply:
        size = min(self.config.embedding_batch_size or MAX_TEXTS, MAX_TEXTS)
        return await embed_in_batches(call, size, self._embed)

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
