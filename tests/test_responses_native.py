"""/v1/responses on deployments that serve OpenAI's Responses API themselves (``responses_native``): the openai
SDK → relaygate → the OpenAI emulator's /v1/responses, forwarded as sent (built-in tools included), streamed
event by event, chained on the upstream's own stored response or across translated models, billed and held
to budgets like chat."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
import requests
from openai.types.chat import ChatCompletion, ChatCompletionMessageFunctionToolCall

from relaygate.api.responses.native import NativeAnswer
from relaygate.config.base import ConfigError
from relaygate.config.loader import parse_config
from relaygate.testing import anthropic as anthropic_emu
from relaygate.testing.base import BackgroundServer
from relaygate.testing.gateway import GatewayThread
from relaygate.testing.openai import DEFAULT_MODELS, OpenAIEmulatorOptions
from relaygate.testing.openai import create_app as create_openai_app
from relaygate.testing.openai_responses import CITED_URL, RESPONSES_KEY

from .conftest import UPSTREAM_KEY, openai_model
from .test_keys import MASTER
from .test_limits import new_key, wait_for_spent
from .test_requestlog import gateway_rows

CLAUDE_KEY = "sk-ant-upstream-key-000000000000"
WEATHER: Any = {"type": "function", "name": "get_weather", "description": "weather for a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
SEARCH: Any = {"type": "web_search"}


@pytest.fixture(scope="module")
def upstreams() -> Iterator[dict[str, BackgroundServer]]:
    opts = OpenAIEmulatorOptions(api_key=UPSTREAM_KEY, models=(*DEFAULT_MODELS, "o3-pro"), responses_only=("o3-pro",))
    with BackgroundServer(create_openai_app(opts)) as oai, \
            BackgroundServer(anthropic_emu.create_app(
                anthropic_emu.AnthropicEmulatorOptions(api_key=CLAUDE_KEY))) as claude:
        yield {"openai": oai, "anthropic": claude}


def gateway_config(up: dict[str, BackgroundServer], db: str) -> dict[str, Any]:
    priced: dict[str, Any] = {"input_cost_per_token": 0.000001, "output_cost_per_token": 0.00001}
    return {"models": [
        openai_model("native", up["openai"], responses_native=True, **priced),
        openai_model("plain", up["openai"], **priced),
        {"name": "claude", "deployments": [{"provider": "anthropic", "model": "claude-haiku-4-5", **priced,
                                            "api_base": up["anthropic"].url, "api_key": CLAUDE_KEY}]},
        {"name": "native-or-claude", "fallbacks": [{"models": ["claude"]}], "deployments": [
            {"provider": "openai", "model": "gpt-4o", "api_base": up["openai"].url + "/v1", "api_key": UPSTREAM_KEY,
             "responses_native": True, "name": "native-primary", **priced}]},
        openai_model("pro", up["openai"], "o3-pro", responses_only=True, **priced),
        {"name": "azure", "deployments": [{"provider": "azure", "model": "my-gpt-deployment", "api_base": up["openai"].url,
                                           "api_key": UPSTREAM_KEY, "responses_native": True, **priced}]},
    ], "database": {"url": db}, "auth": {"master_key": MASTER}}


@pytest.fixture(scope="module")
def gw(upstreams: dict[str, BackgroundServer], tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayThread]:
    db = f"sqlite:///{tmp_path_factory.mktemp('native')}/relaygate.db"
    with GatewayThread(gateway_config(upstreams, db)) as g:
        yield g


@pytest.fixture(scope="module")
def key(gw: GatewayThread) -> str:
    return str(new_key(gw, team_id="native-team")["key"])


@pytest.fixture
def client(gw: GatewayThread, key: str) -> openai.OpenAI:
    return openai.OpenAI(api_key=key, base_url=gw.base_url, max_retries=0)


def received(up: BackgroundServer) -> list[dict[str, Any]]:
    return requests.get(up.url + "/_emulator/requests", timeout=5).json()["requests"]  # type: ignore[no-any-return]


def last_sent(up: BackgroundServer) -> dict[str, Any]:
    return received(up)[-1]


@pytest.fixture(autouse=True)
def fresh(upstreams: dict[str, BackgroundServer]) -> None:
    for up in upstreams.values():
        requests.delete(up.url + "/_emulator/requests", timeout=5)
        requests.delete(up.url + "/_emulator/faults", timeout=5)


# ---- the emulator, read by the SDK itself --------------------------------------------------------------

def test_emulator_speaks_the_responses_api_the_sdk_parses(upstreams: dict[str, BackgroundServer]) -> None:
    direct = openai.OpenAI(api_key=UPSTREAM_KEY, base_url=upstreams["openai"].url + "/v1", max_retries=0)
    r = direct.responses.create(model="gpt-4o-mini", input="hello there", tools=[SEARCH])
    assert [o.type for o in r.output] == ["web_search_call", "message"]
    assert r.output[1].content[0].annotations[0].url == CITED_URL  # type: ignore[union-attr,index]
    follow = direct.responses.create(model="gpt-4o-mini", input="again", previous_response_id=r.id)
    assert "[turn 2]" in follow.output_text
    with direct.responses.stream(model="gpt-4o-mini", input="x y z", tools=[WEATHER]) as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert final.output[0].type == "function_call" and final.output[0].name == "get_weather"
    with pytest.raises(openai.NotFoundError):
        direct.responses.create(model="gpt-4o-mini", input="x", previous_response_id="resp_nope")


# ---- forwarded as sent ---------------------------------------------------------------------------------

def test_native_deployment_gets_the_request_as_sent_with_the_model_rewritten(
        client: openai.OpenAI, upstreams: dict[str, BackgroundServer]) -> None:
    raw = client.responses.with_raw_response.create(
        model="native", input="forward me", instructions="be brief", metadata={"k": "v"}, max_output_tokens=300,
        include=["message.output_text.logprobs"], text={"format": {"type": "text"}, "verbosity": "low"})
    r = raw.parse()
    sent = last_sent(upstreams["openai"])
    assert sent["path"] == "/v1/responses"
    body = sent["json"]
    assert body["model"] == "gpt-4o-mini" and body["input"] == "forward me" and body["instructions"] == "be brief"
    # fields the translation to chat would lose reach a native upstream as they were
    assert body["include"] == ["message.output_text.logprobs"] and body["text"]["verbosity"] == "low"
    assert body["max_output_tokens"] == 300 and "previous_response_id" not in body
    assert "forward me" in r.output_text and r.status == "completed"
    assert raw.headers["x-relaygate-deployment"]
    stored = client.responses.retrieve(r.id)  # the gateway's id, served from its own copy
    assert stored.id == r.id and stored.output_text == r.output_text


@pytest.mark.parametrize("model", ["native", "azure"])
def test_built_in_tool_runs_on_a_native_deployment(client: openai.OpenAI, upstreams: dict[str, BackgroundServer],
                                                   model: str) -> None:
    r = client.responses.create(model=model, input="news about relaygate", tools=[SEARCH])
    assert [o.type for o in r.output] == ["web_search_call", "message"]
    assert r.output[1].content[0].annotations[0].url == CITED_URL  # type: ignore[union-attr,index]
    sent = last_sent(upstreams["openai"])
    assert sent["json"]["tools"] == [SEARCH]
    if model == "azure":  # Azure's v1 API: the deployment goes as the model, the key as api-key
        assert sent["path"] == "/openai/v1/responses" and sent["json"]["model"] == "my-gpt-deployment"


@pytest.mark.parametrize("model", ["plain", "claude"])
def test_built_in_tool_is_refused_where_no_deployment_serves_it(
        client: openai.OpenAI, upstreams: dict[str, BackgroundServer], model: str) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model=model, input="search", tools=[WEATHER, SEARCH])
    err = e.value.body
    assert isinstance(err, dict) and err["code"] == "unsupported_tool" and err["param"] == "tools[1].type"
    assert "web_search" in err["message"] and "responses_native" in err["message"]
    assert received(upstreams["openai"]) == [] and received(upstreams["anthropic"]) == []


def test_stream_is_relayed_event_by_event_with_the_gateways_id(client: openai.OpenAI) -> None:
    with client.responses.stream(model="native", input="one two three", tools=[SEARCH]) as stream:
        events = list(stream)
        final = stream.get_final_response()
    types = [e.type for e in events]
    assert types[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert "response.web_search_call.searching" in types and types[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    ids = {e.response.id for e in events if hasattr(e, "response")}
    assert ids == {final.id} and final.usage is not None and final.usage.output_tokens > 0
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == final.output_text and "one two three" in deltas
    assert client.responses.retrieve(final.id).output_text == final.output_text


def test_a_stream_cut_mid_way_ends_with_an_error_event_and_is_billed_for_what_it_delivered(
        gw: GatewayThread, upstreams: dict[str, BackgroundServer]) -> None:
    k = new_key(gw, budget_usd=1.0, budget_period="day")
    before = gw.gateway.writer.submitted
    requests.post(upstreams["openai"].url + "/_emulator/faults",
                  json={"disconnect_after_chunks": 6, "paths": ["/v1/responses"], "count": 1}, timeout=5)
    with httpx.stream("POST", f"{gw.base_url}/responses", json={"model": "native", "input": "a b c d e f g",
                                                               "stream": True},
                      headers={"authorization": f"Bearer {k['key']}"}, timeout=10) as resp:
        text = "".join(resp.iter_text())
    frames = [f for f in text.split("\n\n") if f.strip()]
    assert frames[-2].startswith("event: error\n") and '"sequence_number":6' in frames[-2]
    assert frames[-1].startswith("event: response.failed\n") and '"sequence_number":7' in frames[-1]
    assert len(frames) == 8 and sum('"response.output_text.delta"' in f for f in frames) == 2
    [row] = [r for r in gateway_rows(gw, expected=before + 1) if r["key_id"] == k["id"]]
    # no usage came: the prompt as estimated and the two words delivered, marked estimated
    assert row["usage_estimated"] and row["prompt_tokens"] > 0 and row["completion_tokens"] >= 2
    assert row["cost_nano"] > 0


def test_a_native_stream_cut_before_its_final_event_is_stored_as_failed(
        client: openai.OpenAI, gw: GatewayThread, upstreams: dict[str, BackgroundServer]) -> None:
    before = gw.gateway.writer.submitted
    # the web search item is done after 7 events, the answer is cut after its first word
    requests.post(upstreams["openai"].url + "/_emulator/faults",
                  json={"disconnect_after_chunks": 10, "paths": ["/v1/responses"], "count": 1}, timeout=5)
    raw = client.responses.with_raw_response.create(model="native", input="cut me off", tools=[SEARCH],
                                                    stream=True)
    events = list(raw.parse())
    assert [e.type for e in events][-2:] == ["error", "response.failed"]
    streamed = events[-1].response  # type: ignore[union-attr]
    assert streamed.status == "failed" and streamed.error is not None
    assert [e.sequence_number for e in events] == list(range(len(events)))
    stored = client.responses.retrieve(streamed.id)
    assert stored.status == "failed" and stored.error is not None and stored.error.code == "server_error"
    assert [o.type for o in stored.output] == ["web_search_call"]  # what it finished before the cut
    assert client.responses.input_items.list(stored.id).data[0].type == "message"
    [row] = [r for r in gateway_rows(gw, expected=before + 1) if r["request_id"] == raw.headers["x-request-id"]]
    assert row["error"] and row["usage_estimated"]  # logged as failed, billed for what it delivered
    # a later turn chains on it: the gateway's copy goes (the upstream may have kept nothing of a cut stream)
    follow = client.responses.create(model="native", input="again", previous_response_id=stored.id)
    sent = last_sent(upstreams["openai"])["json"]
    assert "previous_response_id" not in sent and sent["input"][0]["content"] == [
        {"type": "input_text", "text": "cut me off"}] and sent["input"][-1] == {"role": "user", "content": "again"}
    assert follow.status == "completed" and follow.previous_response_id == stored.id


# ---- chains ------------------------------------------------------------------------------------------

def test_chain_on_the_same_native_deployment_uses_the_upstreams_stored_response(
        client: openai.OpenAI, upstreams: dict[str, BackgroundServer]) -> None:
    first = client.responses.create(model="native", input="remember this", tools=[SEARCH])
    upstream_id = received(upstreams["openai"])[-1]
    assert upstream_id["json"]["input"] == "remember this"
    second = client.responses.create(model="native", input="and now?", previous_response_id=first.id)
    body = last_sent(upstreams["openai"])["json"]
    assert body["input"] == "and now?" and body["previous_response_id"].startswith("resp_")
    assert body["previous_response_id"] != first.id  # the upstream's own id, which the gateway kept
    assert "[turn 2]" in second.output_text and second.previous_response_id == first.id


def test_chain_falls_back_to_the_gateways_copy_when_the_upstream_lost_its_response(
        client: openai.OpenAI, upstreams: dict[str, BackgroundServer]) -> None:
    first = client.responses.create(model="native", input="keep this")
    upstreams["openai"].app[RESPONSES_KEY].clear()  # the upstream's retention ended
    second = client.responses.create(model="native", input="still there?", previous_response_id=first.id)
    lost, resent = [r["json"] for r in received(upstreams["openai"])[-2:]]
    assert lost["input"] == "still there?" and "previous_response_id" in lost
    assert "previous_response_id" not in resent and resent["input"][0] == {"type": "message", "role": "user",
                                                                           "content": [{"type": "input_text",
                                                                                        "text": "keep this"}]}
    assert "[turn 2]" in second.output_text


def test_chain_moves_between_native_and_translated_models(client: openai.OpenAI,
                                                          upstreams: dict[str, BackgroundServer]) -> None:
    first = client.responses.create(model="native", input="first turn")
    second = client.responses.create(model="claude", input="second turn", previous_response_id=first.id)
    claude = last_sent(upstreams["anthropic"])["json"]
    texts = [m["content"] if isinstance(m["content"], str) else m["content"][0]["text"] for m in claude["messages"]]
    assert texts[0] == "first turn" and first.output_text in texts[1] and texts[2] == "second turn"
    third = client.responses.create(model="native", input="third turn", previous_response_id=second.id)
    body = last_sent(upstreams["openai"])["json"]
    assert "previous_response_id" not in body  # claude answered last: the whole conversation goes as input
    assert [it.get("role") for it in body["input"]] == ["user", "assistant", "user", "assistant", "user"]
    assert body["input"][-1] == {"role": "user", "content": "third turn"}
    assert all("id" not in it for it in body["input"])  # the gateway's ids name nothing the upstream stored
    assert "[turn 3]" in third.output_text


def test_store_false_keeps_nothing(client: openai.OpenAI) -> None:
    r = client.responses.create(model="native", input="forget me", store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)


_ANSWER = {"id": "resp_up1", "object": "response", "status": "completed", "previous_response_id": None,
           "output": [{"type": "message", "id": "msg_up1", "role": "assistant",
                       "content": [{"type": "output_text", "text": "hi", "annotations": []}]}],
           "usage": {"input_tokens": 3, "output_tokens": 1, "total_tokens": 4}}


@pytest.mark.parametrize("raw", [
    json.dumps(_ANSWER, separators=(",", ":")).encode(),  # relayed as it came, its id replaced
    json.dumps(_ANSWER).encode(),  # spaced: parsed
    json.dumps({"object": "response", **_ANSWER}).encode(),  # the id not first: parsed
    json.dumps({**_ANSWER, "metadata": {"of": "resp_up1"}}, separators=(",", ":")).encode(),  # its value twice
    json.dumps({**_ANSWER, "id": "resp_\u0075p"}, separators=(",", ":")).encode(),  # an escape in it
    json.dumps({k: v for k, v in _ANSWER.items() if k != "previous_response_id"}, separators=(",", ":")).encode(),
    json.dumps({**_ANSWER, "conversation": {"id": "conv_up"}}, separators=(",", ":")).encode(),
])
def test_an_answer_nothing_keeps_reads_as_the_parsed_one(raw: bytes) -> None:
    parsed = NativeAnswer("resp_gw", None, None, print).whole(raw)
    relayed = NativeAnswer("resp_gw", None, None, print, kept=False)
    assert json.loads(relayed.whole(raw)) == json.loads(parsed)
    assert json.loads(parsed)["id"] == "resp_gw" and "conversation" not in json.loads(parsed)
    assert relayed.upstream_id == json.loads(raw)["id"]


def test_an_answer_nothing_keeps_goes_as_it_came_but_its_id() -> None:
    raw = json.dumps(_ANSWER, separators=(",", ":")).encode() + b"\n"
    assert NativeAnswer("resp_gw", None, None, print, kept=False).whole(raw) == raw.replace(b"resp_up1", b"resp_gw")


def test_an_answer_nothing_keeps_is_refused_like_the_parsed_one() -> None:
    for raw in (b'{"id":"resp_up1","object":"list","previous_response_id":null}', b'{"id":"resp_up1",', b"[]"):
        with pytest.raises(ValueError):
            NativeAnswer("resp_gw", None, None, print, kept=False).whole(raw)


# ---- the pipeline: fallbacks, usage, cost, budgets -------------------------------------------------

def test_a_failing_native_deployment_falls_back_to_a_translated_model(
        client: openai.OpenAI, upstreams: dict[str, BackgroundServer]) -> None:
    requests.post(upstreams["openai"].url + "/_emulator/faults",
                  json={"status": 500, "paths": ["/v1/responses"]}, timeout=5)
    raw = client.responses.with_raw_response.create(model="native-or-claude", input="fall back")
    r = raw.parse()
    assert "fall back" in r.output_text and r.status == "completed"
    assert raw.headers["x-relaygate-deployment"] != "native-primary"
    assert received(upstreams["anthropic"])[-1]["json"]["messages"][-1]["content"][0]["text"] == "fall back"


def test_native_usage_is_logged_and_billed(gw: GatewayThread, upstreams: dict[str, BackgroundServer]) -> None:
    k = new_key(gw, budget_usd=1.0, budget_period="day")
    c = openai.OpenAI(api_key=k["key"], base_url=gw.base_url, max_retries=0)
    before = gw.gateway.writer.submitted
    r = c.responses.create(model="native", input="count me", tools=[SEARCH])
    with c.responses.stream(model="native", input="count me too") as s:
        streamed = s.get_final_response()
    assert r.usage is not None and streamed.usage is not None
    rows = [row for row in gateway_rows(gw, expected=before + 2) if row["key_id"] == k["id"]]
    assert sorted(row["prompt_tokens"] for row in rows) == sorted([r.usage.input_tokens,
                                                                   streamed.usage.input_tokens])
    cost = sum(round((u.input_tokens * 0.000001 + u.output_tokens * 0.00001) * 1e9) for u in (r.usage, streamed.usage))
    assert sum(row["cost_nano"] for row in rows) == cost
    assert wait_for_spent(gw, "key:" + k["id"], cost) == cost


@pytest.mark.parametrize(("model", "tools"), [("native", []), ("native", [SEARCH]), ("plain", [])],
                         ids=["native", "native-only", "translated"])
def test_max_output_tokens_is_held_to_the_budget(gw: GatewayThread, upstreams: dict[str, BackgroundServer],
                                                 model: str, tools: list[Any]) -> None:
    """A Responses call reserves on its max_output_tokens like chat on max_tokens: a budget that cannot pay
    for 100,000 output tokens holds the answer to what it can (the upstream is sent the lower cap)."""
    k = new_key(gw, budget_usd=0.01, budget_period="day")  # $0.01 pays ~1,000 output tokens at $10/M
    raw = httpx.post(gw.base_url + "/responses", headers={"authorization": f"Bearer {k['key']}"}, timeout=10,
                     json={"model": model, "input": "hold me", "max_output_tokens": 100_000, "tools": tools})
    assert raw.status_code == 200, raw.text
    held = int(raw.headers["x-relaygate-output-cap"])
    assert 0 < held < 1000
    sent = last_sent(upstreams["openai"])
    assert sent["json"]["max_output_tokens" if model == "native" else "max_completion_tokens"] == held
    poor = new_key(gw, budget_usd=0.00001, budget_period="day")  # not even the prompt: refused, nothing sent
    refused = httpx.post(gw.base_url + "/responses", headers={"authorization": f"Bearer {poor['key']}"},
                         timeout=10, json={"model": model, "input": "hold me", "tools": tools})
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "budget_exceeded", refused.text
    assert last_sent(upstreams["openai"]) == sent


def test_function_tool_loop_runs_natively(client: openai.OpenAI, upstreams: dict[str, BackgroundServer]) -> None:
    """An agent's loop over the Responses API (call a tool, send its output, get the answer), natively."""
    first = client.responses.create(model="native", input="weather in Oslo?", tools=[WEATHER])
    call = first.output[0]
    assert call.type == "function_call" and call.name == "get_weather"
    done = client.responses.create(model="native", previous_response_id=first.id, tools=[WEATHER], input=[
        {"type": "function_call_output", "call_id": call.call_id, "output": "cold"}])
    assert "The tool returned: cold" in done.output_text
    body = last_sent(upstreams["openai"])["json"]
    assert body["input"] == [{"type": "function_call_output", "call_id": call.call_id, "output": "cold"}]


def test_config_refuses_responses_native_on_a_provider_that_has_no_such_api() -> None:
    with pytest.raises(ConfigError, match=r"deployments\[0\]\.responses_native: unknown field for provider anthropic"):
        parse_config({"models": [{"name": "c", "deployments": [
            {"provider": "anthropic", "model": "claude-haiku-4-5", "api_key": "k", "responses_native": True}]}]})


# ---- a Responses-only upstream: every chat call translated to its API ----------------------------------

def test_chat_reaches_a_responses_only_model(client: openai.OpenAI, upstreams: dict[str, BackgroundServer]) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="pro", messages=[{"role": "system", "content": "sys"}, {"role": "user", "content": "only here"}],
        max_tokens=50, seed=3)
    c = raw.parse()
    assert c.id.startswith("chatcmpl-") and c.object == "chat.completion"
    assert "only here" in (c.choices[0].message.content or "") and c.choices[0].finish_reason == "stop"
    assert c.usage is not None and c.usage.prompt_tokens > 0
    sent = last_sent(upstreams["openai"])
    assert sent["path"] == "/v1/responses" and sent["json"]["model"] == "o3-pro"
    assert sent["json"]["input"] == [{"role": "system", "content": "sys"}, {"role": "user", "content": "only here"}]
    assert sent["json"]["max_output_tokens"] == 50 and sent["json"]["store"] is False
    assert raw.headers["x-relaygate-dropped-params"] == "seed"
    direct = openai.OpenAI(api_key=UPSTREAM_KEY, base_url=upstreams["openai"].url + "/v1", max_retries=0)
    with pytest.raises(openai.NotFoundError):  # what the gateway spares its clients
        direct.chat.completions.create(model="o3-pro", messages=[{"role": "user", "content": "x"}])


@pytest.mark.parametrize("stream", [False, True])
def test_a_tool_round_trip_on_a_responses_only_model(client: openai.OpenAI, stream: bool) -> None:
    tool: Any = {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER["parameters"]}}
    messages: list[Any] = [{"role": "user", "content": "weather in Lima?"}]
    first: ChatCompletion
    done: ChatCompletion
    if stream:
        with client.beta.chat.completions.stream(model="pro", messages=messages, tools=[tool]) as s:
            first = s.get_final_completion()
    else:
        first = client.chat.completions.create(model="pro", messages=messages, tools=[tool])
    call = first.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert isinstance(call, ChatCompletionMessageFunctionToolCall)
    assert first.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "weather in Lima?"}
    messages += [first.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "warm"}]
    if stream:
        with client.beta.chat.completions.stream(model="pro", messages=messages, tools=[tool]) as s:
            chunks = [e for e in s if e.type == "content.delta"]
            done = s.get_final_completion()
        assert len(chunks) > 1
    else:
        done = client.chat.completions.create(model="pro", messages=messages, tools=[tool])
    assert "The tool returned: warm" in (done.choices[0].message.content or "")


def test_a_responses_call_to_a_responses_only_model_goes_natively(
        client: openai.OpenAI, upstreams: dict[str, BackgroundServer]) -> None:
    r = client.responses.create(model="pro", input="native too", tools=[SEARCH])
    assert [o.type for o in r.output] == ["web_search_call", "message"]
    assert last_sent(upstreams["openai"])["json"]["tools"] == [SEARCH]
