"""The openai SDK's Responses and Conversations calls → relaygate → any configured model (the OpenAI, Anthropic
and Gemini emulators): translated onto the chat pipeline, stored per owner, chained, streamed in OpenAI's
documented event sequence."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest
from pydantic import BaseModel

from relaygate.testing import anthropic as anthropic_emu
from relaygate.testing import gemini as gemini_emu
from relaygate.testing.base import BackgroundServer
from relaygate.testing.gateway import GatewayThread
from relaygate.testing.openai import OpenAIEmulatorOptions
from relaygate.testing.openai import create_app as create_openai_app

from .conftest import UPSTREAM_KEY, openai_model

GEMINI_KEY = "AIzaSyGeminiUpstreamKey00000000000000000"
CLAUDE_KEY = "sk-ant-upstream-key-000000000000"
MASTER = "sk-master-" + "7c2e9a41" * 5
KEY_A = "sk-app-a-e4f6c61ef74ff471fa5e02a0a0a17138c19d0d12"
KEY_B = "sk-app-b-a839d940f38ceb5a980da1e9314bc420f6828017"
KEY_A2 = "sk-app-a2-c3f3eb108f7e7e9aabb74e4b7b9953b7ee4c8b55"  # another key of team A's
MODELS = ("gpt", "claude", "gem")
WEATHER: Any = {"type": "function", "name": "get_weather", "description": "weather for a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


@pytest.fixture(scope="module")
def upstreams() -> Iterator[dict[str, BackgroundServer]]:
    with BackgroundServer(create_openai_app(OpenAIEmulatorOptions(api_key=UPSTREAM_KEY))) as oai, \
            BackgroundServer(gemini_emu.create_app(gemini_emu.GeminiEmulatorOptions(api_key=GEMINI_KEY))) as gem, \
            BackgroundServer(anthropic_emu.create_app(
                anthropic_emu.AnthropicEmulatorOptions(api_key=CLAUDE_KEY))) as claude:
        yield {"openai": oai, "gemini": gem, "anthropic": claude}


def gateway_config(upstreams: dict[str, BackgroundServer], db: str) -> dict[str, Any]:
    return {"models": [
        openai_model("gpt", upstreams["openai"]),
        {"name": "gem", "deployments": [{"provider": "gemini", "model": "gemini-2.5-flash",
                                         "api_base": upstreams["gemini"].url, "api_key": GEMINI_KEY}]},
        {"name": "claude", "deployments": [{"provider": "anthropic", "model": "claude-haiku-4-5",
                                            "api_base": upstreams["anthropic"].url, "api_key": CLAUDE_KEY}]},
    ], "database": {"url": db},
        "auth": {"master_key": MASTER, "keys": [{"id": "a", "key": KEY_A, "team_id": "team-a"},
                                                 {"id": "a2", "key": KEY_A2, "team_id": "team-a"},
                                                 {"id": "b", "key": KEY_B}]}}


@pytest.fixture(scope="module")
def db_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('responses')}/relaygate.db"


@pytest.fixture(scope="module")
def gw(upstreams: dict[str, BackgroundServer], db_url: str) -> Iterator[GatewayThread]:
    with GatewayThread(gateway_config(upstreams, db_url)) as g:
        yield g


@pytest.fixture
def client(gw: GatewayThread) -> openai.OpenAI:
    return openai.OpenAI(api_key=KEY_A, base_url=gw.base_url, max_retries=0)


def sent(upstreams: dict[str, BackgroundServer], name: str = "openai") -> dict[str, Any]:
    return upstreams[name].state.requests[-1]["json"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("model", MODELS)
def test_create_answers_text_on_every_provider(client: openai.OpenAI, model: str) -> None:
    r = client.responses.create(model=model, input="hi there", instructions="be nice")
    assert r.status == "completed" and r.object == "response" and r.id.startswith("resp_")
    assert "hi there" in r.output_text
    assert r.output[0].type == "message" and r.output[0].role == "assistant"
    assert r.usage is not None and r.usage.input_tokens > 0 and r.usage.output_tokens > 0
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    assert r.instructions == "be nice" and r.model == model


def test_request_is_translated_to_chat(client: openai.OpenAI, upstreams: dict[str, BackgroundServer]) -> None:
    items: Any = [{"role": "developer", "content": "dev note"},
                  {"role": "user", "content": [{"type": "input_text", "text": "look"},
                                               {"type": "input_image", "image_url": "data:image/png;base64,AAAA"}]}]
    client.responses.create(model="gpt", instructions="sys", max_output_tokens=50, temperature=0.5, top_p=0.9,
                            reasoning={"effort": "low"}, input=items)
    body = sent(upstreams)
    assert body["messages"] == [
        {"role": "system", "content": "sys"}, {"role": "system", "content": "dev note"},
        {"role": "user", "content": [{"type": "text", "text": "look"},
                                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]
    assert body["max_completion_tokens"] == 50 and body["temperature"] == 0.5 and body["top_p"] == 0.9
    assert body["reasoning_effort"] == "low" and body["model"] == "gpt-4o-mini"


@pytest.mark.parametrize("model", MODELS)
def test_stream_follows_the_documented_event_sequence(client: openai.OpenAI, model: str) -> None:
    with client.responses.stream(model=model, input="a b c") as stream:
        events = list(stream)
        final = stream.get_final_response()
    types = [e.type for e in events]
    assert types[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert types[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) > 1 and "".join(deltas) == final.output_text and "a b c" in final.output_text
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert final.status == "completed" and final.usage is not None and final.usage.output_tokens > 0
    assert len({e.response.id for e in events if hasattr(e, "response")}) == 1


def test_reasoning_comes_back_as_a_summary(client: openai.OpenAI, upstreams: dict[str, BackgroundServer]) -> None:
    r = client.responses.create(model="claude", input="think first", reasoning={"effort": "high"},
                                max_output_tokens=4000)
    assert sent(upstreams, "anthropic")["thinking"]["type"] in ("enabled", "adaptive")
    kinds = [o.type for o in r.output]
    assert kinds == ["reasoning", "message"] and "think first" in r.output_text
    summary = r.output[0].model_dump()["summary"][0]
    assert summary["type"] == "summary_text" and summary["text"]
    with client.responses.stream(model="claude", input="think first", reasoning={"effort": "high"},
                                 max_output_tokens=4000) as stream:
        types = [e.type for e in stream]
        final = stream.get_final_response()
    assert "response.reasoning_summary_text.delta" in types and final.output[0].type == "reasoning"
    assert types.index("response.reasoning_summary_text.done") < types.index("response.output_text.delta")


@pytest.mark.parametrize("stream", (False, True))
def test_output_cut_at_max_output_tokens_is_incomplete(client: openai.OpenAI, stream: bool) -> None:
    if stream:
        with client.responses.stream(model="gpt", input="one two three four five six", max_output_tokens=3) as s:
            types = [e.type for e in s]
        assert types[-1] == "response.incomplete"
        return
    r = client.responses.create(model="gpt", input="one two three four five six", max_output_tokens=3)
    assert r.status == "incomplete" and r.incomplete_details is not None
    assert r.incomplete_details.reason == "max_output_tokens" and len(r.output_text.split()) == 3


@pytest.mark.parametrize("model", MODELS)
def test_tool_call_round_trip(client: openai.OpenAI, model: str) -> None:
    first = client.responses.create(model=model, input="Paris", tools=[WEATHER], tool_choice="required")
    call = first.output[-1]
    assert call.type == "function_call" and call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Paris"} and call.call_id
    answer: Any = [{"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21C"}]
    second = client.responses.create(model=model, previous_response_id=first.id, tools=[WEATHER], input=answer)
    assert second.status == "completed" and "sunny, 21C" in second.output_text
    assert second.previous_response_id == first.id


@pytest.mark.parametrize("model", MODELS)
def test_agents_style_tool_loop_sends_the_items_back(client: openai.OpenAI, model: str) -> None:
    """As the OpenAI Agents SDK drives a model: stateless turns, the output items and tool results appended to
    the input until the model answers without a tool call."""
    items: list[Any] = [{"role": "user", "content": "Berlin"}]
    for _ in range(4):
        r = client.responses.create(model=model, input=items, tools=[WEATHER], store=False)
        items += [o.model_dump(exclude_none=True) for o in r.output]
        calls = [o for o in r.output if o.type == "function_call"]
        if not calls:
            break
        items += [{"type": "function_call_output", "call_id": c.call_id, "output": "cloudy, 12C"} for c in calls]
    assert r.status == "completed" and "cloudy, 12C" in r.output_text
    assert any(i.get("type") == "function_call" for i in items)


def test_tool_call_streams_its_arguments(client: openai.OpenAI) -> None:
    with client.responses.stream(model="gpt", input="Oslo", tools=[WEATHER], tool_choice="required") as stream:
        events = list(stream)
        final = stream.get_final_response()
    types = [e.type for e in events]
    assert "response.function_call_arguments.delta" in types and "response.function_call_arguments.done" in types
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    assert json.loads(done.arguments) == {"city": "Oslo"} and done.model_dump()["name"] == "get_weather"
    assert final.output[-1].type == "function_call" and final.output[-1].arguments == done.arguments


@pytest.mark.parametrize("model", ("gpt", "claude"))
def test_json_schema_output_parses(client: openai.OpenAI, model: str) -> None:
    class Answer(BaseModel):
        answer: str

    r = client.responses.parse(model=model, input="json please", text_format=Answer)
    assert r.output_parsed is not None and "json please" in r.output_parsed.answer


def test_previous_response_chain_carries_the_conversation(client: openai.OpenAI,
                                                          upstreams: dict[str, BackgroundServer]) -> None:
    one = client.responses.create(model="gpt", input="first", instructions="only once")
    two = client.responses.create(model="gpt", input="second", previous_response_id=one.id)
    assert "[turn 2]" in two.output_text
    messages = sent(upstreams)["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]  # instructions are not carried over
    assert messages[1]["content"] == one.output_text
    three = client.responses.create(model="gpt", input="third", previous_response_id=two.id, stream=True)
    assert [e.type for e in three][-1] == "response.completed"
    assert len(sent(upstreams)["messages"]) == 5


def test_stored_response_can_be_read_listed_and_deleted(client: openai.OpenAI) -> None:
    r = client.responses.create(model="gpt", input=[{"role": "user", "content": "keep me"}])
    got = client.responses.retrieve(r.id)
    assert got.id == r.id and got.output_text == r.output_text and got.status == "completed"
    items = client.responses.input_items.list(r.id)
    assert [i.type for i in items.data] == ["message"]
    assert items.data[0].model_dump()["content"][0]["text"] == "keep me"
    client.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)


def test_store_false_stores_nothing(client: openai.OpenAI) -> None:
    r = client.responses.create(model="gpt", input="forget me", store=False)
    assert r.model_dump()["store"] is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="gpt", input="again", previous_response_id=r.id)


def test_streamed_response_is_stored(client: openai.OpenAI) -> None:
    with client.responses.stream(model="claude", input="streamed") as stream:
        final = stream.get_final_response()
    got = client.responses.retrieve(final.id)
    assert got.status == "completed" and got.output_text == final.output_text


def test_another_key_gets_404_but_a_teammate_sees_it(gw: GatewayThread, client: openai.OpenAI) -> None:
    r = client.responses.create(model="gpt", input="private")
    other = openai.OpenAI(api_key=KEY_B, base_url=gw.base_url, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.create(model="gpt", input="steal", previous_response_id=r.id)
    mate = openai.OpenAI(api_key=KEY_A2, base_url=gw.base_url, max_retries=0)
    assert mate.responses.retrieve(r.id).id == r.id  # objects belong to the team


def test_conversation_collects_turns(client: openai.OpenAI, gw: GatewayThread,
                                     upstreams: dict[str, BackgroundServer]) -> None:
    conv = client.conversations.create(items=[{"type": "message", "role": "user", "content": "remember 7"}],
                                       metadata={"topic": "numbers"})
    assert conv.id.startswith("conv_") and conv.metadata == {"topic": "numbers"}
    r1 = client.responses.create(model="gpt", input="what number?", conversation=conv.id)
    assert "[turn 2]" in r1.output_text
    with client.responses.stream(model="claude", input="and again", conversation=conv.id) as s:
        s.get_final_response()
    items = client.conversations.items.list(conv.id, order="asc")
    kinds = [(i.type, getattr(i, "role", None)) for i in items.data]
    assert kinds == [("message", "user"), ("message", "user"), ("message", "assistant"), ("message", "user"),
                     ("message", "assistant")]
    page = client.conversations.items.list(conv.id, limit=2)
    assert len(page.data) == 2 and page.has_more and page.data[0].id == items.data[-1].id
    added = client.conversations.items.create(conv.id, items=[{"type": "message", "role": "user",
                                                               "content": "extra"}])
    iid = added.data[0].id
    assert iid is not None and client.conversations.items.retrieve(iid, conversation_id=conv.id).id == iid
    client.conversations.items.delete(iid, conversation_id=conv.id)
    assert client.conversations.update(conv.id, metadata={"topic": "n2"}).metadata == {"topic": "n2"}
    assert client.conversations.retrieve(conv.id).metadata == {"topic": "n2"}
    other = openai.OpenAI(api_key=KEY_B, base_url=gw.base_url, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        other.conversations.retrieve(conv.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.create(model="gpt", input="x", conversation=conv.id)
    assert client.conversations.delete(conv.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.conversations.items.list(conv.id)


def test_the_admin_api_lists_and_deletes_stored_objects(gw: GatewayThread, client: openai.OpenAI) -> None:
    r = client.responses.create(model="gpt", input="for the admin")
    admin = {"authorization": f"Bearer {MASTER}"}
    listed = httpx.get(gw.url + "/admin/objects", params={"kind": "response", "owner": "team:team-a",
                                                          "limit": 100}, headers=admin).json()
    row = next(o for o in listed["data"] if o["id"] == r.id)
    assert row["owner"] == "team:team-a" and row["object"]["output"][0]["type"] == "message"
    assert httpx.get(gw.url + "/admin/objects", headers={"authorization": f"Bearer {KEY_A}"}).status_code == 401
    gone = httpx.delete(gw.url + f"/admin/objects/{r.id}", params={"kind": "response"}, headers=admin)
    assert gone.status_code == 200 and gone.json()["deleted"]
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)
    again = httpx.delete(gw.url + f"/admin/objects/{r.id}", params={"kind": "response"}, headers=admin)
    assert again.status_code == 404


def test_built_in_tools_are_refused_by_name(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="gpt", input="search", tools=[{"type": "web_search"}])
    assert "web_search" in e.value.message and e.value.code == "unsupported_tool"


@pytest.mark.parametrize("body, param", [
    ({"input": "x"}, "model"),
    ({"model": "gpt", "input": 3}, "input"),
    ({"model": "gpt", "input": [{"type": "nope"}]}, "input[0].type"),
    ({"model": "gpt", "input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
    ({"model": "gpt", "input": "x", "text": {"format": {"type": "xml"}}}, "text.format.type"),
    ({"model": "gpt", "input": "x", "max_output_tokens": 0}, "max_output_tokens"),
    ({"model": "gpt", "input": "x", "stream": "yes"}, "stream"),
    ({"model": "gpt", "input": "x", "previous_response_id": "resp_nope"}, "previous_response_id"),
])
def test_bad_requests_get_openai_errors(gw: GatewayThread, body: dict[str, Any], param: str) -> None:
    r = httpx.post(gw.base_url + "/responses", json=body, headers={"authorization": f"Bearer {KEY_A}"})
    assert r.status_code in (400, 404), r.text
    err = r.json()["error"]
    assert err["param"] == param and err["message"]


def test_responses_survive_a_restart(upstreams: dict[str, BackgroundServer], tmp_path: Any) -> None:
    config = gateway_config(upstreams, f"sqlite:///{tmp_path}/restart.db")
    with GatewayThread(config) as g:
        c = openai.OpenAI(api_key=KEY_A, base_url=g.base_url, max_retries=0)
        r = c.responses.create(model="gpt", input="before", stream=True)
        rid = [e for e in r][-1].model_dump()["response"]["id"]
    with GatewayThread(config) as g:
        c = openai.OpenAI(api_key=KEY_A, base_url=g.base_url, max_retries=0)
        assert c.responses.retrieve(rid).status == "completed"
        assert "[turn 2]" in c.responses.create(model="gpt", input="after", previous_response_id=rid).output_text


def test_postgres_holds_responses_too(upstreams: dict[str, BackgroundServer], pg_url: str) -> None:
    with GatewayThread(gateway_config(upstreams, pg_url)) as g:
        c = openai.OpenAI(api_key=KEY_A, base_url=g.base_url, max_retries=0)
        r = c.responses.create(model="claude", input="pg")
        assert c.responses.retrieve(r.id).output_text == r.output_text
        two = c.responses.create(model="gpt", input="next", previous_response_id=r.id)
        assert "[turn 2]" in two.output_text


def test_upstream_failure_mid_stream_ends_with_response_failed(gw: GatewayThread,
                                                               upstreams: dict[str, BackgroundServer]) -> None:
    upstreams["openai"].state.faults = None
    r = httpx.post(gw.base_url + "/responses", headers={"authorization": f"Bearer {KEY_A}"},
                   json={"model": "nope-model", "input": "x", "stream": True})
    assert r.status_code == 404 and r.json()["error"]["code"]
    with httpx.stream("POST", gw.base_url + "/responses", headers={"authorization": f"Bearer {KEY_A}"},
                      json={"model": "gpt", "input": "x", "stream": True}) as s:
        body = b"".join(s.iter_bytes())
    events = [orjson.loads(line[6:]) for line in body.split(b"\n") if line.startswith(b"data: ")]
    assert events[-1]["type"] == "response.completed"
