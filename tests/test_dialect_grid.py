"""Every client dialect × every upstream kind, each driven by the client's official SDK against the emulators:
a text answer and a tool-call round trip, whole and streamed (docs/dialects.md shows the grid).

The table is the two dicts ``ROWS`` (client dialects) and ``COLUMNS`` (upstream kinds): a new dialect adds a
``Row`` class and its entry, a new upstream kind its emulator and deployment. Every pair is a cell; a cell
that is not served is not in the grid at all (``NOT_SERVED``, empty today), never an expected failure.
One gateway and one emulator per kind serve the whole module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import anthropic
import boto3
import botocore.config
import cohere
import httpx
import openai
import orjson
import pytest
from google import genai
from google.genai import types as genai_types

from relaygate.testing import anthropic as anthropic_emu
from relaygate.testing import bedrock as bedrock_emu
from relaygate.testing import cohere as cohere_emu
from relaygate.testing import gemini as gemini_emu
from relaygate.testing.base import BackgroundServer
from relaygate.testing.gateway import GatewayThread
from relaygate.testing.openai import DEFAULT_MODELS, OpenAIEmulatorOptions
from relaygate.testing.openai import create_app as create_openai_app

from .conftest import UPSTREAM_KEY

MASTER = "rg-master-grid-" + "5e8a2c7f" * 4
AWS_SIGNER = "rg-grid-sigv4-e4a19c7b52d8f06e3a9b1c7d5f2e8a40"  # a virtual key: boto3 signs with its derived AWS secret
SCHEMA: dict[str, Any] = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
RESULT = '{"temperature": 21}'  # what the tool answers; every emulator repeats a tool result it was given


# ---- columns: upstream kinds --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Column:
    """An upstream kind: its emulator and the deployment that points at it."""

    emulator: Callable[[], Any]  # an aiohttp app
    deployment: Callable[[str], dict[str, Any]]  # emulator URL -> deployment config


UPSTREAM_KEYS = {"anthropic": "sk-ant-grid-3c9e1a7f5b2d8e4c6a0f", "gemini": "AIzaSyGrid9d4b7e2a1c8f5e3b6d0a",
                 "cohere": "co-grid-6f1d8b3e9a2c7f4e0b5d"}

COLUMNS: dict[str, Column] = {
    "openai": Column(lambda: create_openai_app(OpenAIEmulatorOptions(api_key=UPSTREAM_KEY)),
                     lambda url: {"provider": "openai", "model": "gpt-4o-mini", "api_base": url + "/v1",
                                  "api_key": UPSTREAM_KEY}),
    # OpenAI's Responses API as the upstream's only API (o3-pro: its chat completions answer 404): the
    # Responses row goes as it came, every other row is translated to that API (responses_only)
    "openai-responses": Column(lambda: create_openai_app(OpenAIEmulatorOptions(
        api_key=UPSTREAM_KEY, models=(*DEFAULT_MODELS, "o3-pro"), responses_only=("o3-pro",))),
        lambda url: {"provider": "openai", "model": "o3-pro", "api_base": url + "/v1", "api_key": UPSTREAM_KEY,
                     "responses_only": True}),
    "anthropic": Column(lambda: anthropic_emu.create_app(
        anthropic_emu.AnthropicEmulatorOptions(api_key=UPSTREAM_KEYS["anthropic"])),
        lambda url: {"provider": "anthropic", "model": "claude-haiku-4-5", "api_base": url,
                     "api_key": UPSTREAM_KEYS["anthropic"]}),
    "gemini": Column(lambda: gemini_emu.create_app(gemini_emu.GeminiEmulatorOptions(api_key=UPSTREAM_KEYS["gemini"])),
                     lambda url: {"provider": "gemini", "model": "gemini-2.5-flash", "api_base": url,
                                  "api_key": UPSTREAM_KEYS["gemini"]}),
    "cohere": Column(lambda: cohere_emu.create_app(cohere_emu.CohereEmulatorOptions(api_key=UPSTREAM_KEYS["cohere"])),
                     lambda url: {"provider": "cohere", "model": "command-a-03-2025", "api_base": url,
                                  "api_key": UPSTREAM_KEYS["cohere"]}),
    "bedrock": Column(lambda: bedrock_emu.create_app(bedrock_emu.BedrockEmulatorOptions()),
                      lambda url: {"provider": "bedrock", "model": "anthropic.claude-3-5-haiku-20241022-v1:0",
                                   "api_base": url, "region": "us-east-1",
                                   "aws_access_key_id": bedrock_emu.TEST_ACCESS_KEY,
                                   "aws_secret_access_key": bedrock_emu.TEST_SECRET_KEY}),
}


# ---- rows: client dialects, each through its own SDK ----------------------------------------------------------

class Row(Protocol):
    def ask(self, model: str, text: str, stream: bool) -> str:
        """The answer's text (asserting the answer's id is of the dialect's own kind)."""
        ...

    def tool_round_trip(self, model: str, stream: bool) -> tuple[dict[str, Any], str]:
        """Ask for the weather with one tool offered, answer its call with RESULT: (the call's arguments,
        the final answer's text)."""
        ...


class OpenAIChat:
    def __init__(self, gw: GatewayThread) -> None:
        self.c = openai.OpenAI(base_url=gw.base_url, api_key=MASTER, max_retries=0, timeout=10)

    def _create(self, model: str, messages: list[Any], stream: bool, **kw: Any) -> dict[str, Any]:
        """The assistant message and its id, streamed chunks put together."""
        if not stream:
            r = self.c.chat.completions.create(model=model, messages=messages, **kw)
            return {"id": r.id, **r.choices[0].message.model_dump(exclude_none=True)}
        msg: dict[str, Any] = {"role": "assistant", "content": ""}
        calls: dict[int, dict[str, Any]] = {}
        for ch in self.c.chat.completions.create(model=model, messages=messages, stream=True, **kw):
            msg["id"] = ch.id
            for choice in ch.choices:
                msg["content"] += choice.delta.content or ""
                for tc in choice.delta.tool_calls or ():
                    held = calls.setdefault(tc.index, {"id": tc.id, "type": "function",
                                                       "function": {"name": "", "arguments": ""}})
                    if tc.function is not None:
                        held["function"]["name"] += tc.function.name or ""
                        held["function"]["arguments"] += tc.function.arguments or ""
        if calls:
            msg["tool_calls"] = list(calls.values())
        return msg

    def ask(self, model: str, text: str, stream: bool) -> str:
        msg = self._create(model, [{"role": "user", "content": text}], stream)
        assert msg["id"].startswith("chatcmpl")
        return str(msg["content"])

    def tool_round_trip(self, model: str, stream: bool) -> tuple[dict[str, Any], str]:
        tools = [{"type": "function", "function": {"name": "get_weather", "parameters": SCHEMA}}]
        messages: list[Any] = [{"role": "user", "content": "weather in Paris?"}]
        msg = self._create(model, messages, stream, tools=tools)
        [call] = msg["tool_calls"]
        messages += [{"role": "assistant", "content": msg.get("content") or None, "tool_calls": [call]},
                     {"role": "tool", "tool_call_id": call["id"], "content": RESULT}]
        final = self._create(model, messages, stream, tools=tools)
        return orjson.loads(call["function"]["arguments"]), str(final["content"])


class OpenAIResponses:
    def __init__(self, gw: GatewayThread) -> None:
        self.c = openai.OpenAI(base_url=gw.base_url, api_key=MASTER, max_retries=0, timeout=10)

    def _create(self, model: str, stream: bool, **kw: Any) -> Any:
        if not stream:
            return self.c.responses.create(model=model, **kw)
        done = [e.response for e in self.c.responses.create(model=model, stream=True, **kw)
                if e.type == "response.completed"]
        assert len(done) == 1
        return done[0]

    def ask(self, model: str, text: str, stream: bool) -> str:
        r = self._create(model, stream, input=text)
        assert r.id.startswith("resp_")
        return str(r.output_text)

    def tool_round_trip(self, model: str, stream: bool) -> tuple[dict[str, Any], str]:
        tools: Any = [{"type": "function", "name": "get_weather", "parameters": SCHEMA, "strict": False}]
        r = self._create(model, stream, input="weather in Paris?", tools=tools)
        [call] = [o for o in r.output if o.type == "function_call"]
        final = self._create(model, stream, tools=tools, input=[
            {"role": "user", "content": "weather in Paris?"},
            {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
            {"type": "function_call_output", "call_id": call.call_id, "output": RESULT}])
        return orjson.loads(call.arguments), str(final.output_text)


class AnthropicMessages:
    def __init__(self, gw: GatewayThread) -> None:
        self.c = anthropic.Anthropic(base_url=gw.url, api_key=MASTER, max_retries=0, timeout=10)

    def _create(self, model: str, stream: bool, **kw: Any) -> Any:
        if not stream:
            return self.c.messages.create(model=model, max_tokens=200, **kw)
        with self.c.messages.stream(model=model, max_tokens=200, **kw) as s:
            return s.get_final_message()

    def ask(self, model: str, text: str, stream: bool) -> str:
        m = self._create(model, stream, messages=[{"role": "user", "content": text}])
        assert m.id.startswith("msg_")
        return "".join(b.text for b in m.content if b.type == "text")

    def tool_round_trip(self, model: str, stream: bool) -> tuple[dict[str, Any], str]:
        tools: Any = [{"name": "get_weather", "input_schema": SCHEMA}]
        ask: Any = {"role": "user", "content": "weather in Paris?"}
        m = self._create(model, stream, messages=[ask], tools=tools)
        [call] = [b for b in m.content if b.type == "tool_use"]
        final = self._create(model, stream, tools=tools, messages=[
            ask, {"role": "assistant", "content": m.content},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": RESULT}]}])
        return dict(call.input), "".join(b.text for b in final.content if b.type == "text")


class GoogleGenAI:
    def __init__(self, gw: GatewayThread) -> None:
        self.c = genai.Client(api_key=MASTER, http_options=genai_types.HttpOptions(base_url=gw.url, timeout=10_000))

    def _create(self, model: str, contents: Any, stream: bool,
                config: genai_types.GenerateContentConfig | None = None) -> list[genai_types.GenerateContentResponse]:
        if not stream:
            return [self.c.models.generate_content(model=model, contents=contents, config=config)]
        return list(self.c.models.generate_content_stream(model=model, contents=contents, config=config))

    def ask(self, model: str, text: str, stream: bool) -> str:
        chunks = self._create(model, text, stream)
        assert chunks[-1].response_id and not chunks[-1].response_id.startswith(("chatcmpl", "msg_"))
        return "".join(c.text or "" for c in chunks)

    def tool_round_trip(self, model: str, stream: bool) -> tuple[dict[str, Any], str]:
        config = genai_types.GenerateContentConfig(
            tools=[genai_types.Tool(function_declarations=[genai_types.FunctionDeclaration(
                name="get_weather", parameters_json_schema=SCHEMA)])],
            automatic_function_calling=genai_types.AutomaticFunctionCallingConfig(disable=True))
        ask = genai_types.Content(role="user", parts=[genai_types.Part(text="weather in Paris?")])
        chunks = self._create(model, [ask], stream, config)
        [call] = [fc for c in chunks for fc in c.function_calls or ()]
        turn = genai_types.Content(role="model", parts=[genai_types.Part(function_call=call)])
        result = genai_types.Content(role="user", parts=[genai_types.Part.from_function_response(
            name="get_weather", response=orjson.loads(RESULT))])
        final = self._create(model, [ask, turn, result], stream, config)
        return dict(call.args or {}), "".join(c.text or "" for c in final)


class CohereV2:
    def __init__(self, gw: GatewayThread) -> None:
        self.c = cohere.ClientV2(api_key=MASTER, base_url=gw.url, timeout=10)

    def _create(self, model: str, messages: list[Any], stream: bool,
                **kw: Any) -> tuple[str, str, list[Any], str]:
        """(id, text, tool calls, tool plan) of an answer, streamed events put together."""
        if not stream:
            r = self.c.chat(model=model, messages=messages, **kw)
            text = "".join(getattr(c, "text", "") for c in r.message.content or ())
            return (r.id, text, [tc.model_dump(exclude_none=True) for tc in r.message.tool_calls or ()],
                    r.message.tool_plan or "")
        ident, text, plan = "", "", ""
        calls: dict[int, dict[str, Any]] = {}
        events: list[Any] = list(self.c.chat_stream(model=model, messages=messages, **kw))
        for e in events:
            if e.type == "message-start":
                ident = e.id
            elif e.type == "content-delta":
                text += e.delta.message.content.text or ""
            elif e.type == "tool-plan-delta":  # before the calls, as Cohere streams a plan
                assert not calls
                plan += e.delta.message.tool_plan or ""
            elif e.type == "tool-call-start":
                tc = e.delta.message.tool_calls
                calls[e.index] = {"id": tc.id, "type": "function",
                                  "function": {"name": tc.function.name, "arguments": ""}}
            elif e.type == "tool-call-delta":
                calls[e.index]["function"]["arguments"] += e.delta.message.tool_calls.function.arguments or ""
        assert events[-1].type == "message-end"
        return ident, text, list(calls.values()), plan

    def ask(self, model: str, text: str, stream: bool) -> str:
        ident, answer, _, _ = self._create(model, [{"role": "user", "content": text}], stream)
        assert len(ident) == 36  # a UUID, Cohere's kind of id
        return answer

    def tool_round_trip(self, model: str, stream: bool) -> tuple[dict[str, Any], str]:
        tools = [{"type": "function", "function": {"name": "get_weather", "parameters": SCHEMA}}]
        messages: list[Any] = [{"role": "user", "content": "weather in Paris?"}]
        _, text, calls, plan = self._create(model, messages, stream, tools=tools)
        [call] = calls
        assert not text  # what the model said before calling is its plan, whole or streamed
        messages += [{"role": "assistant", "tool_calls": calls, "tool_plan": plan or "I will look it up."},
                     {"role": "tool", "tool_call_id": call["id"], "content": RESULT}]
        _, final, _, _ = self._create(model, messages, stream, tools=tools)
        return orjson.loads(call["function"]["arguments"] or "{}"), final


class BedrockConverse:
    def __init__(self, gw: GatewayThread) -> None:
        pair = httpx.get(gw.url + "/bedrock/credentials", headers={"authorization": f"Bearer {AWS_SIGNER}"}).json()
        self.c = boto3.client("bedrock-runtime", region_name="us-east-1", endpoint_url=gw.url,
                              config=botocore.config.Config(retries={"max_attempts": 1}), **pair)

    def _create(self, model: str, messages: list[Any], stream: bool, **kw: Any) -> dict[str, Any]:
        """The assistant message (text and toolUse blocks), streamed events put together."""
        if not stream:
            r = self.c.converse(modelId=model, messages=messages, **kw)
            assert "ResponseMetadata" in r and r["usage"]["outputTokens"] > 0
            return dict(r["output"]["message"])
        blocks: dict[int, dict[str, Any]] = {}
        events = list(self.c.converse_stream(modelId=model, messages=messages, **kw)["stream"])
        for e in events:
            if "contentBlockStart" in e:
                tool = e["contentBlockStart"]["start"]["toolUse"]
                blocks[e["contentBlockStart"]["contentBlockIndex"]] = {"toolUse": {**tool, "input": ""}}
            elif "contentBlockDelta" in e:
                i, delta = e["contentBlockDelta"]["contentBlockIndex"], e["contentBlockDelta"]["delta"]
                if "text" in delta:
                    blocks.setdefault(i, {"text": ""})["text"] += delta["text"]
                else:
                    blocks[i]["toolUse"]["input"] += delta["toolUse"]["input"]
        assert "messageStop" in events[-2] and "metadata" in events[-1]
        for b in blocks.values():
            if "toolUse" in b:
                b["toolUse"]["input"] = orjson.loads(b["toolUse"]["input"] or "{}")
        return {"role": "assistant", "content": [blocks[i] for i in sorted(blocks)]}

    def ask(self, model: str, text: str, stream: bool) -> str:
        msg = self._create(model, [{"role": "user", "content": [{"text": text}]}], stream)
        return "".join(b.get("text", "") for b in msg["content"])

    def tool_round_trip(self, model: str, stream: bool) -> tuple[dict[str, Any], str]:
        tools = {"tools": [{"toolSpec": {"name": "get_weather", "inputSchema": {"json": SCHEMA}}}]}
        messages: list[Any] = [{"role": "user", "content": [{"text": "weather in Paris?"}]}]
        msg = self._create(model, messages, stream, toolConfig=tools)
        [call] = [b["toolUse"] for b in msg["content"] if "toolUse" in b]
        messages += [msg, {"role": "user", "content": [{"toolResult": {"toolUseId": call["toolUseId"],
                                                                       "content": [{"text": RESULT}]}}]}]
        final = self._create(model, messages, stream, toolConfig=tools)
        return dict(call["input"]), "".join(b.get("text", "") for b in final["content"])


ROWS: dict[str, Callable[[GatewayThread], Row]] = {
    "openai-chat": OpenAIChat, "openai-responses": OpenAIResponses, "anthropic": AnthropicMessages,
    "google-genai": GoogleGenAI, "cohere": CohereV2, "bedrock": BedrockConverse,
}
NOT_SERVED: set[tuple[str, str]] = set()  # (row, column) pairs left out of the grid, each with its reason
CELLS = [(row, col) for row in ROWS for col in COLUMNS if (row, col) not in NOT_SERVED]


# ---- the grid -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def upstreams() -> Iterator[dict[str, BackgroundServer]]:
    servers = {name: BackgroundServer(col.emulator()).start() for name, col in COLUMNS.items()}
    try:
        yield servers
    finally:
        for s in servers.values():
            s.stop()


@pytest.fixture(scope="module")
def rows(upstreams: dict[str, BackgroundServer], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Row]]:
    config = {"models": [{"name": f"up-{name}", "deployments": [{**col.deployment(upstreams[name].url), "timeout": 10}]}
                         for name, col in COLUMNS.items()],
              "database": {"url": f"sqlite:///{tmp_path_factory.mktemp('grid')}/relaygate.db"},  # Responses store
              "auth": {"master_key": MASTER, "keys": [{"id": "grid-aws", "key": AWS_SIGNER}]}}
    with GatewayThread(config) as gw:
        yield {name: make(gw) for name, make in ROWS.items()}


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize(("row", "column"), CELLS)
def test_a_cell_answers_and_round_trips_a_tool_call(
        rows: dict[str, Row], upstreams: dict[str, BackgroundServer], row: str, column: str, stream: bool) -> None:
    upstream = upstreams[column]
    upstream.state.requests.clear()
    client = rows[row]
    assert "hello from the grid" in client.ask(f"up-{column}", "hello from the grid", stream)
    args, final = client.tool_round_trip(f"up-{column}", stream)
    assert isinstance(args.get("city"), str) and "21" in final
    assert len(upstream.state.requests) == 3  # every call of the cell reached the column's upstream
