"""Real provider answers (tests/recorded, see SOURCES.md there) replayed through relaygate's providers.

A small upstream serves each recorded body as it was recorded, streams cut into pieces of several sizes (one
byte, odd sizes, whole); the gateway translates it, and the official openai and anthropic SDKs read the result.
What they must see is in ``<provider>/expected.json``, read from the native answer independently of relaygate.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from aiohttp import web

from relaygate.providers.anthropic.wire import FINISH_TO_STOP
from relaygate.testing.base import BackgroundServer
from relaygate.testing.gateway import GatewayThread

ROOT = Path(__file__).parent / "recorded"
PROVIDERS = ("anthropic", "gemini", "bedrock", "cohere", "openai")
CONTENT_TYPES = {".json": "application/json", ".sse": "text/event-stream",
                 ".eventstream": "application/vnd.amazon.eventstream"}
SPLITS = (1, 7, 61, 0)  # bytes per piece sent upstream (0: the whole body at once)
ONE_BYTE_LIMIT = 8192  # larger bodies are not also sent a byte at a time (time)


@dataclass
class Answer:
    body: bytes = b""
    status: int = 200
    content_type: str = "application/json"
    split: int = 0


def replay_app(answer: Answer) -> web.Application:
    """An upstream that answers any request with the current recorded answer, cut into pieces."""

    async def handle(request: web.Request) -> web.StreamResponse:
        await request.read()
        if not answer.split:
            return web.Response(body=answer.body, status=answer.status, content_type=answer.content_type)
        resp = web.StreamResponse(status=answer.status, headers={"content-type": answer.content_type})
        await resp.prepare(request)
        for i in range(0, len(answer.body), answer.split):
            await resp.write(answer.body[i:i + answer.split])
            if i % (answer.split * 64) == 0:
                await asyncio.sleep(0)  # let the pieces leave as pieces, now and then
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def deployment(provider: str, url: str) -> dict[str, Any]:
    base: dict[str, Any] = {"timeout": 20, "api_base": url}
    if provider == "anthropic":
        return {**base, "provider": "anthropic", "model": "claude-sonnet-4-5", "api_key": "sk-ant-test-key"}
    if provider == "gemini":
        return {**base, "provider": "gemini", "model": "gemini-2.5-flash",
                "api_key": "AIzaSyTestKey0123456789abcdefghijklmnop"}
    if provider == "bedrock":
        # the recordings are Converse answers: a Claude model id would send an Anthropic client's request as
        # Claude's own InvokeModel body (docs/bedrock.md), which they do not answer
        return {**base, "provider": "bedrock", "model": "us.amazon.nova-pro-v1:0",
                "region": "us-east-1", "api_key": "bedrock-api-key-test"}
    if provider == "cohere":
        return {**base, "provider": "cohere", "model": "command-a-03-2025", "api_key": "co-test-key"}
    return {**base, "provider": "openai", "model": "gpt-4o-mini", "api_key": "sk-test-key", "api_base": url + "/v1"}


@pytest.fixture(scope="module")
def answer() -> Answer:
    return Answer()


@pytest.fixture(scope="module")
def gateway(answer: Answer) -> Iterator[GatewayThread]:
    with BackgroundServer(replay_app(answer)) as upstream:
        models = [{"name": p, "deployments": [deployment(p, upstream.url)]} for p in PROVIDERS]
        with GatewayThread({"models": models}) as gw:
            yield gw


def cases() -> list[Any]:
    out = []
    for provider in PROVIDERS:
        expected = json.loads((ROOT / provider / "expected.json").read_text())
        for name, expect in sorted(expected.items()):
            out.append(pytest.param(provider, name, expect, id=f"{provider}/{name}"))
    return out


def serve(answer: Answer, provider: str, name: str, expect: dict[str, Any], split: int) -> None:
    path = ROOT / provider / name
    answer.body = path.read_bytes()
    answer.status = int(expect["status"])
    answer.content_type = CONTENT_TYPES[path.suffix]
    answer.split = split


def splits_for(name: str, size: int) -> list[int]:
    if name.endswith(".json"):
        return [0]
    return [s for s in SPLITS if s != 1 or size <= ONE_BYTE_LIMIT]


def fails_as_recorded(sdk: Any, read: Callable[[], Any], expect: dict[str, Any]) -> None:
    """An answer recorded as an error reaches the SDK as one: with its status, or inside the stream."""
    with pytest.raises(sdk.APIError) as err:
        read()
    if expect["error_status"] != "in-stream":
        assert isinstance(err.value, sdk.APIStatusError) and err.value.status_code == expect["error_status"]


def chat_result(client: openai.OpenAI, provider: str, stream: bool) -> dict[str, Any]:
    """What the openai SDK makes of relaygate's answer: content, tool calls, finish reason, usage."""
    messages: Any = [{"role": "user", "content": "hello"}]
    if stream:
        with client.chat.completions.stream(model=provider, messages=messages,
                                            stream_options={"include_usage": True}) as s:
            for _ in s:
                pass
            try:
                completion: Any = s.get_final_completion()
            except openai.ContentFilterFinishReasonError:  # the SDK's own refusal to parse a filtered answer
                completion = s.current_completion_snapshot
    else:
        completion = client.chat.completions.create(model=provider, messages=messages)
    assert completion.id.startswith("chatcmpl-")
    choice = completion.choices[0]
    calls = []
    for tc in choice.message.tool_calls or ():
        assert tc.type == "function" and tc.id
        calls.append({"name": tc.function.name, "arguments": json.loads(tc.function.arguments)})
    usage = completion.usage
    return {"content": choice.message.content or "", "tool_calls": calls, "finish_reason": choice.finish_reason,
            "usage": None if usage is None else {"prompt_tokens": usage.prompt_tokens,
                                                 "completion_tokens": usage.completion_tokens}}


@pytest.mark.parametrize(("provider", "name", "expect"), cases())
def test_recorded_answer_reads_the_same_through_chat_completions(
        gateway: GatewayThread, answer: Answer, provider: str, name: str, expect: dict[str, Any]) -> None:
    client = openai.OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0, timeout=30)
    stream = not name.endswith(".json")
    for split in splits_for(name, (ROOT / provider / name).stat().st_size):
        serve(answer, provider, name, expect, split)
        if "error_status" in expect:
            fails_as_recorded(openai, lambda: chat_result(client, provider, stream), expect)
            continue
        got = chat_result(client, provider, stream)
        want = {k: expect[k] for k in ("content", "tool_calls", "finish_reason", "usage")}
        if want["usage"] is None or (stream and provider == "openai" and got["usage"] is None):
            got["usage"] = want["usage"]  # not reported upstream (never invented), or not asked for upstream
        assert got == want, f"split {split}"


def messages_result(client: anthropic.Anthropic, provider: str, stream: bool) -> Any:
    kwargs: Any = {"model": provider, "max_tokens": 1024, "messages": [{"role": "user", "content": "hello"}]}
    if stream:
        with client.messages.stream(**kwargs) as s:
            for _ in s:
                pass
            return s.get_final_message()
    return client.messages.create(**kwargs)


@pytest.mark.parametrize(("provider", "name", "expect"), cases())
def test_recorded_answer_reads_the_same_through_messages(
        gateway: GatewayThread, answer: Answer, provider: str, name: str, expect: dict[str, Any]) -> None:
    client = anthropic.Anthropic(base_url=gateway.url, api_key="unused", max_retries=0, timeout=30)
    stream = not name.endswith(".json")
    for split in (0, 13) if stream else (0,):
        serve(answer, provider, name, expect, split)
        if "error_status" in expect:
            fails_as_recorded(anthropic, lambda: messages_result(client, provider, stream), expect)
            continue
        message = messages_result(client, provider, stream)
        assert message.id.startswith("msg_")
        text = "".join(b.text for b in message.content if b.type == "text")
        calls = [{"name": b.name, "arguments": b.input} for b in message.content if b.type == "tool_use"]
        assert (text, calls) == (expect["content"], expect["tool_calls"]), f"split {split}"
        if provider == "anthropic":  # Anthropic's own answer, relayed as it is
            assert message.stop_reason == expect["stop_reason"]
        else:
            assert message.stop_reason == FINISH_TO_STOP[expect["finish_reason"]]
            assert not message.id.removeprefix("msg_").startswith("chatcmpl")
        if expect["usage"] is not None and provider != "anthropic":
            u = message.usage
            prompt = u.input_tokens + (u.cache_read_input_tokens or 0) + (u.cache_creation_input_tokens or 0)
            assert (prompt, u.output_tokens) == (expect["usage"]["prompt_tokens"],
                                                 expect["usage"]["completion_tokens"]), f"split {split}"
