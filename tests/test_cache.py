"""The response cache: hits, misses and bypasses per header; stream replay through both SDKs; what the key
covers; what is never kept; coalescing; the byte bound; Redis shared by two gateways; billing and the log."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import anthropic
import httpx
import openai
import pytest

from relaygate.cache.entry import CHAT, Entry, gather, replay
from relaygate.cache.layer import control, keepable_chat
from relaygate.cache.stores import MemoryCache
from relaygate.core.call import Usage
from relaygate.testing.base import BackgroundServer, FaultPlan
from relaygate.testing.gateway import GatewayThread

from .conftest import inside_one_minute, openai_model, require_service
from .test_keys import MASTER, Admin
from .test_requestlog import gateway_rows

REDIS_URL = os.environ.get("RELAYGATE_TEST_REDIS", "redis://127.0.0.1:6379/0")
MSG = [{"role": "user", "content": "cache me"}]
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


def cached_model(name: str, emu: BackgroundServer, **cache: Any) -> dict[str, Any]:
    return {**openai_model(name, emu), "cache": cache}


def upstream_calls(emu: BackgroundServer, path: str = "/chat/completions") -> int:
    return sum(1 for r in emu.state.requests if r["path"].endswith(path))


def post(gw: GatewayThread, body: dict[str, Any], headers: dict[str, str] | None = None,
         path: str = "/chat/completions") -> httpx.Response:
    return httpx.post(gw.base_url + path, json=body, headers=headers or {}, timeout=10)


def chat(gw: GatewayThread, headers: dict[str, str] | None = None, **extra: Any) -> httpx.Response:
    return post(gw, {"model": "m", "messages": MSG, "temperature": 0, **extra}, headers)


@pytest.fixture
def gw(openai_emulator: BackgroundServer, start_gateway: Callable[..., GatewayThread]) -> GatewayThread:
    return start_gateway({"models": [cached_model("m", openai_emulator),
                                     cached_model("always", openai_emulator, mode="always"),
                                     openai_model("plain", openai_emulator)]})


def test_a_repeated_request_is_a_hit_with_its_age_and_no_upstream_call(gw: GatewayThread,
                                                                       openai_emulator: BackgroundServer) -> None:
    first = chat(gw)
    assert first.status_code == 200 and first.headers["x-relaygate-cache"] == "miss"
    time.sleep(1.05)
    second = chat(gw)
    assert second.headers["x-relaygate-cache"] == "hit" and int(second.headers["age"]) >= 1
    assert second.json() == first.json()
    assert second.headers["x-relaygate-cache-key"] == first.headers["x-relaygate-cache-key"]
    assert upstream_calls(openai_emulator) == 1
    assert "x-relaygate-cache" not in post(gw, {"model": "plain", "messages": MSG, "temperature": 0}).headers


def test_headers_bypass_refresh_and_max_age(gw: GatewayThread, openai_emulator: BackgroundServer) -> None:
    assert chat(gw).headers["x-relaygate-cache"] == "miss"
    for headers, verdict in [({"x-relaygate-cache": "off"}, "bypass"), ({"cache-control": "no-store"}, "bypass"),
                             ({"x-relaygate-cache": "refresh"}, "miss"), ({"cache-control": "no-cache"}, "miss"),
                             ({"cache-control": "max-age=0"}, "miss"), ({"cache-control": "max-age=60"}, "hit"),
                             ({}, "hit")]:
        assert chat(gw, headers).headers["x-relaygate-cache"] == verdict, headers
    assert upstream_calls(openai_emulator) == 6  # the first miss, 2 bypasses, 3 refreshes


def test_a_bypass_keeps_nothing(gw: GatewayThread) -> None:
    assert chat(gw, {"cache-control": "no-store"}, seed=5).headers["x-relaygate-cache"] == "bypass"
    assert chat(gw, seed=5).headers["x-relaygate-cache"] == "miss"


def test_control_reads_the_directives() -> None:
    assert control({"cache-control": "max-age=30, must-revalidate"}) == (0, 30.0)
    assert control({"cache-control": 'no-cache, max-age="10"'}) == (1, 10.0)
    assert control({"cache-control": "max-age=x"}) == (0, None)
    assert control({"x-relaygate-cache": "OFF", "cache-control": "max-age=5"}) == (2, None)


def test_only_repeatable_requests_are_cached_unless_the_model_says_always(gw: GatewayThread) -> None:
    warm = {"model": "m", "messages": MSG, "temperature": 0.7}
    assert post(gw, warm).headers["x-relaygate-cache"] == "bypass"
    assert post(gw, {**warm, "seed": 3}).headers["x-relaygate-cache"] == "miss"
    assert post(gw, {**warm, "seed": 3}).headers["x-relaygate-cache"] == "hit"
    assert post(gw, {**warm, "model": "always"}).headers["x-relaygate-cache"] == "miss"
    assert post(gw, {**warm, "model": "always"}).headers["x-relaygate-cache"] == "hit"


def test_the_key_covers_what_changes_the_answer_and_nothing_else(gw: GatewayThread) -> None:
    assert chat(gw).headers["x-relaygate-cache"] == "miss"
    for change in ({"messages": [{"role": "user", "content": "other"}]}, {"max_tokens": 5}, {"tools": TOOLS},
                   {"model": "always"}, {"response_format": {"type": "json_object"}}):
        assert post(gw, {"model": "m", "messages": MSG, "temperature": 0, **change}).headers[
            "x-relaygate-cache"] == "miss", change
    # who asks, and whether it streams, do not change the answer
    assert chat(gw, user="someone-else").headers["x-relaygate-cache"] == "hit"
    assert chat(gw, stream=False, metadata={"a": "b"}).headers["x-relaygate-cache"] == "hit"
    # the model as routed: "openai/m" is the same model
    assert post(gw, {"model": "openai/m", "messages": MSG, "temperature": 0}).headers["x-relaygate-cache"] == "hit"


def test_a_streamed_request_is_served_from_a_whole_answer_and_the_sdk_parses_it(gw: GatewayThread) -> None:
    whole = chat(gw).json()
    client = openai.OpenAI(base_url=gw.base_url, api_key="k", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(model="m", messages=MSG, temperature=0, stream=True,  # type: ignore[call-overload]
                                                           stream_options={"include_usage": True})
    assert raw.headers["x-relaygate-cache"] == "hit"
    chunks = list(raw.parse())
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == \
        whole["choices"][0]["message"]["content"]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == whole["usage"]["total_tokens"]
    # and the SDK's stream helper rebuilds the same message
    with client.chat.completions.stream(model="m", messages=MSG, temperature=0) as s:  # type: ignore[arg-type]
        final = s.get_final_completion()
    assert final.choices[0].message.content == whole["choices"][0]["message"]["content"]


def test_a_streamed_answer_is_kept_whole_for_both_kinds_of_request(gw: GatewayThread,
                                                                   openai_emulator: BackgroundServer) -> None:
    client = openai.OpenAI(base_url=gw.base_url, api_key="k", max_retries=0)
    body: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "Paris"}], "temperature": 0,
                            "tools": TOOLS}
    streamed = list(client.chat.completions.create(stream=True, **body))
    calls = [c.choices[0].delta.tool_calls for c in streamed if c.choices and c.choices[0].delta.tool_calls]
    assert calls, "the emulator answers Paris with a tool call"
    whole = post(gw, body)
    assert whole.headers["x-relaygate-cache"] == "hit"
    message = whole.json()["choices"][0]["message"]
    assert message["tool_calls"][0]["function"]["name"] == "get_weather"
    assert whole.json()["choices"][0]["finish_reason"] == "tool_calls"
    assert whole.json()["usage"]["total_tokens"] > 0  # the usage the client's stream did not show
    again = list(client.chat.completions.create(stream=True, **body))
    args = "".join(tc.function.arguments or "" for c in again if c.choices
                   for tc in c.choices[0].delta.tool_calls or () if tc.function)
    first_args = "".join(tc.function.arguments or "" for group in calls for tc in group if tc.function)
    assert args == first_args
    assert upstream_calls(openai_emulator) == 1


def test_the_anthropic_sdk_parses_a_streamed_hit(gw: GatewayThread) -> None:
    client = anthropic.Anthropic(base_url=gw.url, api_key="k", max_retries=0)
    first = client.messages.create(model="always", max_tokens=50, messages=[{"role": "user", "content": "cache me"}])
    raw = client.messages.with_raw_response.create(model="always", max_tokens=50, stream=True,
                                                   messages=[{"role": "user", "content": "cache me"}])
    assert raw.headers["x-relaygate-cache"] == "hit"
    with client.messages.stream(model="always", max_tokens=50,
                                messages=[{"role": "user", "content": "cache me"}]) as s:
        final = s.get_final_message()
    assert final.content[0].text == first.content[0].text  # type: ignore[union-attr]


def test_errors_and_partial_streams_are_never_kept(gw: GatewayThread, openai_emulator: BackgroundServer) -> None:
    openai_emulator.state.faults = FaultPlan(status=500, count=1)
    assert chat(gw).status_code == 500
    assert chat(gw).headers["x-relaygate-cache"] == "miss"
    openai_emulator.state.faults = FaultPlan(disconnect_after_chunks=2, count=1)
    with httpx.stream("POST", gw.base_url + "/chat/completions", timeout=10,
                      json={"model": "m", "messages": MSG, "seed": 1, "stream": True}) as r:
        body = r.read()
    assert b"[DONE]" not in body
    assert chat(gw, seed=1).headers["x-relaygate-cache"] == "miss"


def test_refusals_and_filtered_answers_are_not_kept() -> None:
    answer = {"id": "c", "object": "chat.completion", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "ok", "refusal": None}, "finish_reason": "stop"}]}
    pretty = json.dumps(answer, indent=2).encode()  # OpenAI's own layout
    assert keepable_chat(json.dumps(answer).encode()) and keepable_chat(pretty)
    refusal = json.loads(pretty)
    refusal["choices"][0]["message"]["refusal"] = "I can't help with that."
    filtered = json.loads(pretty)
    filtered["choices"][0]["finish_reason"] = "content_filter"
    for bad in (refusal, filtered):
        assert not keepable_chat(json.dumps(bad, indent=2).encode()) and not keepable_chat(json.dumps(bad).encode())
    assert not keepable_chat(b"[1, 2]") and not keepable_chat(b'{"error": {"message": "x"}}')


def test_embeddings_are_cached(gw: GatewayThread, openai_emulator: BackgroundServer) -> None:
    body = {"model": "m", "input": ["one", "two"]}
    first = post(gw, body, path="/embeddings")
    assert first.headers["x-relaygate-cache"] == "miss"
    second = post(gw, body, path="/embeddings")
    assert second.headers["x-relaygate-cache"] == "hit" and second.json() == first.json()
    assert post(gw, {**body, "dimensions": 8}, path="/embeddings").headers["x-relaygate-cache"] == "miss"
    assert upstream_calls(openai_emulator, "/embeddings") == 2


def streamed_text(body: bytes) -> str:
    chunks = [json.loads(line[6:]) for line in body.split(b"\n") if line.startswith(b"data: {")]
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


def test_speech_is_cached_with_its_media_type(gw: GatewayThread, openai_emulator: BackgroundServer) -> None:
    body = {"model": "m", "input": "say this once", "voice": "alloy"}
    first = post(gw, body, path="/audio/speech")
    assert first.status_code == 200 and first.headers["x-relaygate-cache"] == "miss" and first.content
    second = post(gw, body, path="/audio/speech")
    assert second.headers["x-relaygate-cache"] == "hit" and second.content == first.content
    assert second.headers["content-type"] == first.headers["content-type"]
    assert post(gw, {**body, "voice": "nova"}, path="/audio/speech").headers["x-relaygate-cache"] == "miss"
    assert upstream_calls(openai_emulator, "/audio/speech") == 2


@pytest.mark.parametrize("stream", [False, True])
def test_identical_concurrent_misses_make_one_upstream_call(gw: GatewayThread, openai_emulator: BackgroundServer,
                                                            stream: bool) -> None:
    openai_emulator.state.faults = FaultPlan(latency_ms=1000)

    async def run() -> list[tuple[str, bytes]]:
        async with httpx.AsyncClient(timeout=20, limits=httpx.Limits(max_connections=100)) as client:
            async def one() -> tuple[str, bytes]:
                r = await client.post(gw.base_url + "/chat/completions",
                                      json={"model": "m", "messages": MSG, "temperature": 0, "stream": stream})
                return r.headers["x-relaygate-cache"], r.content
            return await asyncio.gather(*(one() for _ in range(100)))

    results = asyncio.run(run())
    assert upstream_calls(openai_emulator) == 1
    assert sorted({v for v, _ in results}) == ["hit", "miss"]
    if stream:
        assert {streamed_text(body) for _, body in results} == {"Hello! You said: cache me"}
        assert all(body.endswith(b"data: [DONE]\n\n") for _, body in results)
    else:
        assert len({body.split(b'"created"')[0] for _, body in results}) == 1
    # on a loaded machine a late one may arrive after the answer was kept: a plain hit then
    stats = gw.gateway.cache.stats
    assert stats.coalesced + stats.memory_hits == 99 and stats.coalesced >= 50


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("not reached in 5 s")


def lead_and_follow(gw: GatewayThread, start: Callable[[], Awaitable[None]],
                    meanwhile: Callable[[], Awaitable[None]] | None = None) -> tuple[float, float, bytes, bytes, str]:
    """A streamed request and an identical one sent once ``start`` returns (``meanwhile`` awaited as they go):
    when the first's stream ended, when the second's first bytes came, both streams and the second's verdict."""
    async def run() -> tuple[float, float, bytes, bytes, str]:
        async with httpx.AsyncClient(timeout=20) as client:
            body = {"model": "m", "messages": MSG, "temperature": 0, "stream": True}

            async def leader() -> tuple[float, bytes]:
                async with client.stream("POST", gw.base_url + "/chat/completions", json=body) as r:
                    data = await r.aread()
                return time.monotonic(), data

            async def follower() -> tuple[float, bytes, str]:
                await start()
                async with client.stream("POST", gw.base_url + "/chat/completions", json=body) as r:
                    verdict = r.headers["x-relaygate-cache"]
                    chunks = r.aiter_bytes()
                    first = await chunks.__anext__()
                    at = time.monotonic()
                    rest = b"".join([c async for c in chunks])
                return at, first + rest, verdict

            lead, follow = asyncio.ensure_future(leader()), asyncio.ensure_future(follower())
            if meanwhile is not None:
                await meanwhile()
            (ended, led), (first_at, followed, verdict) = await asyncio.gather(lead, follow)
            return ended, first_at, led, followed, verdict

    return asyncio.run(run())


def test_a_streamed_follower_gets_the_stream_as_it_arrives(gw: GatewayThread,
                                                           openai_emulator: BackgroundServer) -> None:
    openai_emulator.state.faults = FaultPlan(chunk_delay_ms=150)
    ended, first_at, led, followed, verdict = lead_and_follow(gw, lambda: asyncio.sleep(0.3))
    assert verdict == "hit" and first_at < ended  # its first bytes came while the leader's stream went on
    assert followed == led and streamed_text(followed) == "Hello! You said: cache me"
    assert upstream_calls(openai_emulator) == 1
    # the follower's row says what it saved: the leader's cost, known once the leader's stream ended
    lead_row, follow_row = sorted(gateway_rows(gw, expected=2), key=lambda r: bool(r["cache_hit"]))
    assert lead_row["cost_nano"] > 0 and lead_row["saved_nano"] == 0
    assert follow_row["cost_nano"] == 0 and follow_row["saved_nano"] == lead_row["cost_nano"]
    assert gw.gateway.cache.stats.saved_nano["m"] == lead_row["cost_nano"]


def test_a_streamed_follower_that_came_before_the_first_byte_joins_the_stream(
        gw: GatewayThread, openai_emulator: BackgroundServer) -> None:
    # the upstream holds its answer 1 s, then streams it slowly: the follower is sent in that second, once the
    # leader is upstream, and is seen waiting for the leader's stream to start (not joining a started one)
    openai_emulator.state.faults = FaultPlan(latency_ms=1000, chunk_delay_ms=100)
    cache = gw.gateway.cache
    assert cache is not None
    ended, first_at, led, followed, verdict = lead_and_follow(
        gw, lambda: until(lambda: openai_emulator.state.in_flight == 1),
        meanwhile=lambda: until(lambda: bool(cache._starting)))
    assert verdict == "hit" and first_at < ended  # its first bytes came while the leader's stream went on
    assert followed == led and streamed_text(followed) == "Hello! You said: cache me"
    assert upstream_calls(openai_emulator) == 1
    assert cache.stats.coalesced == 1 and not cache._starting and not cache._streams


@pytest.mark.parametrize("stream", [False, True])
def test_followers_go_upstream_themselves_when_the_leader_fails(gw: GatewayThread, openai_emulator: BackgroundServer,
                                                               stream: bool) -> None:
    # streamed followers wait for the streamed leader's stream to start: it fails before, they go on alone
    openai_emulator.state.faults = FaultPlan(latency_ms=300, status=500, count=1)

    async def run() -> list[int]:
        async with httpx.AsyncClient(timeout=20) as client:
            async def one(delay: float) -> int:
                await asyncio.sleep(delay)
                r = await client.post(gw.base_url + "/chat/completions",
                                      json={"model": "m", "messages": MSG, "temperature": 0, "stream": stream})
                assert r.status_code != 200 or not stream or streamed_text(r.content) == "Hello! You said: cache me"
                return r.status_code
            return await asyncio.gather(one(0), *(one(0.1) for _ in range(5)))

    statuses = asyncio.run(run())
    assert statuses[0] == 500 and statuses[1:] == [200] * 5
    assert gw.gateway.cache is not None and not gw.gateway.cache._starting and not gw.gateway.cache._waiting


def test_the_memory_level_stays_within_its_bytes_under_a_flood() -> None:
    cache = MemoryCache(max_bytes=200_000, ttl=60)
    big = b"x" * 30_000
    for i in range(500):
        cache.put(f"k{i}", Entry(CHAT, big, "application/json", time.time(), "m", None, 0))
        assert cache.bytes <= 200_000
    assert len(cache) == 6 and cache.evictions == 494
    assert cache.get("k499") is not None and cache.get("k0") is None
    cache.put("huge", Entry(CHAT, b"y" * 300_000, "application/json", time.time(), "m", None, 0))
    assert cache.get("huge") is None  # larger than the whole level: not kept, nothing evicted for it
    compressed = MemoryCache(max_bytes=200_000, ttl=60, compress=True)
    for i in range(50):
        compressed.put(f"k{i}", Entry(CHAT, big, "application/json", time.time(), "m", None, 0))
    assert len(compressed) == 50
    held = compressed.get("k3")
    assert held is not None and held.content() == big


def test_entries_expire_after_the_level_ttl(monkeypatch: pytest.MonkeyPatch) -> None:
    """On the level's own clock (monotonic), stood in for here: with a real 50 ms TTL, a loaded machine that
    paused the test between the put and the first get found the entry gone already (the test was flaky)."""
    from relaygate.cache import stores

    now = [1000.0]
    monkeypatch.setattr(stores, "time", type("Clock", (), {"monotonic": staticmethod(lambda: now[0])}))
    cache = MemoryCache(max_bytes=10_000, ttl=0.05)
    cache.put("k", Entry(CHAT, b"{}", "application/json", time.time(), "m", None, 0))
    now[0] += 0.049
    assert cache.get("k") is not None
    now[0] += 0.01
    assert cache.get("k") is None and cache.bytes == 0


def test_a_stream_gathered_and_replayed_is_the_same_answer() -> None:
    completion = {"id": "c1", "object": "chat.completion", "created": 7, "model": "x", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "hi there", "refusal": None,
                                 "reasoning_content": "think"},
         "finish_reason": "stop", "logprobs": {"content": [{"token": "hi", "logprob": -0.1}]}},
        {"index": 1, "message": {"role": "assistant", "content": None, "refusal": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\": 1}"}}]},
         "finish_reason": "tool_calls", "logprobs": None}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}
    assert gather(replay(completion, True), None) == completion
    assert gather(replay(completion, False), Usage(3, 4)) == completion


def test_the_cache_headers_go_out_beside_the_keys_rate_limit_headers(openai_emulator: BackgroundServer,
                                                                     start_gateway: Callable[..., GatewayThread]
                                                                     ) -> None:
    """The cache's headers and the key's x-ratelimit-* are both written in wire form (``Reply.raw_headers``): a
    miss, a hit and a streamed hit carry each of them once."""
    gw = start_gateway({"models": [cached_model("m", openai_emulator)], "auth": {"master_key": MASTER}})
    key = Admin(gw)("POST", "/keys", {"rpm": 10}).json()["key"]
    auth = {"authorization": f"Bearer {key}"}
    inside_one_minute()
    replies = [chat(gw, auth), chat(gw, auth)]
    with httpx.stream("POST", gw.base_url + "/chat/completions", json={"model": "m", "messages": MSG,
                      "temperature": 0, "stream": True}, headers=auth, timeout=10) as streamed:
        assert b"[DONE]" in streamed.read()
    replies.append(streamed)
    assert [r.headers["x-relaygate-cache"] for r in replies] == ["miss", "hit", "hit"]
    assert len({r.headers["x-relaygate-cache-key"] for r in replies}) == 1
    assert "age" not in replies[0].headers and all(r.headers["age"].isdigit() for r in replies[1:])
    assert [r.headers["x-ratelimit-remaining-requests"] for r in replies] == ["9", "8", "7"]
    for r in replies:
        names = [name.lower() for name, _ in r.headers.multi_items()]
        assert all(names.count(n) == 1 for n in ("x-relaygate-cache", "x-relaygate-cache-key",
                                                  "x-ratelimit-limit-requests", "x-ratelimit-remaining-requests"))


def test_a_hit_counts_against_rpm_not_against_budgets_and_is_logged(openai_emulator: BackgroundServer,
                                                                    start_gateway: Callable[..., GatewayThread]
                                                                    ) -> None:
    gw = start_gateway({"models": [cached_model("m", openai_emulator)], "auth": {"master_key": MASTER}})
    key = Admin(gw)("POST", "/keys", {"rpm": 3, "budget_usd": 1}).json()["key"]
    auth = {"authorization": f"Bearer {key}"}
    inside_one_minute()
    assert [chat(gw, auth).headers.get("x-relaygate-cache") for _ in range(3)] == ["miss", "hit", "hit"]
    assert chat(gw, auth).status_code == 429  # the hits counted against rpm
    rows = sorted(gateway_rows(gw, expected=4), key=lambda r: r["ts"])
    assert [r["cache_hit"] for r in rows[:3]] == [0, 1, 1] or [r["cache_hit"] for r in rows[:3]] == [False, True, True]
    assert rows[0]["cost_nano"] > 0 and rows[1]["cost_nano"] == rows[2]["cost_nano"] == 0
    # each hit's row says what it saved (the answer's cost when it was made), and so do the spend reports
    assert [r["saved_nano"] for r in rows[:3]] == [0, rows[0]["cost_nano"], rows[0]["cost_nano"]]
    [spent] = Admin(gw)("GET", "/spend", group_by="model").json()["data"]
    assert (spent["cache_hits"], spent["saved_nano"]) == (2, 2 * rows[0]["cost_nano"])
    assert spent["saved_usd"] == pytest.approx(2 * rows[0]["cost_nano"] / 1e9)
    assert rows[1]["completion_tokens"] == rows[0]["completion_tokens"]
    stats = Admin(gw)("GET", "/cache").json()
    assert stats["hits"] == 2 and stats["saved_usd"]["m"] == pytest.approx(2 * rows[0]["cost_nano"] / 1e9)


def test_namespaces_keep_teams_apart(openai_emulator: BackgroundServer,
                                     start_gateway: Callable[..., GatewayThread]) -> None:
    gw = start_gateway({"models": [cached_model("m", openai_emulator)], "auth": {"master_key": MASTER},
                        "cache": {"namespace": "team"}})
    admin = Admin(gw)
    a1, a2, b = (admin("POST", "/keys", {"team_id": t}).json()["key"] for t in ("a", "a", "b"))
    replies = [chat(gw, {"authorization": f"Bearer {k}"}) for k in (a1, a2, b, b, a1)]
    assert [r.headers["x-relaygate-cache"] for r in replies] == ["miss", "hit", "miss", "hit", "hit"]
    # the same bytes from another team have another key, whatever the key of a served body remembers
    keys = [r.headers["x-relaygate-cache-key"] for r in replies]
    assert keys[0] == keys[1] == keys[4] != keys[2] == keys[3]


def test_admin_cache_stats_and_purge(openai_emulator: BackgroundServer,
                                     start_gateway: Callable[..., GatewayThread]) -> None:
    gw = start_gateway({"models": [cached_model("m", openai_emulator), cached_model("n", openai_emulator)],
                        "auth": {"master_key": MASTER}})
    admin = Admin(gw)
    m = {"authorization": f"Bearer {MASTER}"}
    key_m = chat(gw, m).headers["x-relaygate-cache-key"]
    post(gw, {"model": "n", "messages": MSG, "temperature": 0}, m)
    post(gw, {"model": "n", "messages": MSG, "seed": 2}, m)
    stats = admin("GET", "/cache").json()
    assert stats["entries"] == 3 and stats["misses"] == 3 and stats["bytes"] > 0
    assert admin("DELETE", "/cache", key=key_m).json()["purged"] == {"memory": 1}
    assert chat(gw, m).headers["x-relaygate-cache"] == "miss"
    assert admin("DELETE", "/cache", model="n").json()["purged"] == {"memory": 2}
    assert admin("DELETE", "/cache").json()["purged"] == {"memory": 1}
    assert admin("DELETE", "/cache", key="nothex").status_code == 400
    assert Admin(gw, "wrong")("GET", "/cache").status_code == 401


def test_cache_settings_are_checked_with_their_path() -> None:
    from relaygate.config import ConfigError, parse_config

    with pytest.raises(ConfigError) as e:
        parse_config({"models": [{"name": "m", "deployments": [{"provider": "demo"}], "cache": {"mode": "often"}}],
                      "cache": {"redis": {"ttl": 5}, "memory": {"max_bytes": -1}}}, {})
    text = "\n".join(e.value.errors)
    assert "models[0].cache.mode" in text and "cache.memory.max_bytes" in text
    with pytest.raises(ConfigError) as e:
        parse_config({"models": [], "cache": {"redis": {"ttl": 5}}}, {})
    assert any(err.startswith("cache.redis: needs state.redis_url") for err in e.value.errors)


# ---- Redis ------------------------------------------------------------------------------------------------

@pytest.fixture
def redis_url() -> str:
    import redis as redis_lib

    try:
        redis_lib.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except Exception:
        require_service("Redis")
    return REDIS_URL


def test_two_gateways_share_answers_through_redis(openai_emulator: BackgroundServer, redis_url: str,
                                                  start_gateway: Callable[..., GatewayThread]) -> None:
    prefix = f"test-cache-{uuid.uuid4().hex}:"
    cfg = {"models": [cached_model("m", openai_emulator)], "state": {"redis_url": redis_url},
           "cache": {"redis": {"prefix": prefix, "ttl": 60}}}
    one, two = start_gateway(cfg), start_gateway(cfg)
    first = chat(one)
    assert first.headers["x-relaygate-cache"] == "miss"
    deadline = time.monotonic() + 5
    while True:  # the write to Redis happens after the answer
        second = chat(two)
        if second.headers["x-relaygate-cache"] == "hit" or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert second.headers["x-relaygate-cache"] == "hit" and second.json() == first.json()
    assert two.gateway.cache.stats.redis_hits == 1
    assert chat(two).headers["x-relaygate-cache"] == "hit" and two.gateway.cache.stats.memory_hits == 1
    purged = two.run(two.gateway.cache.purge())
    assert purged == {"memory": 1, "redis": 1}
    assert chat(one, {"cache-control": "max-age=3600"}).headers["x-relaygate-cache"] == "hit"  # its memory
    assert chat(two).headers["x-relaygate-cache"] == "miss"


def test_a_redis_that_is_down_is_bypassed_and_counted(openai_emulator: BackgroundServer,
                                                      start_gateway: Callable[..., GatewayThread]) -> None:
    from relaygate.testing.base import free_port

    gw = start_gateway({"models": [cached_model("m", openai_emulator)],
                        "state": {"redis_url": f"redis://127.0.0.1:{free_port('127.0.0.1')}/0"},
                        "cache": {"memory": {"max_bytes": 0}, "redis": {"prefix": "unused:"}}})
    assert [chat(gw).status_code for _ in range(3)] == [200, 200, 200]
    assert gw.gateway.cache.stats.errors >= 1 and upstream_calls(openai_emulator) == 3


def test_a_refusal_kept_unread_is_never_served() -> None:
    """A whole chat answer is kept without being read (whether it is a refusal is looked at when it is first
    asked for): a refusal is dropped then, counted as not kept, and the call goes upstream, as does a call that
    waited for the one that got it; with a shared level it is looked at before it goes there."""
    import asyncio

    from relaygate.config import parse_config
    from relaygate.core.call import Call, Reply, Route, Usage
    from relaygate.gateway import Gateway

    refusal = json.dumps({"id": "c", "object": "chat.completion", "choices": [{"index": 0, "finish_reason": "stop",
                          "message": {"role": "assistant", "content": None, "refusal": "I can't."}}]}).encode()
    config = parse_config({"models": [{"name": "m", "cache": {"mode": "always"}, "deployments": [
        {"provider": "openai", "model": "gpt-4o-mini", "api_base": "http://127.0.0.1:9/v1", "api_key": "k"}]}],
        "request_log": {"enabled": False}}, {})

    async def run() -> None:
        gw = Gateway(config, None)  # type: ignore[arg-type]  # no upstream session: the stand-in answers
        layer = gw.cache
        assert layer is not None
        asked = 0
        gate = asyncio.Event()

        async def upstream(call: Call) -> Reply:
            nonlocal asked
            asked += 1
            if asked == 1:
                await gate.wait()
            return Reply(body=refusal, usage=Usage(5, 5))

        layer.next = upstream

        def call() -> Call:
            return Call(id="r", route=Route.CHAT, model="m", body={"model": "m", "messages": MSG})

        leader = asyncio.ensure_future(layer(call()))
        follower = asyncio.ensure_future(layer(call()))
        await asyncio.sleep(0)
        gate.set()
        replies = await asyncio.gather(leader, follower)
        assert [said(r)["x-relaygate-cache"] for r in replies] == ["miss", "miss"] and asked == 2
        assert said(await layer(call()))["x-relaygate-cache"] == "miss" and asked == 3
        # three answers kept, two of them dropped when asked for; the last one still waits, unread
        assert layer.stats.hits == 0 and layer.stats.stored == 1 and layer.stats.not_stored == 2
        assert layer.stats.memory_hits == 0  # a refusal dropped as it was asked for is no hit of its level
        # a shared level gets no refusal: the answer is looked at before it is written
        layer._shared = [layer.memory]  # type: ignore[list-item]  # (only its presence matters here)
        layer._keep(call(), Reply(body=refusal), "m", "k2", None, refusal, layer.models["m"])
        assert layer.memory is not None and layer.memory.get("k2") is None

    asyncio.run(run())


def said(reply: Any) -> dict[str, str]:
    """A reply's headers as its client gets them: its dict, and its lines in wire form (``Reply.raw_headers``,
    where the cache writes its own)."""
    from relaygate.core.call import header_pairs

    return {**reply.headers, **{name.decode(): value.decode() for name, value in header_pairs(reply.raw_headers)}}


def stand_in_layer(answer: bytes) -> Any:
    """A cache layer (mode always, memory only) whose upstream is a stand-in answering ``answer``."""
    from relaygate.config import parse_config
    from relaygate.core.call import Call, Reply
    from relaygate.gateway import Gateway

    config = parse_config({"models": [{"name": "m", "cache": {"mode": "always"}, "deployments": [
        {"provider": "openai", "model": "gpt-4o-mini", "api_base": "http://127.0.0.1:9/v1", "api_key": "k"}]}],
        "request_log": {"enabled": False}}, {})
    layer = Gateway(config, None).cache  # type: ignore[arg-type]  # no upstream session: the stand-in answers
    assert layer is not None

    async def upstream(call: Call) -> Reply:
        return Reply(body=answer, usage=Usage(5, 5))

    layer.next = upstream
    return layer


ANSWER = json.dumps({"id": "c", "object": "chat.completion", "choices": [{"index": 0, "finish_reason": "stop",
                    "message": {"role": "assistant", "content": "hi", "refusal": None}}]}).encode()


def test_the_key_hashes_a_chat_body_as_the_client_sent_it() -> None:
    """A chat body as parsed from the client's bytes is keyed by those bytes (not dumped again): the key of its
    compact dump, so a streamed request (its ``stream`` left out, dumped) meets a compact whole one; a body
    changed from its bytes (a provider taken out of it) is dumped; other bytes, another key."""
    import orjson

    from relaygate.cache.layer import cache_key
    from relaygate.core.call import Call, Route

    body = {"model": "m", "messages": MSG, "temperature": 0}

    def key(raw: bytes | None, **fields: Any) -> str:
        call = Call(id="r", route=Route.CHAT, model="m", body={**body, **fields.pop("extra", {})}, raw=raw, **fields)
        return cache_key(call, ["m/openai/0"], "")

    dumped = key(None)
    assert key(orjson.dumps(body)) == dumped
    assert key(orjson.dumps({**body, "stream": True}), extra={"stream": True}, stream=True) == dumped
    assert key(orjson.dumps({**body, "provider": "openai"}), provider="openai") == dumped
    # bytes other than orjson's are dumped: a streamed request from the same client (always dumped) must meet them
    assert key(json.dumps(body).encode()) == dumped  # Python's json.dumps: a space after each key
    assert key(json.dumps(body, indent=1).encode()) == dumped
    escaped = {**body, "messages": [{"role": "user", "content": "café a/b"}]}
    assert key(json.dumps(escaped, separators=(",", ":")).encode(), extra=escaped) == key(None, extra=escaped)
    assert key(orjson.dumps(body) + b"\n") == dumped  # a file's last line break (curl --data-binary @file)
    assert key(orjson.dumps(body).replace(b",", b" ,")) != dumped  # other bytes that pass the checks: their own key


def test_the_writer_check_reads_the_first_key_and_the_escapes() -> None:
    """The check that a client wrote its body as orjson would looks at the first key's end and at the escapes:
    a body with a line break escaped (``\\n``, as orjson writes it) is hashed as sent, the key of its dump; one
    with a space after its first key, or an escaped slash, is dumped; a first key holding an escaped quote is
    read to its real end."""
    import orjson

    from relaygate.cache.layer import cache_key
    from relaygate.core.call import Call, Route

    def key(body: dict[str, Any], raw: bytes | None) -> str:
        return cache_key(Call(id="r", route=Route.CHAT, model="m", body=body, raw=raw), ["m/openai/0"], "")

    lines = {"model": "m", "messages": [{"role": "user", "content": "one\ntwo"}], "temperature": 0}
    assert b"\\n" in orjson.dumps(lines) and key(lines, orjson.dumps(lines)) == key(lines, None)
    slash = {"model": "m", "messages": [{"role": "user", "content": "a/b"}]}
    assert key(slash, orjson.dumps(slash).replace(b"/", b"\\/")) == key(slash, None)
    spaced = b'{"model": "m","messages":[{"role":"user","content":"x"}]}'
    assert key(orjson.loads(spaced), spaced) == key(orjson.loads(spaced), None)
    quoted = {"a\"b": 1, "model": "m", "messages": MSG}
    assert key(quoted, orjson.dumps(quoted)) == key(quoted, None)  # hashed as sent: the same bytes as the dump
    assert key(quoted, orjson.dumps(quoted) + b" ") == key(quoted, None)
    other = orjson.dumps(quoted).replace(b'"messages":', b'"messages" :')  # passes the check: a key of its own
    assert key(quoted, other) != key(quoted, None)


def test_a_served_body_remembers_its_key_within_a_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """A chat body served from the cache keeps its key (no hash for the next identical request): the same key
    as hashed; the bodies kept for that stay within MEMO_BYTES."""
    import orjson

    from relaygate.cache import layer as cache_layer
    from relaygate.cache.layer import cache_key
    from relaygate.core.call import Call, Route

    layer = stand_in_layer(ANSWER)

    def call(content: str) -> Call:
        body = {"model": "m", "messages": [{"role": "user", "content": content}], "temperature": 0}
        return Call(id="r", route=Route.CHAT, model="m", body=body, raw=orjson.dumps(body))

    async def run() -> None:
        replies = [await layer(call("a")) for _ in range(3)]
        assert [said(r)["x-relaygate-cache"] for r in replies] == ["miss", "hit", "hit"]
        assert len({said(r)["x-relaygate-cache-key"] for r in replies}) == 1
        scope = next(iter(layer._names.values()))
        first = call("a")
        assert scope.keys == {first.raw: cache_key(first, scope.names, "")}
        monkeypatch.setattr(cache_layer, "MEMO_BYTES", 1000)
        for i in range(40):
            for _ in range(2):
                assert (await layer(call(f"question {i}"))).status == 200
            assert 0 < layer._memo_bytes <= 1000 and sum(map(len, scope.keys)) == layer._memo_bytes
        assert layer.stats.hits == 42 and layer.stats.misses == 41

    asyncio.run(run())


def test_streams_that_refuse_are_filtered_fail_or_stop_short_are_never_kept() -> None:
    """A streamed chat answer is kept only whole and clean: not one with a refusal delta, a ``content_filter``
    finish, an error event, a choice without a finish reason, or no ``[DONE]``; the next identical call goes
    upstream again. A clean one is kept (and served)."""
    import orjson

    from relaygate.cache.layer import CacheLayer
    from relaygate.core.call import Call, Reply, Route

    def event(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> bytes:
        chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                 "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}], **extra}
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    done = b"data: [DONE]\n\n"
    start = event({"role": "assistant", "content": ""})
    streams = {
        "refusal": [start, event({"refusal": "I can't."}), event(finish="stop"), done],
        "filtered": [start, event({"content": "x"}), event(finish="content_filter"), done],
        "error event": [start, event({"content": "x"}), b'data: {"error": {"message": "boom"}}\n\n', done],
        "no finish": [start, event({"content": "x"}), done],
        "no [DONE]": [start, event({"content": "x"}), event(finish="stop")],
    }
    clean = [start, event({"content": "fine"}), event(finish="stop"), done]

    async def through(layer: CacheLayer, chunks: list[bytes]) -> str:
        async def upstream(call: Call) -> Reply:
            async def gen() -> Any:
                for c in chunks:
                    yield c
            return Reply(stream=gen(), media_type="text/event-stream")

        layer.next = upstream
        reply = await layer(Call(id="r", route=Route.CHAT, model="m", stream=True,
                                 body={"model": "m", "messages": MSG, "stream": True}))
        if reply.stream is not None:
            async for _ in reply.stream:
                pass
        reply.finish(None)
        return said(reply)["x-relaygate-cache"]

    async def run() -> None:
        for name, chunks in streams.items():
            layer = stand_in_layer(ANSWER)
            assert [await through(layer, chunks) for _ in range(2)] == ["miss", "miss"], name
            assert layer.stats.stored == 0 and layer.stats.not_stored == 2, name
        layer = stand_in_layer(ANSWER)
        assert [await through(layer, clean) for _ in range(2)] == ["miss", "hit"]

    asyncio.run(run())


def test_a_refusal_held_by_several_waiting_calls_is_counted_as_not_kept_once() -> None:
    """Each call that waited for the one that got a refusal holds the same entry and looks at it: the first
    finds it does not serve and counts it; the others find it marked so and count nothing again."""
    import time

    from relaygate.cache.entry import CHAT, Entry

    refusal = json.dumps({"id": "c", "object": "chat.completion", "choices": [{"index": 0, "finish_reason": "stop",
                          "message": {"role": "assistant", "content": None, "refusal": "I can't."}}]}).encode()
    layer = stand_in_layer(ANSWER)
    layer.stats.stored = 1
    entry = Entry(CHAT, refusal, "application/json", time.time(), "m", Usage(5, 5), 10, checked=False)
    assert [layer._checked(entry, "k") for _ in range(3)] == [False, False, False]
    assert (layer.stats.stored, layer.stats.not_stored) == (0, 1)


def test_a_kept_answer_is_priced_when_first_needed() -> None:
    """An answer is kept unpriced (on a gateway without a request log nothing else prices the call that got
    it); its first hit works out its cost at its deployment's price for the model asked, what each hit saves."""
    import orjson

    from relaygate.cache.entry import UNPRICED
    from relaygate.core.call import Call, Reply, Route

    layer = stand_in_layer(ANSWER)
    stand_in = layer.next

    async def upstream(call: Call) -> Reply:
        assert call.deployments is not None  # (resolved by the layer)
        call.deployment = call.deployments[0]  # as the router records the deployment that served
        reply: Reply = await stand_in(call)
        return reply

    layer.next = upstream
    body = {"model": "m", "messages": MSG, "temperature": 0}

    def call() -> Call:
        return Call(id="r", route=Route.CHAT, model="m", body=body, raw=orjson.dumps(body))

    async def run() -> None:
        missed = call()
        key = said(await layer(missed))["x-relaygate-cache-key"]
        entry = layer.memory.get(key)
        assert entry.cost_nano == UNPRICED and missed.cost_nano is None
        hits = [call(), call()]
        for each in hits:
            assert said(await layer(each))["x-relaygate-cache"] == "hit"
        cost = layer.pricing.price(missed.deployment, "m").cost_nano(Usage(5, 5))
        assert cost > 0 and entry.cost_nano == cost and entry.deployment is None
        assert [each.saved_nano for each in hits] == [cost, cost] and layer.stats.saved_nano == {"m": 2 * cost}

    asyncio.run(run())
