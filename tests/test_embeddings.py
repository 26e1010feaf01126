"""Embeddings through relaygate with the official openai SDK: float and base64, batching, validation."""

from __future__ import annotations

import base64
import struct
from typing import Any

import httpx
import openai
import pytest

from relaygate.testing.base import BackgroundServer
from relaygate.testing.gateway import GatewayThread
from relaygate.testing.openai_audio import embedding_vector
from tests.conftest import StartGateway, openai_model


@pytest.fixture
def gateway(openai_emulator: BackgroundServer, start_gateway: StartGateway) -> GatewayThread:
    return start_gateway({"models": [
        openai_model("embed", openai_emulator, "text-embedding-3-small"),
        openai_model("embed-small-batches", openai_emulator, "text-embedding-3-small", embedding_batch_size=3),
    ]})


def client(gw: GatewayThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key="sk-client", max_retries=0)


def test_embeddings_float_vectors_come_from_the_upstream(
        gateway: GatewayThread, openai_emulator: BackgroundServer) -> None:
    res = client(gateway).embeddings.create(model="embed", input=["hello world", "bonjour"],
                                            encoding_format="float")
    assert [d.index for d in res.data] == [0, 1]
    assert res.data[0].embedding == pytest.approx(embedding_vector("hello world", 1536))
    assert res.data[1].embedding == pytest.approx(embedding_vector("bonjour", 1536))
    assert res.usage.prompt_tokens == 3
    sent = openai_emulator.state.requests[-1]
    assert sent["json"]["model"] == "text-embedding-3-small"  # rewritten from the gateway's name


def test_embeddings_base64_round_trips_as_float32(gateway: GatewayThread) -> None:
    # the SDK asks for base64 by default and decodes it itself; check the raw wire form too
    res = client(gateway).embeddings.create(model="embed", input="hello world", dimensions=8)
    assert res.data[0].embedding == pytest.approx(embedding_vector("hello world", 8), abs=1e-6)
    raw = httpx.post(gateway.base_url + "/embeddings", json={"model": "embed", "input": "hi",
                                                               "encoding_format": "base64", "dimensions": 4})
    packed = base64.b64decode(raw.json()["data"][0]["embedding"])
    assert list(struct.unpack("<4f", packed)) == pytest.approx(embedding_vector("hi", 4), abs=1e-6)


def test_token_array_inputs_are_accepted(gateway: GatewayThread) -> None:
    res = client(gateway).embeddings.create(model="embed", input=[[1, 2, 3], [4, 5]], encoding_format="float")
    assert res.data[1].embedding == pytest.approx(embedding_vector([4, 5], 1536))


def test_long_input_arrays_are_split_into_upstream_batches_and_merged_in_order(
        gateway: GatewayThread, openai_emulator: BackgroundServer) -> None:
    texts = [f"text number {i}" for i in range(8)]
    res = client(gateway).embeddings.create(model="embed-small-batches", input=texts, encoding_format="float")
    assert [d.index for d in res.data] == list(range(8))
    for i, d in enumerate(res.data):
        assert d.embedding == pytest.approx(embedding_vector(texts[i], 1536))
    sizes = sorted(len(r["json"]["input"]) for r in openai_emulator.state.requests)
    assert sizes == [2, 3, 3]
    assert res.usage.prompt_tokens == 3 * 8


@pytest.mark.parametrize("body, param", [
    ({"input": "x"}, "model"),
    ({"model": "embed"}, "input"),
    ({"model": "embed", "input": ""}, "input"),
    ({"model": "embed", "input": []}, "input"),
    ({"model": "embed", "input": ["ok", 3]}, "input[1]"),
    ({"model": "embed", "input": [[1, -2]]}, "input[0]"),
    ({"model": "embed", "input": {"a": 1}}, "input"),
    ({"model": "embed", "input": "x", "encoding_format": "int8"}, "encoding_format"),
    ({"model": "embed", "input": "x", "dimensions": 0}, "dimensions"),
    ({"model": "embed", "input": "x", "dimensions": "8"}, "dimensions"),
])
def test_invalid_embedding_requests_get_a_400_naming_the_parameter(
        gateway: GatewayThread, openai_emulator: BackgroundServer, body: dict[str, Any], param: str) -> None:
    r = httpx.post(gateway.base_url + "/embeddings", json=body)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == param
    assert openai_emulator.state.requests == []


def test_upstream_errors_keep_their_status(gateway: GatewayThread, openai_emulator: BackgroundServer) -> None:
    httpx.post(openai_emulator.url + "/_emulator/faults", json={"status": 429, "retry_after": 2})
    with pytest.raises(openai.RateLimitError):
        client(gateway).embeddings.create(model="embed", input="x")
