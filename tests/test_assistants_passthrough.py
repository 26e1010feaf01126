"""The Assistants API forwarded to an upstream that still serves it (``assistants.passthrough``): the openai
SDK → relaygate → a second relaygate that hosts the Assistants API (a real server, backed by the OpenAI
emulator), as an app whose assistants live at Azure or a self-hosted server would use it: assistants,
threads, messages, runs polled and streamed, tool outputs, pagination, ownership of the upstream's ids by the
caller's owner, keys and the request log, budgets, and the hosted mode as the default."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest

from relaygate.config.base import ConfigError
from relaygate.config.loader import parse_config
from relaygate.testing.base import BackgroundServer
from relaygate.testing.gateway import GatewayThread
from relaygate.testing.openai import OpenAIEmulatorOptions
from relaygate.testing.openai import create_app as create_openai_app

from .conftest import UPSTREAM_KEY, openai_model
from .test_assistants_api import stream_run
from .test_keys import MASTER
from .test_limits import new_key
from .test_requestlog import gateway_rows

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the SDK marks Assistants deprecated

UPSTREAM_MASTER = "sk-master-" + "1f6d3b8e" * 5  # the upstream's own secret: never shown to a client
KEY_A = "sk-app-a-0d4f7b2e9c61a83f5e0b7d2c9a4f61e8b3c5d7a0"
KEY_B = "sk-app-b-6e1a9c4f2b07d53e8a6c1f9b2e4d07a3c8f5b1e6"
WEATHER: Any = {"type": "function", "function": {
    "name": "get_weather", "description": "weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayThread]:
    """A relaygate hosting the Assistants API: the upstream that still serves it."""
    with BackgroundServer(create_openai_app(OpenAIEmulatorOptions(api_key=UPSTREAM_KEY))) as oai:
        db = f"sqlite:///{tmp_path_factory.mktemp('upstream')}/relaygate.db"
        with GatewayThread({"models": [openai_model("gpt-4o-mini", oai)], "database": {"url": db},
                            "auth": {"master_key": UPSTREAM_MASTER}}) as g:
            yield g


def front_config(upstream: GatewayThread, db: str, passthrough: bool = True) -> dict[str, Any]:
    config: dict[str, Any] = {
        "models": [{"name": "assistants-upstream", "deployments": [
            {"provider": "openai", "model": "gpt-4o-mini", "api_base": upstream.base_url,
             "api_key": UPSTREAM_MASTER}]}],
        "database": {"url": db}, "prices": {"gpt-4o-mini": {"input_cost_per_token": 0.000001,
                                                             "output_cost_per_token": 0.00001}},
        "auth": {"master_key": MASTER, "keys": [{"id": "a", "key": KEY_A}, {"id": "b", "key": KEY_B}]}}
    if passthrough:
        config["assistants"] = {"passthrough": "assistants-upstream"}
    return config


@pytest.fixture(scope="module")
def gw(upstream: GatewayThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayThread]:
    db = f"sqlite:///{tmp_path_factory.mktemp('front')}/relaygate.db"
    with GatewayThread(front_config(upstream, db)) as g:
        yield g


@pytest.fixture
def client(gw: GatewayThread) -> openai.OpenAI:
    return openai.OpenAI(api_key=KEY_A, base_url=gw.base_url, max_retries=0)


def text_of(message: Any) -> str:
    return "".join(p["text"]["value"] for p in message.model_dump()["content"] if p["type"] == "text")


def test_create_and_poll_runs_at_the_upstream(client: openai.OpenAI, gw: GatewayThread,
                                              upstream: GatewayThread) -> None:
    before = gw.gateway.writer.submitted
    a = client.beta.assistants.create(model="gpt-4o-mini", name="helper", instructions="be kind")
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "hello upstream"}])
    run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=a.id, poll_interval_ms=50)
    assert run.status == "completed" and run.usage is not None and run.usage.total_tokens > 0
    assert "hello upstream" in text_of(client.beta.threads.messages.list(thread.id).data[0])
    # the objects are the upstream's: it answers for them with its own key
    direct = openai.OpenAI(api_key=UPSTREAM_MASTER, base_url=upstream.base_url, max_retries=0)
    assert direct.beta.assistants.retrieve(a.id).name == "helper"
    assert direct.beta.threads.runs.retrieve(run.id, thread_id=thread.id).status == "completed"
    assert client.beta.threads.runs.retrieve(run.id, thread_id=thread.id).status == "completed"  # seen again
    rows = [r for r in gateway_rows(gw, expected=before + 6)[before:] if r["key_id"] == "cfg_a"]
    assert rows and all(r["route"] == "passthrough" and r["status"] == 200 for r in rows)
    # the poll that first saw the run ended carries its usage, at its model's price, once
    [priced] = [r for r in rows if r["completion_tokens"]]
    assert (priced["prompt_tokens"], priced["completion_tokens"]) == (run.usage.prompt_tokens,
                                                                      run.usage.completion_tokens)
    assert priced["cost_nano"] == run.usage.prompt_tokens * 1000 + run.usage.completion_tokens * 10_000


def test_a_run_polled_by_several_requests_at_once_is_charged_once(client: openai.OpenAI, gw: GatewayThread,
                                                                  upstream: GatewayThread) -> None:
    a = client.beta.assistants.create(model="gpt-4o-mini")
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "charge me once"}])
    run = client.beta.threads.runs.create(thread_id=thread.id, assistant_id=a.id)
    direct = openai.OpenAI(api_key=UPSTREAM_MASTER, base_url=upstream.base_url, max_retries=0)
    deadline = time.monotonic() + 20
    while direct.beta.threads.runs.retrieve(run.id, thread_id=thread.id).status != "completed":
        assert time.monotonic() < deadline, "the upstream's run did not end"
        time.sleep(0.05)
    before = gw.gateway.writer.submitted
    with ThreadPoolExecutor(8) as pool:  # eight polls see it ended together
        polls = list(pool.map(lambda _: client.beta.threads.runs.retrieve(run.id, thread_id=thread.id), range(8)))
    assert {p.status for p in polls} == {"completed"}
    rows = gateway_rows(gw, expected=before + 8)[before:]
    assert len([r for r in rows if r["completion_tokens"]]) == 1


def test_a_streamed_run_is_relayed_event_by_event_and_priced_by_its_usage(client: openai.OpenAI,
                                                                          gw: GatewayThread) -> None:
    a = client.beta.assistants.create(model="gpt-4o-mini")
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "stream me through"}])
    before = gw.gateway.writer.submitted
    final, seen, events = stream_run(client, thread.id, a.id)
    assert final.status == "completed" and "stream me through" in "".join(seen) and len(seen) > 1
    assert events[:3] == ["thread.run.created", "thread.run.queued", "thread.run.in_progress"]
    assert events[-1] == "thread.run.completed"
    assert text_of(client.beta.threads.messages.list(thread.id).data[0]) == "".join(seen)
    rows = gateway_rows(gw, expected=before + 2)[before:]  # (in order: the module's gateway logs every call)
    [row] = [r for r in rows if r["completion_tokens"] and r["key_id"] == "cfg_a"]
    assert final.usage is not None and row["completion_tokens"] == final.usage.completion_tokens
    assert row["prompt_tokens"] == final.usage.prompt_tokens
    assert row["cost_nano"] == final.usage.prompt_tokens * 1000 + final.usage.completion_tokens * 10_000


def test_a_streamed_thread_and_run_records_its_new_thread(client: openai.OpenAI) -> None:
    a = client.beta.assistants.create(model="gpt-4o-mini")
    stream = client.beta.threads.create_and_run(assistant_id=a.id, stream=True,
                                                thread={"messages": [{"role": "user", "content": "new thread"}]})
    events = list(stream)
    assert events[0].event == "thread.created" and events[-1].event == "thread.run.completed"
    thread_id = events[0].data.id
    assert client.beta.threads.retrieve(thread_id).id == thread_id  # recorded for this owner
    polled = client.beta.threads.create_and_run_poll(assistant_id=a.id, poll_interval_ms=50,
                                                     thread={"messages": [{"role": "user", "content": "again"}]})
    assert polled.status == "completed" and client.beta.threads.retrieve(polled.thread_id).id == polled.thread_id


def test_tool_outputs_and_paginated_messages(client: openai.OpenAI) -> None:
    a = client.beta.assistants.create(model="gpt-4o-mini", tools=[WEATHER])
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "Paris"}])
    run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=a.id, poll_interval_ms=50)
    assert run.status == "requires_action" and run.required_action is not None
    calls = run.required_action.submit_tool_outputs.tool_calls
    assert json.loads(calls[0].function.arguments) == {"city": "Paris"}
    done = client.beta.threads.runs.submit_tool_outputs_and_poll(
        run_id=run.id, thread_id=thread.id, tool_outputs=[{"tool_call_id": calls[0].id, "output": "sunny, 21C"}],
        poll_interval_ms=50)
    assert done.status == "completed" and "sunny, 21C" in text_of(client.beta.threads.messages.list(thread.id).data[0])
    for i in range(3):
        client.beta.threads.messages.create(thread.id, role="user", content=f"note {i}")
    page = client.beta.threads.messages.list(thread.id, limit=2, order="asc")
    assert len(page.data) == 2 and page.has_more
    assert len(list(client.beta.threads.messages.list(thread.id, limit=2))) == 5  # auto-pagination


def test_another_key_gets_404_for_the_upstreams_objects(gw: GatewayThread, client: openai.OpenAI) -> None:
    a = client.beta.assistants.create(model="gpt-4o-mini", name="mine")
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "private"}])
    other = openai.OpenAI(api_key=KEY_B, base_url=gw.base_url, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        other.beta.assistants.retrieve(a.id)
    with pytest.raises(openai.NotFoundError):
        other.beta.threads.messages.list(thread.id)
    with pytest.raises(openai.NotFoundError):
        other.beta.threads.delete(thread.id)
    theirs = other.beta.threads.create()
    with pytest.raises(openai.NotFoundError) as e:  # A's assistant cannot be run on B's thread
        other.beta.threads.runs.create(thread_id=theirs.id, assistant_id=a.id)
    assert e.value.body["param"] == "assistant_id"  # type: ignore[index]
    mine = {x.id for x in client.beta.assistants.list(limit=100)}
    assert a.id in mine and a.id not in {x.id for x in other.beta.assistants.list(limit=100)}
    admin = {"authorization": f"Bearer {MASTER}"}
    listed = httpx.get(gw.url + "/admin/objects", params={"kind": "forwarded", "limit": 100}, headers=admin,
                       timeout=10).json()["data"]
    assert {"id": a.id, "owner": "key:cfg_a", "object": {"object": "assistant"}}.items() <= \
        next(o for o in listed if o["id"] == a.id).items()
    assert client.beta.assistants.delete(a.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.beta.assistants.retrieve(a.id)


def test_assistant_lists_page_over_the_callers_own(gw: GatewayThread, client: openai.OpenAI) -> None:
    k = new_key(gw, team_id="list-team")
    team = openai.OpenAI(api_key=k["key"], base_url=gw.base_url, max_retries=0)
    made = [team.beta.assistants.create(model="gpt-4o-mini", name=f"t{i}").id for i in range(3)]
    client.beta.assistants.create(model="gpt-4o-mini", name="not the team's")  # between them upstream
    made.append(team.beta.assistants.create(model="gpt-4o-mini", name="t3").id)
    page = team.beta.assistants.list(limit=2, order="asc")
    assert [x.id for x in page.data] == made[:2] and page.has_more
    assert [x.id for x in team.beta.assistants.list(limit=2, order="asc")] == made  # auto-pagination


def test_runs_are_refused_to_a_budget_they_would_escape(gw: GatewayThread) -> None:
    k = new_key(gw, budget_usd=1.0, budget_period="day")
    c = openai.OpenAI(api_key=k["key"], base_url=gw.base_url, max_retries=0)
    a = c.beta.assistants.create(model="gpt-4o-mini")  # managing objects is free
    thread = c.beta.threads.create()
    with pytest.raises(openai.PermissionDeniedError) as e:
        c.beta.threads.runs.create(thread_id=thread.id, assistant_id=a.id)
    assert e.value.code == "unpriced_request"


def test_the_upstreams_errors_come_back_in_openais_format_without_its_secrets(
        gw: GatewayThread, client: openai.OpenAI) -> None:
    thread = client.beta.threads.create()
    r = httpx.post(f"{gw.base_url}/threads/{thread.id}/runs", json={"assistant_id": 42},
                   headers={"authorization": f"Bearer {KEY_A}"}, timeout=10)
    assert r.status_code == 404 and r.json()["error"]["param"] == "assistant_id"
    r = httpx.post(f"{gw.base_url}/threads/{thread.id}/messages", json={"role": "robot", "content": "x"},
                   headers={"authorization": f"Bearer {KEY_A}"}, timeout=10)
    assert r.status_code == 400 and "error" in r.json() and UPSTREAM_MASTER not in r.text
    r = httpx.get(f"{gw.base_url}/assistants", headers={"authorization": "Bearer sk-wrong"}, timeout=10)
    assert r.status_code == 401


def test_hosted_is_the_default_and_its_objects_stay_hosted_after_a_switch(upstream: GatewayThread,
                                                                          tmp_path: Any) -> None:
    db = f"sqlite:///{tmp_path}/relaygate.db"
    direct = openai.OpenAI(api_key=UPSTREAM_MASTER, base_url=upstream.base_url, max_retries=0)
    with GatewayThread(front_config(upstream, db, passthrough=False)) as g:
        c = openai.OpenAI(api_key=KEY_A, base_url=g.base_url, max_retries=0)
        a = c.beta.assistants.create(model="assistants-upstream")
        with pytest.raises(openai.NotFoundError):  # hosted here: the upstream never saw it
            direct.beta.assistants.retrieve(a.id)
        with pytest.raises(openai.NotFoundError) as e:
            c.vector_stores.list()
        assert "assistants.passthrough" in e.value.message
        thread = c.beta.threads.create(messages=[{"role": "user", "content": "kept here"}])
    with GatewayThread(front_config(upstream, db)) as g:  # now forwarding: what was hosted stays hosted
        c = openai.OpenAI(api_key=KEY_A, base_url=g.base_url, max_retries=0)
        assert c.beta.assistants.retrieve(a.id).model == "assistants-upstream"
        run = c.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=a.id, poll_interval_ms=50)
        assert run.status == "completed" and "kept here" in text_of(c.beta.threads.messages.list(thread.id).data[0])
        new = c.beta.assistants.create(model="gpt-4o-mini")
        assert direct.beta.assistants.retrieve(new.id).id == new.id  # a new one is the upstream's
        other = openai.OpenAI(api_key=KEY_B, base_url=g.base_url, max_retries=0)
        with pytest.raises(openai.NotFoundError):
            other.beta.assistants.retrieve(a.id)


def test_config_refuses_an_unknown_passthrough_model(upstream: GatewayThread) -> None:
    config = front_config(upstream, "sqlite:///x.db")
    config["assistants"] = {"passthrough": "nope"}
    with pytest.raises(ConfigError, match="assistants.passthrough: no model named 'nope'"):
        parse_config(config, {})


def test_vector_stores_are_forwarded_and_owned(tmp_path: Any) -> None:
    """Vector stores (the OpenAI emulator's) through the passthrough: recorded for their owner, listed and
    read by it alone, and another key cannot name one in an assistant's ``tool_resources``."""
    with BackgroundServer(create_openai_app(OpenAIEmulatorOptions(api_key=UPSTREAM_KEY))) as oai:
        config = {"models": [openai_model("vs-upstream", oai)], "assistants": {"passthrough": "vs-upstream"},
                  "database": {"url": f"sqlite:///{tmp_path}/relaygate.db"},
                  "auth": {"master_key": MASTER, "keys": [{"id": "a", "key": KEY_A}, {"id": "b", "key": KEY_B}]}}
        with GatewayThread(config) as g:
            a = openai.OpenAI(api_key=KEY_A, base_url=g.base_url, max_retries=0)
            b = openai.OpenAI(api_key=KEY_B, base_url=g.base_url, max_retries=0)
            mine = [a.vector_stores.create(name=f"kb{i}").id for i in range(3)]
            theirs = b.vector_stores.create(name="other").id
            assert a.vector_stores.retrieve(mine[0]).name == "kb0"
            assert [v.id for v in a.vector_stores.list(order="asc")] == mine
            assert [v.id for v in b.vector_stores.list()] == [theirs]
            with pytest.raises(openai.NotFoundError):
                b.vector_stores.retrieve(mine[0])
            with pytest.raises(openai.NotFoundError) as e:
                b.beta.assistants.create(model="gpt-4o-mini", tools=[{"type": "file_search"}],
                                         tool_resources={"file_search": {"vector_store_ids": [mine[0]]}})
            assert e.value.body["param"] == "tool_resources"  # type: ignore[index]
            assert a.vector_stores.delete(mine[0]).deleted
            with pytest.raises(openai.NotFoundError):
                a.vector_stores.retrieve(mine[0])
