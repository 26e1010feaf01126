"""AWS Bedrock Runtime: chat via Converse / ConverseStream, embeddings via InvokeModel (Titan text embeddings);
a Messages request (``/v1/messages``, InvokeModel's Anthropic body) for Claude via InvokeModel, as it came.

The deployment's ``model`` is the Bedrock model id or inference profile (``anthropic.claude-…-v1:0``,
``us.anthropic.…``, an ARN). Requests are signed with SigV4 (providers/aws_sigv4.py); streams arrive in AWS
event-stream framing and are translated event by event.
"""

from __future__ import annotations

import base64
import binascii
import functools
import time
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import orjson

from relaygate.config import BedrockDeployment
from relaygate.core.call import Call, Dialect, NativeRequest, Reply, Route, Usage, delivered_of
from relaygate.core.errors import BadRequest, GatewayError, Unavailable, Unsupported
from relaygate.providers.anthropic.relay import await_start, relay
from relaygate.providers.anthropic.relay import usage_of as anthropic_usage
from relaygate.providers.aws.base import AwsProvider, stream_reply
from relaygate.providers.aws.bedrock_format import (
    ANTHROPIC_VERSION,
    StreamTranslator,
    from_converse,
    to_converse,
    usage_of,
)
from relaygate.providers.aws.eventstream import (
    EVENTSTREAM,
    EventMessage,
    EventStreamDecoder,
    EventStreamError,
)
from relaygate.providers.base import model_segment
from relaygate.providers.batching import embed_in_batches
from relaygate.providers.delivered import HOLD_EVENTS, bedrock_deltas, type_of
from relaygate.providers.listing import ListedModel, bedrock_models
from relaygate.providers.native_answers import converse_answer, messages_answer
from relaygate.providers.openai_format import ChunkWriter, embeddings_response
from relaygate.providers.streaming import UpstreamBody, closing, peek


@functools.lru_cache(maxsize=1024)  # a pure function of the deployments' models: quote() costs ~20 µs a call
def model_path(model_id: str, action: str) -> str:
    """``/model/{modelId}/{action}`` with the id encoded as botocore encodes a URI label. An ARN's ``/`` is
    part of the id (an inference profile's): encoded as %2F, never a separator, each part a name."""
    if model_id.startswith("arn:"):
        return f"/model/{'%2F'.join(model_segment(p) for p in model_id.split('/'))}/{action}"
    return f"/model/{model_segment(model_id)}/{action}"


_NOT_INVOKE_FIELDS = frozenset(("model", "stream", "provider"))  # a Messages request's fields InvokeModel's URL says


def takes_messages(model_id: str) -> bool:
    """Whether the model id names Claude (a foundation model, a cross-region inference profile, or an ARN of
    either), whose InvokeModel body is Anthropic's Messages request. An application inference profile's ARN
    does not say: it is served through Converse."""
    return "anthropic.claude" in model_id


class BedrockProvider(AwsProvider):
    """Bedrock Runtime (``provider: bedrock``)."""

    config: BedrockDeployment
    routes: ClassVar[frozenset[Route]] = frozenset({Route.CHAT, Route.EMBEDDINGS})
    cache_control = True  # translated to Converse cachePoint blocks
    relays: ClassVar[Dialect | None] = Dialect.BEDROCK
    endpoint_prefix = "bedrock-runtime"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        gid, version = self.config.guardrail_id, self.config.guardrail_version
        if bool(gid) != bool(version):
            raise ValueError("guardrail_id and guardrail_version must be given together")
        self.guardrail = {"guardrailIdentifier": gid, "guardrailVersion": version} if gid else None

    async def probe(self, deadline: float) -> None:
        """CountTokens on the deployment's model: free, and signed and routed like a real call. A model that
        cannot count tokens answers 400, which still proves the endpoint and the credentials work."""
        model = self.config.model
        if model == "*":
            return
        body = {"input": {"converse": {"messages": [{"role": "user", "content": [{"text": "ping"}]}]}}}
        try:
            resp = await self.post_json(deadline, model_path(model, "count-tokens"), body)
        except BadRequest:
            return
        resp.release()

    lists_models = True

    async def list_models(self, deadline: float) -> list[ListedModel]:
        """ListFoundationModels: ``GET /foundation-models`` on the Bedrock control plane (``bedrock.{region}``,
        or ``api_base`` when one is configured), signed like a call (or with the Bedrock API key)."""
        if self.config.api_base:
            base, host, path = self.base, self.host, self.base_path + "/foundation-models"
        else:
            host = f"bedrock.{self.region}.amazonaws.com"
            base, path = "https://" + host, "/foundation-models"
        headers = {k: v for k, v in self._headers.items() if k != "content-type"} | {"accept": "application/json"}
        if self.credentials is not None:
            headers = (await self._signer()).sign("GET", host, path, b"", headers)
        url = base + "/foundation-models" if self.config.api_base else base + path
        return bedrock_models(await self.get_json(deadline, url, headers, self.aws_error))

    async def chat(self, call: Call) -> Reply:
        assert call.deployment is not None
        model = call.deployment.upstream_model(call.model)
        if call.native is not None and call.native.dialect is Dialect.BEDROCK:
            return await self._native(call, call.native, model)
        if call.anthropic_request is not None and takes_messages(model):
            return await self._messages(call, call.anthropic_request, model)
        request = to_converse(call.body)
        if self.guardrail is not None:
            request["guardrailConfig"] = self.guardrail
        if not call.stream:
            resp = await self.post_json(call.deadline, model_path(model, "converse"), request)
            data = await self.read_json_object(resp)
            body, usage = from_converse(data, call.model)
            return Reply(body=orjson.dumps(body), usage=usage, first_byte_at=time.monotonic())
        resp = await self.post_json(call.deadline, model_path(model, "converse-stream"), request,
                                    accept=EVENTSTREAM)
        upstream = UpstreamBody(resp, self.kind)
        events = self.events(upstream)
        first = await peek(upstream, anext(events, None))
        reply = stream_reply()
        translator = StreamTranslator(ChunkWriter(call.model, include_usage=call.wants_usage,
                                                  delivered=delivered_of(reply)))
        reply.stream = closing(upstream, self._relay(events, first, translator, reply))
        return reply

    async def _relay(self, events: AsyncIterator[EventMessage], first: EventMessage, translator: StreamTranslator,
                     reply: Reply) -> AsyncIterator[bytes]:
        out = translator.feed(first.event_type, first.payload)
        if out:
            yield out
        async for msg in events:
            out = translator.feed(msg.event_type, msg.payload)
            if translator.usage is not None:
                reply.usage = translator.usage
            if out:
                yield out
        if not translator.stopped:
            raise Unavailable("Bedrock's stream ended without messageStop", status=502)
        yield translator.writer.done()

    # -- native: a Bedrock client's own Converse request (api/bedrock) ---------------------------------

    async def _native(self, call: Call, sent: NativeRequest, model: str) -> Reply:
        """Send the client's Converse body (``Call.native``) as it is, re-signed with this deployment's credentials, and relay
        Bedrock's answer untouched (reasoning, citations, guardrail traces all survive); read only for usage."""
        request = native = sent.body
        if self.guardrail is not None and "guardrailConfig" not in native:
            request = {**native, "guardrailConfig": self.guardrail}
        cap = call.output_cap
        if cap is not None:
            cfg = native.get("inferenceConfig")
            if not isinstance(cfg, dict) or type(cfg.get("maxTokens")) is not int:
                request = {**request, "inferenceConfig": {**(cfg if isinstance(cfg, dict) else {}), "maxTokens": cap}}
        # unchanged, the body goes as the gateway serialised it when it read it (not again; their SHA-256 known
        # when they are the client's very bytes and the client's signature was checked)
        as_sent = (sent.raw, sent.sha256) if request is native and sent.raw is not None else None
        if not call.stream:
            resp = await self.post_json(call.deadline, model_path(model, "converse"), request, raw=as_sent)
            raw = await self.read_body(resp)
            read = converse_answer(raw)  # only the usage is decoded
            if read is not None:
                # (built with two fields, the rest set: the dataclass's keywords cost ~2k instructions more)
                reply = Reply(200, raw)
                reply.usage, reply.first_byte_at, reply.native = read.tokens(), time.monotonic(), True
                return reply
            parsed = self.json_object(raw)  # not shaped as expected: read whole (a 502 when it is not an object)
            return Reply(body=raw, usage=usage_of(parsed.get("usage")), first_byte_at=time.monotonic(),
                         native=True)
        resp = await self.post_json(call.deadline, model_path(model, "converse-stream"), request,
                                    accept=EVENTSTREAM, raw=as_sent)
        upstream = UpstreamBody(resp, self.kind)
        reply = stream_reply()
        reply.native = True
        reply.media_type = EVENTSTREAM  # whole binary messages: the scrubber holds none back
        frames = self._raw(upstream, reply)
        first = await peek(upstream, anext(frames, None))
        reply.stream = closing(upstream, frames, first)
        return reply

    async def _raw(self, upstream: UpstreamBody, reply: Reply) -> AsyncIterator[bytes]:
        """The event stream's bytes as they came, whole messages only (so that an error frame the route adds
        lands on a message boundary), decoded alongside: an exception frame is raised mapped after the
        messages before it (the route writes it again), metadata gives the usage."""
        decoder = EventStreamDecoder()
        held = b""  # the start of a message whose end has not come yet
        stopped = False
        delivered = delivered_of(reply)
        deltas = delivered.hold(bedrock_deltas)  # counted should the usage never come
        try:
            async for chunk in upstream:
                raw = held + chunk if held else chunk
                at = 0
                for msg in decoder.feed(chunk):
                    if msg.message_type != "event":
                        if at:
                            yield raw[:at]
                        raise self.stream_exception(msg)
                    if msg.event_type == "contentBlockDelta":
                        deltas.append(msg.payload)
                        if len(deltas) > HOLD_EVENTS:
                            delivered.fold()
                    elif msg.event_type == "metadata":
                        meta = orjson.loads(msg.payload)
                        reply.usage = usage_of(meta.get("usage")) if isinstance(meta, dict) else None
                    elif msg.event_type == "messageStop":
                        stopped = True
                    at += int.from_bytes(raw[at:at + 4], "big")  # the message's total length
                held = raw[at:]
                if at:
                    yield raw[:at] if held else raw
        except EventStreamError as e:
            raise Unavailable(f"upstream {self.kind} sent a malformed event stream ({e})", status=502) from None
        except orjson.JSONDecodeError:
            raise Unavailable(f"upstream {self.kind} sent a metadata event that is not JSON", status=502) from None
        if held or not stopped:
            raise Unavailable("Bedrock's stream ended without messageStop", status=502)

    # -- native: a Messages request (``/v1/messages``, or InvokeModel's Anthropic body) for Claude on Bedrock ---

    async def _messages(self, call: Call, native: dict[str, Any], model: str) -> Reply:
        """Send the client's Messages request as Claude's InvokeModel body (as it came: ``model`` and ``stream``
        are the URL's here, the ``anthropic-beta`` header is ``anthropic_beta``) and relay the Message, or its
        stream's events, untouched: thinking, citations, cache usage all survive; read only for the usage."""
        body = {k: v for k, v in native.items() if k not in _NOT_INVOKE_FIELDS}
        body["anthropic_version"] = ANTHROPIC_VERSION
        beta = call.headers.get("anthropic-beta")
        if beta:
            body["anthropic_beta"] = [b.strip() for b in beta.split(",") if b.strip()]
        if not call.stream:
            resp = await self.post_json(call.deadline, model_path(model, "invoke"), body)
            raw = await self.read_body(resp)
            read = messages_answer(raw)  # only the type and the usage are decoded
            if read is not None and read.type == "message":
                usage = read.tokens()
            else:  # shaped otherwise: read whole (a 502 when it is not an object, or no message)
                message = self.json_object(raw)
                if message.get("type") != "message":
                    raise Unavailable(f"upstream {self.kind} answered InvokeModel with no Anthropic message",
                                      status=502)
                usage = anthropic_usage(message.get("usage"))
            return Reply(body=raw, usage=usage, first_byte_at=time.monotonic(), anthropic_native=True)
        resp = await self.post_json(call.deadline, model_path(model, "invoke-with-response-stream"), body,
                                    accept=EVENTSTREAM)
        upstream = UpstreamBody(resp, self.kind)
        events = self._message_events(upstream)
        start, raw = await peek(upstream, await_start(events, self._claude_error), "message_start")
        reply = Reply(media_type="text/event-stream", first_byte_at=time.monotonic(), anthropic_native=True)
        reply.stream = closing(upstream, relay(events, start, raw, reply, self._claude_error, self.kind))
        return reply

    async def _message_events(self, upstream: UpstreamBody) -> AsyncIterator[tuple[str, bytes]]:
        """InvokeModelWithResponseStream's ``chunk`` events, each one Messages event: (its type, its JSON)."""
        async for msg in self.events(upstream):
            if msg.event_type != "chunk":
                continue
            try:
                data = base64.b64decode(orjson.loads(msg.payload)["bytes"], validate=True)
            except (orjson.JSONDecodeError, KeyError, TypeError, binascii.Error):
                raise Unavailable(f"upstream {self.kind} sent a chunk that is not a Messages event",
                                  status=502) from None
            yield type_of(data), data

    def _claude_error(self, data: dict[str, Any]) -> GatewayError:
        """An ``error`` event among Claude's (Bedrock sends its failures as exception frames): the stream failed."""
        err = data.get("error")
        message = err.get("message") if isinstance(err, dict) else None
        return Unavailable(str(message or f"upstream {self.kind} stream failed"), status=502)

    async def embeddings(self, call: Call) -> Reply:
        """OpenAI embeddings via InvokeModel with the Titan text embeddings (v2) body: one text per call."""
        assert call.deployment is not None
        model = call.deployment.upstream_model(call.model)
        if not model.startswith("amazon.titan-embed"):
            raise Unsupported(f"Bedrock embeddings are supported for Titan text embeddings models, not {model!r}",
                              param="model")
        texts = call.body.get("input")
        if not isinstance(texts, str) and not (isinstance(texts, list) and all(isinstance(t, str) for t in texts)):
            raise BadRequest("Bedrock embeds text: 'input' must be a string or an array of strings (token arrays "
                             "are not supported)", param="input")
        return await embed_in_batches(call, 1, self._embed_one)

    async def _embed_one(self, call: Call) -> Reply:
        assert call.deployment is not None
        body = call.body
        text = body["input"] if isinstance(body["input"], str) else body["input"][0]
        req: dict[str, Any] = {"inputText": text}
        if body.get("dimensions") is not None:
            req["dimensions"] = body["dimensions"]
        path = model_path(call.deployment.upstream_model(call.model), "invoke")
        data = await self.read_json_object(await self.post_json(call.deadline, path, req))
        vec = data.get("embedding") or (data.get("embeddingsByType") or {}).get("float")
        if not isinstance(vec, list):
            raise Unavailable("Bedrock's embedding response has no embedding", status=502)
        usage = Usage(prompt_tokens=int(data.get("inputTextTokenCount") or 0))
        out = embeddings_response([vec], call.model, usage, body.get("encoding_format") or "float")
        return Reply(body=orjson.dumps(out), usage=usage, first_byte_at=time.monotonic())
