"""The dashboard's JSON endpoints and files: master key required, filters checked (400s naming the parameter),
aggregates that agree with the request log on SQLite and PostgreSQL, and only the packaged files served."""

from __future__ import annotations

import fnmatch
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from relaygate.dashboard.overview import BOUNDS_MS, WINDOWS, overview, overview_query, quantile
from relaygate.store import tables
from relaygate.store.db import Database
from relaygate.testing.base import BackgroundServer, FaultPlan
from relaygate.testing.gateway import GatewayThread
from tests.conftest import UPSTREAM_KEY, StartGateway, openai_model
from tests.test_keys import MASTER, Admin
from tests.test_requestlog import gateway_rows

AUTH = {"authorization": f"Bearer {MASTER}"}


@pytest.fixture
def gw(openai_emulator: BackgroundServer, start_gateway: StartGateway) -> Iterator[GatewayThread]:
    gw = start_gateway({"models": [openai_model("m", openai_emulator)], "auth": {"master_key": MASTER},
                        "request_log": {"bodies": True}})
    yield gw


def get(gw: GatewayThread, path: str, headers: dict[str, str] | None = AUTH) -> requests.Response:
    return requests.get(gw.url + path, headers=headers, timeout=10)


def chat(gw: GatewayThread, key: str, model: str = "m", text: str = "hello") -> int:
    return requests.post(gw.base_url + "/chat/completions", json={"model": model, "messages": [
        {"role": "user", "content": text}]}, headers={"authorization": f"Bearer {key}"}, timeout=10).status_code


@pytest.mark.parametrize("path", ["/dashboard/api/session", "/dashboard/api/overview",
                                  "/dashboard/api/overview?window=day", "/dashboard/api/logs/abc"])
def test_the_dashboard_data_needs_the_master_key(gw: GatewayThread, path: str) -> None:
    key = Admin(gw)("POST", "/keys", {}).json()["key"]
    for headers in (None, {"authorization": "Bearer wrong"}, {"authorization": f"Bearer {key}"}):
        r = get(gw, path, headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_master_key"


def test_the_page_and_its_files_are_served_from_the_package_and_nothing_else(gw: GatewayThread) -> None:
    page = get(gw, "/dashboard", None)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY" and "set-cookie" not in page.headers
    for src in ("/dashboard/app.js", "/dashboard/style.css", "/dashboard/vendor/uplot.iife.min.js",
                "/dashboard/vendor/uplot.min.css"):
        assert src in page.text  # the page loads only files of its own origin: no CDN
        assert get(gw, src, None).status_code == 200
    assert "http" not in page.text.replace("http-equiv", "")
    for bad in ("/dashboard/..%2fapi%2fadmin.py", "/dashboard/vendor/../../api.py", "/dashboard/api.py",
                "/dashboard/nope.js", "/dashboard/vendor/SOURCES.md", "/dashboard/%2e%2e/__init__.py"):
        r = get(gw, bad, None)
        assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_route", bad


def test_overview_buckets_agree_with_the_request_log(gw: GatewayThread) -> None:
    key = Admin(gw)("POST", "/keys", {}).json()["key"]
    for text in ("one", "two", "three"):
        assert chat(gw, key, text=text) == 200
    assert chat(gw, key, "nope") == 404
    rows = gateway_rows(gw, expected=4)
    for window in ("hour", "day"):
        data = get(gw, f"/dashboard/api/overview?window={window}").json()
        w = WINDOWS[window]
        assert data["bucket_seconds"] == w.bucket and len(data["buckets"]["t"]) == w.buckets
        assert data["start"] <= min(r["ts"] for r in rows) and max(r["ts"] for r in rows) < data["end"]
        t = data["totals"]
        assert t["requests"] == sum(data["buckets"]["requests"]) == 4
        assert t["errors"] == 1 and t["error_rate"] == 0.25
        assert t["prompt_tokens"] == sum(r["prompt_tokens"] or 0 for r in rows) > 0
        assert t["cost_usd"] == pytest.approx(sum(r["cost_nano"] for r in rows) / 1e9)
        assert 0 < t["latency_p50_ms"] <= t["latency_p95_ms"]
        busy = [i for i, n in enumerate(data["buckets"]["requests"]) if n]
        assert all(data["buckets"]["error_rate"][i] is None for i in range(w.buckets) if i not in busy)


def test_overview_and_log_detail_refuse_bad_input_naming_it(gw: GatewayThread) -> None:
    for path, param in (("/dashboard/api/overview?window=week", "window"),
                        ("/dashboard/api/overview?provider=openai", "provider"),
                        ("/dashboard/api/overview?key=k", "key"),
                        ("/dashboard/api/overview?model=" + "x" * 201, "model"),
                        ("/dashboard/api/overview?key_id=a%20b", "key_id"),
                        ("/dashboard/api/overview?key_id=" + "k" * 41, "key_id"),
                        ("/dashboard/api/overview?team_id=t%01", "team_id"),
                        ("/dashboard/api/overview?team_id=" + "t" * 101, "team_id"),
                        ("/dashboard/api/logs/a%20b", "uid"), ("/dashboard/api/logs/" + "x" * 33, "uid"),
                        # the admin API reads the log's filters as the overview does (the page links them)
                        ("/admin/logs?key_id=a%20b", "key_id"), ("/admin/spend?key_id=a%2Fb", "key_id")):
        r = get(gw, path)
        assert r.status_code == 400, path
        assert r.json()["error"]["param"] == param and r.json()["error"]["type"] == "invalid_request_error"
    r = get(gw, "/dashboard/api/logs/0123456789abcdef")
    assert r.status_code == 404 and r.json()["error"]["code"] == "log_row_not_found"


def test_one_call_in_full_with_its_redacted_bodies(gw: GatewayThread) -> None:
    key = Admin(gw)("POST", "/keys", {"team_id": "t-dash"}).json()
    assert chat(gw, key["key"], text="tell me about the dashboard") == 200
    assert chat(gw, MASTER) == 200
    gateway_rows(gw, expected=2)
    listed = Admin(gw)("GET", "/logs", key_id=key["id"]).json()["data"]
    assert len(listed) == 1 and "request_body" not in listed[0]
    row = get(gw, "/dashboard/api/logs/" + listed[0]["uid"]).json()
    assert row["key_id"] == key["id"] and row["team_id"] == "t-dash" and row["deployment"] == "m/openai/0"
    assert row["attempts"] == 1 and row["prompt_tokens"] > 0 and row["cost_usd"] > 0
    assert "tell me about the dashboard" in row["request_body"] and row["response_body"]
    assert key["key"] not in str(row)  # the caller's secret is never in its row


def test_log_explorer_filters_by_status_class(gw: GatewayThread) -> None:
    admin = Admin(gw)
    assert chat(gw, MASTER) == 200 and chat(gw, MASTER, "nope") == 404
    gateway_rows(gw, expected=2)
    assert [r["status"] for r in admin("GET", "/logs", status_class="4xx").json()["data"]] == [404]
    assert [r["status"] for r in admin("GET", "/logs", status_class="2xx").json()["data"]] == [200]
    assert admin("GET", "/logs", status_class="5xx").json()["data"] == []
    for params in ({"status_class": "6xx"}, {"status_class": "4xx", "status": 404}):
        r = admin("GET", "/logs", **params)
        assert r.status_code == 400 and r.json()["error"]["param"] == "status_class"


def test_teams_and_users_show_their_spend_against_their_budget(gw: GatewayThread) -> None:
    admin = Admin(gw)
    assert admin("POST", "/teams", {"id": "t-budget", "budget_usd": 5, "budget_period": "month"}).status_code == 201
    assert admin("POST", "/users", {"id": "u-free"}).status_code == 201
    key = admin("POST", "/keys", {"team_id": "t-budget", "user_id": "u-free"}).json()["key"]
    assert chat(gw, key) == 200
    rows = gateway_rows(gw, expected=1)
    team = admin("GET", "/teams/t-budget").json()
    assert team["spend_usd"] == pytest.approx(rows[0]["cost_nano"] / 1e9) and team["spend_usd"] > 0
    assert team["budget_remaining_usd"] == pytest.approx(5 - team["spend_usd"])
    assert team["budget_period_end"] is not None
    user = admin("GET", "/users").json()["data"][0]
    assert user["id"] == "u-free" and user["spend_usd"] == pytest.approx(team["spend_usd"])
    assert user["budget_remaining_usd"] is None


def test_quantiles_interpolate_inside_their_bin() -> None:
    counts = [0] * (len(BOUNDS_MS) + 1)
    assert quantile(counts, 0.5) is None
    counts[BOUNDS_MS.index(100)] = 10  # ten values in (75, 100]
    assert quantile(counts, 0.5) == pytest.approx(87.5)
    counts[-1] = 90  # ninety beyond the last bound: the p95 says "at least that"
    assert quantile(counts, 0.95) == BOUNDS_MS[-1]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_buckets_are_whole_intervals_on_both_databases(backend: str, tmp_path: Any,
                                                       request: pytest.FixtureRequest) -> None:
    url = f"sqlite:///{tmp_path}/o.db" if backend == "sqlite" else request.getfixturevalue("pg_url")
    db = Database(url)
    try:
        db.migrate()
        w = WINDOWS["hour"]
        now = 1_800_000_030.0  # 30 s into a minute
        end = 1_800_000_060.0
        # rows at the start of the window's first bucket, late in its second, and in its last
        at = [end - 3600, end - 3600 + 119.9, now - 1]
        with db.engine.begin() as conn:
            conn.execute(tables.request_log.insert(), [
                {"uid": f"u{i}", "request_id": f"r{i}", "ts": ts, "day": "2027-01-15", "route": "chat",
                 "status": 200, "latency_ms": 40.0 + i, "cost_nano": 1000} for i, ts in enumerate(at)])
        data = overview(db.engine, w, now)
        assert data["end"] == end and data["buckets"]["requests"][:2] == [1, 1]
        assert data["buckets"]["requests"][-1] == 1 and data["totals"]["requests"] == 3
    finally:
        db.close()


def test_an_open_gateway_has_no_dashboard_data(openai_emulator: BackgroundServer,
                                               start_gateway: StartGateway) -> None:
    gw = start_gateway({"models": [openai_model("m", openai_emulator)]})
    r = get(gw, "/dashboard/api/session", None)
    assert r.status_code == 403 and r.json()["error"]["code"] == "admin_disabled"
    assert get(gw, "/dashboard", None).status_code == 200  # the page, which then says so


def test_every_dashboard_file_is_package_data_of_the_wheel() -> None:
    """A file the page loads but the wheel leaves out works from a checkout and 404s once installed."""
    root = Path(__file__).resolve().parent.parent
    globs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["relaygate"]
    static = root / "relaygate" / "dashboard" / "static"
    files = [str(p.relative_to(root / "relaygate")) for p in static.rglob("*") if p.is_file()]
    assert "dashboard/static/vendor/uplot.iife.min.js" in files
    assert [f for f in files if not any(fnmatch.fnmatchcase(f, g) and "/" not in f[len(g.rstrip("*")):]
                                        for g in globs)] == []


def test_overview_narrows_to_a_model_a_key_or_a_team(openai_emulator: BackgroundServer,
                                                     start_gateway: StartGateway) -> None:
    gw = start_gateway({"models": [openai_model("m", openai_emulator), openai_model("m2", openai_emulator)],
                        "auth": {"master_key": MASTER}})
    admin = Admin(gw)
    teamed = admin("POST", "/keys", {"team_id": "t-over"}).json()
    plain = admin("POST", "/keys", {}).json()
    calls = [(teamed, "m"), (teamed, "m"), (teamed, "m2"), (plain, "m"), (plain, "nope")]
    for key, model in calls:
        chat(gw, key["key"], model)
    rows = gateway_rows(gw, expected=len(calls))

    def totals(**filters: str) -> dict[str, Any]:
        r = requests.get(gw.url + "/dashboard/api/overview", params={"window": "day", **filters}, headers=AUTH,
                         timeout=10)
        assert r.status_code == 200, r.text
        assert r.json()["filters"] == filters
        return dict(r.json()["totals"])

    def expect(**filters: str) -> list[dict[str, Any]]:
        return [r for r in rows if all(r[k] == v for k, v in filters.items())]

    cases: list[dict[str, str]] = [{}, {"model": "m"}, {"model": "m2"}, {"model": "nope"}, {"key_id": teamed["id"]},
                                   {"key_id": plain["id"]}, {"team_id": "t-over"},
                                   {"model": "m", "key_id": plain["id"]}, {"model": "m", "team_id": "t-over"},
                                   {"model": "never-called"}, {"key_id": "key_0000000000000000"}]
    for filters in cases:
        t, want = totals(**filters), expect(**filters)
        assert t["requests"] == len(want), filters
        assert t["errors"] == sum(1 for r in want if r["error"]), filters
        assert t["cost_usd"] == pytest.approx(sum(r["cost_nano"] for r in want) / 1e9), filters
        assert t["prompt_tokens"] == sum(r["prompt_tokens"] or 0 for r in want), filters
    assert totals(team_id="t-over")["requests"] == 3 and totals(model="m", key_id=plain["id"])["requests"] == 1


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_filtered_overview_is_read_from_an_index_never_the_table(backend: str, tmp_path: Any,
                                                                   request: pytest.FixtureRequest) -> None:
    """A model filter is a column of the covering index ix_request_log_overview: the window is read from it
    alone. A key or team filter may instead seek the partial (key_id, ts) / (team_id, ts) index, which reads
    only that key's or team's rows (the planner's choice); the table itself is never scanned."""
    url = f"sqlite:///{tmp_path}/o.db" if backend == "sqlite" else request.getfixturevalue("pg_url")
    db = Database(url)
    try:
        db.migrate()

        def plan(filters: dict[str, str]) -> str:
            q, _ = overview_query(db.engine, WINDOWS["day"], 1_800_000_000.0, filters)
            sql = str(q.compile(db.engine, compile_kwargs={"literal_binds": True}))
            with db.engine.connect() as conn:
                if backend == "sqlite":
                    return " ".join(str(row[-1]) for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql))
                # an empty table: the planner is kept from the table scans it would rightly prefer for it
                conn.exec_driver_sql("SET enable_seqscan = off")
                conn.exec_driver_sql("SET enable_bitmapscan = off")
                return " ".join(row[0] for row in conn.exec_driver_sql("EXPLAIN " + sql))

        by_model = plan({"model": "gpt-4o"})
        if backend == "sqlite":
            assert "USING COVERING INDEX ix_request_log_overview" in by_model, by_model
        else:
            assert "Index Only Scan using ix_request_log_overview" in by_model, by_model
        for filters in ({"key_id": "key_1"}, {"team_id": "t"}, {"model": "m", "key_id": "key_1", "team_id": "t"}):
            used = plan(filters)
            assert ("ix_request_log_overview" in used or "ix_request_log_key_ts" in used
                    or "ix_request_log_team_ts" in used), used
            assert "SCAN request_log" not in used and "Seq Scan" not in used, used
    finally:
        db.close()


def test_a_retried_call_keeps_each_attempt(openai_emulator: BackgroundServer, start_gateway: StartGateway) -> None:
    """The first attempt fails (503), the second deployment answers: both attempts in the log row, in order,
    with their deployment, provider, status, error class, start and duration; a call of one attempt keeps none."""
    deployments = [{"name": name, "provider": "openai", "model": "gpt-4o-mini", "api_base": openai_emulator.url + "/v1",
                    "api_key": UPSTREAM_KEY, "timeout": 10} for name in ("first", "second")]
    gw = start_gateway({"models": [{"name": "two", "deployments": deployments}, openai_model("one", openai_emulator)],
                        "auth": {"master_key": MASTER}})
    openai_emulator.state.faults = FaultPlan(status=503, count=1, paths=["/chat/completions"])
    assert chat(gw, MASTER, "two") == 200
    openai_emulator.state.faults = FaultPlan(status=503, count=-1, paths=["/chat/completions"])
    assert chat(gw, MASTER, "two") == 503  # both fail: two attempts, both errors
    openai_emulator.state.faults = None
    assert chat(gw, MASTER, "one") == 200
    gateway_rows(gw, expected=3)
    listed = Admin(gw)("GET", "/logs").json()["data"]  # newest first
    one, failed, retried = listed
    assert one["attempts"] == 1 and one["attempt_log"] is None
    assert retried["attempts"] == 2 and retried["status"] == 200
    tries = retried["attempt_log"]
    assert [(t["provider"], t["status"], t["error"]) for t in tries] == [("openai", 503, "unavailable"),
                                                                          ("openai", 200, None)]
    assert {t["deployment"] for t in tries} == {"first", "second"} and tries[1]["deployment"] == retried["deployment"]
    assert 0 <= tries[0]["start_ms"] and tries[0]["start_ms"] + tries[0]["ms"] <= tries[1]["start_ms"]
    assert tries[1]["start_ms"] + tries[1]["ms"] <= retried["latency_ms"] + 1
    assert failed["status"] == 503 and [(t["status"], t["error"]) for t in failed["attempt_log"]] == [
        (503, "unavailable"), (503, "unavailable")]
    detail = get(gw, "/dashboard/api/logs/" + retried["uid"]).json()
    assert detail["attempt_log"] == tries
