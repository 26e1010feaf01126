"""A hostile upstream: it echoes everything it received (method, full URL with its host, every header, the
body) back in whatever it answers, in the wire format of the provider whose path was called.

It stands for a proxy or a misconfigured or hostile server between the gateway and a provider: the canary
tests (tests/test_scrub_canary.py) point every provider adapter at it and check that the gateway's keys and
the upstream's address reach no client, log line or request-log row. ``mode`` (set per test) says how it
answers: ``ok`` (a 200 answer whose text, model name and copied headers are the echo; streams end with an
error event carrying it too), or an HTTP status (its error body puts the echo in every field a provider's
error format has: message, code, param, type, status, details; its headers in every header a client could
be passed).
"""

from __future__ import annotations

import base64
import time
from typing import Any

import orjson
from aiohttp import web

from relaygate.providers.aws.eventstream import event, exception

ECHOED_HEADERS = ("x-ratelimit-limit-requests", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-requests",
                  "retry-after-ms", "content-disposition", "x-amzn-errortype", "x-echo", "www-authenticate",
                  "location", "set-cookie")
MODE: web.AppKey[dict[str, Any]] = web.AppKey("echo_mode", dict)


def echo_of(request: web.Request, body: bytes) -> str:
    """What the upstream received, as one line of text."""
    return orjson.dumps({"method": request.method, "url": str(request.url), "headers": {str(k): v for k, v in request.headers.items()},
                         "body": body[:4096].decode("utf-8", "replace")}).decode()


def sse(*events: Any, named: bool = False) -> bytes:
    out = b""
    for e in events:
        if named:
            out += b"event: " + e["type"].encode() + b"\n"
        out += b"data: " + orjson.dumps(e) + b"\n\n"
    return out


def error_body(echo: str, status: int) -> dict[str, Any]:
    """Every provider's error fields at once, each the echo."""
    err = {"message": echo, "code": echo, "param": echo, "type": echo, "status": echo,
           "details": [{"reason": echo, "@type": echo}]}
    return {"error": err, "message": echo, "Message": echo, "__type": echo, "type": "error"}


def answer(path: str, echo: str, stream: bool) -> tuple[bytes, str]:
    """A 200 answer in the format of the API ``path`` belongs to, echoing ``echo`` (and a stream's error
    event)."""
    usage = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
    if path.endswith("/audio/speech"):
        return echo.encode(), "audio/mpeg"
    if "/audio/" in path:
        return orjson.dumps({"text": echo}), "application/json"
    if path.endswith("/embeddings"):
        return orjson.dumps({"object": "list", "model": echo, "usage": usage,
                             "data": [{"object": "embedding", "index": 0, "embedding": [0.5]}]}), "application/json"
    if path.endswith("/chat/completions"):
        if stream:
            chunk = {"id": echo, "object": "chat.completion.chunk", "created": 1, "model": echo,
                     "choices": [{"index": 0, "delta": {"role": "assistant", "content": echo}, "finish_reason": None}]}
            return sse(chunk, error_body(echo, 500)) + b"data: [DONE]\n\n", "text/event-stream"
        return orjson.dumps({"id": echo, "object": "chat.completion", "created": 1, "model": echo, "usage": usage,
                             "choices": [{"index": 0, "finish_reason": "stop",
                                          "message": {"role": "assistant", "content": echo}}]}), "application/json"
    if path.endswith(("/messages", ":rawPredict", ":streamRawPredict")):  # Anthropic, also on Vertex AI
        message = {"id": "msg_1", "type": "message", "role": "assistant", "model": echo, "stop_reason": "end_turn",
                   "content": [{"type": "text", "text": echo}], "usage": {"input_tokens": 1, "output_tokens": 1}}
        if stream:
            start = {**message, "content": [], "stop_reason": None}
            return sse({"type": "message_start", "message": start},
                       {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
                       {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": echo}},
                       {"type": "error", "error": {"type": "api_error", "message": echo}}, named=True), \
                "text/event-stream"
        return orjson.dumps(message), "application/json"
    if ":generateContent" in path or ":streamGenerateContent" in path:  # Gemini, AI Studio or Vertex AI
        data = {"candidates": [{"content": {"role": "model", "parts": [{"text": echo}]}, "finishReason": "STOP"}],
                "usageMetadata": {"promptTokenCount": 1, "candidatesTokenCount": 1, "totalTokenCount": 2},
                "modelVersion": echo}
        if stream:
            return sse({**data, "candidates": [{"content": {"role": "model", "parts": [{"text": echo}]}}]},
                       {"error": {"code": 500, "message": echo, "status": "INTERNAL"}}), "text/event-stream"
        return orjson.dumps(data), "application/json"
    if ":batchEmbedContents" in path or ":embedContent" in path or ":predict" in path:
        return orjson.dumps({"embeddings": [{"values": [0.5]}], "embedding": {"values": [0.5]},
                             "predictions": [{"embeddings": {"values": [0.5]}}]}), "application/json"
    if path.endswith("/v2/chat"):  # Cohere
        if stream:
            return sse({"type": "message-start", "id": echo, "delta": {"message": {"role": "assistant"}}},
                       {"type": "content-start", "index": 0, "delta": {"message": {"content": {"type": "text",
                                                                                              "text": ""}}}},
                       {"type": "content-delta", "index": 0, "delta": {"message": {"content": {"text": echo}}}},
                       {"type": "message-end", "delta": {"finish_reason": "ERROR", "error": echo}},
                       named=True), "text/event-stream"
        return orjson.dumps({"id": echo, "finish_reason": "COMPLETE", "usage": {"tokens": {"input_tokens": 1,
                                                                                          "output_tokens": 1}},
                             "message": {"role": "assistant", "content": [{"type": "text", "text": echo}]}}), \
            "application/json"
    if path.endswith("/v2/embed"):
        return orjson.dumps({"id": echo, "embeddings": {"float": [[0.5]]}, "texts": [echo]}), "application/json"
    if path.endswith("/converse"):  # Bedrock
        return orjson.dumps({"output": {"message": {"role": "assistant", "content": [{"text": echo}]}},
                             "stopReason": "end_turn", "usage": {"inputTokens": 1, "outputTokens": 1,
                                                                 "totalTokens": 2}}), "application/json"
    if path.endswith("/converse-stream"):
        return (event("messageStart", orjson.dumps({"role": "assistant"}))
                + event("contentBlockDelta", orjson.dumps({"contentBlockIndex": 0, "delta": {"text": echo}}))
                + exception("modelStreamErrorException", orjson.dumps({"message": echo}))), \
            "application/vnd.amazon.eventstream"
    if path.endswith("/text"):  # a Bedrock agent
        return (event("chunk", orjson.dumps({"bytes": base64.b64encode(echo.encode()).decode()}))
                + exception("internalServerException", orjson.dumps({"message": echo}))), \
            "application/vnd.amazon.eventstream"
    return orjson.dumps({"object": "echo", "id": echo, "echo": echo}), "application/json"  # passthrough routes


async def handle(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    echo = echo_of(request, body)
    mode = request.app[MODE]
    mode["seen"] += 1
    headers = {h: echo for h in ECHOED_HEADERS}
    status = mode["status"]
    if status != 200:
        return web.Response(body=orjson.dumps(error_body(echo, status)), status=status, headers=headers,
                            content_type="application/json")
    try:
        stream = bool(orjson.loads(body).get("stream")) if body[:1] == b"{" else False
    except (orjson.JSONDecodeError, AttributeError):
        stream = False
    stream = stream or "stream" in request.path.lower() or request.path.endswith(("/text", ":streamRawPredict"))
    data, ctype = answer(request.path, echo, stream)
    resp = web.StreamResponse(status=200, headers={**headers, "content-type": ctype})
    await resp.prepare(request)
    await resp.write(data)
    await resp.write_eof()
    return resp


def create_app() -> web.Application:
    """The echo upstream; ``app[MODE]["status"]`` is 200 (answers) or the error status to answer with."""
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[MODE] = {"status": 200, "seen": 0, "started": time.time()}
    app.router.add_route("*", "/{tail:.*}", handle)
    return app
