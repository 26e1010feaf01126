"""A conversation longer than its model takes: the Responses API's ``truncation: auto`` and an Assistants run's
``truncation_strategy``/``max_prompt_tokens``/``max_completion_tokens`` drop the oldest turns to fit (on any
model, through the gateway's condensation) instead of failing; ``truncation: disabled`` keeps OpenAI's
context-length error."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from relaygate.testing.base import BackgroundServer
from relaygate.testing.gateway import GatewayThread
from relaygate.testing.openai import OpenAIEmulatorOptions
from relaygate.testing.openai import create_app as create_openai_app

from .conftest import UPSTREAM_KEY, openai_model

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the SDK marks Assistants deprecated
SMALL_WINDOW = 60  # emulated tokens gpt-4o-mini takes here: two turns of 20 words fit, three do not
WEATHER: Any = {"type": "function", "function": {
    "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                          "required": ["city"]}}}


def words(tag: str, n: int = 20) -> str:
    return " ".join(f"{tag}{i}" for i in range(n))


@pytest.fixture(scope="module")
def upstream() -> Iterator[BackgroundServer]:
    opts = OpenAIEmulatorOptions(api_key=UPSTREAM_KEY, context_windows={"gpt-4o-mini": SMALL_WINDOW})
    with BackgroundServer(create_openai_app(opts)) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(upstream: BackgroundServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[openai.OpenAI]:
    db = f"sqlite:///{tmp_path_factory.mktemp('truncation')}/relaygate.db"
    config = {"models": [openai_model("small", upstream), openai_model("roomy", upstream, "gpt-4o")],
              "database": {"url": db}}
    with GatewayThread(config) as gw:
        yield openai.OpenAI(api_key="sk-none", base_url=gw.base_url, max_retries=0)


def chat_sent(upstream: BackgroundServer) -> list[dict[str, Any]]:
    return [r["json"] for r in upstream.state.requests if r["path"] == "/v1/chat/completions"]


@pytest.fixture(autouse=True)
def fresh(upstream: BackgroundServer) -> None:
    upstream.state.requests.clear()


@pytest.mark.parametrize("truncation", [None, "disabled"])
def test_a_conversation_too_long_fails_unless_truncation_is_auto(client: openai.OpenAI, truncation: str | None) -> None:
    first = client.responses.create(model="small", input=words("a"))
    extra: Any = {"truncation": truncation} if truncation else {}
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="small", input=words("b"), previous_response_id=first.id, **extra)
    assert e.value.code == "context_length_exceeded"


def test_truncation_auto_drops_the_oldest_turns_to_fit(client: openai.OpenAI, upstream: BackgroundServer) -> None:
    first = client.responses.create(model="small", input=words("a"), instructions="be brief")
    second = client.responses.create(model="small", input=words("b"), previous_response_id=first.id,
                                     instructions="be brief", truncation="auto")
    assert second.status == "completed" and second.truncation == "auto" and words("b") in second.output_text
    tried, fitted = chat_sent(upstream)[-2:]  # refused with the whole conversation, then answered without its start
    assert len(tried["messages"]) == 4
    assert fitted["messages"] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": words("b")}]
    # the stored conversation keeps every turn: a later call on a roomier model gets them all
    third = client.responses.create(model="roomy", input="c", previous_response_id=second.id)
    assert len(chat_sent(upstream)[-1]["messages"]) == 5 and "[turn 3]" in third.output_text


def test_run_prompt_is_shortened_to_max_prompt_tokens(client: openai.OpenAI, upstream: BackgroundServer) -> None:
    a = client.beta.assistants.create(model="roomy", instructions="short")
    thread = client.beta.threads.create(messages=[{"role": "user", "content": words(t)} for t in ("x", "y", "z")])
    run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=a.id, max_prompt_tokens=40)
    assert run.status == "completed"
    sent = chat_sent(upstream)[-1]["messages"]
    assert sent == [{"role": "system", "content": "short"}, {"role": "user", "content": words("z")}]


def test_run_with_truncation_auto_fits_a_thread_the_window_cannot_hold(client: openai.OpenAI) -> None:
    a = client.beta.assistants.create(model="small")
    thread = client.beta.threads.create(messages=[{"role": "user", "content": words(t)} for t in ("x", "y", "z")])
    run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=a.id)
    assert run.status == "completed"
    last = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=a.id,
                                                    truncation_strategy={"type": "last_messages", "last_messages": 3})
    assert last.status == "failed" and last.last_error is not None  # three messages of 20 words do not fit 60


def test_run_ends_incomplete_once_its_steps_used_max_prompt_tokens(client: openai.OpenAI) -> None:
    a = client.beta.assistants.create(model="roomy", tools=[WEATHER])
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "weather in Paris?"}])
    run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=a.id, max_prompt_tokens=5)
    assert run.status == "requires_action" and run.usage is not None and run.usage.prompt_tokens >= 5
    calls = run.required_action.submit_tool_outputs.tool_calls  # type: ignore[union-attr]
    run = client.beta.threads.runs.submit_tool_outputs_and_poll(
        run_id=run.id, thread_id=thread.id, tool_outputs=[{"tool_call_id": c.id, "output": "sunny"} for c in calls])
    assert run.status == "incomplete" and run.incomplete_details is not None
    assert run.incomplete_details.reason == "max_prompt_tokens"


def test_max_completion_tokens_holds_over_the_whole_run(client: openai.OpenAI, upstream: BackgroundServer) -> None:
    a = client.beta.assistants.create(model="roomy", tools=[WEATHER])
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "weather in Rome?"}])
    run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=a.id, max_completion_tokens=12)
    assert run.status == "requires_action" and run.usage is not None
    used = run.usage.completion_tokens
    calls = run.required_action.submit_tool_outputs.tool_calls  # type: ignore[union-attr]
    client.beta.threads.runs.submit_tool_outputs_and_poll(
        run_id=run.id, thread_id=thread.id, tool_outputs=[{"tool_call_id": c.id, "output": "rain"} for c in calls])
    assert chat_sent(upstream)[-1]["max_completion_tokens"] == 12 - used  # what the first step left
