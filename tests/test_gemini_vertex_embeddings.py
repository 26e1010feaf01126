"""Vertex AI (URLs, bearer tokens, service accounts), health probes and embeddings of the Gemini adapters."""

from __future__ import annotations

import asyncio
import base64
import struct
import time
from collections.abc import Iterator
from typing import Any

import openai
import orjson
import pytest
import requests
from pydantic import TypeAdapter

from relaygate.config import DeploymentConfig
from relaygate.core.call import Call, Route
from relaygate.core.errors import BadRequest, GatewayError
from relaygate.gateway import new_client
from relaygate.providers.gemini.provider import GeminiProvider, VertexProvider
from relaygate.routing.deployment import Deployment
from relaygate.testing.base import BackgroundServer
from relaygate.testing.gateway import GatewayThread
from relaygate.testing.gemini import GeminiEmulatorOptions, create_app

from .gemini_helpers import (
    GEMINI_FIXTURES,
    KEY,
    TOKEN,
    fault,
    gemini_model,
    recorded,
    run_gateway,
    vertex_deployment,
)

emulator, _reset, client = GEMINI_FIXTURES
DEPLOYMENT = TypeAdapter(DeploymentConfig)


@pytest.fixture(scope="module")
def gateway(emulator: BackgroundServer) -> Iterator[GatewayThread]:
    yield from run_gateway([
        {"name": "vert", "deployments": [vertex_deployment(emulator)]},
        gemini_model("gem-embed", "text-embedding-004", emulator, embedding_batch_size=2,
                     input_type="RETRIEVAL_DOCUMENT"),
    ])


# ---- Vertex AI ---------------------------------------------------------------------------------------

def test_vertex_uses_project_location_urls_and_a_bearer_token(client: openai.OpenAI,
                                                              emulator: BackgroundServer) -> None:
    r = client.chat.completions.create(model="vert", messages=[{"role": "user", "content": "from vertex"}])
    assert r.choices[0].message.content == "Hello! You said: from vertex"
    chunks = list(client.chat.completions.create(model="vert", stream=True,
                                                 messages=[{"role": "user", "content": "streamed"}]))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hello! You said: streamed"
    reqs = recorded(emulator)
    base = "/v1/projects/my-proj/locations/europe-west4/publishers/google/models/gemini-2.5-flash"
    assert [r["path"] for r in reqs] == [base + ":generateContent", base + ":streamGenerateContent"]
    assert reqs[0]["headers"]["authorization"] == f"Bearer {TOKEN}" and "x-goog-api-key" not in reqs[0]["headers"]


def _probe(emulator: BackgroundServer, provider: str, key: str) -> None:
    async def run() -> None:
        extra = {"project": "p", "location": "us-central1"} if provider == "vertex" else {}
        cfg = DEPLOYMENT.validate_python({"provider": provider, "model": "gemini-2.5-flash",
                                          "api_base": emulator.url, "api_key": key, **extra})
        client = new_client()
        try:
            provider_cls = GeminiProvider if provider == "gemini" else VertexProvider
            await provider_cls(cfg, client).probe(time.monotonic() + 10)
        finally:
            await client.close()

    asyncio.run(run())


def test_probe_counts_tokens_and_fails_like_a_real_call(emulator: BackgroundServer) -> None:
    _probe(emulator, "gemini", KEY)
    _probe(emulator, "vertex", TOKEN)
    assert [r["path"].rsplit(":", 1)[1] for r in recorded(emulator)] == ["countTokens", "countTokens"]
    with pytest.raises(GatewayError) as e:
        _probe(emulator, "vertex", "ya29.bad")
    assert e.value.kind == "auth"
    fault(emulator, status=503, count=1)
    with pytest.raises(GatewayError) as e:
        _probe(emulator, "gemini", KEY)
    assert e.value.kind == "unavailable"


def _service_account(tmp_path: Any, token_uri: str) -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    path = tmp_path / "sa.json"
    path.write_bytes(orjson.dumps({
        "type": "service_account", "project_id": "my-proj", "private_key_id": "k1", "private_key": pem,
        "client_email": "relaygate@my-proj.iam.gserviceaccount.com", "client_id": "1", "token_uri": token_uri}))
    return str(path)


@pytest.mark.parametrize(("lifetime", "token_requests"), [(3600, 1), (200, 3)])
def test_vertex_service_account_tokens_are_fetched_and_renewed_before_expiry(
        tmp_path: Any, start_gateway: Any, lifetime: int, token_requests: int) -> None:
    pytest.importorskip("google.auth")
    opts = GeminiEmulatorOptions(bearer_token=TOKEN, token_lifetime=lifetime)
    with BackgroundServer(create_app(opts)) as emu:
        gw = start_gateway({"models": [{"name": "v", "deployments": [{
            "provider": "vertex", "model": "gemini-2.5-flash", "api_base": emu.url, "project": "my-proj",
            "credentials_file": _service_account(tmp_path, emu.url + "/token"), "timeout": 5}]}]})
        c = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
        for i in range(3):  # a token that lives less than the refresh margin is renewed on every call
            r = c.chat.completions.create(model="v", messages=[{"role": "user", "content": f"n{i}"}])
            assert r.choices[0].message.content == f"Hello! You said: n{i}"
        reqs = requests.get(emu.url + "/_emulator/requests", timeout=5).json()["requests"]
        assert [q["path"] for q in reqs].count("/token") == token_requests
        assert all(q["headers"]["authorization"] == f"Bearer {TOKEN}" for q in reqs if ":" in q["path"])
        fault(emu, status=500, count=1, message=f"token {TOKEN} refused")  # a fetched token is redacted too
        with pytest.raises(openai.InternalServerError) as e:
            c.chat.completions.create(model="v", messages=[{"role": "user", "content": "x"}])
        assert TOKEN not in str(e.value.body) and "token [REDACTED] refused" in str(e.value.body)


def _build(deployment: dict[str, Any]) -> None:
    """Build the providers of a one-deployment config, as ``relaygate check-config`` does."""
    from relaygate.config import parse_config
    from relaygate.gateway import check_deployments

    check_deployments(parse_config({"models": [{"name": "v", "deployments": [deployment]}]}, {}))


def test_vertex_credentials_file_that_cannot_be_read_is_a_config_error(tmp_path: Any) -> None:
    from relaygate.config import ConfigError

    bad = tmp_path / "sa.json"
    bad.write_text('{"type": "external_account"}')
    with pytest.raises(ConfigError, match="credentials_file .* type 'external_account' is not supported"):
        _build({"provider": "vertex", "model": "m", "project": "p", "credentials_file": str(bad)})


def test_vertex_needs_a_project() -> None:
    from relaygate.config import ConfigError

    with pytest.raises(ConfigError, match="project"):
        _build({"provider": "vertex", "model": "m", "api_key": TOKEN})


# ---- embeddings -----------------------------------------------------------------------------------------

def test_embeddings_through_the_gateway_in_order_across_batches(client: openai.OpenAI,
                                                               emulator: BackgroundServer) -> None:
    texts = ["one", "two", "three", "four", "five"]
    r = client.embeddings.create(model="gem-embed", input=texts, dimensions=12)  # the SDK asks for base64
    assert [d.index for d in r.data] == [0, 1, 2, 3, 4] and all(len(d.embedding) == 12 for d in r.data)
    single = client.embeddings.create(model="gem-embed", input="four", dimensions=12, encoding_format="float")
    assert single.data[0].embedding == pytest.approx(r.data[3].embedding, abs=1e-6)
    sizes = [len(q["json"]["requests"]) for q in recorded(emulator)]
    assert sorted(sizes[:3]) == [1, 2, 2] and sizes[3:] == [1]  # embedding_batch_size: 2, sent concurrently


def test_input_type_becomes_the_task_type(client: openai.OpenAI, emulator: BackgroundServer) -> None:
    query = client.embeddings.create(model="gem-embed", input="cats", dimensions=8,
                                     extra_body={"input_type": "search_query"})
    doc = client.embeddings.create(model="gem-embed", input="cats", dimensions=8)  # the deployment's default
    assert query.data[0].embedding != doc.data[0].embedding
    assert [r["json"]["requests"][0]["taskType"] for r in recorded(emulator)] == ["RETRIEVAL_QUERY",
                                                                                "RETRIEVAL_DOCUMENT"]
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model="gem-embed", input="x", extra_body={"input_type": "poetry"})
    assert e.value.body["param"] == "input_type"  # type: ignore[index]


def test_embedding_token_arrays_are_refused_through_the_gateway(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model="gem-embed", input=[[1, 2, 3]])
    assert e.value.code == "unsupported"


def _embed(emulator: BackgroundServer, body: dict[str, Any], provider: str = "gemini") -> tuple[Any, Any]:
    async def run() -> tuple[Any, Any]:
        extra = {"project": "p", "location": "us-central1"} if provider == "vertex" else {}
        cfg = DEPLOYMENT.validate_python({"provider": provider, "model": "text-embedding-004",
                                          "api_base": emulator.url, "api_key": KEY if provider == "gemini" else TOKEN,
                                          **extra})
        client = new_client()
        try:
            cls = GeminiProvider if provider == "gemini" else VertexProvider
            p = cls(cfg, client)
            call = Call(id="t", route=Route.EMBEDDINGS, model="emb", body=body)
            call.deployment = Deployment("emb/0", "emb", cfg, p)
            reply = await p.embeddings(call)
            return orjson.loads(reply.body or b""), reply.usage
        finally:
            await client.close()

    return asyncio.run(run())


def test_embeddings_float_with_dimensions(emulator: BackgroundServer) -> None:
    body, usage = _embed(emulator, {"model": "emb", "input": ["alpha", "beta"], "dimensions": 8})
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert all(len(d["embedding"]) == 8 for d in body["data"])
    assert body["data"][0]["embedding"] != body["data"][1]["embedding"]
    assert body["usage"] is None and not usage.known  # AI Studio reports no usage for embeddings
    sent = recorded(emulator)[-1]
    assert sent["path"] == "/v1beta/models/text-embedding-004:batchEmbedContents"
    assert sent["json"]["requests"][0] == {"model": "models/text-embedding-004",
                                           "content": {"parts": [{"text": "alpha"}]}, "outputDimensionality": 8}


def test_embeddings_base64_decodes_to_the_same_floats(emulator: BackgroundServer) -> None:
    floats, _ = _embed(emulator, {"model": "emb", "input": "same text", "dimensions": 16})
    packed, _ = _embed(emulator, {"model": "emb", "input": "same text", "dimensions": 16,
                                  "encoding_format": "base64"})
    raw = base64.b64decode(packed["data"][0]["embedding"])
    values = struct.unpack("<16f", raw)
    assert values == pytest.approx(floats["data"][0]["embedding"], abs=1e-6)


def test_vertex_embeddings_report_usage(emulator: BackgroundServer) -> None:
    body, usage = _embed(emulator, {"model": "emb", "input": ["one two", "three"], "dimensions": 4}, "vertex")
    assert len(body["data"]) == 2 and usage.prompt_tokens == 3
    assert recorded(emulator)[-1]["json"]["requests"][0]["embedContentConfig"] == {"outputDimensionality": 4}


def test_embedding_token_arrays_are_refused(emulator: BackgroundServer) -> None:
    with pytest.raises(GatewayError) as e:
        _embed(emulator, {"model": "emb", "input": [[1, 2, 3]]})
    assert isinstance(e.value, BadRequest) and e.value.param == "input"
