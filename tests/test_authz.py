"""Authorization: a key reaches only the models it may use, compared on the names routed; model names never
become URL paths; the key is checked before a request body is read; declared keys are strong."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from aiohttp import web
from openai.types.chat import ChatCompletionMessageParam

from relaygate.config import ConfigError, parse_config
from relaygate.server.app import default_routes
from relaygate.testing.base import BackgroundServer
from relaygate.testing.bedrock import TEST_ACCESS_KEY, TEST_SECRET_KEY
from relaygate.testing.gateway import GatewayThread
from tests.conftest import UPSTREAM_KEY, StartGateway, inside_one_minute, openai_model
from tests.routing_support import dep, emulators
from tests.test_keys import MASTER, Admin
from tests.test_requestlog import gateway_rows

MSG: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


def chat(gw: Any, key: str, model: str) -> requests.Response:
    return requests.post(gw.base_url + "/chat/completions", json={"model": model, "messages": MSG},
                         headers={"authorization": f"Bearer {key}"}, timeout=10)


def new_key(gw: Any, **fields: Any) -> str:
    r = Admin(gw)("POST", "/keys", fields)
    assert r.status_code == 201, r.text
    return str(r.json()["key"])


# ---- the model allowed is the model routed -------------------------------------------------------------

def test_a_key_limited_to_a_model_cannot_reach_another_through_the_wildcard(
        openai_emulator: BackgroundServer, start_gateway: StartGateway) -> None:
    """``evil/gpt-4o-mini`` and ``../gpt-4o-mini`` are not ``gpt-4o-mini``: through ``*`` they go upstream as
    they are, so the key's list is compared with those names, not with a stripped one."""
    gw = start_gateway({"models": [openai_model("*", openai_emulator, "*")], "auth": {"master_key": MASTER}})
    key = new_key(gw, models=["gpt-4o-mini"])
    for model in ("evil/gpt-4o-mini", "../gpt-4o-mini", "gpt-4o-mini/", "gpt-4o"):
        r = chat(gw, key, model)
        assert r.status_code == 403 and r.json()["error"]["code"] == "model_not_allowed", (model, r.text)
    assert openai_emulator.state.requests == []
    for model in ("gpt-4o-mini", "openai/gpt-4o-mini"):  # a provider prefix is resolved, not stripped blindly
        assert chat(gw, key, model).status_code == 200, model
    assert [r["json"]["model"] for r in openai_emulator.state.requests] == ["gpt-4o-mini", "gpt-4o-mini"]


def test_a_key_that_lists_the_wildcard_may_send_any_name_through_it(
        openai_emulator: BackgroundServer, start_gateway: StartGateway) -> None:
    gw = start_gateway({"models": [openai_model("m", openai_emulator), openai_model("*", openai_emulator, "*")],
                        "auth": {"master_key": MASTER}})
    key = new_key(gw, models=["*"])
    assert chat(gw, key, "gpt-4o").status_code == 200
    assert chat(gw, key, "m").status_code == 403  # a named model is not the wildcard


def test_model_not_found_lists_only_the_models_the_key_may_use(
        openai_emulator: BackgroundServer, start_gateway: StartGateway) -> None:
    gw = start_gateway({"models": [openai_model("m", openai_emulator), openai_model("secret-model", openai_emulator)],
                        "auth": {"master_key": MASTER}})
    key = new_key(gw, models=["m"])
    r = chat(gw, key, "nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert "Available models: m." in r.json()["error"]["message"] and "secret-model" not in r.text
    r = requests.get(gw.base_url + "/models/nope", headers={"authorization": f"Bearer {key}"}, timeout=10)
    assert r.status_code == 404 and "secret-model" not in r.text and "Available models: m." in r.text
    anonymous = requests.post(gw.base_url + "/chat/completions", json={"model": "nope", "messages": MSG}, timeout=10)
    assert anonymous.status_code == 401 and "secret-model" not in anonymous.text and "Available" not in anonymous.text


def test_a_model_the_key_may_not_use_costs_none_of_its_limits(
        openai_emulator: BackgroundServer, start_gateway: StartGateway) -> None:
    """The model is checked before the limits: refused calls do not eat the key's requests per minute."""
    gw = start_gateway({"models": [openai_model("m", openai_emulator), openai_model("other", openai_emulator)],
                        "auth": {"master_key": MASTER}})
    key = new_key(gw, models=["m"], rpm=2)
    inside_one_minute()
    assert [chat(gw, key, "other").status_code for _ in range(3)] == [403] * 3
    assert [chat(gw, key, "m").status_code for _ in range(2)] == [200, 200]


def test_a_fallback_model_the_key_may_not_use_is_passed_over(start_gateway: StartGateway) -> None:
    """m falls back to secret and then to spare: a key allowed m and spare never reaches secret through
    m's fallbacks, a key allowed m alone gets m's own error; the master key goes to secret."""
    with emulators({}, {}) as (secret_up, spare_up):
        gw = start_gateway({"models": [
            {"name": "m", "fallbacks": [{"models": ["secret", "spare"]}], "deployments": [dep(None, "m-0")]},
            {"name": "secret", "deployments": [dep(secret_up, "secret-0")]},
            {"name": "spare", "deployments": [dep(spare_up, "spare-0")]}], "auth": {"master_key": MASTER}})
        both = new_key(gw, models=["m", "spare"])
        alone = new_key(gw, models=["m"])
        r = chat(gw, both, "m")
        assert r.status_code == 200 and r.headers["x-relaygate-deployment"] == "spare-0"
        r = chat(gw, alone, "m")
        assert r.status_code >= 500 and r.headers["x-relaygate-deployment"] == "m-0"
        assert secret_up.state.requests == []
        assert chat(gw, MASTER, "m").headers["x-relaygate-deployment"] == "secret-0"


# ---- model names never become paths ----------------------------------------------------------------------

@pytest.fixture
def recorder() -> Iterator[tuple[BackgroundServer, list[str]]]:
    """An upstream that records every path it is asked for (and answers 404)."""
    seen: list[str] = []

    async def any_path(request: web.Request) -> web.Response:
        seen.append(request.raw_path)
        return web.json_response({"error": {"message": "not here"}}, status=404)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", any_path)
    with BackgroundServer(app) as srv:
        yield srv, seen


def url_providers(base: str) -> list[dict[str, Any]]:
    """A ``*`` deployment of every provider that puts the model into its URL path."""
    return [
        {"provider": "azure", "model": "*", "api_base": base, "api_key": UPSTREAM_KEY},
        {"provider": "gemini", "model": "*", "api_base": base, "api_key": UPSTREAM_KEY},
        {"provider": "vertex", "model": "*", "api_base": base, "api_key": UPSTREAM_KEY, "project": "p"},
        {"provider": "vertex_anthropic", "model": "*", "api_base": base, "api_key": UPSTREAM_KEY, "project": "p"},
        {"provider": "bedrock", "model": "*", "api_base": base, "region": "us-east-1",
         "aws_access_key_id": TEST_ACCESS_KEY, "aws_secret_access_key": TEST_SECRET_KEY},
    ]


@pytest.mark.parametrize("provider", ["azure", "gemini", "vertex", "vertex_anthropic", "bedrock"])
def test_a_wildcard_model_name_never_leaves_its_url_segment(
        recorder: tuple[BackgroundServer, list[str]], start_gateway: StartGateway, provider: str) -> None:
    """``.``/``..`` would be normalised away by the HTTP client (Azure's api-key sent to another path of its
    host), ``/`` and ``\\`` add segments: each is a 400 naming ``model`` and nothing reaches the upstream."""
    srv, seen = recorder
    # (no model listing: the recorder counts every request that reaches it)
    gw = start_gateway({"models": [{"name": "*", "deployments": url_providers(srv.url)}],
                        "discovery": {"enabled": False}})
    for name in (".", "..", "../openai/models", "a/b", "a\\b", "x\u0000", "x\ny", "x" * 300):
        r = requests.post(gw.base_url + "/chat/completions", timeout=10,
                          json={"model": f"{provider}/{name}", "messages": MSG, "max_tokens": 5})
        assert r.status_code == 400, (name, r.text)
        assert r.json()["error"]["param"] == "model" and r.json()["error"]["code"] == "invalid_model"
    assert seen == []
    r = requests.post(gw.base_url + "/chat/completions", timeout=10,
                      json={"model": f"{provider}/odd name%2e%2e@v1", "messages": MSG, "max_tokens": 5})
    assert r.status_code == 404  # the recorder's answer: the name went up, as one encoded segment
    assert len(seen) == 1 and "odd%20name%252e%252e" in seen[0] and "/../" not in seen[0], seen


def test_a_bedrock_arn_keeps_its_slash_inside_the_model_segment() -> None:
    from relaygate.core.errors import BadRequest
    from relaygate.providers.aws.bedrock import model_path

    arn = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-v2"
    assert model_path(arn, "converse") == \
        "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2Fus.anthropic.claude-v2/converse"
    with pytest.raises(BadRequest):
        model_path("arn:aws:bedrock:x/../../y", "converse")


# ---- the key before the body -----------------------------------------------------------------------------

def data_plane_requests() -> list[tuple[str, str]]:
    """(method, path) of every route of the gateway that a key guards: all but health checks, admin and the
    dashboard's page and files (which hold no data: its JSON, /dashboard/api/…, is guarded)."""
    table = default_routes()
    out = [(m, p) for p, methods in table.exact.items() for m in methods]
    out += [(m, prefix + "x") for prefix, methods in table.prefixes for m in methods]
    return sorted((m, p) for m, p in out if not p.startswith(("/health", "/admin")) and not dashboard_file(p))


def dashboard_file(path: str) -> bool:
    return path == "/dashboard" or (path.startswith("/dashboard/") and not path.startswith("/dashboard/api/"))


@pytest.fixture(params=["hosted", "assistants passthrough"])
def locked(request: pytest.FixtureRequest, openai_emulator: BackgroundServer,
           start_gateway: StartGateway) -> GatewayThread:
    """Assistants hosted here, or forwarded (whose routing reads a body to find where an object lives)."""
    assistants = {"passthrough": "rest"} if request.param == "assistants passthrough" else {}
    return start_gateway({"models": [openai_model("m", openai_emulator), openai_model("rest", openai_emulator, "*")],
                          "passthrough": {"model": "rest"}, "auth": {"master_key": MASTER},
                          "assistants": assistants})


def test_every_data_plane_route_refuses_a_missing_key_before_reading_the_body(locked: GatewayThread) -> None:
    """Headers that announce a body that never comes: the 401 must come anyway, at once."""
    routes = data_plane_requests()
    assert ("POST", "/v1/chat/completions") in routes and ("POST", "/v1/images/x") in routes
    assert ("GET", "/dashboard/api/overview") in routes and ("GET", "/dashboard/api/logs/x") in routes
    for method, path in routes:
        with socket.create_connection(("127.0.0.1", locked.port), timeout=5) as s:
            s.sendall(f"{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                      "content-length: 100000\r\n\r\n{not json".encode())
            head = s.recv(65536).decode("latin-1")
        # Bedrock's routes answer as AWS does: 403 (MissingAuthenticationTokenException, AccessDeniedException)
        refused = "HTTP/1.1 403" if path.startswith("/model/") else "HTTP/1.1 401"
        assert head.startswith(refused), (method, path, head[:200])


def test_a_wrong_key_with_a_bad_body_is_a_401_not_a_400(locked: GatewayThread) -> None:
    for path in ("/v1/chat/completions", "/v1/embeddings", "/v1/audio/speech", "/v1/messages", "/v1/completions"):
        r = requests.post(locked.base_url.removesuffix("/v1") + path, data=b"[", timeout=10,
                          headers={"authorization": "Bearer rg-not-a-key", "x-api-key": "rg-not-a-key"})
        assert r.status_code == 401, (path, r.text)


def test_unauthenticated_requests_leave_a_bounded_number_of_rows(locked: GatewayThread) -> None:
    """One row each for the first burst, then a trickle; the rows left out are counted in the next one."""
    from relaygate.requestlog.audit import REFUSED_KEY_ROWS_BURST, REFUSED_KEY_ROWS_PER_SECOND

    session = requests.Session()
    started = time.monotonic()
    n = int(REFUSED_KEY_ROWS_BURST) + 100
    for _ in range(n):
        assert session.post(locked.base_url + "/chat/completions", data=b"{", timeout=10).status_code == 401
    elapsed = time.monotonic() - started
    time.sleep(1.5 / REFUSED_KEY_ROWS_PER_SECOND)
    assert session.post(locked.base_url + "/chat/completions", data=b"{", timeout=10).status_code == 401
    writer = locked.gateway.writer
    deadline = time.monotonic() + 5
    while writer.submitted < REFUSED_KEY_ROWS_BURST + 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    rows = gateway_rows(locked, expected=0)
    assert all(r["status"] == 401 and r["key_id"] is None for r in rows)
    assert REFUSED_KEY_ROWS_BURST < len(rows) <= REFUSED_KEY_ROWS_BURST + elapsed * REFUSED_KEY_ROWS_PER_SECOND + 3
    counted = [re.search(r"\((\d+) more requests refused for their key were not logged one by one\)",
                         r["error_message"]) for r in rows]
    assert any(counted)  # rows written after some were left out say how many
    assert len(rows) + sum(int(m.group(1)) for m in counted if m) == n + 1  # every request is a row or counted


# ---- declared keys are strong ----------------------------------------------------------------------------

@pytest.mark.parametrize("secret, why", [
    ("sk-app-1", "at least 32 characters"),
    ("a" * 40, "must look random"),
    ("abcd" * 10, "repeats itself"),
    ("0123456789abcdef" * 2, "repeats itself"),
])
def test_a_weak_declared_key_is_a_config_error_with_its_path(secret: str, why: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config({"auth": {"master_key": MASTER, "keys": [{"id": "ok", "key": "3f9a1c7e5b0d4f28a6c1e9b7d3f05a2c"},
                                                              {"id": "weak", "key": secret}]}}, {})
    [err] = e.value.errors
    assert err.startswith("auth.keys[1].key: ") and why in err and secret not in err


def test_a_random_declared_key_is_accepted_and_shows_only_four_characters(
        openai_emulator: BackgroundServer, start_gateway: StartGateway) -> None:
    import secrets

    secret = secrets.token_hex(16)
    gw = start_gateway({"models": [openai_model("m", openai_emulator)],
                        "auth": {"master_key": MASTER, "keys": [{"id": "app", "key": secret}]}})
    assert chat(gw, secret, "m").status_code == 200
    [view] = Admin(gw)("GET", "/keys").json()["data"]
    assert view["id"] == "cfg_app" and view["prefix"] == secret[:4] + "…"
