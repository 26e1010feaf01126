"""OpenAI's other routes forwarded through relaygate with the openai SDK: files, batches, images,
moderations, legacy completions, realtime client secrets; bodies and responses streamed."""

from __future__ import annotations

import base64
import http.client

import httpx
import openai
import pytest

from relaygate.testing.base import BackgroundServer
from relaygate.testing.gateway import GatewayThread
from tests.conftest import UPSTREAM_KEY, StartGateway, openai_model


@pytest.fixture
def gateway(openai_emulator: BackgroundServer, start_gateway: StartGateway) -> GatewayThread:
    return start_gateway({"passthrough": {"model": "openai-rest"}, "server": {"max_file_bytes": 1_000_000},
                          "models": [openai_model("openai-rest", openai_emulator, "*")]})


def client(gw: GatewayThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key="sk-client", max_retries=0)


def test_file_upload_list_download_and_delete(
        gateway: GatewayThread, openai_emulator: BackgroundServer) -> None:
    c = client(gateway)
    content = b'{"custom_id": "1", "method": "POST", "url": "/v1/chat/completions", "body": {}}\n' * 2000
    f = c.files.create(file=("batch.jsonl", content), purpose="batch")
    assert f.bytes == len(content) and f.filename == "batch.jsonl"
    assert f.id in [x.id for x in c.files.list()]
    assert c.files.retrieve(f.id).purpose == "batch"
    assert c.files.content(f.id).content == content
    assert c.files.delete(f.id).deleted
    with pytest.raises(openai.NotFoundError):
        c.files.retrieve(f.id)
    upload = next(r for r in openai_emulator.state.requests if r["method"] == "POST")
    assert upload["headers"]["authorization"] == "Bearer " + UPSTREAM_KEY  # the gateway's key, not the client's
    assert upload["headers"]["transfer-encoding"] == "chunked"  # streamed up as it arrived


def test_batches(gateway: GatewayThread) -> None:
    c = client(gateway)
    f = c.files.create(file=("in.jsonl", b"{}\n"), purpose="batch")
    b = c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert c.batches.retrieve(b.id).status == "validating"
    assert c.batches.cancel(b.id).status == "cancelling"
    assert [x.id for x in c.batches.list()] == [b.id]


def test_image_generation_returns_a_png(gateway: GatewayThread) -> None:
    img = client(gateway).images.generate(prompt="a red square", model="gpt-image-1", n=2)
    assert img.data and len(img.data) == 2 and img.data[0].b64_json
    assert base64.b64decode(img.data[0].b64_json).startswith(b"\x89PNG\r\n\x1a\n")


def test_moderations(gateway: GatewayThread) -> None:
    res = client(gateway).moderations.create(input=["I will kill the process", "hello"])
    assert [r.flagged for r in res.results] == [True, False]
    assert res.results[0].categories.violence


def test_legacy_completions_whole_and_streamed(gateway: GatewayThread) -> None:
    c = client(gateway)
    assert c.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say hi").choices[0].text == \
        "Completion of: Say hi"
    text = "".join(ch.choices[0].text for ch in c.completions.create(model="gpt-3.5-turbo-instruct",
                                                                     prompt="Say hi", stream=True))
    assert text == "Completion of: Say hi"


def test_realtime_client_secret(gateway: GatewayThread) -> None:
    secret = client(gateway).realtime.client_secrets.create(session={"type": "realtime", "model": "gpt-realtime"})
    assert secret.value.startswith("ek_")


def test_upstream_errors_are_openai_errors_with_the_upstream_status(
        gateway: GatewayThread, openai_emulator: BackgroundServer) -> None:
    httpx.post(openai_emulator.url + "/_emulator/faults", json={"status": 429, "count": 1})
    with pytest.raises(openai.RateLimitError):
        client(gateway).moderations.create(input="x")


def test_a_file_over_the_limit_is_refused_with_413(gateway: GatewayThread) -> None:
    r = httpx.post(gateway.base_url + "/files", files={"file": ("big.bin", b"\0" * 1_100_000)},
                   data={"purpose": "batch"})
    assert r.status_code == 413


@pytest.mark.parametrize("path", ["/v1/files/../models", "/v1/files/..", "/v1/files/a%2F..%2F..%2Fb",
                                  "/v1/files/%2e%2e/x", "/v1/files/x%20y", "/v1/batches/a/../../admin"])
def test_paths_cannot_escape_the_configured_upstream(
        gateway: GatewayThread, openai_emulator: BackgroundServer, path: str) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=5)  # sends the path unnormalized
    conn.request("GET", path)
    r = conn.getresponse()
    assert r.status == 400, r.read()
    assert openai_emulator.state.requests == []


def test_routes_without_a_passthrough_upstream_are_404(
        openai_emulator: BackgroundServer, start_gateway: StartGateway) -> None:
    gw = start_gateway({"models": [openai_model("m", openai_emulator)]})
    r = httpx.post(gw.base_url + "/moderations", json={"input": "x"})
    assert r.status_code == 404 and "passthrough" in r.json()["error"]["message"]


def test_a_route_can_have_its_own_upstream(
        openai_emulator: BackgroundServer, start_gateway: StartGateway) -> None:
    from relaygate.testing.base import BackgroundServer
    from relaygate.testing.openai import OpenAIEmulatorOptions, create_app

    with BackgroundServer(create_app(OpenAIEmulatorOptions())) as images_up:
        gw = start_gateway({"passthrough": {"model": "rest", "routes": {"images": "img"}}, "models": [
            openai_model("rest", openai_emulator, "*"),
            {"name": "img", "deployments": [{"provider": "openai", "model": "*", "api_base": images_up.url + "/v1"}]},
        ]})
        client(gw).images.generate(prompt="p")
        client(gw).moderations.create(input="x")
        assert [r["path"] for r in images_up.state.requests] == ["/v1/images/generations"]
        assert [r["path"] for r in openai_emulator.state.requests] == ["/v1/moderations"]


def test_passthrough_config_must_name_an_openai_model() -> None:
    from relaygate.config import ConfigError, parse_config

    with pytest.raises(ConfigError) as e:
        parse_config({"passthrough": {"model": "nope", "routes": {"videos": "x"}}, "models": []}, {})
    assert any(err.startswith("passthrough.routes") for err in e.value.errors)
    with pytest.raises(ConfigError) as e:
        parse_config({"passthrough": {"model": "nope"}, "models": []}, {})
    assert e.value.errors == ["passthrough.model: no model named 'nope'"]


def test_passthrough_refuses_a_model_whose_provider_does_not_take_openais_paths() -> None:
    """Azure speaks OpenAI's format under its own URLs (per deployment, versioned): its provider does not
    declare the passthrough route, so the config cannot send OpenAI's other routes there."""
    from relaygate.config import ConfigError, parse_config

    azure = {"name": "az", "deployments": [{"provider": "azure", "model": "gpt-4o",
                                            "api_base": "https://example.openai.azure.com", "api_key": "k"}]}
    with pytest.raises(ConfigError) as e:
        parse_config({"passthrough": {"model": "az"}, "models": [azure]}, {})
    assert len(e.value.errors) == 1 and e.value.errors[0].startswith("passthrough.model: model 'az' has deployments")


def test_a_request_without_a_body_moves_to_another_deployment_when_the_first_is_down(
        openai_emulator: BackgroundServer, start_gateway: StartGateway) -> None:
    """A GET has no body to stream up, so nothing stands in the way of trying the next deployment."""
    from relaygate.testing.base import free_port

    down = {"provider": "openai", "model": "*", "api_base": f"http://127.0.0.1:{free_port()}/v1", "priority": 0}
    up = {**openai_model("x", openai_emulator, "*")["deployments"][0], "priority": 1}
    gw = start_gateway({"passthrough": {"model": "rest"},
                        "models": [{"name": "rest", "strategy": "priority", "deployments": [down, up]}]})
    r = httpx.get(gw.base_url + "/files")
    assert r.status_code == 200 and r.headers["x-relaygate-attempts"] == "2"
    assert [(q["method"], q["path"]) for q in openai_emulator.state.requests] == [("GET", "/v1/files")]
