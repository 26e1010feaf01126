"""End to end: the official openai SDK → the real relaygate server → the OpenAI emulator."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Callable
from typing import Any

import openai
import pytest
import urllib3
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam

from relaygate.testing.base import BackgroundServer, free_port
from relaygate.testing.gateway import GatewayThread

from .conftest import UPSTREAM_KEY, openai_model
from .openai_types import function_calls

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello there"}]
TOOLS: list[ChatCompletionToolParam] = [{"type": "function", "function": {
    "name": "get_weather", "description": "weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


@pytest.fixture
def gw(openai_emulator: BackgroundServer, start_gateway: Callable[..., GatewayThread]) -> GatewayThread:
    return start_gateway({"models": [openai_model("mini", openai_emulator)]})


@pytest.fixture
def client(gw: GatewayThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key="client-key", max_retries=0)


def upstream_requests(emu: BackgroundServer) -> list[dict[str, Any]]:
    return [r for r in emu.state.requests if r["path"].endswith("/chat/completions")]


def test_sync_completion_reaches_upstream_with_model_rewritten(client: openai.OpenAI,
                                                               openai_emulator: BackgroundServer) -> None:
    r = client.chat.completions.create(model="mini", messages=MESSAGES)
    assert r.choices[0].message.content == "Hello! You said: hello there"
    assert r.usage is not None and r.usage.total_tokens > 0
    sent = upstream_requests(openai_emulator)[-1]
    assert sent["json"]["model"] == "gpt-4o-mini"
    assert sent["headers"]["authorization"] == f"Bearer {UPSTREAM_KEY}"


def test_async_client_works_concurrently(gw: GatewayThread) -> None:
    async def run() -> list[str]:
        client = openai.AsyncOpenAI(base_url=gw.base_url, api_key="k", max_retries=0)
        rs = await asyncio.gather(*[client.chat.completions.create(
            model="mini", messages=[{"role": "user", "content": f"n{i}"}]) for i in range(20)])
        await client.close()
        return [r.choices[0].message.content or "" for r in rs]

    out = asyncio.run(run())
    assert out == [f"Hello! You said: n{i}" for i in range(20)]


def test_stream_delivers_every_delta_and_done(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model="mini", messages=MESSAGES, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello! You said: hello there"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)  # usage was asked upstream for metering, not shown


def test_stream_include_usage_gives_the_usage_chunk(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model="mini", messages=MESSAGES, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens > 0


def test_tool_call_round_trip(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="mini", messages=[{"role": "user", "content": "Paris"}],
                                       tools=TOOLS)
    call = function_calls(r.choices[0].message)[0]
    assert r.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    follow = client.chat.completions.create(model="mini", tools=TOOLS, messages=[
        {"role": "user", "content": "Paris"},
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": call.id, "type": "function",
            "function": {"name": call.function.name, "arguments": call.function.arguments}}]},
        {"role": "tool", "tool_call_id": call.id, "content": "sunny"}])
    assert follow.choices[0].message.content == "The tool returned: sunny"


def test_streamed_tool_call_deltas_assemble(client: openai.OpenAI) -> None:
    args = ""
    name = None
    for c in client.chat.completions.create(model="mini", messages=[{"role": "user", "content": "Oslo"}],
                                            tools=TOOLS, stream=True):
        for tc in (c.choices[0].delta.tool_calls or []) if c.choices else []:
            name = name or (tc.function.name if tc.function else None)
            args += (tc.function.arguments or "") if tc.function else ""
    assert name == "get_weather" and json.loads(args) == {"city": "Oslo"}


def test_unknown_fields_pass_through_untouched(
        client: openai.OpenAI, openai_emulator: BackgroundServer) -> None:
    r = client.chat.completions.create(
        model="mini", messages=MESSAGES, n=2, logprobs=True, response_format={"type": "json_object"},
        extra_body={"some_vendor_field": {"x": [1, 2]}, "provider": "openai"})
    assert len(r.choices) == 2 and r.choices[0].logprobs is not None
    assert json.loads(r.choices[0].message.content or "") == {"answer": "Hello! You said: hello there"}
    sent = upstream_requests(openai_emulator)[-1]["json"]
    assert sent["some_vendor_field"] == {"x": [1, 2]}
    assert sent["n"] == 2 and sent["logprobs"] is True and "provider" not in sent


def test_provider_slash_model_form_selects_the_provider(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="openai/mini", messages=MESSAGES)
    assert r.choices[0].message.content == "Hello! You said: hello there"
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="mini", messages=MESSAGES, extra_body={"provider": "anthropic"})
    assert "no deployment on provider 'anthropic'" in str(e.value)


def test_request_id_is_echoed_or_generated(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model="mini", messages=MESSAGES,
                                                           extra_headers={"x-request-id": "abc-123"})
    assert raw.headers["x-request-id"] == "abc-123"
    assert raw.headers["x-relaygate-deployment"] == "mini/openai/0"
    assert raw.headers["x-relaygate-attempts"] == "1"
    raw = client.chat.completions.with_raw_response.create(model="mini", messages=MESSAGES)
    assert raw.headers["x-request-id"].startswith("req_")


def test_unknown_model_is_404_naming_the_models(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-9", messages=MESSAGES)
    assert e.value.code == "model_not_found"
    assert "Available models: mini" in e.value.message


def test_upstream_429_keeps_status_and_retry_after(
        client: openai.OpenAI, openai_emulator: BackgroundServer) -> None:
    openai_emulator.state.faults = __import__("relaygate.testing.base", fromlist=["FaultPlan"]).FaultPlan(
        status=429, count=1, retry_after=7)
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(model="mini", messages=MESSAGES)
    assert e.value.response.headers["retry-after"] == "7"
    assert e.value.code == "rate_limit_exceeded"


@pytest.mark.parametrize("status,exc", [(500, openai.InternalServerError), (503, openai.InternalServerError),
                                        (404, openai.NotFoundError), (400, openai.BadRequestError)])
def test_upstream_errors_keep_their_status(status: int, exc: type[Exception], client: openai.OpenAI,
                                           openai_emulator: BackgroundServer) -> None:
    from relaygate.testing.base import FaultPlan

    openai_emulator.state.faults = FaultPlan(status=status, count=1)
    with pytest.raises(exc) as e:
        client.chat.completions.create(model="mini", messages=MESSAGES)
    assert e.value.status_code == status  # type: ignore[attr-defined]


def test_upstream_auth_error_never_leaks_the_key(openai_emulator: BackgroundServer,
                                                 start_gateway: Callable[..., GatewayThread]) -> None:
    model = openai_model("mini", openai_emulator)
    model["deployments"][0]["api_key"] = "sk-wrong-secret-key-987654321"
    gw = start_gateway({"models": [model]})
    client = openai.OpenAI(base_url=gw.base_url, api_key="k", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        client.chat.completions.create(model="mini", messages=MESSAGES)
    text = e.value.response.text
    assert "sk-wrong-secret-key-987654321" not in text and "4321" not in text
    assert str(openai_emulator.port) not in text


def test_unreachable_upstream_is_502_without_internal_address(
        start_gateway: Callable[..., GatewayThread]) -> None:
    port = free_port()
    gw = start_gateway({"models": [{"name": "m", "deployments": [
        {"provider": "openai", "model": "x", "api_base": f"http://127.0.0.1:{port}/v1", "api_key": "sk-a"}]}]})
    client = openai.OpenAI(base_url=gw.base_url, api_key="k", max_retries=0)
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(model="m", messages=MESSAGES)
    assert e.value.status_code == 502
    assert str(port) not in e.value.response.text and "127.0.0.1" not in e.value.response.text


def test_upstream_timeout_is_504(openai_emulator: BackgroundServer,
                                 start_gateway: Callable[..., GatewayThread]) -> None:
    from relaygate.testing.base import FaultPlan

    gw = start_gateway({"models": [openai_model("mini", openai_emulator, timeout=0.3)]})
    openai_emulator.state.faults = FaultPlan(latency_ms=2000, count=1)
    client = openai.OpenAI(base_url=gw.base_url, api_key="k", max_retries=0)
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(model="mini", messages=MESSAGES)
    assert e.value.status_code == 504 and e.value.code == "timeout"


def test_upstream_disconnect_mid_stream_ends_with_an_error_event(
        client: openai.OpenAI, openai_emulator: BackgroundServer) -> None:
    from relaygate.testing.base import FaultPlan

    openai_emulator.state.faults = FaultPlan(disconnect_after_chunks=3, count=1)
    got = []
    with pytest.raises(openai.APIError) as e:
        for c in client.chat.completions.create(model="mini", messages=MESSAGES, stream=True):
            got.append(c)
    assert len(got) == 3
    assert "stream broke" in str(e.value)


def test_client_disconnect_cancels_the_upstream_stream(gw: GatewayThread,
                                                       openai_emulator: BackgroundServer) -> None:
    from relaygate.testing.base import FaultPlan

    openai_emulator.state.faults = FaultPlan(chunk_delay_ms=200)
    body = json.dumps({"model": "mini", "messages": MESSAGES, "stream": True}).encode()
    s = socket.create_connection(("127.0.0.1", gw.port))
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
              b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    assert b"200 OK" in s.recv(4096)
    deadline = time.monotonic() + 5
    while openai_emulator.state.in_flight == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    s.close()
    deadline = time.monotonic() + 3
    while openai_emulator.state.cancelled == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert openai_emulator.state.cancelled == 1 and openai_emulator.state.in_flight == 0


def leave_while_upstream_works(gw: GatewayThread, upstream: BackgroundServer, request: bytes) -> None:
    """Send ``request`` on a raw socket, wait until the upstream works on it, then close the socket."""
    with socket.create_connection(("127.0.0.1", gw.port)) as s:
        s.sendall(request)
        deadline = time.monotonic() + 5
        while upstream.state.in_flight == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert upstream.state.in_flight == 1


def raw_post(path: str, body: bytes, content_type: str = "application/json") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: {content_type}\r\n"
            f"content-length: {len(body)}\r\n\r\n").encode() + body


@pytest.mark.parametrize("stream", [False, True])
def test_client_disconnect_cancels_the_upstream_call_before_its_answer(
        openai_emulator: BackgroundServer, start_gateway: Callable[..., GatewayThread], stream: bool) -> None:
    """A whole answer (or a stream's first byte) that the upstream takes long to produce: the client leaves,
    the upstream request is cancelled at once, and the call is logged as the client's going (499)."""
    from relaygate.testing.base import FaultPlan
    from tests.test_requestlog import gateway_rows

    gw = start_gateway({"models": [openai_model("mini", openai_emulator)]})
    openai_emulator.state.faults = FaultPlan(latency_ms=5000, count=1)
    body = json.dumps({"model": "mini", "messages": MESSAGES, "stream": stream}).encode()
    started = time.monotonic()
    leave_while_upstream_works(gw, openai_emulator, raw_post("/v1/chat/completions", body))
    deadline = time.monotonic() + 3
    while openai_emulator.state.cancelled == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert openai_emulator.state.cancelled == 1 and openai_emulator.state.in_flight == 0
    assert time.monotonic() - started < 3  # long before the upstream would have answered
    [row] = gateway_rows(gw)
    assert (row["status"], row["error"], row["stream"]) == (499, "client_closed", stream)
    # the gateway goes on serving
    assert openai.OpenAI(base_url=gw.base_url, api_key="k", max_retries=0).chat.completions.create(
        model="mini", messages=MESSAGES).choices


# ---- bad input: always an OpenAI-format error with the right status, never a 500 ----------------------

@pytest.fixture
def http() -> urllib3.PoolManager:
    return urllib3.PoolManager(retries=False)


def post(http: urllib3.PoolManager, gw: GatewayThread, body: bytes, path: str = "/v1/chat/completions",
         method: str = "POST", headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    r = http.request(method, gw.url + path, body=body, headers={"content-type": "application/json",
                                                                 **(headers or {})})
    data = json.loads(r.data)
    assert set(data) == {"error"} and set(data["error"]) == {"message", "type", "param", "code"}
    assert r.headers.get("x-request-id")
    return r.status, data["error"]


@pytest.mark.parametrize("body,status,param", [
    (b"{not json", 400, None),
    (b"", 400, None),
    (b"[1, 2]", 400, None),
    (b'"text"', 400, None),
    (b'{"messages": [{"role": "user", "content": "x"}]}', 400, "model"),
    (b'{"model": "mini"}', 400, "messages"),
    (b'{"model": 5, "messages": [{"role": "user", "content": "x"}]}', 400, "model"),
    (b'{"model": "mini", "messages": "hi"}', 400, "messages"),
    (b'{"model": "mini", "messages": []}', 400, "messages"),
    (b'{"model": "mini", "messages": [3]}', 400, "messages[0]"),
    (b'{"model": "mini", "messages": [{"content": "x"}]}', 400, "messages[0].role"),
    (b'{"model": "mini", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}', 400, "stream"),
    (b'{"model": "mini", "messages": [{"role": "user", "content": "x"}], "n": 0}', 400, "n"),
    (b'{"model": "", "messages": [{"role": "user", "content": "x"}]}', 400, "model"),
    (b'{"model": "mini", "messages": [{"role": "user", "content": "x"}], "temperature": true}', 400, "temperature"),
    (b'{"model": "mini", "messages": [{"role": "user", "content": "x"}], "max_tokens": "5"}', 400, "max_tokens"),
    (b'{"model": "mini", "messages": [{"role": "user", "content": "x"}], "tools": {}}', 400, "tools"),
    (b'{"model": "mini", "messages": [{"role": "user", "content": "x"}], "stream_options": 1}', 400,
     "stream_options"),
    (b'{"model": "mini", "messages": [{"role": "user", "content": "x"}], "top_logprobs": 99}', 400, "top_logprobs"),
    # two fields wrong: the first checked is named, whatever the body's order
    (b'{"model": "mini", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1.5, "stream": 1}', 400,
     "stream"),
    (b'{"model": "mini", "messages": [{"role": "user", "content": "x"}], "provider": 3}', 400, "provider"),
    (b'{"model": "nope", "messages": [{"role": "user", "content": "x"}]}', 404, "model"),
])
def test_bad_chat_input_gets_a_clear_error(gw: GatewayThread, http: urllib3.PoolManager, body: bytes,
                                           status: int, param: str | None) -> None:
    got, err = post(http, gw, body)
    assert got == status
    assert err["param"] == param
    assert err["message"]


def test_body_over_the_limit_is_413(openai_emulator: BackgroundServer, http: urllib3.PoolManager,
                                    start_gateway: Callable[..., GatewayThread]) -> None:
    gw = start_gateway({"models": [openai_model("mini", openai_emulator)], "server": {"max_body_bytes": 1000}})
    big = json.dumps({"model": "mini", "messages": [{"role": "user", "content": "x" * 2000}]}).encode()
    status, err = post(http, gw, big)
    assert status == 413 and err["code"] == "request_too_large"
    # chunked (no content-length): refused while reading
    r = http.request("POST", gw.url + "/v1/chat/completions", body=iter([big[:600], big[600:]]),
                     headers={"content-type": "application/json"}, chunked=True)
    assert r.status == 413
    ok = json.dumps({"model": "mini", "messages": MESSAGES}).encode()
    assert post_ok(http, gw, ok)


def post_ok(http: urllib3.PoolManager, gw: GatewayThread, body: bytes) -> bool:
    return http.request("POST", gw.url + "/v1/chat/completions", body=body).status == 200


def test_wrong_method_is_405_and_unknown_route_404(gw: GatewayThread, http: urllib3.PoolManager) -> None:
    status, err = post(http, gw, b"", method="GET")
    assert status == 405 and err["code"] == "method_not_allowed"
    status, err = post(http, gw, b"{}", path="/v1/nothing-here")
    assert status == 404 and err["code"] == "unknown_route"


def test_models_health_and_ready(gw: GatewayThread, client: openai.OpenAI, http: urllib3.PoolManager) -> None:
    assert [m.id for m in client.models.list()] == ["mini"]
    assert client.models.retrieve("mini").id == "mini"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-9")
    assert http.request("GET", gw.url + "/health").status == 200
    ready = http.request("GET", gw.url + "/health/ready")
    assert ready.status == 200 and json.loads(ready.data)["status"] == "ready"


def test_azure_deployment_url_api_version_and_key_header(openai_emulator: BackgroundServer,
                                                         start_gateway: Callable[..., GatewayThread]) -> None:
    from relaygate.testing.openai import OpenAIEmulatorOptions, create_app

    with BackgroundServer(create_app(OpenAIEmulatorOptions(api_key="azure-key-1234567890"))) as az:
        gw = start_gateway({"models": [{"name": "gpt4", "deployments": [{
            "provider": "azure", "model": "my-gpt4-deployment", "api_base": az.url,
            "api_key": "azure-key-1234567890", "api_version": "2024-10-21"}]}]})
        client = openai.OpenAI(base_url=gw.base_url, api_key="k", max_retries=0)
        r = client.chat.completions.create(model="gpt4", messages=MESSAGES)
        assert r.choices[0].message.content == "Hello! You said: hello there"
        chunks = list(client.chat.completions.create(model="gpt4", messages=MESSAGES, stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).endswith("hello there")
        sent = az.state.requests[0]
        assert sent["path"] == "/openai/deployments/my-gpt4-deployment/chat/completions"
        assert sent["query"] == {"api-version": "2024-10-21"}
        assert sent["headers"]["api-key"] == "azure-key-1234567890" and "authorization" not in sent["headers"]


def test_zero_config_demo_model_answers(start_gateway: Callable[..., GatewayThread]) -> None:
    from relaygate.config import default_config

    gw = start_gateway(default_config({}))
    client = openai.OpenAI(base_url=gw.base_url, api_key="none", max_retries=0)
    r = client.chat.completions.create(model="demo", messages=MESSAGES)
    assert "demo model" in (r.choices[0].message.content or "")
    text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="demo", messages=MESSAGES, stream=True) if c.choices)
    assert text.endswith("You said: hello there")


def test_zero_config_forwards_any_openai_model_with_the_env_key(openai_emulator: BackgroundServer,
                                                                start_gateway: Callable[..., GatewayThread]) -> None:
    from relaygate.config import default_config

    cfg = default_config({"OPENAI_API_KEY": UPSTREAM_KEY, "OPENAI_API_BASE": openai_emulator.url + "/v1"})
    gw = start_gateway(cfg)
    client = openai.OpenAI(base_url=gw.base_url, api_key="none", max_retries=0)
    r = client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert r.choices[0].message.content == "Hello! You said: hello there"
    assert openai_emulator.state.requests[-1]["json"]["model"] == "gpt-4o"
