"""The openai SDK's beta Assistants calls → relaygate's hosted Assistants API → any configured model (the OpenAI
and Anthropic emulators): assistants, threads, messages, runs polled and streamed, function tools answered with
submit_tool_outputs, pagination, cancel, ownership, a restart."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai import AssistantEventHandler

from relaygate.api.assistants.runner import settle_stale
from relaygate.store.objects import Stored
from relaygate.testing import anthropic as anthropic_emu
from relaygate.testing.base import BackgroundServer, FaultPlan
from relaygate.testing.gateway import GatewayThread
from relaygate.testing.openai import OpenAIEmulatorOptions
from relaygate.testing.openai import create_app as create_openai_app

from .conftest import UPSTREAM_KEY, openai_model

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the SDK marks Assistants deprecated

CLAUDE_KEY = "sk-ant-upstream-key-000000000000"
MASTER = "sk-master-" + "3e8b1d6f" * 5
KEY_A = "sk-app-a-5b0e9d2c7a41f8e36b9c0d5a2e7f14c8b3d6a9e0"
KEY_B = "sk-app-b-c8e2a5f1b94d07e3a6c1f8b2d5e09a4c7f3b6d1e"
WEATHER: Any = {"type": "function", "function": {
    "name": "get_weather", "description": "weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


@pytest.fixture(scope="module")
def upstreams() -> Iterator[dict[str, BackgroundServer]]:
    with BackgroundServer(create_openai_app(OpenAIEmulatorOptions(api_key=UPSTREAM_KEY))) as oai, \
            BackgroundServer(anthropic_emu.create_app(
                anthropic_emu.AnthropicEmulatorOptions(api_key=CLAUDE_KEY))) as claude:
        yield {"openai": oai, "anthropic": claude}


def gateway_config(upstreams: dict[str, BackgroundServer], db: str) -> dict[str, Any]:
    return {"models": [
        openai_model("gpt", upstreams["openai"]),
        {"name": "claude", "deployments": [{"provider": "anthropic", "model": "claude-haiku-4-5",
                                            "api_base": upstreams["anthropic"].url, "api_key": CLAUDE_KEY}]},
    ], "database": {"url": db},
        "auth": {"master_key": MASTER, "keys": [{"id": "a", "key": KEY_A}, {"id": "b", "key": KEY_B}]}}


@pytest.fixture(scope="module")
def gw(upstreams: dict[str, BackgroundServer],
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayThread]:
    db = f"sqlite:///{tmp_path_factory.mktemp('assistants')}/relaygate.db"
    with GatewayThread(gateway_config(upstreams, db)) as g:
        yield g


@pytest.fixture
def client(gw: GatewayThread, upstreams: dict[str, BackgroundServer]) -> openai.OpenAI:
    for emu in upstreams.values():
        emu.state.faults = None
    return openai.OpenAI(api_key=KEY_A, base_url=gw.base_url, max_retries=0)


def text_of(message: Any) -> str:
    return "".join(p["text"]["value"] for p in message.model_dump()["content"] if p["type"] == "text")


@pytest.mark.parametrize("model", ("gpt", "claude"))
def test_create_and_poll_answers_in_the_thread(client: openai.OpenAI, model: str,
                                                upstreams: dict[str, BackgroundServer]) -> None:
    a = client.beta.assistants.create(model=model, name="helper", instructions="be kind")
    assert a.id.startswith("asst_") and a.object == "assistant" and a.model == model
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "hello there"}])
    client.beta.threads.messages.create(thread.id, role="user", content="second question")
    run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=a.id,
                                                    additional_instructions="and brief")
    assert run.status == "completed" and run.usage is not None and run.usage.completion_tokens > 0
    assert run.completed_at is not None and run.started_at is not None
    msgs = client.beta.threads.messages.list(thread.id)
    assert [m.role for m in msgs.data] == ["assistant", "user", "user"]  # newest first
    reply = msgs.data[0]
    assert reply.run_id == run.id and reply.assistant_id == a.id
    assert "second question" in text_of(reply) and "be kind" in text_of(reply) and "and brief" in text_of(reply)
    assert model == "claude" or "[turn 2]" in text_of(reply)  # (Claude's turns are merged: one user turn)
    steps = client.beta.threads.runs.steps.list(run.id, thread_id=thread.id)
    assert [s.type for s in steps.data] == ["message_creation"]
    assert steps.data[0].model_dump()["step_details"]["message_creation"]["message_id"] == reply.id


def stream_run(client: openai.OpenAI, thread_id: str, assistant_id: str) -> tuple[Any, list[str], list[str]]:
    """``runs.stream`` with an event handler: the final run, the text deltas, the events' names."""
    seen: list[str] = []
    events: list[str] = []

    class Handler(AssistantEventHandler):
        def on_text_delta(self, delta: Any, snapshot: Any) -> None:
            seen.append(delta.value)

        def on_event(self, event: Any) -> None:
            events.append(event.event)

    with client.beta.threads.runs.stream(thread_id=thread_id, assistant_id=assistant_id, event_handler=Handler()) as s:
        s.until_done()
        return s.get_final_run(), seen, events


def test_stream_with_an_event_handler(client: openai.OpenAI) -> None:
    a = client.beta.assistants.create(model="gpt")
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "stream me please"}])
    final, seen, events = stream_run(client, thread.id, a.id)
    assert final.status == "completed" and "stream me please" in "".join(seen) and len(seen) > 1
    assert events[:3] == ["thread.run.created", "thread.run.queued", "thread.run.in_progress"]
    assert events[-1] == "thread.run.completed" and "thread.message.completed" in events
    assert text_of(client.beta.threads.messages.list(thread.id).data[0]) == "".join(seen)


@pytest.mark.parametrize("model", ("gpt", "claude"))
def test_function_tool_answered_with_submit_tool_outputs(client: openai.OpenAI, model: str) -> None:
    a = client.beta.assistants.create(model=model, tools=[WEATHER])
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "Paris"}])
    run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=a.id)
    assert run.status == "requires_action" and run.required_action is not None
    calls = run.required_action.submit_tool_outputs.tool_calls
    assert calls[0].function.name == "get_weather" and json.loads(calls[0].function.arguments) == {"city": "Paris"}
    done = client.beta.threads.runs.submit_tool_outputs_and_poll(
        run_id=run.id, thread_id=thread.id, tool_outputs=[{"tool_call_id": calls[0].id, "output": "sunny, 21C"}])
    assert done.status == "completed" and done.required_action is None
    assert "sunny, 21C" in text_of(client.beta.threads.messages.list(thread.id).data[0])
    steps = client.beta.threads.runs.steps.list(run.id, thread_id=thread.id, order="asc").model_dump()["data"]
    # (Claude may say something before it calls the tool: a message step first)
    assert [s["type"] for s in steps][-2:] == ["tool_calls", "message_creation"]
    assert steps[-2]["step_details"]["tool_calls"][0]["function"]["output"] == "sunny, 21C"


def test_messages_page_with_limit_after_and_order(client: openai.OpenAI) -> None:
    thread = client.beta.threads.create()
    ids = [client.beta.threads.messages.create(thread.id, role="user", content=f"m{i}").id for i in range(5)]
    first = client.beta.threads.messages.list(thread.id, limit=2, order="asc")
    assert [m.id for m in first.data] == ids[:2] and first.has_more
    second = client.beta.threads.messages.list(thread.id, limit=2, order="asc", after=ids[1])
    assert [m.id for m in second.data] == ids[2:4]
    every = [m.id for m in client.beta.threads.messages.list(thread.id, limit=2, order="asc")]  # auto-paginates
    assert every == ids
    back = client.beta.threads.messages.list(thread.id, limit=2, order="desc", before=ids[1])
    assert [m.id for m in back.data] == [ids[3], ids[2]]


def test_cancel_a_run_waiting_for_tools(client: openai.OpenAI) -> None:
    a = client.beta.assistants.create(model="gpt", tools=[WEATHER])
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "Rome"}])
    run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=a.id, tool_choice="required")
    assert run.status == "requires_action"
    cancelled = client.beta.threads.runs.cancel(run.id, thread_id=thread.id)
    assert cancelled.status == "cancelled" and cancelled.cancelled_at is not None
    with pytest.raises(openai.BadRequestError):
        client.beta.threads.runs.submit_tool_outputs(run.id, thread_id=thread.id,
                                                     tool_outputs=[{"tool_call_id": "x", "output": "y"}])


def test_cancel_a_run_in_progress(client: openai.OpenAI, upstreams: dict[str, BackgroundServer]) -> None:
    upstreams["openai"].state.faults = FaultPlan(latency_ms=3000)
    a = client.beta.assistants.create(model="gpt")
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "slow"}])
    run = client.beta.threads.runs.create(thread_id=thread.id, assistant_id=a.id)
    assert run.status == "queued"
    time.sleep(0.2)
    assert client.beta.threads.runs.cancel(run.id, thread_id=thread.id).status == "cancelled"
    assert client.beta.threads.runs.retrieve(run.id, thread_id=thread.id).status == "cancelled"


def test_create_thread_and_run(client: openai.OpenAI) -> None:
    a = client.beta.assistants.create(model="claude")
    run = client.beta.threads.create_and_run_poll(assistant_id=a.id, thread={
        "messages": [{"role": "user", "content": "in one go"}], "metadata": {"k": "v"}})
    assert run.status == "completed"
    assert client.beta.threads.retrieve(run.thread_id).metadata == {"k": "v"}
    assert "in one go" in text_of(client.beta.threads.messages.list(run.thread_id).data[0])


def test_assistants_are_listed_modified_and_deleted(client: openai.OpenAI) -> None:
    a = client.beta.assistants.create(model="gpt", name="first", metadata={"team": "x"})
    assert client.beta.assistants.update(a.id, name="renamed").name == "renamed"
    assert a.id in [x.id for x in client.beta.assistants.list(limit=100)]
    assert client.beta.assistants.delete(a.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.beta.assistants.retrieve(a.id)


def test_another_key_gets_404(gw: GatewayThread, client: openai.OpenAI) -> None:
    a = client.beta.assistants.create(model="gpt")
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "mine"}])
    run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=a.id)
    other = openai.OpenAI(api_key=KEY_B, base_url=gw.base_url, max_retries=0)
    for get in (lambda: other.beta.assistants.retrieve(a.id), lambda: other.beta.threads.retrieve(thread.id),
                lambda: other.beta.threads.messages.list(thread.id),
                lambda: other.beta.threads.runs.retrieve(run.id, thread_id=thread.id),
                lambda: other.beta.threads.delete(thread.id)):
        with pytest.raises(openai.NotFoundError):
            get()
    other_thread = other.beta.threads.create()
    with pytest.raises(openai.NotFoundError):
        other.beta.threads.runs.create(thread_id=other_thread.id, assistant_id=a.id)
    assert a.id not in [x.id for x in other.beta.assistants.list()]


def test_hosted_only_tools_get_a_clear_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.beta.assistants.create(model="gpt", tools=[{"type": "code_interpreter"}])
    assert "code_interpreter" in e.value.message and e.value.code == "unsupported_tool"


def test_a_failing_model_fails_the_run_with_its_error(client: openai.OpenAI,
                                                      upstreams: dict[str, BackgroundServer]) -> None:
    upstreams["openai"].state.faults = FaultPlan(status=429, retry_after=0)
    a = client.beta.assistants.create(model="gpt")
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "x"}])
    run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=a.id)
    assert run.status == "failed" and run.last_error is not None and run.last_error.code == "rate_limit_exceeded"


def test_runs_and_threads_survive_a_restart(upstreams: dict[str, BackgroundServer], tmp_path: Any) -> None:
    config = gateway_config(upstreams, f"sqlite:///{tmp_path}/restart.db")
    upstreams["openai"].state.faults = FaultPlan(latency_ms=5000)
    with GatewayThread(config) as g:
        c = openai.OpenAI(api_key=KEY_A, base_url=g.base_url, max_retries=0)
        a = c.beta.assistants.create(model="gpt")
        thread = c.beta.threads.create(messages=[{"role": "user", "content": "interrupted"}])
        run = c.beta.threads.runs.create(thread_id=thread.id, assistant_id=a.id)
        time.sleep(0.2)
    upstreams["openai"].state.faults = None
    with GatewayThread(config) as g:
        c = openai.OpenAI(api_key=KEY_A, base_url=g.base_url, max_retries=0)
        cut = c.beta.threads.runs.retrieve(run.id, thread_id=thread.id)
        assert cut.status == "failed" and cut.last_error is not None and "stopped" in cut.last_error.message
        again = c.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=a.id)
        assert again.status == "completed"
        assert "interrupted" in text_of(c.beta.threads.messages.list(thread.id).data[0])


def test_a_run_whose_gateway_died_fails_once_its_lease_passed() -> None:
    run = Stored(id="run_x", kind="run", owner="", data={"status": "in_progress"},
                 extra={"lease_until": time.time() + 60})
    assert not settle_stale(run, running=False) and run.data["status"] == "in_progress"  # still leased
    assert run.extra is not None
    run.extra["lease_until"] = time.time() - 1
    assert not settle_stale(run, running=True)  # executing here: never failed under its own feet
    assert settle_stale(run, running=False) and run.data["status"] == "failed"
    assert "stopped" in run.data["last_error"]["message"]
    waiting = Stored(id="run_y", kind="run", owner="", data={"status": "requires_action",
                                                             "expires_at": time.time() - 1})
    assert settle_stale(waiting, running=False) and waiting.data["status"] == "expired"


def test_bad_ids_and_routes_get_openai_errors(gw: GatewayThread) -> None:
    h = {"authorization": f"Bearer {KEY_A}"}
    r = httpx.get(gw.base_url + "/threads/" + "x" * 300, headers=h)
    assert r.status_code == 404 and r.json()["error"]["message"]
    r = httpx.post(gw.base_url + "/threads", headers=h, json={"messages": [{"role": "robot", "content": "x"}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages[0].role"
    r = httpx.post(gw.base_url + "/assistants", headers=h, json={"name": "no model"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"
