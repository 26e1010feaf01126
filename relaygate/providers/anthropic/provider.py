"""Anthropic's Messages API: OpenAI chat requests translated to Messages and back; streams translated
event by event into OpenAI chunks.

The ``anthropic-version`` sent upstream is chosen per deployment (``api_version``). The default is
``2023-06-01``: OpenAI-format clients routinely send ``temperature``/``top_p``, which that version honours
and ``2026-10-21`` rejects. With ``2026-10-21`` the key goes as ``Authorization: Bearer`` and those
parameters are dropped, named in the ``x-relaygate-dropped-params`` response header.

Calls from ``/v1/messages`` carry the client's own Anthropic request; it is sent as it is and the answer
relayed untouched (``Call.anthropic_request`` / ``Reply.anthropic_native``).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import orjson

from relaygate.config import AnthropicFields
from relaygate.core.call import Call, Reply, Route, Usage, delivered_of
from relaygate.core.errors import (
    ContextTooLong,
    GatewayError,
    Unavailable,
    from_status,
    says_context_too_long,
)
from relaygate.providers.anthropic.relay import await_start, relay, usage_of
from relaygate.providers.anthropic.request import to_messages_request
from relaygate.providers.anthropic.wire import (
    API_VERSIONS,
    ERROR_TYPES,
    REJECTED_PARAMS,
    STOP_TO_FINISH,
    VERSION_2023,
    bearer_auth,
)
from relaygate.providers.base import Provider, error_json, retry_after_seconds
from relaygate.providers.listing import ListedModel, anthropic_after, anthropic_models, read_pages
from relaygate.providers.native_answers import messages_answer
from relaygate.providers.openai_format import (
    ADJUSTED_HEADER,
    DROPPED_HEADER,
    ChunkWriter,
    completion,
    completion_id,
)
from relaygate.providers.streaming import UpstreamBody, closing, peek, sse_events
from relaygate.upstream import Response

DEFAULT_BASE = "https://api.anthropic.com"
LIST_PAGE = 1000  # models per page of GET /v1/models (its maximum)
DEFAULT_VERSION = VERSION_2023
DEFAULT_MAX_TOKENS = 4096
_STATUS_OF_TYPE = {kind: status for status, kind in ERROR_TYPES.items()}
_NATIVE_DROP = ("stream",)
_NOT_COUNTED = frozenset(("max_tokens", "stream", "stop_sequences", "temperature", "top_p", "top_k", "metadata"))


def to_completion(data: dict[str, Any], usage: Usage | None) -> dict[str, Any]:
    """A whole Anthropic Message as an OpenAI ``chat.completion``."""
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    thoughts: list[dict[str, Any]] = []
    for b in data.get("content") or ():
        kind = b.get("type")
        if kind == "text":
            texts.append(b.get("text") or "")
        elif kind == "tool_use":
            calls.append({"id": b.get("id"), "type": "function", "function": {
                "name": b.get("name"), "arguments": orjson.dumps(b.get("input") or {}).decode()}})
        elif kind in ("thinking", "redacted_thinking"):
            thoughts.append(b)
    body = completion(id=completion_id(), model=str(data.get("model") or ""),
                      content="".join(texts) if texts else None, tool_calls=calls,
                      finish_reason=STOP_TO_FINISH.get(data.get("stop_reason") or "end_turn", "stop"),
                      usage=usage)
    if thoughts:
        # the de facto OpenAI-format fields: reasoning text to show, and the signed blocks to send back
        message = body["choices"][0]["message"]
        message["reasoning_content"] = "".join(b.get("thinking") or "" for b in thoughts)
        message["thinking_blocks"] = thoughts
    return body


class AnthropicProvider(Provider):
    """``POST {api_base}/v1/messages`` with ``anthropic-version`` and the key in the header it wants."""

    config: AnthropicFields
    routes: ClassVar[frozenset[Route]] = frozenset({Route.CHAT, Route.COUNT_TOKENS})
    relays_messages = True
    cache_control = True
    versions: tuple[str, ...] = API_VERSIONS
    default_version = DEFAULT_VERSION

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        version = self.config.api_version or self.default_version
        if version not in self.versions:
            raise ValueError(f"api_version {version!r} is not an anthropic-version relaygate knows; "
                             f"use one of {', '.join(self.versions)}")
        self.version = version
        self.rejected = REJECTED_PARAMS[version]
        # what a native body leaves out: relaygate's own field and what this version rejects, and for a
        # count what counting takes no part in
        self._native_drop = (*_NATIVE_DROP, "provider", *self.rejected)
        self._count_drop = (*_NOT_COUNTED, "provider", *self.rejected)
        self.max_tokens = self.config.max_tokens or DEFAULT_MAX_TOKENS
        self.url = self.messages_url()
        self._headers = self.static_headers()

    def messages_url(self) -> str:
        base = self.config.api_base or DEFAULT_BASE
        return base + ("/messages" if base.endswith("/v1") else "/v1/messages")

    def static_headers(self) -> dict[str, str]:
        headers = {**self.config.headers, "content-type": "application/json", "anthropic-version": self.version}
        key = self.config.api_key.get_secret_value() if self.config.api_key is not None else ""
        if key:
            if bearer_auth(self.version):
                headers["authorization"] = "Bearer " + key
            else:
                headers["x-api-key"] = key
        return headers

    # -- the upstream endpoint (Vertex AI overrides these) -----------------------------------------

    def endpoint(self, model: str, *, count: bool, stream: bool) -> str:
        return self.url + "/count_tokens" if count else self.url

    def outgoing(self, body: dict[str, Any], *, count: bool) -> dict[str, Any]:
        """The body as this endpoint wants it."""
        return body

    async def auth_headers(self) -> dict[str, str]:
        return self._headers

    async def post(self, deadline: float, body: dict[str, Any], *, count: bool = False,
                   extra: dict[str, str] | None = None) -> Response:
        """POST a Messages (or count_tokens) body; an error answer is raised as a gateway error."""
        url = self.endpoint(str(body.get("model")), count=count, stream=bool(body.get("stream")))
        headers = await self.auth_headers()
        resp = await self.request(deadline, "POST", url, headers={**headers, **extra} if extra else self.encoded(headers),
                                  data=orjson.dumps(self.outgoing(body, count=count)))
        if resp.status >= 400:
            raise await self.upstream_error(resp)
        return resp

    async def probe(self, deadline: float) -> None:
        """``count_tokens`` on the deployment's model: free, and fails the way a real call would."""
        model = self.config.model
        if model == "*":
            return
        resp = await self.post(deadline, {"model": model, "messages": [{"role": "user", "content": "ping"}]},
                               count=True)
        resp.release()

    lists_models = True

    async def list_models(self, deadline: float) -> list[ListedModel]:
        """``GET /v1/models``, page by page (``after_id``)."""
        base = self.config.api_base or DEFAULT_BASE
        url = base + ("/models" if base.endswith("/v1") else "/v1/models") + f"?limit={LIST_PAGE}"
        headers = {k: v for k, v in (await self.auth_headers()).items() if k != "content-type"}
        return await read_pages(lambda u: self.get_json(deadline, u, headers, self.upstream_error), url,
                                anthropic_models, anthropic_after)

    async def count_tokens(self, call: Call) -> Reply:
        """Anthropic's free token count for the translated request (no output, so no cost)."""
        assert call.deployment is not None
        model = call.deployment.upstream_model(call.model)
        native = call.anthropic_request
        if native is not None:
            body = self._native_body(native, model, self._count_drop)
        else:
            t = to_messages_request(call.body, model, default_max_tokens=1, rejected=self.rejected, stream=False)
            body = {k: v for k, v in t.body.items() if k not in _NOT_COUNTED}
        resp = await self.post(call.deadline, body, count=True)
        data = await self.read_json_object(resp)
        return Reply(body=orjson.dumps({"input_tokens": int(data.get("input_tokens") or 0)}),
                     first_byte_at=time.monotonic())

    async def chat(self, call: Call) -> Reply:
        assert call.deployment is not None
        model = call.deployment.upstream_model(call.model)
        native = call.anthropic_request
        if native is not None:
            return await self._native(call, native, model)
        t = to_messages_request(call.body, model, default_max_tokens=self.max_tokens, rejected=self.rejected,
                                stream=call.stream)
        headers: dict[str, str] = {}
        if t.dropped:
            headers[DROPPED_HEADER] = ",".join(t.dropped)
        if t.adjusted:
            headers[ADJUSTED_HEADER] = ",".join(t.adjusted)
        resp = await self.post(call.deadline, t.body)
        if call.stream and resp.headers.get("content-type", "").startswith("text/event-stream"):
            return await self._start_stream(resp, call, headers)
        data = await self.read_json_object(resp)
        if data.get("type") == "error":
            raise self.error_of_event(data)
        usage = usage_of(data.get("usage"))
        body = to_completion(data, usage)
        if call.stream:  # asked to stream but got a whole body: send it as one short stream
            return self._replay(body, call, headers, usage)
        return Reply(body=orjson.dumps(body), headers=headers, usage=usage, first_byte_at=time.monotonic())

    # -- native: an Anthropic client's own request (from /v1/messages) -------------------------------

    def _native_body(self, native: dict[str, Any], model: str, drop: tuple[str, ...]) -> dict[str, Any]:
        """The client's body with ``model`` set and the fields in ``drop`` left out (in its order: a copy
        and a few deletions cost a third of a comprehension over its fields)."""
        body = native.copy()
        body["model"] = model
        for k in drop:
            if k in body:
                del body[k]
        return body

    async def _native(self, call: Call, native: dict[str, Any], model: str) -> Reply:
        """Send the client's Messages body as it is (model rewritten, parameters this version rejects left
        out) and relay Anthropic's answer untouched: thinking, citations, server tools all survive."""
        body = self._native_body(native, model, self._native_drop)
        if call.stream:
            body["stream"] = True
        headers: dict[str, str] = {}
        dropped = [k for k in self.rejected if native.get(k) is not None]
        if dropped:
            headers[DROPPED_HEADER] = ",".join(dropped)
        beta = call.headers.get("anthropic-beta")
        # a feature flag of the client's request (e.g. a longer context), not a destination
        resp = await self.post(call.deadline, body, extra={"anthropic-beta": beta} if beta else None)
        if call.stream:
            if not resp.headers.get("content-type", "").startswith("text/event-stream"):
                resp.close()
                raise Unavailable("upstream anthropic answered a stream request with a whole body", status=502)
            upstream, events, start, raw = await self._open_stream(resp)
            reply = Reply(media_type="text/event-stream", headers=headers, first_byte_at=time.monotonic())
            reply.stream = closing(upstream, relay(events, start, raw, reply, self.error_of_event, self.kind))
        else:
            data = await self.read_body(resp)
            read = messages_answer(data)  # only the type and the usage are decoded
            if read is not None and read.type == "message":
                usage = read.tokens()
            else:  # not shaped as expected, or no message: read whole
                try:
                    message = orjson.loads(data)
                except orjson.JSONDecodeError:
                    raise Unavailable("upstream anthropic returned a body that is not JSON", status=502) from None
                if not isinstance(message, dict) or message.get("type") != "message":
                    raise self.error_of_event(message if isinstance(message, dict) else {})
                usage = usage_of(message.get("usage"))
            reply = Reply(body=data, headers=headers, usage=usage, first_byte_at=time.monotonic())
        reply.anthropic_native = True
        return reply

    # -- streaming --------------------------------------------------------------------------------

    async def _open_stream(self, resp: Response) -> tuple[
            UpstreamBody, AsyncIterator[tuple[str, bytes]], dict[str, Any], bytes]:
        """The answer's events, once ``message_start`` came (its message, and its raw data): an error until
        then can still be retried."""
        upstream = UpstreamBody(resp, self.kind)
        events = sse_events(upstream, "message_stop")
        start, raw = await peek(upstream, await_start(events, self.error_of_event), "message_start")
        return upstream, events, start, raw

    async def _start_stream(self, resp: Response, call: Call, headers: dict[str, str]) -> Reply:
        upstream, events, start, _ = await self._open_stream(resp)
        reply = Reply(media_type="text/event-stream", headers=headers, first_byte_at=time.monotonic())
        writer = ChunkWriter(str(start.get("model") or call.model), include_usage=call.wants_usage,
                             delivered=delivered_of(reply))
        reply.stream = closing(upstream, self._translate(events, start, writer, reply))
        return reply

    async def _translate(self, events: AsyncIterator[tuple[str, bytes]], start: dict[str, Any], w: ChunkWriter,
                         reply: Reply) -> AsyncIterator[bytes]:
        """Anthropic events -> OpenAI chunks, one event at a time (each event's JSON parsed once)."""
        usage: dict[str, Any] = dict(start.get("usage") or {})
        tools: set[int] = set()  # indexes of tool_use blocks
        # tool_use blocks whose input came whole in content_block_start (calls made from code execution):
        # sent at the block's end unless input_json_delta events gave it after all
        given: dict[int, Any] = {}
        thinking: dict[int, dict[str, Any]] = {}  # index -> the thinking block being streamed
        yield w.role()
        async for event, data in events:
            if event == "content_block_delta":
                ev = orjson.loads(data)
                delta = ev["delta"]
                kind = delta.get("type")
                if kind == "text_delta":
                    out = w.text(delta.get("text") or "")
                elif kind == "input_json_delta" and ev["index"] in tools:
                    if delta.get("partial_json"):
                        given.pop(ev["index"], None)
                    out = w.tool_args(str(ev["index"]), delta.get("partial_json") or "")
                elif kind == "thinking_delta" and ev["index"] in thinking:
                    piece = delta.get("thinking") or ""
                    thinking[ev["index"]]["thinking"] += piece
                    out = w.delta({"reasoning_content": piece}) if piece else b""
                elif kind == "signature_delta" and ev["index"] in thinking:
                    thinking[ev["index"]]["signature"] = delta.get("signature") or ""
                    continue
                else:
                    continue  # citations: no OpenAI counterpart
                if out:
                    yield out
            elif event == "content_block_start":
                ev = orjson.loads(data)
                block = ev["content_block"]
                if block.get("type") == "tool_use":
                    tools.add(ev["index"])
                    if block.get("input"):
                        given[ev["index"]] = block["input"]
                    yield w.tool_start(str(ev["index"]), str(block.get("id")), str(block.get("name")))
                elif block.get("type") == "text" and block.get("text"):
                    yield w.text(block["text"])
                elif block.get("type") == "thinking":
                    thinking[ev["index"]] = {"type": "thinking", "thinking": block.get("thinking") or "",
                                             "signature": block.get("signature") or ""}
                elif block.get("type") == "redacted_thinking":
                    yield w.thinking_block(block)
            elif event == "content_block_stop" and (thinking or tools):
                index = orjson.loads(data)["index"]
                done = thinking.pop(index, None)
                if done is not None:  # the whole signed block, for the client to send back
                    yield w.thinking_block(done)
                elif index in tools:
                    whole = given.pop(index, None)
                    out = w.tool_args(str(index), orjson.dumps(whole).decode()) if whole else b""
                    out += w.tool_end(str(index))
                    if out:
                        yield out
            elif event == "message_delta":
                ev = orjson.loads(data)
                usage.update(ev.get("usage") or {})
                reply.usage = usage_of(usage)
                stop = (ev.get("delta") or {}).get("stop_reason") or "end_turn"
                yield w.finish(STOP_TO_FINISH.get(stop, "stop")) + w.usage(reply.usage)
            elif event == "message_stop":
                yield w.done()
                return
            elif event == "error":
                raise self.error_of_event(orjson.loads(data))
        raise Unavailable("upstream anthropic stream ended before message_stop", status=502)

    def _replay(self, body: dict[str, Any], call: Call, headers: dict[str, str], usage: Usage | None) -> Reply:
        msg = body["choices"][0]["message"]
        w = ChunkWriter(body["model"], body["id"], include_usage=call.wants_usage)
        parts = [w.role(), w.text(msg["content"] or "")]
        for i, tc in enumerate(msg.get("tool_calls") or ()):
            parts.append(w.tool_start(str(i), tc["id"], tc["function"]["name"]))
            parts.append(w.tool_args(str(i), tc["function"]["arguments"]))
        parts += [w.finish(body["choices"][0]["finish_reason"]), w.usage(usage), w.done()]

        async def once() -> AsyncIterator[bytes]:
            yield b"".join(parts)

        return Reply(media_type="text/event-stream", stream=once(), headers=headers, usage=usage,
                     first_byte_at=time.monotonic())

    # -- errors -----------------------------------------------------------------------------------

    async def upstream_error(self, resp: Response) -> GatewayError:
        """Map an HTTP error answer; messages are redacted of secrets."""
        err = error_json(await self.error_body(resp))
        return self.map_error(resp.status, err.get("type"), err.get("message"), resp.headers)

    def error_of_event(self, data: dict[str, Any]) -> GatewayError:
        """An ``error`` event (or error body) inside a 200 answer."""
        err = data.get("error")
        if not isinstance(err, dict):
            err = {}
        kind = err.get("type")
        # an error type Anthropic does not have (or none: a body that is no message) is no answer: a 502
        return self.map_error(_STATUS_OF_TYPE.get(kind, 502) if isinstance(kind, str) else 502, kind,
                              err.get("message"), None)

    def map_error(self, status: int, kind: Any, message: Any, headers: Any) -> GatewayError:
        text = str(message or f"upstream anthropic returned HTTP {status}")
        if kind == "overloaded_error" or status == 529:
            return Unavailable(text, status=503, code="overloaded")
        if status == 400 or kind == "invalid_request_error":
            if says_context_too_long(text):
                return ContextTooLong(text, param="messages")
        if kind == "rate_limit_error":
            status = 429
        return from_status(status, text, retry_after=retry_after_seconds(headers) if headers is not None else None)
