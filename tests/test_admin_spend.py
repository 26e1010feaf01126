"""``/admin/spend`` and ``/admin/logs`` over the request log; keys declared in the config."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import requests

from relaygate.testing.base import BackgroundServer
from tests.conftest import StartGateway, openai_model
from tests.test_keys import MASTER, Admin
from tests.test_requestlog import gateway_rows

CFG_KEY = "sk-from-config-9c1e5b7a3d0f4e82b6a1c9d7e3f05b2a"  # a declared key must be long and look random


def call(gw: Any, key: str, model: str = "m", text: str = "hello") -> int:
    r = requests.post(gw.base_url + "/chat/completions", json={"model": model, "messages": [
        {"role": "user", "content": text}]}, headers={"authorization": f"Bearer {key}"}, timeout=10)
    return r.status_code


@pytest.fixture(params=["sqlite", "postgresql"])
def traffic(request, openai_emulator, start_gateway) -> tuple[Any, dict[str, Any], dict[str, Any]]:  # type: ignore[no-untyped-def]
    """A gateway with two keys (one in team t1) and some calls: 3 + 2 good, 1 unknown model."""
    extra = {} if request.param == "sqlite" else {"database": {"url": request.getfixturevalue("pg_url")}}
    gw = start_gateway({"models": [openai_model("m", openai_emulator),
                                   openai_model("big", openai_emulator, upstream_model="gpt-4o")],
                        "auth": {"master_key": MASTER}, **extra})
    admin = Admin(gw)
    a = admin("POST", "/keys", {"team_id": "t1", "user_id": "ann"}).json()
    b = admin("POST", "/keys", {}).json()
    for text in ("one", "two words", "three little words"):
        assert call(gw, a["key"], text=text) == 200
    assert call(gw, b["key"], "big") == 200 and call(gw, b["key"]) == 200
    assert call(gw, b["key"], "nope") == 404
    gateway_rows(gw, expected=6)
    return gw, a, b


def test_spend_by_key_team_model_provider_and_day_matches_the_log(traffic) -> None:  # type: ignore[no-untyped-def]
    gw, a, b = traffic
    rows = gateway_rows(gw, expected=6)
    admin = Admin(gw)
    by_key = {d["key_id"]: d for d in admin("GET", "/spend", group_by="key").json()["data"]}
    for k, n in ((a, 3), (b, 3)):
        mine = [r for r in rows if r["key_id"] == k["id"]]
        assert by_key[k["id"]]["requests"] == n
        assert by_key[k["id"]]["cost_nano"] == sum(r["cost_nano"] for r in mine) > 0
    assert by_key[b["id"]]["errors"] == 1
    teams = admin("GET", "/spend", group_by="team").json()
    assert {d["team_id"]: d["requests"] for d in teams["data"]} == {"t1": 3, None: 3}
    assert teams["total_cost_nano"] == sum(r["cost_nano"] for r in rows)
    models = {d["model"]: d for d in admin("GET", "/spend", group_by="model").json()["data"]}
    assert models["big"]["cost_nano"] > models["m"]["cost_nano"] / 4  # gpt-4o is ~16x dearer per token
    providers = admin("GET", "/spend", group_by="provider").json()["data"]
    assert {d["provider"] for d in providers} == {"openai", None}
    today = time.strftime("%Y-%m-%d", time.gmtime())
    days = admin("GET", "/spend", group_by="day", start=today).json()["data"]
    assert [(d["day"], d["requests"]) for d in days] == [(today, 6)]
    assert admin("GET", "/spend", group_by="key", team_id="t1").json()["data"][0]["key_id"] == a["id"]
    assert admin("GET", "/spend", end="2000-01-01").json()["data"] == []
    r = admin("GET", "/spend", group_by="colour")
    assert r.status_code == 400 and r.json()["error"]["param"] == "group_by"


def test_logs_filter_and_page_without_gaps_or_repeats(traffic) -> None:  # type: ignore[no-untyped-def]
    gw, a, b = traffic
    admin = Admin(gw)
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = admin("GET", "/logs", **params).json()
        seen += [r["uid"] for r in page["data"]]
        assert all(len(page["data"]) <= 2 for _ in [0])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 6
    mine = admin("GET", "/logs", key_id=a["id"]).json()["data"]
    assert len(mine) == 3 and {r["team_id"] for r in mine} == {"t1"} and {r["user_id"] for r in mine} == {"ann"}
    assert "request_body" not in mine[0] and mine[0]["cost_usd"] == mine[0]["cost_nano"] / 1e9
    failed = admin("GET", "/logs", status=404).json()["data"]
    assert [(r["key_id"], r["model"], r["error"]) for r in failed] == [(b["id"], "nope", "not_found")]
    assert admin("GET", "/logs", limit=0).status_code == 400
    assert admin("GET", "/logs", cursor="garbage").status_code == 400


def test_keys_declared_in_the_config_work_with_their_limits(
        openai_emulator: BackgroundServer, start_gateway: StartGateway, tmp_path: Path) -> None:
    db = {"url": f"sqlite:///{tmp_path}/cfg.db"}

    def cfg(rpm: int) -> dict[str, Any]:
        return {"models": [openai_model("m", openai_emulator)], "database": db,
                "auth": {"master_key": MASTER, "keys": [{"id": "ci", "key": CFG_KEY, "rpm": rpm}]}}

    gw = start_gateway(cfg(2))
    assert [call(gw, CFG_KEY) for _ in range(3)] == [200, 200, 429]
    listed = Admin(gw)("GET", "/keys").json()["data"]
    assert [(k["id"], k["rpm"]) for k in listed] == [("cfg_ci", 2)]
    gw.stop()
    gw2 = start_gateway(cfg(50))
    assert Admin(gw2)("GET", "/keys/cfg_ci").json()["rpm"] == 50
