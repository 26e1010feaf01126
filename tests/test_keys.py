"""Keys: the master key, virtual keys through the admin API and the CLI, the hot-path cache, revocation."""

from __future__ import annotations

import hmac
import logging
import time
from pathlib import Path
from typing import Any

import openai
import pytest
import requests
from openai.types.chat import ChatCompletionMessageParam

from relaygate.auth import authenticator as auth_module
from relaygate.cli.main import main as cli_main
from relaygate.testing.base import BackgroundServer
from tests.conftest import StartGateway, openai_model

MASTER = "rg-master-test-0123456789abcdef"
MSG: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


def config(emulator: Any, **extra: Any) -> dict[str, Any]:
    return {"models": [openai_model("m", emulator), openai_model("other", emulator)],
            "auth": {"master_key": MASTER, **extra.pop("auth", {})}, **extra}


class Admin:
    def __init__(self, gw: Any, key: str = MASTER) -> None:
        self.url = gw.url + "/admin"
        self.headers = {"authorization": f"Bearer {key}"}

    def __call__(self, method: str, path: str, body: Any = None, **params: Any) -> requests.Response:
        return requests.request(method, self.url + path, json=body, params=params, headers=self.headers, timeout=10)


def chat(gw: Any, key: str, model: str = "m") -> Any:
    return openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0).chat.completions.create(
        model=model, messages=MSG)


def status_of(gw: Any, headers: dict[str, str], model: str = "m") -> int:
    r = requests.post(gw.base_url + "/chat/completions", json={"model": model, "messages": MSG}, headers=headers,
                      timeout=10)
    return r.status_code


def test_key_lifecycle_create_use_update_rotate_revoke(
        openai_emulator: BackgroundServer, start_gateway: StartGateway) -> None:
    gw = start_gateway(config(openai_emulator))
    admin = Admin(gw)
    r = admin("POST", "/keys", {"name": "app", "team_id": "t1", "tags": ["prod"], "metadata": {"owner": "ann"}})
    assert r.status_code == 201, r.text
    created = r.json()
    secret, key_id = created["key"], created["id"]
    assert secret.startswith("rg-") and created["prefix"] == secret[:10] + "…"
    assert chat(gw, secret).choices[0].message.content

    listed = admin("GET", "/keys").json()["data"]
    assert [k["id"] for k in listed] == [key_id]
    assert secret not in str(listed) and "hash" not in listed[0]
    assert listed[0]["tags"] == ["prod"] and listed[0]["metadata"] == {"owner": "ann"}

    assert admin("PATCH", f"/keys/{key_id}", {"models": ["m"]}).json()["models"] == ["m"]
    with pytest.raises(openai.PermissionDeniedError) as denied:
        chat(gw, secret, "other")
    assert denied.value.code == "model_not_allowed"

    rotated = admin("POST", f"/keys/{key_id}/rotate", {"grace_seconds": 60}).json()
    new = rotated["key"]
    assert new != secret and rotated["id"] == key_id and rotated["rotated_grace_until"] > time.time()
    assert chat(gw, new) and chat(gw, secret)  # the old secret lives on during the grace period

    again = admin("POST", f"/keys/{key_id}/rotate", {"grace_seconds": 0}).json()["key"]
    with pytest.raises(openai.AuthenticationError):
        chat(gw, new)
    assert chat(gw, again)

    assert admin("DELETE", f"/keys/{key_id}").json()["revoked_at"] is not None
    with pytest.raises(openai.AuthenticationError):  # at once on the instance that revoked
        chat(gw, again)
    assert admin("GET", "/keys").json()["data"] == []
    assert len(admin("GET", "/keys", include_revoked="true").json()["data"]) == 1


def test_expired_key_is_refused(openai_emulator: BackgroundServer, start_gateway: StartGateway) -> None:
    gw = start_gateway(config(openai_emulator))
    admin = Admin(gw)
    created = admin("POST", "/keys", {"expires_in": 3600}).json()
    assert abs(created["expires_at"] - (time.time() + 3600)) < 60
    assert chat(gw, created["key"])
    admin("PATCH", f"/keys/{created['id']}", {"expires_at": time.time() - 1})
    with pytest.raises(openai.AuthenticationError) as e:
        chat(gw, created["key"])
    assert e.value.code == "key_expired"


def test_every_sdk_header_form_is_accepted(
        openai_emulator: BackgroundServer, start_gateway: StartGateway) -> None:
    gw = start_gateway(config(openai_emulator))
    secret = Admin(gw)("POST", "/keys", {}).json()["key"]
    for headers in ({"authorization": f"Bearer {secret}"}, {"x-api-key": secret}, {"api-key": secret}):
        assert status_of(gw, headers) == 200
    assert status_of(gw, {}) == 401
    assert status_of(gw, {"authorization": f"Bearer {secret[:-1]}x"}) == 401
    assert status_of(gw, {"authorization": f"Bearer {MASTER}"}) == 200  # the master key may call too


def test_unknown_key_error_never_echoes_the_key(
        openai_emulator: BackgroundServer, start_gateway: StartGateway) -> None:
    gw = start_gateway(config(openai_emulator))
    r = requests.post(gw.base_url + "/chat/completions", json={"model": "m", "messages": MSG},
                      headers={"authorization": "Bearer rg-not-a-real-key-123456"}, timeout=10)
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    assert "rg-not-a-real-key" not in r.text


def test_admin_api_needs_the_master_key(
        openai_emulator: BackgroundServer, start_gateway: StartGateway) -> None:
    gw = start_gateway(config(openai_emulator))
    secret = Admin(gw)("POST", "/keys", {}).json()["key"]
    for key in ("wrong", secret):
        r = Admin(gw, key)("GET", "/keys")
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_master_key"


def test_without_a_master_key_the_gateway_is_open_and_says_so(
        openai_emulator: BackgroundServer, start_gateway: StartGateway, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="relaygate"):
        gw = start_gateway({"models": [openai_model("m", openai_emulator)]})
    assert any("OPEN" in r.getMessage() for r in caplog.records)
    assert status_of(gw, {}) == 200
    r = Admin(gw)("GET", "/keys")
    assert r.status_code == 403 and r.json()["error"]["code"] == "admin_disabled"


def test_bad_admin_input_is_a_clear_400(
        openai_emulator: BackgroundServer, start_gateway: StartGateway) -> None:
    admin = Admin(start_gateway(config(openai_emulator)))
    for body, param in (({"rpm": -1}, "rpm"), ({"budget_period": "week"}, "budget_period"),
                        ({"models": "m"}, "models"), ({"colour": "red"}, "colour"), ({"budget_usd": "x"}, "budget_usd")):
        r = admin("POST", "/keys", body)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    assert admin("GET", "/keys/key_nope").status_code == 404
    assert admin("POST", "/keys/key_nope/explode").status_code == 404


def test_key_lookup_hits_the_database_once_per_ttl_not_per_request(
        openai_emulator: BackgroundServer, start_gateway: StartGateway) -> None:
    gw = start_gateway(config(openai_emulator, auth={"cache_ttl": 60}))
    secret = Admin(gw)("POST", "/keys", {}).json()["key"]
    auth = gw.gateway.auth
    lookups = []
    real = auth._lookup

    async def counting(digest: str) -> Any:
        lookups.append(digest)
        return await real(digest)

    auth._lookup = counting
    for _ in range(20):
        assert status_of(gw, {"authorization": f"Bearer {secret}"}) == 200
    assert len(lookups) == 1


def test_revocation_reaches_other_instances_within_the_cache_ttl(
        openai_emulator: BackgroundServer, start_gateway: StartGateway, tmp_path: Path) -> None:
    shared = {"url": f"sqlite:///{tmp_path}/shared.db"}
    a = start_gateway(config(openai_emulator, database=shared, auth={"cache_ttl": 0.5}))
    b = start_gateway(config(openai_emulator, database=shared, auth={"cache_ttl": 0.5}))
    created = Admin(a)("POST", "/keys", {}).json()
    headers = {"authorization": f"Bearer {created['key']}"}
    assert status_of(b, headers) == 200
    Admin(a)("POST", f"/keys/{created['id']}/revoke")
    assert status_of(a, headers) == 401
    time.sleep(0.6)
    assert status_of(b, headers) == 401


def test_master_and_key_checks_use_constant_time_compare(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from relaygate.auth.principal import Principal, hash_secret

    compared: list[tuple[str, str]] = []
    real = hmac.compare_digest

    def spy(a: str, b: str) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)  # the module the authenticator compares with
    secret = "rg-some-virtual-key-abcdef"
    principal = Principal(id="key_1", hash=hash_secret(secret))

    async def lookup(digest: str) -> Principal | None:
        return principal if digest == principal.hash else None

    a = auth_module.Authenticator(MASTER, lookup, cache_ttl=10)
    assert a.is_master(MASTER) and not a.is_master(MASTER[:-1])
    assert asyncio.run(a.authenticate(secret)) is principal
    assert (hash_secret(secret), principal.hash) in compared
    assert any(b == hash_secret(MASTER) for _, b in compared)
    # the stored hash is never compared with ==: a cached row whose hash changed is refused, not trusted
    a._cache[hash_secret(secret)] = (Principal(id="key_1", hash="0" * 64), time.monotonic() + 30,
                                     time.monotonic() + 60)
    with pytest.raises(Exception, match="Invalid API key"):
        asyncio.run(a.authenticate(secret))


def test_cli_creates_lists_rotates_and_revokes_keys(
        openai_emulator: BackgroundServer, start_gateway: StartGateway, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    import orjson
    import yaml

    db = {"url": f"sqlite:///{tmp_path}/cli.db"}
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump({"database": db, "auth": {"master_key": MASTER, "cache_ttl": 0}}))

    def run(*argv: str) -> Any:
        capsys.readouterr()
        assert cli_main(["keys", "--config", str(cfg_path), *argv]) == 0
        return orjson.loads(capsys.readouterr().out)

    created = run("create", "--name", "cli", "--rpm", "100", "--models", "m,other", "--budget-usd", "2.5")
    assert created["rpm"] == 100 and created["budget_usd"] == 2.5 and created["models"] == ["m", "other"]
    gw = start_gateway(config(openai_emulator, database=db, auth={"cache_ttl": 0}))
    assert chat(gw, created["key"])
    assert [k["id"] for k in run("list")] == [created["id"]]
    rotated = run("rotate", created["id"], "--grace", "0")
    with pytest.raises(openai.AuthenticationError):
        chat(gw, created["key"])
    assert chat(gw, rotated["key"])
    run("revoke", created["id"])
    with pytest.raises(openai.AuthenticationError):
        chat(gw, rotated["key"])
    assert run("list") == []


def test_model_and_provider_lists_need_a_key_and_show_only_allowed_models(
        openai_emulator: BackgroundServer, start_gateway: StartGateway) -> None:
    gw = start_gateway(config(openai_emulator))
    secret = Admin(gw)("POST", "/keys", {"models": ["m"]}).json()["key"]
    for path in ("/models", "/models/m", "/providers"):
        assert requests.get(gw.base_url + path, timeout=10).status_code == 401
    listed = openai.OpenAI(base_url=gw.base_url, api_key=secret, max_retries=0).models.list()
    assert [m.id for m in listed.data] == ["m"]
    full = openai.OpenAI(base_url=gw.base_url, api_key=MASTER, max_retries=0).models.list()
    assert sorted(m.id for m in full.data) == ["m", "other"]
    headers = {"authorization": f"Bearer {secret}"}
    assert requests.get(gw.base_url + "/models/other", headers=headers, timeout=10).status_code == 404
    assert requests.get(gw.base_url + "/providers", headers=headers, timeout=10).status_code == 200
