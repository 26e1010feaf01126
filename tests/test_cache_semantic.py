"""The semantic cache: a conversation close to one answered before is served that answer, only within the same
model, namespace and parameters; the embedding call goes through the pipeline (logged); an embeddings model
that fails leaves exact matching on; the config names a configured model."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from relaygate.cache.semantic import SemanticIndex, unit
from relaygate.config import ConfigError, parse_config
from relaygate.testing.base import BackgroundServer
from relaygate.testing.gateway import GatewayThread

from .conftest import openai_model
from .test_cache import upstream_calls
from .test_requestlog import gateway_rows


def ask(gw: GatewayThread, text: str, **extra: Any) -> httpx.Response:
    body = {"model": "m", "messages": [{"role": "user", "content": text}], "temperature": 0, **extra}
    return httpx.post(gw.base_url + "/chat/completions", json=body, timeout=10)


def semantic_config(emu: BackgroundServer, embed_base: str | None = None) -> dict[str, Any]:
    embed = openai_model("emb", emu, "text-embedding-3-small")
    if embed_base is not None:
        embed["deployments"][0]["api_base"] = embed_base
    return {"models": [{**openai_model("m", emu), "cache": {"semantic": {"model": "emb", "threshold": 0.9}}},
                       embed]}


def test_a_similar_conversation_is_served_the_answer_of_the_first(
        openai_emulator: BackgroundServer, start_gateway: Callable[..., GatewayThread]) -> None:
    gw = start_gateway(semantic_config(openai_emulator))
    first = ask(gw, "What is the capital city of France?")
    assert first.headers["x-relaygate-cache"] == "miss"
    again = ask(gw, "what is the capital city of france")  # another exact key, the same words
    assert again.headers["x-relaygate-cache"] == "hit"
    assert float(again.headers["x-relaygate-cache-similarity"]) >= 0.9
    assert again.json() == first.json()
    assert ask(gw, "How long should bread dough rise before baking?").headers["x-relaygate-cache"] == "miss"
    # a match never crosses parameters: another seed is another request
    assert ask(gw, "what is the capital city of France", seed=7).headers["x-relaygate-cache"] == "miss"
    assert upstream_calls(openai_emulator) == 3
    assert upstream_calls(openai_emulator, "/embeddings") == 4  # one per exact miss
    stats = gw.gateway.cache.stats
    assert (stats.semantic_hits, stats.semantic_errors) == (1, 0)
    rows = gateway_rows(gw, expected=8)  # the embedding calls are logged too (billed like any call)
    assert sorted(r["route"] for r in rows).count("embeddings") == 4


def test_an_embeddings_model_that_fails_leaves_exact_matching(
        openai_emulator: BackgroundServer, start_gateway: Callable[..., GatewayThread]) -> None:
    gw = start_gateway(semantic_config(openai_emulator, embed_base="http://127.0.0.1:9/v1"))
    assert [ask(gw, "Name a prime number.").headers["x-relaygate-cache"] for _ in range(2)] == ["miss", "hit"]
    assert ask(gw, "name a prime number").headers["x-relaygate-cache"] == "miss"
    assert gw.gateway.cache.stats.semantic_errors == 2  # the two exact misses; the exact hit asked nothing


def test_the_semantic_model_must_be_a_configured_model() -> None:
    cfg = {"models": [{"name": "m", "deployments": [{"provider": "demo", "model": "demo"}],
                       "cache": {"semantic": {"model": "nope"}}}]}
    with pytest.raises(ConfigError, match=r"models\[0\]\.cache\.semantic\.model: unknown model 'nope'"):
        parse_config(cfg, {})


def test_the_index_keeps_its_bound_and_matches_only_within_a_scope() -> None:
    index = SemanticIndex(max_entries=3)
    a, b = unit([1.0, 0.0]), unit([0.0, 1.0])
    assert a is not None and b is not None and unit([0.0, 0.0]) is None and unit(["x"]) is None  # type: ignore[list-item]
    index.add("s1", "k1", a)
    index.add("s2", "k2", a)
    assert index.nearest("s1", a, 0.99) == ("k1", 1.0) and index.nearest("s1", b, 0.5) is None
    assert index.nearest("s3", a, 0.5) is None
    index.add("s1", "k3", b)
    index.add("s1", "k4", b)  # the fourth: the least recently matched (k2) goes
    assert len(index) == 3 and index.nearest("s2", a, 0.5) is None and index.nearest("s1", a, 0.5) == ("k1", 1.0)
