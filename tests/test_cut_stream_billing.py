"""A stream cut before its usage is billed for the text it delivered, in every client dialect, native (the
client's own dialect relayed untouched) and translated: the log row says the usage is estimated, its output
tokens are the documented estimate of the text the client received (~4 characters a token, at least one a
text delta: core/call.py ``Delivered``), and the key's budget is charged that row's cost.

Before, the estimate counted ``"delta"`` in the bytes relayed: a native Gemini stream (and Bedrock's
InvokeModel stream, base64 inside) has none and was billed 0 output tokens, a Gemini stream's first event's
usage even passed for the whole answer's; Cohere's events all say ``delta`` and were over-counted.

The answer's text is read here from what the client received, by parsing each dialect's events in full
(botocore's decoder for Bedrock's binary event stream), independently of the gateway's own extractors.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import httpx
import pytest
from botocore.eventstream import EventStreamBuffer

from relaygate.core.call import Usage
from relaygate.testing import anthropic, bedrock, cohere, gemini, openai
from relaygate.testing.base import BackgroundServer, FaultPlan
from relaygate.testing.gateway import GatewayThread
from tests.stack_support import KEYS, deployments
from tests.test_keys import MASTER
from tests.test_limits import new_key, wait_for_spent
from tests.test_requestlog import gateway_rows

PROMPT = " ".join(f"w{i:02d}x" for i in range(80))  # the emulators echo it: an answer of ~83 words
# events each upstream sends before it cuts the connection: about half of its answer
CUT = {"openai": 40, "anthropic": 40, "gemini": 14, "cohere": 40, "bedrock": 40}
UPSTREAM_OF = {"gpt": "openai", "native": "openai", "pro": "openai", "claude": "anthropic", "gemini": "gemini",
               "cohere": "cohere", "bedrock": "bedrock"}
UPSTREAM_MODEL = {"gpt": "gpt-4o-mini", "native": "gpt-4o-mini", "pro": "o3-pro", "claude": "claude-sonnet-4-6",
                  "gemini": "gemini-2.5-flash", "cohere": "command-a-03-2025",
                  "bedrock": "anthropic.claude-3-5-sonnet-20240620-v1:0"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayThread, dict[str, BackgroundServer]]]:
    """Every emulator behind one gateway (budgets in memory, the log in SQLite); besides the stack's models,
    ``native`` serves /v1/responses natively and ``pro`` only through OpenAI's Responses API."""
    with contextlib.ExitStack() as es:
        apps = {
            "openai": openai.create_app(openai.OpenAIEmulatorOptions(
                api_key=KEYS["openai"], models=(*openai.DEFAULT_MODELS, "o3-pro"), responses_only=("o3-pro",))),
            "anthropic": anthropic.create_app(anthropic.AnthropicEmulatorOptions(api_key=KEYS["anthropic"])),
            "gemini": gemini.create_app(gemini.GeminiEmulatorOptions(api_key=KEYS["gemini"])),
            "cohere": cohere.create_app(cohere.CohereEmulatorOptions(api_key=KEYS["cohere"])),
            "bedrock": bedrock.create_app(bedrock.BedrockEmulatorOptions()),
        }
        emus = {name: es.enter_context(BackgroundServer(app)) for name, app in apps.items()}
        models = deployments({n: s.url for n, s in emus.items()})
        base = {"provider": "openai", "api_base": emus["openai"].url + "/v1", "api_key": KEYS["openai"], "timeout": 10}
        models += [{"name": "native", "deployments": [{**base, "model": "gpt-4o-mini", "responses_native": True}]},
                   {"name": "pro", "deployments": [{**base, "model": "o3-pro", "responses_only": True,
                                                    "input_cost_per_token": 2e-5, "output_cost_per_token": 8e-5}]}]
        config: dict[str, Any] = {"models": models, "auth": {"master_key": MASTER},
                                  "database": {"url": f"sqlite:///{tmp_path_factory.mktemp('cut')}/rg.db"}}
        yield es.enter_context(GatewayThread(config)), emus


# ---- each client dialect: its streaming request, and the text its events carried -------------------------

Pieces = list[str]


def _sse(raw: bytes) -> Iterator[tuple[str, Any]]:
    """(event name, parsed data) of an SSE body (Gemini's framed with CRLF, as Google frames it)."""
    for frame in raw.decode().replace("\r\n", "\n").split("\n\n"):
        name, data = "", []
        for line in frame.splitlines():
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
        if data and data != ["[DONE]"]:
            yield name, json.loads("\n".join(data))


def openai_text(raw: bytes) -> Pieces:
    out = []
    for _, ev in _sse(raw):
        for choice in ev.get("choices") or ():
            delta = choice.get("delta") or {}
            out += [delta.get("content") or "", delta.get("reasoning_content") or ""]
            out += [(tc.get("function") or {}).get("arguments") or "" for tc in delta.get("tool_calls") or ()]
    return out


def responses_text(raw: bytes) -> Pieces:
    return [ev["delta"] for _, ev in _sse(raw) if str(ev.get("type", "")).endswith(".delta")
            and isinstance(ev.get("delta"), str)]


def anthropic_text(raw: bytes) -> Pieces:
    out = []
    for name, ev in _sse(raw):
        if name == "content_block_delta":
            d = ev["delta"]
            out.append(d.get("text") or d.get("thinking") or d.get("partial_json") or "")
    return out


def gemini_text(raw: bytes) -> Pieces:
    out = []
    for _, ev in _sse(raw):
        for cand in ev.get("candidates") or ():
            for part in (cand.get("content") or {}).get("parts") or ():
                out.append(part.get("text") or "")
                if "functionCall" in part:
                    out.append(json.dumps(part["functionCall"].get("args") or {}, separators=(",", ":")))
    return out


def cohere_text(raw: bytes) -> Pieces:
    out = []
    for name, ev in _sse(raw):
        message = (ev.get("delta") or {}).get("message") or {}
        if name == "content-delta":
            content = message.get("content") or {}
            out.append(content.get("text") or content.get("thinking") or "")
        elif name == "tool-plan-delta":
            out.append(message.get("tool_plan") or "")
        elif name in ("tool-call-start", "tool-call-delta"):
            out.append(((message.get("tool_calls") or {}).get("function") or {}).get("arguments") or "")
    return out


def bedrock_text(raw: bytes) -> Pieces:
    buf = EventStreamBuffer()
    buf.add_data(raw)
    out = []
    for msg in buf:
        if msg.headers.get(":event-type") == "contentBlockDelta":
            d = json.loads(msg.payload)["delta"]
            out.append(d.get("text") or (d.get("toolUse") or {}).get("input")
                       or (d.get("reasoningContent") or {}).get("text") or "")
    return out


Request = tuple[str, dict[str, Any]]  # path, body
DIALECTS: dict[str, tuple[Callable[[str], Request], Callable[[bytes], Pieces]]] = {
    "openai": (lambda m: ("/v1/chat/completions", {"model": m, "messages": [{"role": "user", "content": PROMPT}],
                                                   "max_tokens": 400, "stream": True}), openai_text),
    "responses": (lambda m: ("/v1/responses", {"model": m, "input": PROMPT, "max_output_tokens": 400,
                                               "stream": True}), responses_text),
    "anthropic": (lambda m: ("/v1/messages", {"model": m, "max_tokens": 400, "stream": True,
                                              "messages": [{"role": "user", "content": PROMPT}]}), anthropic_text),
    "gemini": (lambda m: (f"/v1beta/models/{m}:streamGenerateContent?alt=sse", {
        "contents": [{"role": "user", "parts": [{"text": PROMPT}]}],
        "generationConfig": {"maxOutputTokens": 400}}), gemini_text),
    "cohere": (lambda m: ("/v2/chat", {"model": m, "messages": [{"role": "user", "content": PROMPT}],
                                       "max_tokens": 400, "stream": True}), cohere_text),
    "bedrock": (lambda m: (f"/model/{m}/converse-stream", {"messages": [{"role": "user", "content": [{"text": PROMPT}]}],
                                                           "inferenceConfig": {"maxTokens": 400}}), bedrock_text),
}

# (client dialect, model): the client's own dialect relayed untouched, then translated cells, both ways
NATIVE = [("openai", "gpt"), ("responses", "native"), ("anthropic", "claude"), ("gemini", "gemini"),
          ("cohere", "cohere"), ("bedrock", "bedrock")]
TRANSLATED = [("openai", "claude"), ("openai", "gemini"), ("openai", "cohere"), ("openai", "bedrock"),
              ("openai", "pro"), ("responses", "gpt"), ("anthropic", "gpt"), ("gemini", "gpt"), ("cohere", "gpt"),
              ("bedrock", "gpt"), ("anthropic", "gemini"), ("gemini", "cohere")]


def estimate(pieces: Pieces) -> tuple[int, int]:
    """The documented estimate's bounds for text delivered in ``pieces``: ~4 characters a token, and at
    least one token a non-empty piece (upstreams that stream a token a delta)."""
    chars = sum(len(p) for p in pieces)
    by_chars = -(-chars // 4)
    return by_chars, max(by_chars, sum(1 for p in pieces if p))


def _billed(gw: GatewayThread, key: dict[str, Any], before: int, model: str) -> dict[str, Any]:
    """The key's one log row; its cost is the estimated usage's at the model's price, and the key's budget
    was charged exactly that."""
    [row] = [r for r in gateway_rows(gw, expected=before + 1) if r["key_id"] == key["id"]]
    price = gw.gateway.pricing.book.for_deployment(gw.gateway.table.models[model][0].config, UPSTREAM_MODEL[model])
    usage = Usage(prompt_tokens=row["prompt_tokens"], completion_tokens=row["completion_tokens"])
    assert row["cost_nano"] == price.cost_nano(usage) > 0
    assert wait_for_spent(gw, "key:" + key["id"], row["cost_nano"]) == row["cost_nano"]
    return row


@pytest.mark.parametrize(("dialect", "model"), NATIVE + TRANSLATED,
                         ids=[f"{d}-{m}{'-native' if (d, m) in NATIVE else ''}" for d, m in NATIVE + TRANSLATED])
def test_a_stream_the_upstream_cuts_is_billed_the_text_it_delivered(
        stack: tuple[GatewayThread, dict[str, BackgroundServer]], dialect: str, model: str) -> None:
    gw, emus = stack
    upstream = UPSTREAM_OF[model]
    emus[upstream].state.faults = FaultPlan(disconnect_after_chunks=CUT[upstream], count=1)
    key = new_key(gw, budget_usd=1, budget_period="day")
    before = gw.gateway.writer.submitted
    request, read = DIALECTS[dialect]
    path, body = request(model)
    try:
        with httpx.stream("POST", gw.url + path, json=body, timeout=20,
                          headers={"authorization": f"Bearer {key['key']}"}) as resp:
            assert resp.status_code == 200, resp.read()
            raw = resp.read()
    finally:
        emus[upstream].state.faults = None
    pieces = read(raw)
    low, high = estimate(pieces)
    assert low >= 40  # a good part of the answer came before the cut (and none of the usage)
    row = _billed(gw, key, before, model)
    assert row["usage_estimated"] and row["error"] is not None and row["prompt_tokens"] > 0
    # the tolerance: the documented estimate of exactly the text the client got, between its two bounds
    assert low <= row["completion_tokens"] <= high, (row["completion_tokens"], low, high)


async def _read_then_leave(url: str, body: dict[str, Any], key: str, events: int) -> bytes:
    """Read ``events`` SSE events of a stream, then close the connection with the rest unread."""
    got = b""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as s, \
            s.post(url, json=body, headers={"authorization": f"Bearer {key}"}) as r:
        assert r.status == 200
        async for line in r.content:
            got += line
            if got.count(b"\n\n") >= events:
                break
    return got


@pytest.mark.parametrize(("dialect", "model"), [("gemini", "gemini"), ("cohere", "cohere"), ("anthropic", "claude")])
def test_a_native_stream_the_client_closes_is_billed_what_reached_it(
        stack: tuple[GatewayThread, dict[str, BackgroundServer]], dialect: str, model: str) -> None:
    """The client leaves half-way through a slow stream in its own dialect: billed at least the text it read,
    never more than the whole answer (what the gateway had sent into the socket when it saw the close)."""
    gw, emus = stack
    upstream = UPSTREAM_OF[model]
    emus[upstream].state.faults = FaultPlan(chunk_delay_ms=20, count=1)
    key = new_key(gw, budget_usd=1, budget_period="day")
    before = gw.gateway.writer.submitted
    request, read = DIALECTS[dialect]
    path, body = request(model)
    try:
        raw = asyncio.run(_read_then_leave(gw.url + path, body, key["key"], CUT[upstream]))
    finally:
        emus[upstream].state.faults = None
    low, _ = estimate(read(raw))
    whole_low, whole_high = estimate(PROMPT.split())  # the answer echoes the prompt (and a few words more)
    row = _billed(gw, key, before, model)
    assert row["usage_estimated"] and row["status"] == 499
    assert low <= row["completion_tokens"] < whole_high + 10, (row["completion_tokens"], low)
    assert low >= whole_low // 3  # it had read a good part
