"""OpenAI and every OpenAI-compatible server: the body passes through with only the model rewritten."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any, ClassVar
from urllib.parse import urlsplit

import orjson

from relaygate.config import OpenAIDeployment, OpenAIFields
from relaygate.core.call import Call, Reply, Route, Usage, delivered_of
from relaygate.core.errors import (
    BadRequest,
    ContentFiltered,
    ContextTooLong,
    GatewayError,
    Unavailable,
    from_status,
    says_context_too_long,
)
from relaygate.providers.base import (
    ANSWER_ERRORS,
    RATE_LIMIT_HEADERS,
    Provider,
    error_json,
    readable,
    retry_after_seconds,
    unreadable,
)
from relaygate.providers.batching import embed_in_batches
from relaygate.providers.delivered import HOLD_BYTES, openai_chunks
from relaygate.providers.listing import ListedModel, ollama_tags, openai_models
from relaygate.providers.openai.responses import native_body
from relaygate.providers.openai.responses import relay as relay_responses
from relaygate.providers.openai.usage import usage_of
from relaygate.providers.openai.via_responses import chunks as chat_chunks
from relaygate.providers.openai.via_responses import responses_request
from relaygate.providers.openai.via_responses import whole as whole_response
from relaygate.providers.openai_format import DROPPED_HEADER, take_usage, usage_at
from relaygate.providers.streaming import SSE_DONE, EventCutter, UpstreamBody, open_body
from relaygate.upstream import Response

DEFAULT_BASE = "https://api.openai.com/v1"
OPENAI_MAX_EMBEDDING_INPUTS = 2048  # OpenAI's documented cap on inputs per embeddings request


class OpenAIProvider(Provider):
    """Any server that speaks OpenAI's REST API (OpenAI, Groq, Mistral, xAI, OpenRouter, vLLM, Ollama…)."""

    config: OpenAIFields
    routes: ClassVar[frozenset[Route]] = frozenset({Route.CHAT, Route.EMBEDDINGS, Route.TRANSCRIPTIONS,
                                                    Route.TRANSLATIONS, Route.SPEECH, Route.PASSTHROUGH})
    translates: ClassVar[bool] = False  # the body goes upstream as it came (the model rewritten)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        base = self.config.api_base or DEFAULT_BASE
        self.base = base
        # the output cap the gateway adds when it must hold an answer to a budget: OpenAI's own API wants
        # max_completion_tokens (its reasoning models refuse max_tokens); the servers that mimic it read max_tokens
        self.output_cap_field = ("max_completion_tokens" if urlsplit(base).hostname == "api.openai.com"
                                 else "max_tokens")
        self._headers = {"content-type": "application/json", **self.config.headers}
        if self.config.api_key is not None and self.config.api_key.get_secret_value():
            self._headers["authorization"] = "Bearer " + self.config.api_key.get_secret_value()

    def url(self, path: str, model: str) -> str:
        """The upstream URL of an API path such as ``/chat/completions``."""
        return self.base + path

    def auth_headers(self) -> dict[str, str]:
        return self._headers

    def probe_url(self) -> str:
        """A cheap authenticated GET for health checks (lists models; spends no tokens)."""
        return self.base + "/models"

    async def probe(self, deadline: float) -> None:
        resp = await self.request(deadline, "GET", self.probe_url(), headers=self.auth_headers())
        if resp.status >= 400:
            raise await self.upstream_error(resp)
        resp.release()

    lists_models = True

    async def list_models(self, deadline: float) -> list[ListedModel]:
        """``GET {api_base}/models``, or Ollama's ``GET /api/tags`` (``models_api: ollama``)."""
        if isinstance(self.config, OpenAIDeployment) and self.config.models_api == "ollama":
            root = self.base.removesuffix("/v1")
            return ollama_tags(await self.get_json(deadline, root + "/api/tags", self.auth_headers(),
                                                   self.upstream_error))
        return openai_models(await self.get_json(deadline, self.base + "/models", self.auth_headers(),
                                                 self.upstream_error))

    def prepare(self, call: Call, model: str) -> dict[str, Any]:
        """The upstream body: the client's, with the model rewritten (and usage asked for on streams)."""
        # the body was parsed for this call alone: rewrite in place rather than copy (hot path)
        body = call.body
        body["model"] = model
        cap = call.output_cap
        if cap is not None and "max_completion_tokens" not in body and "max_tokens" not in body:
            body[self.output_cap_field] = cap
        if call.stream and call.route is Route.CHAT:
            opts = body.get("stream_options")
            # ask for usage so cost can be metered; the extra chunk is dropped for this client
            if not isinstance(opts, dict):
                body["stream_options"] = {"include_usage": True}
            elif not opts.get("include_usage"):
                opts["include_usage"] = True
        return body

    async def chat(self, call: Call) -> Reply:
        return await self.forward_json(call, "/chat/completions")

    async def chat_natively(self, call: Call) -> Reply:
        """``chat`` of a deployment that serves the Responses API: a /v1/responses call's own request goes as it
        is; on a Responses-only upstream every other chat call is translated to that API."""
        if call.responses_request is not None:
            return await self.responses(call)
        if self.config.responses_only:
            return await self.chat_via_responses(call)
        return await self.forward_json(call, "/chat/completions")

    async def chat_via_responses(self, call: Call) -> Reply:
        """A chat call sent to the upstream's Responses API (``responses_only``), answered as chat."""
        assert call.deployment is not None
        model = call.deployment.upstream_model(call.model)
        try:
            req, dropped = responses_request(call, model)
        except ANSWER_ERRORS:  # a body the upstream's chat would have refused (a tool that is not an object)
            raise BadRequest("the request cannot be sent to this model's Responses API: it is not a valid chat "
                             "request", code="invalid_request") from None
        resp = await self.request(call.deadline, "POST", self.responses_url(model),
                                  headers=self.encoded(self.auth_headers()), data=orjson.dumps(req))
        if resp.status >= 400:
            raise await self.upstream_error(resp)
        headers = passed_headers(resp)
        if dropped:
            headers[DROPPED_HEADER] = ",".join(dropped)
        if call.stream:
            if not resp.headers.get("content-type", "").startswith("text/event-stream"):
                resp.close()
                raise Unavailable("upstream openai answered a stream request with a whole body", status=502)
            reply = Reply(media_type="text/event-stream", headers=headers, first_byte_at=time.monotonic())
            reply.stream = readable(chat_chunks(UpstreamBody(resp, self.kind), reply, model, call.wants_usage),
                                    self.kind)
            return reply
        data = await self.read_json_object(resp)
        usage = Usage.from_openai(data.get("usage"))
        try:
            body = whole_response(data, usage)
        except ANSWER_ERRORS as e:
            raise unreadable(self.kind, e) from None
        return Reply(body=orjson.dumps(body), headers=headers, usage=usage, first_byte_at=time.monotonic())

    def responses_url(self, model: str) -> str:
        return self.base + "/responses"

    async def responses(self, call: Call) -> Reply:
        """A /v1/responses request sent as it is (``responses_native``); the answer relayed as it came."""
        assert call.deployment is not None
        model = call.deployment.upstream_model(call.model)
        body = native_body(call, model)
        chained = body.get("previous_response_id") is not None
        resp = await self.request(call.deadline, "POST", self.responses_url(model),
                                  headers=self.encoded(self.auth_headers()), data=orjson.dumps(body))
        if resp.status == 404 and chained:
            err = await self.upstream_error(resp)
            if err.code != "previous_response_not_found":
                raise err
            # the upstream no longer has the turn the gateway kept (its retention ended, its store was
            # emptied): the gateway's copy of the conversation goes as the input instead
            body = native_body(call, model, chain=False)
            resp = await self.request(call.deadline, "POST", self.responses_url(model),
                                      headers=self.encoded(self.auth_headers()), data=orjson.dumps(body))
        if resp.status >= 400:
            raise await self.upstream_error(resp)
        passed = passed_headers(resp)
        if call.stream and resp.headers.get("content-type", "").startswith("text/event-stream"):
            reply = Reply(media_type="text/event-stream", headers=passed, first_byte_at=time.monotonic())
            reply.stream = relay_responses(UpstreamBody(resp, self.kind), reply)
        else:
            data = await self.read_body(resp)
            reply = Reply(body=data, headers=passed, first_byte_at=time.monotonic(), usage=usage_of(data))
        reply.responses_native = True
        return reply

    async def embeddings(self, call: Call) -> Reply:
        size = self.config.embedding_batch_size or OPENAI_MAX_EMBEDDING_INPUTS
        return await embed_in_batches(call, size, lambda sub: self.forward_json(sub, "/embeddings"))

    async def speech(self, call: Call) -> Reply:
        """Text to speech: audio bytes (or ``stream_format: sse`` events) forwarded as they arrive.

        The first bytes are awaited before returning, so a primary that fails before any audio was
        produced can still be replaced by a fallback.
        """
        assert call.deployment is not None
        model = call.deployment.upstream_model(call.model)
        body = self.prepare(call, model)
        voice = body.get("voice")
        if isinstance(voice, str) and voice in self.config.voice_map:
            body = {**body, "voice": self.config.voice_map[voice]}
        resp = await self.request(call.deadline, "POST", self.url("/audio/speech", model), headers=self.auth_headers(),
                                  data=orjson.dumps(body))
        if resp.status >= 400:
            raise await self.upstream_error(resp)
        ctype = resp.headers.get("content-type", "application/octet-stream")
        stream = await open_body(resp, self.kind, require_bytes=True)
        chars = len(body.get("input") or "")
        return Reply(stream=stream, media_type=ctype, first_byte_at=time.monotonic(), headers=passed_headers(resp),
                     usage=Usage(characters=chars))  # priced per character (tts-1)

    async def transcriptions(self, call: Call) -> Reply:
        return await self.forward_upload(call, "/audio/transcriptions")

    async def translations(self, call: Call) -> Reply:
        return await self.forward_upload(call, "/audio/translations")

    async def forward_upload(self, call: Call, path: str) -> Reply:
        """Send the call's multipart upload upstream as it arrives; a transcript comes back whole or as SSE.

        ``language=auto`` (whisper.cpp's convention, which voice-mode sends) is left out unless the deployment
        sets ``keep_language_auto``: OpenAI's API takes ISO-639-1 codes only and detects the language when
        none is given."""
        assert call.deployment is not None and call.upload is not None
        upload = call.upload
        model = call.deployment.upstream_model(call.model)
        resp = await self.send_upload(call.deadline, self.url(path, model), self.auth_headers(), upload, model,
                                      None if self.config.keep_language_auto else _without_auto_language,
                                      buffer=self.config.buffer_uploads)
        if resp.status >= 400:
            raise await self.upstream_error(resp)
        ctype = resp.headers.get("content-type", "")
        if ctype.startswith("text/event-stream"):  # stream=true on a model that streams transcripts
            return self._relayed(resp, Reply(media_type="text/event-stream", first_byte_at=time.monotonic()), True)
        data = await self.read_body(resp)
        reply = Reply(status=resp.status, body=data, media_type=ctype or "application/json", headers=passed_headers(resp),
                      first_byte_at=time.monotonic())
        reply.usage = usage_of(data) if ctype.startswith("application/json") else Usage(known=False)
        return reply

    async def passthrough(self, call: Call) -> Reply:
        """Forward a request of another OpenAI route as it is: body streamed up, response streamed down."""
        fwd = call.forward
        assert fwd is not None
        headers = {k: v for k, v in self.auth_headers().items() if k != "content-type"}
        headers.update(fwd.headers)
        url = self.base + fwd.target
        if fwd.body is None:  # a GET, a DELETE: nothing to stream up
            resp = await self.request(call.deadline, fwd.method, url, headers=headers)
        else:
            resp = await self.send_body(call.deadline, fwd.method, url, headers, fwd.body, fwd.body.chunks())
        if resp.status >= 400:
            raise await self.upstream_error(resp)
        passed = passed_headers(resp, ("content-disposition",))
        stream = await open_body(resp, self.kind)
        return Reply(status=resp.status, stream=stream, headers=passed, first_byte_at=time.monotonic(),
                     media_type=resp.headers.get("content-type", "application/octet-stream"),
                     usage=Usage(known=False))

    async def forward_json(self, call: Call, path: str) -> Reply:
        """POST the call's JSON body upstream; return the body whole, or the stream event by event."""
        assert call.deployment is not None
        model = call.deployment.upstream_model(call.model)
        body = orjson.dumps(self.prepare(call, model))
        resp = await self.request(call.deadline, "POST", self.url(path, model), headers=self.encoded(self.auth_headers()),
                                  data=body)
        if resp.status >= 400:
            raise await self.upstream_error(resp)
        passed = passed_headers(resp)
        ctype = resp.headers.get("content-type", "")
        # Reply's fields in order (status, body, stream, media type, headers, raw headers, usage, first byte): by
        # name, binding them to its parameters cost more than the rest of this
        if call.stream and ctype.startswith("text/event-stream"):
            reply = Reply(200, None, None, "text/event-stream", passed, b"", None, time.monotonic())
            return self._relayed(resp, reply, call.wants_usage, call if call.route is Route.CHAT else None)
        data = await self.read_body(resp)
        reply = Reply(resp.status, data, None, ctype or "application/json", passed, b"", None, time.monotonic())
        reply.usage = usage_of(data)
        return reply

    def _relayed(self, resp: Response, reply: Reply, keep_usage_chunk: bool, call: Call | None = None) -> Reply:
        """``call``: a chat call, whose stream's text is counted."""
        body = UpstreamBody(resp, self.kind)
        reply.stream = (self._relay if call is None else self._relay_chat)(body, reply, keep_usage_chunk)
        return reply

    @staticmethod
    async def _relay(body: UpstreamBody, reply: Reply, keep_usage_chunk: bool) -> AsyncIterator[bytes]:
        """Forward SSE events as they arrive, whole events only, without decoding them; note usage (only
        events carrying a usage object are parsed); drop the usage chunk if the client did not ask for it."""
        cutter = EventCutter()
        try:
            async for chunk in body:
                events = chunk if cutter.idle and chunk.endswith(b"\n\n") else cutter.feed(chunk)
                if usage_at(events, 0) >= 0:  # a usage object, not the "usage":null of each chunk
                    events = take_usage(events, reply, keep_usage_chunk)
                if events:
                    if events.endswith(SSE_DONE):  # the end: never wait on the body's end (UpstreamBody.leave)
                        body.leave()
                        yield events
                        return
                    yield events
            events = cutter.end()
            if usage_at(events, 0) >= 0:
                events = take_usage(events, reply, keep_usage_chunk)
            if events:
                yield events
        finally:
            body.close()

    @staticmethod
    async def _relay_chat(body: UpstreamBody, reply: Reply, keep_usage_chunk: bool) -> AsyncIterator[bytes]:
        """``_relay`` for chat chunks, held for their text to be counted should the usage chunk never come
        (``providers/delivered.py``): what a stream cut before it is billed for.

        The hottest path: it closes its upstream itself rather than through ``closing`` (one generator less
        per read), and a read of whole events skips the cutter's call."""
        cutter = EventCutter()
        delivered = delivered_of(reply)
        held = delivered.hold(openai_chunks)
        size = 0
        try:
            async for chunk in body:
                events = chunk if cutter.idle and chunk.endswith(b"\n\n") else cutter.feed(chunk)
                if usage_at(events, 0) >= 0:  # a usage object, not the "usage":null of each chunk
                    events = take_usage(events, reply, keep_usage_chunk)
                if events:
                    held.append(events)
                    size += len(events)
                    if size > HOLD_BYTES:
                        delivered.fold()
                        size = 0
                    if events.endswith(SSE_DONE):  # the end: never wait on the body's end (UpstreamBody.leave)
                        body.leave()
                        yield events
                        return
                    yield events
            events = cutter.end()
            if usage_at(events, 0) >= 0:
                events = take_usage(events, reply, keep_usage_chunk)
            if events:
                held.append(events)
                yield events
        finally:
            body.close()

    async def upstream_error(self, resp: Response) -> GatewayError:
        """Map an upstream error response to a gateway error, without leaking secrets or addresses."""
        err = error_json(await self.error_body(resp))
        message = str(err.get("message") or f"upstream returned HTTP {resp.status}")
        code = err.get("code") if isinstance(err.get("code"), str) else None
        param = err.get("param") if isinstance(err.get("param"), str) else None
        if code == "context_length_exceeded" or (resp.status in (400, 422) and says_context_too_long(message)):
            return ContextTooLong(message, param=param or "messages")
        if code == "content_filter" or code == "content_policy_violation":
            return ContentFiltered(message, param=param)
        e = from_status(resp.status, message, retry_after=retry_after_seconds(resp.headers), code=code,
                        param=param)
        for k in RATE_LIMIT_HEADERS:
            if k in resp.headers:
                e.headers[k] = resp.headers[k]
        return e


class OpenAIResponsesProvider(OpenAIProvider):
    """An OpenAI-API upstream that serves the Responses API too (``responses_native``), or only
    (``responses_only``)."""

    routes: ClassVar[frozenset[Route]] = OpenAIProvider.routes | {Route.RESPONSES}

    async def chat(self, call: Call) -> Reply:
        return await self.chat_natively(call)


def _without_auto_language(name: str, value: str) -> bool:
    return name != "language" or value.strip().lower() != "auto"


def passed_headers(resp: Response, extra: tuple[str, ...] = ()) -> dict[str, str]:
    """The upstream response headers a client may see: rate limits (and ``extra``)."""
    headers = resp.headers
    if not extra and _RATE_LIMITS.isdisjoint(headers):  # an upstream that sends none: one look in C
        return {}
    return {k: headers[k] for k in (*RATE_LIMIT_HEADERS, *extra) if k in headers}


_RATE_LIMITS = frozenset(RATE_LIMIT_HEADERS)
