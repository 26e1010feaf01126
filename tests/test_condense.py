"""Context condensation: a conversation longer than the model's window is shortened, not failed; both
triggers, both strategies, tool pairs intact, summaries reused, a failing summarizer, the estimate."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import httpx
import pytest

from relaygate.catalog.context import ContextWindows
from relaygate.condense.layer import SUMMARY_INTRO, cut_for, units_of
from relaygate.condense.tokens import message_tokens, prompt_tokens, text_tokens
from relaygate.config import CondenseConfig
from relaygate.providers.echo import count_tokens
from relaygate.testing.base import BackgroundServer, FaultPlan, free_port
from relaygate.testing.gateway import GatewayThread
from relaygate.testing.openai import OpenAIEmulatorOptions, create_app

from .conftest import UPSTREAM_KEY, openai_model
from .test_keys import MASTER
from .test_requestlog import gateway_rows

TINY = "tiny-model"  # the emulator refuses prompts over 300 of its tokens for this one
WORDS = " ".join(f"word{i}" for i in range(40))  # 40 emulated tokens, ~110 estimated


@pytest.fixture
def emu() -> Iterator[BackgroundServer]:
    opts = OpenAIEmulatorOptions(api_key=UPSTREAM_KEY, models=("gpt-4o-mini", TINY),
                                 context_windows={TINY: 300})
    with BackgroundServer(create_app(opts)) as srv:
        yield srv


def conversation(turns: int, tool_at: int | None = None) -> list[dict[str, Any]]:
    """A system prompt, a first user message, then ``turns`` user/assistant pairs (a tool call and its
    result in turn ``tool_at``), ending with a user question."""
    out: list[dict[str, Any]] = [{"role": "system", "content": "You are terse."},
                                 {"role": "user", "content": "first question " + WORDS}]
    for i in range(turns):
        out.append({"role": "assistant", "content": f"answer {i} " + WORDS})
        if i == tool_at:
            out.append({"role": "user", "content": "weather in Paris?"})
            out.append({"role": "assistant", "content": None, "tool_calls": [
                {"id": f"call_{i}", "type": "function", "function": {"name": "get_weather",
                                                                   "arguments": '{"city": "Paris"}'}}]})
            out.append({"role": "tool", "tool_call_id": f"call_{i}", "content": "sunny " + WORDS})
            out.append({"role": "assistant", "content": "It is sunny."})
        out.append({"role": "user", "content": f"question {i + 1} " + WORDS})
    return out


def sent(emu: BackgroundServer, model: str | None = None) -> list[dict[str, Any]]:
    return [r["json"] for r in emu.state.requests if r["path"].endswith("/chat/completions")
            and (model is None or r["json"]["model"] == model)]


def chat(gw: GatewayThread, model: str, messages: list[dict[str, Any]]) -> httpx.Response:
    return httpx.post(gw.base_url + "/chat/completions", json={"model": model, "messages": messages}, timeout=10)


def assert_whole_tool_pairs(messages: list[dict[str, Any]]) -> None:
    asked = {tc["id"] for m in messages for tc in m.get("tool_calls") or ()}
    answered = {m["tool_call_id"] for m in messages if m["role"] == "tool"}
    assert asked == answered


@pytest.fixture
def gw(emu: BackgroundServer, start_gateway: Callable[..., GatewayThread]) -> GatewayThread:
    return start_gateway({"models": [
        {**openai_model("windowed", emu), "condense": {"context_window": 1000, "headroom": 0, "keep_last": 2}},
        {**openai_model("reactive", emu, upstream_model=TINY), "condense": {"keep_last": 2}},
        {**openai_model("summarized", emu), "condense": {"context_window": 1000, "headroom": 0, "keep_last": 2,
                                                         "strategy": "summarize", "summarizer": "writer",
                                                         "summary_max_tokens": 40}},
        {**openai_model("broken-summary", emu), "condense": {
            "context_window": 1000, "headroom": 0, "keep_last": 2, "strategy": "summarize",
            "summarizer": "dead"}},
        openai_model("writer", emu, upstream_model="gpt-4o-mini"),
        {"name": "dead", "deployments": [{"provider": "openai", "model": "x", "api_key": "k", "timeout": 2,
                                          "api_base": f"http://127.0.0.1:{free_port('127.0.0.1')}/v1"}]},
        openai_model("plain", emu, upstream_model=TINY)]})


def test_a_conversation_over_the_window_is_truncated_in_the_middle(gw: GatewayThread, emu: BackgroundServer) -> None:
    messages = conversation(12, tool_at=6)
    assert prompt_tokens({"messages": messages}) > 1000
    r = chat(gw, "windowed", messages)
    assert r.status_code == 200, r.text
    assert r.headers["x-relaygate-condensed"] == "truncate_middle"
    assert int(r.headers["x-relaygate-condensed-tokens"]) > 0
    got = sent(emu)[-1]["messages"]
    assert got[:2] == messages[:2]  # the system prompt and the pinned first user message
    assert got[-2:] == messages[-2:]  # the newest turns
    assert prompt_tokens({"messages": got}) <= 1000
    assert got[2]["role"] == "user"  # resumes on a user turn
    assert_whole_tool_pairs(got)
    short = chat(gw, "windowed", messages[:4])
    assert "x-relaygate-condensed" not in short.headers and sent(emu)[-1]["messages"] == messages[:4]


def test_an_upstream_context_error_condenses_and_tries_once_more(gw: GatewayThread, emu: BackgroundServer) -> None:
    messages = conversation(8)
    assert count_tokens({"messages": messages}) > 300
    assert chat(gw, "plain", messages).status_code == 400  # without condensation: the upstream's error
    before = len(sent(emu, TINY))
    r = chat(gw, "reactive", messages)
    assert r.status_code == 200, r.text
    assert r.headers["x-relaygate-condensed"] == "truncate_middle"
    tried = sent(emu, TINY)[before:]
    assert len(tried) == 2 and len(tried[1]["messages"]) < len(tried[0]["messages"])
    assert count_tokens(tried[1]) <= 300


def test_tool_calls_and_their_results_are_never_split() -> None:
    messages = conversation(12, tool_at=3)
    settings = CondenseConfig(keep_last=1)
    head, units = units_of(messages, True)
    for budget in range(0, 3000, 37):
        cut = cut_for(head, units, budget, 1)
        kept = head + [m for u in units[cut:] for m in u]
        assert_whole_tool_pairs(kept)
    assert settings.pin_first_user and head == messages[:2]


def test_summarize_replaces_the_oldest_turns_and_the_summary_is_reused(gw: GatewayThread,
                                                                       emu: BackgroundServer) -> None:
    messages = conversation(12, tool_at=2)
    r = chat(gw, "summarized", messages)
    assert r.status_code == 200 and r.headers["x-relaygate-condensed"] == "summarize"
    summaries = [b for b in sent(emu) if b["messages"][0]["content"].startswith("Summarize")]
    assert len(summaries) == 1 and "get_weather" in summaries[0]["messages"][1]["content"]
    got = sent(emu)[-1]["messages"]
    assert got[0] == messages[0] and got[1]["role"] == "system" and got[1]["content"].startswith(SUMMARY_INTRO)
    assert got[2] == messages[1] and got[-1] == messages[-1]
    # the turns kept fit half the window (room for the next turns to reuse the summary), the summary beside
    assert prompt_tokens({"messages": got}) - message_tokens(got[1]) <= 500
    # the next turn of the same conversation reuses the summary: no second summarizer call
    longer = messages + [{"role": "assistant", "content": "more " + WORDS}, {"role": "user", "content": "and?"}]
    r = chat(gw, "summarized", longer)
    assert r.status_code == 200 and r.headers["x-relaygate-condensed"] == "summarize"
    assert len([b for b in sent(emu) if b["messages"][0]["content"].startswith("Summarize")]) == 1
    assert gw.gateway.condense.stats.summaries_reused == 1
    assert sent(emu)[-1]["messages"][1] == got[1]


def test_a_failing_summarizer_falls_back_to_truncation(gw: GatewayThread, emu: BackgroundServer) -> None:
    r = chat(gw, "broken-summary", conversation(12))
    assert r.status_code == 200 and r.headers["x-relaygate-condensed"] == "truncate_middle"
    assert gw.gateway.condense.stats.summary_failures == 1


def test_a_long_conversation_through_the_anthropic_sdk(gw: GatewayThread, emu: BackgroundServer) -> None:
    messages = [m for m in conversation(12) if m["role"] != "system"]
    client = anthropic.Anthropic(base_url=gw.url, api_key="k", max_retries=0)
    raw = client.messages.with_raw_response.create(model="reactive", max_tokens=20, system="You are terse.",
                                                   messages=messages)  # type: ignore[arg-type]
    assert raw.headers["x-relaygate-condensed"] == "truncate_middle"
    assert raw.parse().content[0].text  # type: ignore[union-attr]


def test_other_client_errors_are_not_retried(gw: GatewayThread, emu: BackgroundServer) -> None:
    before = len(sent(emu, TINY))
    emu.state.faults = FaultPlan(status=400, count=1, message="bad thing")
    r = chat(gw, "reactive", conversation(12))
    assert r.status_code == 400 and "x-relaygate-condensed" not in r.headers
    assert len(sent(emu, TINY)) - before == 1


def test_the_estimate_errs_high_against_the_counts_it_is_checked_with() -> None:
    samples = ["Hello, world! How are you today?", WORDS, "def f(x):\n    return x * 2\n" * 20,
               "relaygate " * 500, "日本語のテキストです。" * 30]
    for text in samples:
        est = text_tokens(text)
        assert est >= len(text.split())  # the emulator's count (a token a word)
        assert est >= len(text) / 4 or not text.isascii()  # the usual English rule of thumb
        assert est >= len(text) or text.isascii()  # CJK: about a token a character
    assert prompt_tokens({"messages": conversation(3)}) >= count_tokens({"messages": conversation(3)})


def test_context_windows_come_from_the_catalog() -> None:
    w = ContextWindows()
    assert w.lookup("gpt-4o-mini-2024-07-18") == 128_000
    assert w.lookup("anthropic.claude-3-5-sonnet-20241022-v2:0") == 200_000
    assert w.lookup("gpt-5") == 272_000  # its input limit, under the 400k window
    assert w.lookup("gemini-2.5-pro") == 1_048_576
    assert w.lookup("my-local-llama") is None


def test_condense_settings_are_checked_with_their_path() -> None:
    from relaygate.config import ConfigError, parse_config

    demo = [{"provider": "demo", "model": "demo"}]
    with pytest.raises(ConfigError) as e:
        parse_config({"models": [{"name": "m", "deployments": demo, "condense": {"strategy": "summarize"}}]}, {})
    assert e.value.errors == ["models[0].condense: strategy summarize needs a summarizer (a configured model)"]
    with pytest.raises(ConfigError) as e:
        parse_config({"models": [{"name": "n", "deployments": demo,
                                  "condense": {"strategy": "summarize", "summarizer": "nope"}}]}, {})
    assert e.value.errors == ["models[0].condense.summarizer: unknown model 'nope'"]
    with pytest.raises(ConfigError) as e:
        parse_config({"models": [{"name": "n", "deployments": demo, "condense": {"keep_last": 0}}]}, {})
    assert any(err.startswith("models[0].condense.keep_last") for err in e.value.errors)


@pytest.mark.parametrize("db", ["sqlite", "postgresql"])
def test_a_condensed_call_says_so_in_its_log_row(emu: BackgroundServer, start_gateway: Callable[..., GatewayThread],
                                                 request: pytest.FixtureRequest, db: str) -> None:
    """The row of a condensed call names the strategy, what was dropped or summarized and the tokens before
    and after (in the database and in /admin/logs); a call that fit has none."""
    extra = {} if db == "sqlite" else {"database": {"url": request.getfixturevalue("pg_url")}}
    gw = start_gateway({"models": [
        {**openai_model("windowed", emu), "condense": {"context_window": 1000, "headroom": 0, "keep_last": 2}},
        {**openai_model("reactive", emu, upstream_model=TINY), "condense": {"keep_last": 2}},
        {**openai_model("summarized", emu), "condense": {"context_window": 1000, "headroom": 0, "keep_last": 2,
                                                         "strategy": "summarize", "summarizer": "writer",
                                                         "summary_max_tokens": 40}},
        openai_model("writer", emu, upstream_model="gpt-4o-mini")],
        "auth": {"master_key": MASTER}, **extra})
    headers = {"authorization": f"Bearer {MASTER}"}

    def post(model: str, messages: list[dict[str, Any]]) -> httpx.Response:
        r = httpx.post(gw.base_url + "/chat/completions", json={"model": model, "messages": messages},
                       headers=headers, timeout=10)
        assert r.status_code == 200, r.text
        return r

    messages = conversation(12)
    truncated = post("windowed", messages)
    retried = post("reactive", conversation(8))
    summarized = post("summarized", messages)
    post("windowed", messages[:4])
    # the summary call is a row of its own too: 5 rows
    rows = {r["request_id"]: r for r in gateway_rows(gw, expected=5)}
    stored = [r["condensed"] for r in rows.values()]
    assert stored.count(None) == 2  # the call that fit and the summarizer's own call
    got = httpx.get(gw.url + "/admin/logs", headers=headers, timeout=10).json()["data"]
    shown = {r["request_id"]: r["condensed"] for r in got}
    assert {rid: None if r["condensed"] is None else json.loads(r["condensed"]) for rid, r in rows.items()} == shown

    one = shown[truncated.headers["x-request-id"]]
    assert one["strategy"] == "truncate_middle" and not one["retried"] and one["summarized"] == 0
    assert one["messages_before"] == len(messages) and one["dropped"] == len(messages) - one["messages_after"] > 0
    assert one["tokens_before"] - one["tokens_after"] == int(truncated.headers["x-relaygate-condensed-tokens"])
    assert one["tokens_before"] > 1000 >= one["tokens_after"]

    two = shown[retried.headers["x-request-id"]]
    assert two["strategy"] == "truncate_middle" and two["retried"] and two["dropped"] > 0

    three = shown[summarized.headers["x-request-id"]]
    assert three["strategy"] == "summarize" and three["dropped"] == 0 and not three["summary_reused"]
    # the summarized messages are replaced by one system message
    assert three["messages_after"] == three["messages_before"] - three["summarized"] + 1
    assert three["tokens_after"] < three["tokens_before"]
