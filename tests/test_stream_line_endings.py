"""Upstreams may end SSE lines in LF, CR or CRLF (the spec allows all three): every provider that reads SSE
streams the same answer, event by event, with its usage, whatever the upstream chose."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import anthropic
import httpx
import openai
import pytest

from relaygate.testing import anthropic as anthropic_emu
from relaygate.testing import cohere as cohere_emu
from relaygate.testing import gemini as gemini_emu
from relaygate.testing.base import BackgroundServer, FaultPlan
from relaygate.testing.gateway import GatewayThread
from tests.conftest import openai_model
from tests.test_requestlog import gateway_rows

CLAUDE_KEY = "sk-ant-upstream-key-000000000000"
GEMINI_KEY = "AIzaSyGeminiUpstreamKey00000000000000000"
COHERE_KEY = "cohere-upstream-key-0000000000"
CR_ENDINGS = pytest.mark.parametrize("ending", ["\r\n", "\r"], ids=["CRLF", "CR"])
PROMPT = "one two three four five six"
T = TypeVar("T")


@pytest.fixture(scope="module")
def upstreams() -> Iterator[dict[str, BackgroundServer]]:
    with BackgroundServer(anthropic_emu.create_app(anthropic_emu.AnthropicEmulatorOptions(api_key=CLAUDE_KEY))) \
            as claude, \
            BackgroundServer(gemini_emu.create_app(gemini_emu.GeminiEmulatorOptions(api_key=GEMINI_KEY))) as gem, \
            BackgroundServer(cohere_emu.create_app(cohere_emu.CohereEmulatorOptions(api_key=COHERE_KEY))) as co:
        yield {"anthropic": claude, "gemini": gem, "cohere": co}


@pytest.fixture(scope="module")
def gw(upstreams: dict[str, BackgroundServer]) -> Iterator[GatewayThread]:
    config = {"models": [
        {"name": "claude", "deployments": [{"provider": "anthropic", "model": "claude-haiku-4-5",
                                            "api_base": upstreams["anthropic"].url, "api_key": CLAUDE_KEY}]},
        {"name": "gem", "deployments": [{"provider": "gemini", "model": "gemini-2.5-flash",
                                         "api_base": upstreams["gemini"].url, "api_key": GEMINI_KEY}]},
        {"name": "command", "deployments": [{"provider": "cohere", "model": "command-a-03-2025",
                                             "api_base": upstreams["cohere"].url, "api_key": COHERE_KEY}]},
    ]}
    with GatewayThread(config) as g:
        yield g


def framed(emulator: BackgroundServer, ending: str | None) -> None:
    emulator.state.faults = FaultPlan(line_ending=ending) if ending else None


def as_framed_natively_and_with(emulator: BackgroundServer, ending: str, run: Callable[[], T]) -> tuple[T, T]:
    """``run()`` with the emulator framing as its API does, then with ``ending``."""
    try:
        framed(emulator, None)
        expected = run()
        framed(emulator, ending)
        return expected, run()
    finally:
        framed(emulator, None)


def streamed(gw: GatewayThread, model: str, tools: list[Any] | None = None) -> dict[str, Any]:
    """What an openai SDK client reads from a stream: text, tool calls, finish reason, usage, chunk count."""
    client = openai.OpenAI(base_url=gw.base_url, api_key="unused", max_retries=0, timeout=10)
    extra: dict[str, Any] = {"tools": tools} if tools else {}
    chunks = list(client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": PROMPT}], stream=True,
        stream_options={"include_usage": True}, **extra))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    calls = [(t.index, t.function.name, t.function.arguments) for d in deltas for t in d.tool_calls or ()
             if t.function is not None]
    usage = chunks[-1].usage
    return {"text": "".join(d.content or "" for d in deltas), "calls": calls,
            "finish": [c.choices[0].finish_reason for c in chunks if c.choices][-1],
            "usage": usage.model_dump() if usage else None, "chunks": len(chunks)}


@CR_ENDINGS
@pytest.mark.parametrize("model", ["claude", "command"])
def test_translated_stream_is_the_same_whatever_the_upstream_line_ending(
        gw: GatewayThread, upstreams: dict[str, BackgroundServer], model: str, ending: str) -> None:
    emulator = upstreams["anthropic" if model == "claude" else "cohere"]
    expected, got = as_framed_natively_and_with(emulator, ending, lambda: streamed(gw, model))
    assert expected["text"] and expected["usage"]["completion_tokens"] > 0
    assert got == expected


@pytest.mark.parametrize("ending", ["\n", "\r"], ids=["LF", "CR"])
def test_gemini_stream_is_the_same_whatever_the_upstream_line_ending(
        gw: GatewayThread, upstreams: dict[str, BackgroundServer], ending: str) -> None:
    emulator = upstreams["gemini"]  # Google frames with CRLF
    expected, got = as_framed_natively_and_with(emulator, ending, lambda: streamed(gw, "gem"))
    assert expected["text"] and expected["usage"]["completion_tokens"] > 0
    assert got == expected


@CR_ENDINGS
def test_streamed_tool_call_survives_a_crlf_anthropic_upstream(gw: GatewayThread,
                                                              upstreams: dict[str, BackgroundServer],
                                                              ending: str) -> None:
    tools: list[Any] = [{"type": "function", "function": {
        "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
    emulator = upstreams["anthropic"]
    expected, got = as_framed_natively_and_with(emulator, ending, lambda: streamed(gw, "claude", tools))
    assert expected["calls"] and expected["finish"] == "tool_calls"
    assert got == expected


@CR_ENDINGS
def test_native_anthropic_stream_reaches_the_anthropic_sdk_from_a_crlf_upstream(
        gw: GatewayThread, upstreams: dict[str, BackgroundServer], ending: str) -> None:
    client = anthropic.Anthropic(api_key="unused", base_url=gw.url, max_retries=0)

    def run() -> tuple[str, Any]:
        with client.messages.stream(model="claude", max_tokens=100,
                                    messages=[{"role": "user", "content": PROMPT}]) as s:
            text = "".join(s.text_stream)
            final = s.get_final_message()
        return text, (final.stop_reason, final.usage.input_tokens, final.usage.output_tokens)

    emulator = upstreams["anthropic"]
    expected, got = as_framed_natively_and_with(emulator, ending, run)
    assert expected[0] and got == expected


@CR_ENDINGS
def test_openai_passthrough_of_a_crlf_upstream_streams_event_by_event_and_is_costed(
        openai_emulator: BackgroundServer, start_gateway: Any, ending: str) -> None:
    gw = start_gateway({"models": [openai_model("m", openai_emulator)]})
    client = openai.OpenAI(base_url=gw.base_url, api_key="unused", max_retries=0, timeout=10)

    def run() -> list[Any]:
        return list(client.chat.completions.create(model="m", stream=True,
                                                   messages=[{"role": "user", "content": PROMPT}]))

    expected, got = as_framed_natively_and_with(openai_emulator, ending, run)
    assert [c.choices[0].delta.content for c in got] == [c.choices[0].delta.content for c in expected]
    assert len(got) > 5 and all(c.choices for c in got)  # one chunk per event; the usage-only chunk dropped
    lf_row, crlf_row = gateway_rows(gw, expected=2)
    assert lf_row["completion_tokens"] > 0 and lf_row["cost_nano"] > 0
    assert (crlf_row["prompt_tokens"], crlf_row["completion_tokens"], crlf_row["cost_nano"]) == \
        (lf_row["prompt_tokens"], lf_row["completion_tokens"], lf_row["cost_nano"])


@CR_ENDINGS
def test_anthropic_sdk_on_an_openai_model_with_a_crlf_upstream(openai_emulator: BackgroundServer,
                                                              start_gateway: Any, ending: str) -> None:
    """/v1/messages reads the pass-through's events back: they must come out whole, re-framed."""
    gw = start_gateway({"models": [openai_model("gpt", openai_emulator)]})
    client = anthropic.Anthropic(api_key="unused", base_url=gw.url, max_retries=0)

    def run() -> tuple[list[str], Any]:
        with client.messages.stream(model="gpt", max_tokens=100, messages=[{"role": "user", "content": PROMPT}]) as s:
            pieces = list(s.text_stream)
            final = s.get_final_message()
        return pieces, (final.stop_reason, final.usage.input_tokens, final.usage.output_tokens)

    expected, got = as_framed_natively_and_with(openai_emulator, ending, run)
    assert len(expected[0]) > 3 and expected[1][2] > 0
    assert got == expected


@CR_ENDINGS
def test_priced_passthrough_stream_from_a_crlf_upstream_is_charged_its_usage(openai_emulator: BackgroundServer,
                                                                             start_gateway: Any, ending: str) -> None:
    """Legacy completions go through the passthrough route, priced by the usage chunk of their stream."""
    gw = start_gateway({"models": [openai_model("rest", openai_emulator, "*")], "passthrough": {"model": "rest"}})
    client = openai.OpenAI(base_url=gw.base_url, api_key="unused", max_retries=0, timeout=10)

    def run() -> list[str]:
        return [c.choices[0].text for c in client.completions.create(model="gpt-3.5-turbo-instruct", stream=True,
                                                                      prompt=PROMPT)]

    expected, got = as_framed_natively_and_with(openai_emulator, ending, run)
    assert len(expected) > 3 and got == expected  # one chunk per event, the usage chunk dropped
    lf_row, cr_row = gateway_rows(gw, expected=2)
    assert lf_row["completion_tokens"] > 0 and lf_row["cost_nano"] > 0
    assert (cr_row["prompt_tokens"], cr_row["completion_tokens"], cr_row["cost_nano"]) == \
        (lf_row["prompt_tokens"], lf_row["completion_tokens"], lf_row["cost_nano"])


def test_emulator_frames_with_the_line_ending_asked(upstreams: dict[str, BackgroundServer]) -> None:
    """The option the tests above rely on really changes the bytes on the wire."""
    emulator = upstreams["cohere"]
    body = {"model": "command-a-03-2025", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    headers = {"authorization": f"Bearer {COHERE_KEY}"}
    try:
        for ending, present, absent in (("\r\n", b"\r\n\r\n", b"\n\n"), ("\r", b"\r\r", b"\n")):
            framed(emulator, ending)
            raw = httpx.post(emulator.url + "/v2/chat", json=body, headers=headers, timeout=10).content
            assert present in raw and absent not in raw
    finally:
        framed(emulator, None)

