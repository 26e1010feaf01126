"""No input gives a 500 (issue 18): JSON depth and big integers at parse, the typed request shapes before any
translator, query parameters, upstream redirects. Each test is an attack that failed before."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import requests
from aiohttp import web
from openai.types.chat import ChatCompletionMessageParam

from relaygate.core import jsonvalue
from relaygate.core.jsonvalue import MAX_DEPTH, ORJSON_MAX_DEPTH
from relaygate.testing.base import BackgroundServer
from relaygate.testing.gateway import GatewayThread

from .stack_support import CHAT_MODELS, MASTER, Stack, deployments, run_stack

USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with run_stack(f"sqlite:///{tmp_path_factory.mktemp('inputs')}/rg.db") as s:
        yield s


def post(stack: Stack, path: str, body: Any, raw: bool = False) -> requests.Response:
    data = body if raw else orjson.dumps(body)
    return requests.post(stack.gateway.url + path, data=data, timeout=20,
                         headers={**stack.headers, "content-type": "application/json"})


def error(r: requests.Response, status: int = 400) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err: dict[str, Any] = r.json()["error"]
    return err


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


# ---- JSON at parse -------------------------------------------------------------------------------------

def chat_with(model: str, value: str) -> str:
    """A chat body whose field ``x`` is the raw JSON ``value`` (at depth 2 of the body)."""
    return '{"model":"%s","messages":[{"role":"user","content":"hi"}],"x":%s}' % (model, value)  # noqa: UP031


def test_json_nested_deeper_than_orjson_serialises_is_a_400(stack: Stack) -> None:
    # 255 to 1,024 levels parsed fine but could not be serialised again (orjson stops at 254): a 500
    for depth in (ORJSON_MAX_DEPTH, 300, 1024, 5000):
        err = error(post(stack, "/v1/chat/completions", chat_with("gpt", nested(depth)), raw=True))
        assert f"nested deeper than {ORJSON_MAX_DEPTH} levels" in err["message"]
    emu = stack.emulators["openai"]
    r = post(stack, "/v1/chat/completions", chat_with("gpt", nested(ORJSON_MAX_DEPTH - 1)), raw=True)
    assert r.status_code == 200 and "x" in emu.state.requests[-1]["json"]  # the passthrough forwards it as it is


@pytest.mark.parametrize("model", CHAT_MODELS[1:])
def test_translated_calls_keep_room_to_nest_deeper(stack: Stack, model: str) -> None:
    err = error(post(stack, "/v1/chat/completions", chat_with(model, nested(MAX_DEPTH)), raw=True))
    assert f"nested deeper than {MAX_DEPTH} levels" in err["message"]
    assert post(stack, "/v1/chat/completions", chat_with(model, nested(MAX_DEPTH - 1)), raw=True).status_code == 200
    messages = '{"model":"%s","max_tokens":5,"messages":[{"role":"user","content":"hi"}],"x":%s}'  # noqa: UP031
    r = requests.post(stack.gateway.url + "/v1/messages", data=messages % (model, nested(MAX_DEPTH)), timeout=20,
                      headers={"x-api-key": MASTER, "anthropic-version": "2023-06-01"})
    assert r.status_code == 400 and "nested deeper" in r.text


def test_invoke_model_bodies_of_other_families_keep_room_to_nest_deeper(stack: Stack) -> None:
    """A Nova body is translated to a chat call like any foreign dialect's: the same room checked first."""
    # body → toolConfig → tools → tool → toolSpec → inputSchema → json → x: the value starts 8 levels down
    nova = ('{"schemaVersion":"messages-v1","messages":[{"role":"user","content":[{"text":"hi"}]}],"toolConfig":'
            '{"tools":[{"toolSpec":{"name":"f","inputSchema":{"json":{"type":"object","x":%s}}}}]}}')
    r = post(stack, "/model/gpt/invoke", nova % nested(MAX_DEPTH - 6), raw=True)
    assert r.status_code == 400 and r.headers["x-amzn-errortype"].startswith("ValidationException"), r.text
    assert f"nested deeper than {MAX_DEPTH} levels" in r.json()["message"]
    assert post(stack, "/model/gpt/invoke", nova % nested(MAX_DEPTH - 7), raw=True).status_code == 200


def test_json_nested_to_the_limit_goes_through_every_provider(stack: Stack) -> None:
    """A tool schema as deep as allowed survives each translation (which nests it deeper) and the log."""
    # body → tools → tool → function → parameters: 5 levels, then lists to the limit
    schema = '{"type":"object","x":' + nested(MAX_DEPTH - 5) + "}"
    for model in CHAT_MODELS:
        body = ('{"model":"%s","messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function",'  # noqa: UP031
                '"function":{"name":"f","parameters":%s}}]}' % (model, schema))
        assert orjson.loads(body)  # exactly at the limit
        r = post(stack, "/v1/chat/completions", body, raw=True)
        assert r.status_code in (200, 400), (model, r.text)  # an upstream may refuse the schema; never a 500


def test_tool_arguments_nested_too_deeply_are_a_400(stack: Stack) -> None:
    """Arguments are a JSON string the translators parse: the same bound holds for it."""
    deep = '{"a":' + nested(MAX_DEPTH) + "}"
    messages = [*USER, {"role": "assistant", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": deep}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "ok"}]
    for model in ("claude", "gemini", "bedrock"):
        err = error(post(stack, "/v1/chat/completions", {"model": model, "messages": messages}))
        assert err["param"] == "messages[1].tool_calls[0].function.arguments", model


def test_integers_beyond_64_bits_are_refused_and_64_bit_ones_pass_exactly(stack: Stack) -> None:
    for value in (2 ** 64, -(2 ** 63) - 1, 10 ** 30):
        body = b'{"model":"gpt","messages":[{"role":"user","content":"hi"}],"seed":' + str(value).encode() + b"}"
        err = error(post(stack, "/v1/chat/completions", body, raw=True))
        assert err["param"] == "seed" and "beyond 64 bits" in err["message"]
    err = error(post(stack, "/v1/chat/completions", b'{"model":"gpt","messages":[{"role":"user","content":"hi",'
                                                     b'"x":[1,{"y":' + b"9" * 25 + b"}]}]}", raw=True))
    assert err["param"] == "messages[0].x[1].y"
    emu = stack.emulators["openai"]
    body = (b'{"model":"gpt","messages":[{"role":"user","content":"hi"}],"seed":-9223372036854775808,'
            b'"x_big":18446744073709551615}')
    assert post(stack, "/v1/chat/completions", body, raw=True).status_code == 200
    sent = emu.state.requests[-1]
    assert sent["json"]["seed"] == -(2 ** 63) and sent["json"]["x_big"] == 2 ** 64 - 1  # exact, not floats


# ---- the typed request shapes --------------------------------------------------------------------------

TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
WRONG_TYPES = [  # (model, extra fields, the parameter the 400 names): each was a 500 in a translator
    ("cohere", {"reasoning_effort": ["low"]}, "reasoning_effort"),
    ("cohere", {"tools": [TOOL], "tool_choice": {"type": "function", "function": "f"}}, "tool_choice.function"),
    ("cohere", {"messages": [{"role": "assistant", "tool_calls": 5}, *USER]}, "messages[0].tool_calls"),
    ("claude", {"response_format": {"type": "json_schema", "json_schema": "x"}}, "response_format.json_schema"),
    ("gemini", {"stop": 5}, "stop"),
    ("gemini", {"response_format": {"type": "json_schema", "json_schema": 1}}, "response_format.json_schema"),
    ("bedrock", {"messages": [{"role": "assistant", "tool_calls": 5}, *USER]}, "messages[0].tool_calls"),
    ("gemini", {"messages": [*USER, *USER, {"role": "user", "content": [{"type": ["text"]}]}]},
     "messages[2].content[0].type"),
    ("claude", {"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
     "messages[0].content[0].text"),
    ("bedrock", {"temperature": "hot"}, "temperature"),
    ("cohere", {"seed": 2 ** 63}, "seed"),
]


@pytest.mark.parametrize(("model", "extra", "param"), WRONG_TYPES)
def test_wrong_types_are_a_400_naming_the_parameter_before_any_translator(
        stack: Stack, model: str, extra: dict[str, Any], param: str) -> None:
    err = error(post(stack, "/v1/chat/completions", {"model": model, "messages": USER, **extra}))
    assert err["param"] == param and err["type"] == "invalid_request_error", err


@pytest.mark.parametrize("model", CHAT_MODELS[1:])
def test_a_1000_deep_content_part_is_a_400(stack: Stack, model: str) -> None:
    # formatting the error about it recursed: a RecursionError, so a 500
    part = '{"type":' + nested(200) + "}"
    body = '{"model":"%s","messages":[{"role":"user","content":[%s]}]}' % (model, part)  # noqa: UP031
    assert error(post(stack, "/v1/chat/completions", body, raw=True))["param"] == "messages[0].content[0].type"
    deep = '{"model":"%s","messages":[{"role":"user","content":[%s]}]}' % (model, "[" * 1000 + "]" * 1000)  # noqa: UP031
    assert "nested deeper" in error(post(stack, "/v1/chat/completions", deep, raw=True))["message"]


def test_the_openai_passthrough_forwards_what_it_does_not_read(stack: Stack) -> None:
    """Only translators pay for the typed check: an OpenAI-compatible upstream may take parts OpenAI's spec
    lacks (vLLM's video_url), so the passthrough forwards them for the upstream to judge."""
    emu = stack.emulators["openai"]
    before = len(emu.state.requests)
    content = [{"type": "text", "text": "hi"}, {"type": "video_url", "video_url": {"url": "https://x/v.mp4"}}]
    post(stack, "/v1/chat/completions", {"model": "gpt", "messages": [{"role": "user", "content": content}]})
    assert len(emu.state.requests) == before + 1
    assert emu.state.requests[-1]["json"]["messages"][0]["content"][1]["type"] == "video_url"
    for model in CHAT_MODELS[1:]:
        err = error(post(stack, "/v1/chat/completions", {"model": model, "messages": [
            {"role": "user", "content": content}]}))
        assert err["param"] == "messages[0].content[1].type"


def test_messages_api_wrong_types_are_a_400_in_anthropics_shape(stack: Stack) -> None:
    cases: list[tuple[dict[str, Any], str]] = [({"stop_sequences": [1]}, "stop_sequences.0"),
             ({"messages": [{"role": "user", "content": [{"type": "text", "text": ["x"]}]}]}, "messages.0.content.0.text"),
             ({"tools": [{"name": "f", "input_schema": "x"}]}, "tools.0.input_schema"),
             ({"metadata": {"user_id": 5}}, "metadata.user_id"),
             ({"max_tokens": 2 ** 64}, "max_tokens")]
    for extra, where in cases:
        body = {"model": "claude", "max_tokens": 10, "messages": USER, **extra}
        r = requests.post(stack.gateway.url + "/v1/messages", json=body, timeout=20,
                          headers={"x-api-key": MASTER, "anthropic-version": "2023-06-01"})
        assert r.status_code == 400, (extra, r.text)
        err = r.json()
        assert err["type"] == "error" and err["error"]["type"] == "invalid_request_error"
        assert where in err["error"]["message"], (where, err)


def test_embeddings_and_speech_wrong_types_are_a_400(stack: Stack) -> None:
    assert error(post(stack, "/v1/embeddings", {"model": "embed-cohere", "input": "x", "input_type": 5}))[
        "param"] == "input_type"
    assert error(post(stack, "/v1/embeddings", {"model": "text-embedding-3-small", "input": [[1, 2], ["x"]]}))[
        "param"] == "input[1]"
    assert error(post(stack, "/v1/audio/speech", {"model": "tts-1", "input": "x", "voice": {"id": 5}}))[
        "param"] == "voice"
    assert error(post(stack, "/v1/audio/speech", {"model": "tts-1", "input": "x", "voice": "alloy",
                                                  "instructions": ["x"]}))["param"] == "instructions"


# ---- query parameters ----------------------------------------------------------------------------------

BAD_QUERIES = [
    ("/admin/logs?key_id=a%00b", "key_id"), ("/admin/logs?model=%00", "model"),
    ("/admin/logs?status=2147483648", "status"), ("/admin/logs?status=99999999999999999999", "status"),
    ("/admin/logs?status=abc", "status"), ("/admin/logs?limit=0", "limit"), ("/admin/logs?limit=1e3", "limit"),
    ("/admin/logs?start=nan", "start"), ("/admin/logs?end=1e999", "end"), ("/admin/logs?start=%00", "start"),
    ("/admin/logs?cursor=1:%00", "cursor"), ("/admin/logs?cursor=inf:abc", "cursor"),
    ("/admin/logs?bodies=maybe", "bodies"), ("/admin/logs?user_id=" + "u" * 101, "user_id"),
    ("/admin/spend?group_by=%00", "group_by"), ("/admin/spend?team_id=a%0Ab", "team_id"),
    ("/admin/spend?start=99999999999999", "start"),
    ("/admin/keys?team_id=%00", "team_id"), ("/admin/keys?include_revoked=1", "include_revoked"),
    ("/admin/keys/a%00b", "id"), ("/admin/keys/" + "k" * 41, "id"), ("/admin/teams/a%00b", "id"),
    ("/admin/users/%01", "id"),
    ("/v1/models?limit=2147483648", "limit"), ("/v1/models?after_id=%00", "after_id"),
    ("/v1/audio/voices?model=%00", "model"), ("/v1/audio/voices?legacy=2", "legacy"),
]


@pytest.mark.parametrize(("path", "param"), BAD_QUERIES)
def test_query_parameters_out_of_type_range_or_with_control_characters_are_a_400(
        stack: Stack, path: str, param: str) -> None:
    headers = {**stack.headers, **({"anthropic-version": "2023-06-01"} if path.startswith("/v1/models") else {})}
    r = requests.get(stack.gateway.url + path, headers=headers, timeout=20)
    assert r.status_code == 400, r.text
    assert param in r.text


def test_admin_bodies_with_nul_are_a_400(stack: Stack) -> None:
    for body in ({"name": "a\x00b"}, {"metadata": {"k": ["x\x00"]}}, {"tags": ["\x00"]}):
        r = requests.post(stack.gateway.url + "/admin/keys", json=body, headers=stack.headers, timeout=20)
        assert r.status_code == 400, r.text
    r = requests.post(stack.gateway.url + "/admin/teams", json={"id": "t\x00"}, headers=stack.headers, timeout=20)
    assert r.status_code == 400, r.text


def test_admin_filters_on_postgresql_never_reach_the_database_unchecked(pg_url: str) -> None:
    """PostgreSQL refuses NUL in text and integers past 32 bits: those were database errors, so 500s."""
    with run_stack(pg_url) as s:
        for path, _ in BAD_QUERIES[:6]:
            r = requests.get(s.gateway.url + path, headers=s.headers, timeout=20)
            assert r.status_code == 400, (path, r.text)
        r = requests.post(s.gateway.url + "/admin/keys", json={"name": "a\x00b"}, headers=s.headers, timeout=20)
        assert r.status_code == 400, r.text
        ok = requests.get(s.gateway.url + "/admin/logs?status=200&limit=5&start=2020-01-01&key_id=k",
                          headers=s.headers, timeout=20)
        assert ok.status_code == 200, ok.text


# ---- upstream redirects --------------------------------------------------------------------------------

def redirecting_app() -> web.Application:
    async def handle(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=302, headers={"location": "http://127.0.0.1:9/elsewhere"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


@pytest.mark.parametrize("stream", [False, True])
def test_an_upstream_redirect_is_a_502_on_every_provider(stream: bool) -> None:
    # Anthropic's, Gemini's and Cohere's paths read a 3xx as a success: a 200 with an empty completion
    with BackgroundServer(redirecting_app()) as upstream:
        urls = dict.fromkeys(("openai", "anthropic", "gemini", "cohere", "bedrock"), upstream.url)
        with GatewayThread({"models": deployments(urls)}) as gw:
            for model in CHAT_MODELS:
                r = requests.post(gw.base_url + "/chat/completions", timeout=20,
                                  json={"model": model, "messages": USER, "stream": stream})
                assert r.status_code == 502, (model, r.status_code, r.text[:200])
                assert r.json()["error"]["code"] == "upstream_redirect"
            for path, body in (("/embeddings", {"model": "embed-cohere", "input": "x"}),
                               ("/audio/speech", {"model": "tts-1", "input": "x", "voice": "alloy"})):
                r = requests.post(gw.base_url + path, json=body, timeout=20)
                assert r.status_code == 502, (path, r.text[:200])


def test_the_room_check_reuses_its_nests_and_says_the_same_each_time() -> None:
    """``check(value, ROOM)`` serialises within ROOM one-element arrays kept from call to call: a value too deep,
    or with an integer beyond 64 bits, is refused, and the next value is checked on its own."""
    deep: object = 1
    for _ in range(jsonvalue.MAX_DEPTH):
        deep = [deep]
    assert jsonvalue.check(deep, jsonvalue.ROOM).startswith(b"[" * (jsonvalue.MAX_DEPTH + jsonvalue.ROOM))
    for bad, says in (([deep], "nested deeper than 240 levels"), ({"seed": 2 ** 64}, "'seed' is an integer")):
        with pytest.raises(jsonvalue.JSONRejected, match=says):
            jsonvalue.check(bad, jsonvalue.ROOM)
        assert jsonvalue.check({"a": 1}, jsonvalue.ROOM) == b"[" * 14 + b'{"a":1}' + b"]" * 14
    assert jsonvalue.check({"a": 1}, 2) == b'[[{"a":1}]]'  # another room: its own arrays
