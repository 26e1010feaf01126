"""Google Gemini: AI Studio (``x-goog-api-key``) and Vertex AI (bearer token, project and location).

Chat completions are translated to ``generateContent`` (streams from ``streamGenerateContent?alt=sse``,
event by event); embeddings go to ``batchEmbedContents``. The API key travels in a header only, never in
a URL that could be logged. A Gemini client's own request (``/v1beta/models/…``, ``Call.native``) is sent as
it came and the answer relayed untouched (``Reply.native``).
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from typing import Any, ClassVar
from urllib.parse import urlsplit

import orjson

from relaygate.config import GeminiFields, VertexDeployment
from relaygate.core.call import Call, Dialect, Reply, Route, Usage, delivered_of
from relaygate.core.errors import (
    AuthError,
    BadRequest,
    ContentFiltered,
    ContextTooLong,
    GatewayError,
    Unavailable,
    Unsupported,
    from_status,
    says_context_too_long,
)
from relaygate.providers.base import Provider, error_json, model_segment, retry_after_seconds
from relaygate.providers.batching import embed_in_batches
from relaygate.providers.delivered import HOLD_EVENTS, gemini_events, gemini_parts, thought_chars
from relaygate.providers.gemini.auth import GoogleAuth
from relaygate.providers.gemini.format import (
    FINISH_REASONS,
    REQUEST_FINISH,
    blocked_reason,
    finish_failure,
    finish_reason,
    read_parts,
    to_completion,
    to_request,
    usage_of,
)
from relaygate.providers.listing import ListedModel, gemini_models, read_pages, token_after
from relaygate.providers.native_answers import gemini_answer
from relaygate.providers.openai_format import ChunkWriter, completion_id, embeddings_response
from relaygate.providers.streaming import SSE_DONE, UpstreamBody, closing, peek, sse_events, sse_frame
from relaygate.upstream import Response

AI_STUDIO_BASE = "https://generativelanguage.googleapis.com"
_VERSIONED = re.compile(r"/v\d+(?:(?:alpha|beta)\d*)?$")
_STATUS_CODES = {"UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403, "RESOURCE_EXHAUSTED": 429,
                 "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504, "INTERNAL": 500, "INVALID_ARGUMENT": 400,
                 "NOT_FOUND": 404, "FAILED_PRECONDITION": 400}
BATCH_LIMIT = 100  # batchEmbedContents accepts at most this many inputs per request
# embeddings' input_type: Gemini's task types, and Cohere's names for the same uses (one knob for both)
TASK_TYPES = {t.lower(): t for t in (
    "RETRIEVAL_QUERY", "RETRIEVAL_DOCUMENT", "SEMANTIC_SIMILARITY", "CLASSIFICATION", "CLUSTERING",
    "QUESTION_ANSWERING", "FACT_VERIFICATION", "CODE_RETRIEVAL_QUERY")} | {
    "search_query": "RETRIEVAL_QUERY", "search_document": "RETRIEVAL_DOCUMENT"}


_FINISHED = frozenset((*FINISH_REASONS, None))  # finish reasons of an answer that finished (not failed)

class GeminiProvider(Provider):
    """Google AI Studio's Gemini API: ``{api_base}/v1beta/models/{model}:generateContent``."""

    config: GeminiFields
    routes: ClassVar[frozenset[Route]] = frozenset({Route.CHAT, Route.EMBEDDINGS})
    relays: ClassVar[Dialect | None] = Dialect.GEMINI

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.prefix = self.model_prefix()
        self._urls: dict[str, str] = {}  # method -> URL, for the deployment's own model
        self._headers = {"content-type": "application/json", **self.auth(), **self.config.headers}
        if self.config.input_type is not None and self.config.input_type.lower() not in TASK_TYPES:
            raise ValueError(f"input_type must be one of {', '.join(sorted(TASK_TYPES))}")

    async def headers(self) -> dict[str, str]:
        """The upstream request headers (credentials included)."""
        return self._headers

    def model_prefix(self) -> str:
        """Where ``/models/{model}:method`` URLs start: api_base plus its API version."""
        base = self.config.api_base or AI_STUDIO_BASE
        if _VERSIONED.search(urlsplit(base).path):
            return base
        return f"{base}/{self.config.api_version or 'v1beta'}"

    def auth(self) -> dict[str, str]:
        key = self.config.api_key.get_secret_value() if self.config.api_key is not None else ""
        if not key:
            raise ValueError("gemini deployments need api_key (a Google AI Studio API key)")
        return {"x-goog-api-key": key}

    def url(self, model: str, method: str) -> str:
        if model == self.config.model:  # the deployment's own model: its few URLs built once
            url = self._urls.get(method)
            if url is None:
                url = self._urls[method] = f"{self.prefix}/models/{model_segment(model.removeprefix('models/'))}:{method}"
            return url
        return f"{self.prefix}/models/{model_segment(model.removeprefix('models/'))}:{method}"

    def embed_request(self, model: str, text: str, options: dict[str, Any]) -> dict[str, Any]:
        """One request of a batch; ``options`` are taskType/outputDimensionality (AI Studio: at the top)."""
        return {"model": "models/" + model.removeprefix("models/"), "content": {"parts": [{"text": text}]},
                **options}

    async def probe(self, deadline: float) -> None:
        """``countTokens`` on the deployment's model: free, and fails the way a real call would."""
        model = self.config.model
        if model == "*":
            return
        data = b'{"contents":[{"role":"user","parts":[{"text":"ping"}]}]}'
        resp = await self.request(deadline, "POST", self.url(model, "countTokens"), headers=await self.headers(), data=data)
        if resp.status >= 400:
            raise await self.upstream_error(resp)
        resp.release()

    lists_models = True

    async def list_models(self, deadline: float) -> list[ListedModel]:
        """``models.list`` (``GET {version}/models``), page by page (``pageToken``)."""
        headers = await self.headers()
        return await read_pages(lambda url: self.get_json(deadline, url, headers, self.upstream_error),
                                f"{self.prefix}/models?pageSize=1000", gemini_models,
                                token_after("nextPageToken", "pageToken"))

    # -- chat --------------------------------------------------------------------------------------

    async def chat(self, call: Call) -> Reply:
        assert call.deployment is not None
        model = call.deployment.upstream_model(call.model)
        native = call.native
        if native is not None and native.dialect is Dialect.GEMINI:
            return await self._native(call, native.body, model)
        data = orjson.dumps(to_request(call.body, model))
        method = "streamGenerateContent?alt=sse" if call.stream else "generateContent"
        resp = await self.request(call.deadline, "POST", self.url(model, method),
                                  headers=self.encoded(await self.headers()), data=data)
        if resp.status >= 400:
            raise await self.upstream_error(resp)
        if call.stream:
            return await self._stream(call, resp)
        answer = await self.read_json_object(resp)
        reason = blocked_reason(answer)
        if reason:
            raise ContentFiltered(f"the prompt was blocked by Gemini's safety filters ({reason})", param="messages")
        self.raise_failed(answer)
        body = to_completion(answer, str(answer.get("modelVersion") or model), completion_id())
        usage = usage_of(answer.get("usageMetadata"))
        return Reply(body=orjson.dumps(body), usage=usage, first_byte_at=time.monotonic())

    # -- native: a Gemini client's own request ----------------------------------------------------

    async def _native(self, call: Call, body: dict[str, Any], model: str) -> Reply:
        """Send the client's generateContent body as it came and relay the answer untouched; only what the
        gateway needs is read: the usage, and a failure a retry or a fallback can still act on."""
        method = "streamGenerateContent?alt=sse" if call.stream else "generateContent"
        resp = await self.request(call.deadline, "POST", self.url(model, method),
                                  headers=self.encoded(await self.headers()), data=orjson.dumps(body))
        if resp.status >= 400:
            raise await self.upstream_error(resp)
        if not call.stream:
            raw = await self.read_body(resp)
            read = gemini_answer(raw)  # only the usage and the finish reasons are decoded
            if read is not None:
                if not read.reasons() <= _FINISHED:  # a failure (or a reason unknown here): looked at closely
                    self.raise_failed({"candidates": read.finishes()})
                return Reply(body=raw, usage=read.usage(), first_byte_at=time.monotonic(), native=True)
            try:  # not shaped as expected: read whole, to say what is wrong with it
                answer = orjson.loads(raw)
            except orjson.JSONDecodeError:
                raise Unavailable("upstream gemini returned a body that is not JSON", status=502) from None
            if not isinstance(answer, dict):
                raise Unavailable("upstream gemini returned an unexpected body", status=502)
            self.raise_failed(answer)
            return Reply(body=raw, usage=usage_of(answer.get("usageMetadata")), first_byte_at=time.monotonic(),
                         native=True)
        upstream = UpstreamBody(resp, self.kind)
        events = sse_events(upstream)
        first = await peek(upstream, self._next_event(events), "an answer")
        self.raise_failed(first)  # nothing was sent yet: still an error a fallback can act on
        reply = Reply(media_type="text/event-stream", first_byte_at=time.monotonic(), native=True)
        reply.stream = closing(upstream, self._relay(events, first, reply))
        return reply

    async def _relay(self, events: AsyncIterator[tuple[str, bytes]], first: dict[str, Any],
                     reply: Reply) -> AsyncIterator[bytes]:
        """Gemini's events as they came; an event is parsed only when it may be an error, and the last that
        carries a usage once the stream ended: until then the reply has none (each event's usage counts the
        output so far, so a stream cut before its end is billed on the text of the events held as they went by,
        ``providers/delivered.py``)."""
        delivered = delivered_of(reply)
        gemini_parts(delivered, first)
        held = delivered.hold(gemini_events)
        first_usage = usage_of(first.get("usageMetadata"))
        yield sse_frame(orjson.dumps(first))
        last_usage: bytes | None = None
        async for _, data in events:
            held.append(data)
            if len(held) > HOLD_EVENTS:
                delivered.fold()
            if data.find(b'"error"', 0, 16) >= 0:
                event = orjson.loads(data)
                if isinstance(event, list) and event:
                    event = event[0]
                if isinstance(event, dict) and isinstance(event.get("error"), dict):
                    raise self.error_from(int(event["error"].get("code") or 500), event["error"], {})
            if data.find(b'"usageMetadata"') >= 0:
                last_usage = data
            yield sse_frame(data)
        if last_usage is not None:
            event = orjson.loads(last_usage)
            reply.usage = usage_of(event.get("usageMetadata")) if isinstance(event, dict) else first_usage
        else:
            reply.usage = first_usage

    async def _stream(self, call: Call, resp: Response) -> Reply:
        """Read the first event before answering, so that a block or an error can still be retried."""
        upstream = UpstreamBody(resp, self.kind)
        events = sse_events(upstream)
        first = await peek(upstream, self._first_event(events), "an answer")
        reply = Reply(media_type="text/event-stream", first_byte_at=time.monotonic())
        reply.stream = closing(upstream, self._translate(call, events, first, reply))
        return reply

    async def _first_event(self, events: AsyncIterator[tuple[str, bytes]]) -> dict[str, Any] | None:
        first = await self._next_event(events)
        reason = blocked_reason(first) if first is not None else None
        if reason:
            raise ContentFiltered(f"the prompt was blocked by Gemini's safety filters ({reason})", param="messages")
        if first is not None:
            self.raise_failed(first)  # nothing was sent yet: still an error a fallback can act on
        return first

    async def _next_event(self, events: AsyncIterator[tuple[str, bytes]]) -> dict[str, Any] | None:
        async for _, data in events:
            try:
                event = orjson.loads(data)
            except orjson.JSONDecodeError:
                raise Unavailable("upstream gemini sent a stream event that is not JSON", status=502) from None
            if isinstance(event, list) and event:  # Vertex wraps in-stream errors in a list
                event = event[0]
            if not isinstance(event, dict):
                continue
            if isinstance(event.get("error"), dict):
                raise self.error_from(int(event["error"].get("code") or 500), event["error"], {})
            return event
        return None

    async def _translate(self, call: Call, events: AsyncIterator[tuple[str, bytes]], first: dict[str, Any],
                         reply: Reply) -> AsyncIterator[bytes]:
        # like OpenAI's own answers: the upstream's model, and a completion id of our own
        cid, created, name = completion_id(), int(time.time()), str(first.get("modelVersion") or call.model)
        delivered = delivered_of(reply)
        writers: dict[int, ChunkWriter] = {}
        calls: dict[int, int] = {}  # candidate index -> function calls seen
        # candidate index -> finish_reason so far: sent once, at the end, the last one given winning (a chunk
        # that is not the last may already carry one, and a later chunk another, e.g. RECITATION)
        finished: dict[int, str] = {}
        usage: Usage | None = None
        event: dict[str, Any] | None = first
        while event is not None:
            usage = usage_of(event.get("usageMetadata")) or usage
            out = []
            for cand in event.get("candidates") or []:
                if not isinstance(cand, dict):
                    continue
                k = int(cand.get("index") or 0)
                w = writers.get(k)
                if w is None:
                    w = writers[k] = ChunkWriter(name, id=cid, created=created, index=k, delivered=delivered)
                parts = (cand.get("content") or {}).get("parts")
                text, tool_calls = read_parts(parts, calls.get(k, 0), f"{first.get('responseId')}/{k}")
                thought_chars(delivered, parts)
                out.append(w.text(text))
                for tc in tool_calls:
                    key = str(calls.get(k, 0))
                    calls[k] = calls.get(k, 0) + 1
                    extra = {"extra_content": tc["extra_content"]} if "extra_content" in tc else None
                    out.append(w.tool_start(key, tc["id"], tc["function"]["name"], extra))
                    out.append(w.tool_args(key, tc["function"]["arguments"]))
                if cand.get("finishReason"):
                    self.raise_failed({"candidates": [cand]})
                    finished[k] = finish_reason(cand["finishReason"], False)
            if blocked_reason(event):
                writers.setdefault(0, ChunkWriter(name, id=cid, created=created, delivered=delivered))
                finished[0] = "content_filter"
            chunk = b"".join(out)
            if chunk:
                yield chunk
            event = await self._next_event(events)
        if not finished:
            raise Unavailable("upstream gemini stream ended before the answer was complete", status=502)
        ends = []
        for k, w in sorted(writers.items()):
            reason = finished.get(k, "stop")
            ends.append(w.finish("tool_calls" if reason == "stop" and calls.get(k) else reason))
        yield b"".join(ends)
        reply.usage = usage
        if call.wants_usage:
            yield ChunkWriter(name, id=cid, created=created, include_usage=True).usage(usage)
        yield SSE_DONE

    # -- embeddings --------------------------------------------------------------------------------

    async def embeddings(self, call: Call) -> Reply:
        size = self.config.embedding_batch_size or BATCH_LIMIT
        return await embed_in_batches(call, size, self._embed_batch)

    async def _embed_batch(self, call: Call) -> Reply:
        """One ``batchEmbedContents`` request for all of the call's inputs."""
        assert call.deployment is not None
        model = call.deployment.upstream_model(call.model)
        inputs = _embedding_inputs(call.body.get("input"))  # the API layer checked shapes and options
        options = self.embed_options(call.body)
        data = orjson.dumps({"requests": [self.embed_request(model, t, options) for t in inputs]})
        resp = await self.request(call.deadline, "POST", self.url(model, "batchEmbedContents"), headers=await self.headers(),
                                  data=data)
        if resp.status >= 400:
            raise await self.upstream_error(resp)
        vectors, tokens = _vectors(await self.read_json_object(resp), len(inputs))
        usage = Usage(prompt_tokens=tokens) if tokens is not None else Usage(known=False)
        body = embeddings_response(vectors, model, usage, call.body.get("encoding_format") or "float")
        return Reply(body=orjson.dumps(body), usage=usage, first_byte_at=time.monotonic())

    def embed_options(self, body: dict[str, Any]) -> dict[str, Any]:
        """``dimensions`` → outputDimensionality; ``input_type`` (the body's, else the deployment's) → taskType."""
        options: dict[str, Any] = {}
        input_type = body.get("input_type", self.config.input_type)
        if input_type is not None:
            task = TASK_TYPES.get(str(input_type).lower()) if isinstance(input_type, str) else None
            if task is None:
                raise BadRequest(f"input_type must be one of {', '.join(sorted(TASK_TYPES))}", param="input_type")
            options["taskType"] = task
        if body.get("dimensions") is not None:
            options["outputDimensionality"] = body["dimensions"]
        return options

    # -- errors ------------------------------------------------------------------------------------

    def raise_failed(self, answer: dict[str, Any]) -> None:
        """Raise when a candidate's generation failed (finishReason OTHER and kin): never a 200 that looks
        like an empty success. A retry or a fallback may serve the call; a request fault is a 400."""
        for cand in answer.get("candidates") or ():
            failure = finish_failure(cand) if isinstance(cand, dict) else None
            if failure is None:
                continue
            reason, detail = failure
            message = f"upstream gemini stopped without finishing the answer ({reason})"
            if detail:
                message += ": " + detail
            if reason in REQUEST_FINISH:
                raise BadRequest(message, param="messages")
            raise Unavailable(message, status=502, code="upstream_generation_failed")

    async def upstream_error(self, resp: Response) -> GatewayError:
        raw = await self.error_body(resp)
        return self.error_from(resp.status, error_json(raw), resp.headers)

    def error_from(self, status: int, err: dict[str, Any], headers: Any) -> GatewayError:
        """Google's ``{"code","message","status","details"}`` as a gateway error (secrets redacted)."""
        message = str(err.get("message") or f"upstream returned HTTP {status}")
        name = str(err.get("status") or "")
        found = err.get("details")
        details: list[Any] = found if isinstance(found, list) else []
        reasons = {d.get("reason") for d in details if isinstance(d, dict)}
        if "API_KEY_INVALID" in reasons or status == 401 or name == "UNAUTHENTICATED":
            return AuthError(f"upstream gemini rejected the credentials: {message}", code="upstream_auth_failed")
        if status == 400 and says_context_too_long(message):
            return ContextTooLong(message, param="messages")
        if status < 400:  # an in-stream error without an HTTP status
            status = _STATUS_CODES.get(name, 500)
        retry = _retry_delay(details)
        if retry is None:
            retry = retry_after_seconds(headers)
        return from_status(status, message, retry_after=retry)


def _retry_delay(details: list[Any]) -> float | None:
    """``google.rpc.RetryInfo.retryDelay`` (a Duration such as ``"37s"`` or ``"1.5s"``) in seconds."""
    for d in details:
        if isinstance(d, dict) and str(d.get("@type", "")).endswith("google.rpc.RetryInfo"):
            delay = d.get("retryDelay")
            if isinstance(delay, str) and delay.endswith("s"):
                try:
                    return max(0.0, float(delay[:-1]))
                except ValueError:
                    return None
    return None


def _embedding_inputs(value: Any) -> list[str]:
    inputs = [value] if isinstance(value, str) else value
    if not isinstance(inputs, list) or not inputs or not all(isinstance(v, str) for v in inputs):
        raise Unsupported("Gemini embeds text only; token arrays are not supported", param="input")
    return inputs


def _vectors(data: dict[str, Any], expected: int) -> tuple[list[list[float]], int | None]:
    items = data.get("embeddings")
    if not isinstance(items, list) or len(items) != expected:
        raise Unavailable("upstream gemini sent a different number of embeddings than asked", status=502)
    vectors = [list(e.get("values") or []) for e in items if isinstance(e, dict)]
    meta = data.get("usageMetadata")
    tokens = int(meta.get("promptTokenCount") or 0) if isinstance(meta, dict) else None
    return vectors, tokens


class VertexProvider(GoogleAuth, GeminiProvider):
    """Gemini on Vertex AI: ``/v1/projects/{project}/locations/{location}/publishers/google/models/{m}``."""

    config: VertexDeployment

    def model_prefix(self) -> str:
        return self.publisher_url("google", "us-central1", self.config.api_version or "v1")

    def auth(self) -> dict[str, str]:
        return self.google_auth("vertex")

    async def headers(self) -> dict[str, str]:
        return await self.with_token(self._headers)

    lists_models = False

    async def list_models(self, deadline: float) -> list[ListedModel]:
        """Vertex AI lists publisher models through another API (Model Garden), not read here."""
        return await Provider.list_models(self, deadline)

    def embed_request(self, model: str, text: str, options: dict[str, Any]) -> dict[str, Any]:
        req: dict[str, Any] = {"content": {"parts": [{"text": text}]}}
        if options:
            req["embedContentConfig"] = options  # Vertex nests the options
        return req
