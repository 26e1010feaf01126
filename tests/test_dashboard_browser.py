"""The dashboard in a real browser: Debian's chromium driven by Playwright (never a browser Playwright downloads).

One gateway in front of the OpenAI emulator serves the page; the tests log in with the master key, create a
key, call the gateway with it through the ``openai`` SDK, find that call in the log explorer, revoke the key,
switch a fault-injection rule on and off, and visit every page with no console error. Each page's screenshot
goes to the test's tmp dir, or to ``RELAYGATE_SCREENSHOTS`` (a folder: docs/img holds the README's)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import requests
from playwright.sync_api import expect, sync_playwright

from relaygate.testing.base import BackgroundServer, FaultPlan
from relaygate.testing.gateway import GatewayThread
from relaygate.testing.openai import OpenAIEmulatorOptions, create_app
from tests.conftest import UPSTREAM_KEY, openai_model

MASTER = "sk-master-dashboard-7c2f9e41b0a35d68e1f4"
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WAIT_MS = 10_000  # the longest any step waits for the page
PAGES = ("overview", "providers", "keys", "logs", "models", "alerts")


@pytest.fixture(scope="module")
def emulator() -> Iterator[BackgroundServer]:
    with BackgroundServer(create_app(OpenAIEmulatorOptions(api_key=UPSTREAM_KEY))) as emu:
        yield emu


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, emulator: BackgroundServer) -> Iterator[GatewayThread]:
    db = tmp_path_factory.mktemp("dashboard") / "relaygate.db"
    # "two": two deployments, so that a call may be retried on the second (the attempts view)
    two = {"name": "two", "deployments": [
        {"name": name, "provider": "openai", "model": "gpt-4o-mini", "api_base": emulator.url + "/v1",
         "api_key": UPSTREAM_KEY, "timeout": 10} for name in ("two-a", "two-b")]}
    gw = GatewayThread({
        "models": [openai_model("m", emulator), two],
        "auth": {"master_key": MASTER},
        "database": {"url": f"sqlite:///{db}"},
        "request_log": {"bodies": True},
        "alerts": {"interval": 0.2, "channels": {"log": {"type": "log"}}, "rules": [
            {"name": "errors", "kind": "error_rate", "threshold": 0.01, "window": 60, "min_calls": 1,
             "channels": ["log"]}]},
        "chaos": {"enabled": True, "rules": [{"name": "m-outage", "fault": "error", "model": "m",
                                              "enabled": False}]},
    }).start()
    try:
        yield gw
    finally:
        gw.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CHROMIUM} is required under CI=true (apt-get install chromium)")
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


class Page:
    """A logged-in tab that records every console error and uncaught exception."""

    def __init__(self, browser: Any, gw: GatewayThread) -> None:
        self.context = browser.new_context(viewport={"width": 1440, "height": 900})
        self.page = self.context.new_page()
        self.page.set_default_timeout(WAIT_MS)
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(f"{m.text} at {m.location.get('url')}")
                     if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))
        self.gw = gw

    def login(self) -> None:
        self.page.goto(self.gw.url + "/dashboard")
        self.page.fill("#master-key", MASTER)
        self.page.click("#login-form button[type=submit]")
        self.page.wait_for_selector("h1:text('Overview')")

    def open(self, name: str) -> None:
        self.page.click(f"#nav a[href='#{name}']")
        self.page.wait_for_selector(f"#nav a.active[href='#{name}']")
        self.page.wait_for_selector("#view h1")  # each page's title comes once its data did


@pytest.fixture
def tab(browser: Any, gateway: GatewayThread) -> Iterator[Page]:
    page = Page(browser, gateway)
    try:
        yield page
    finally:
        page.context.close()


def client(gw: GatewayThread, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0, timeout=10)


def logged(writer: Any, rows: int) -> None:
    """Wait until ``rows`` rows were handed to the request log (just after each answer), then written."""
    deadline = time.monotonic() + 10
    while writer.submitted < rows and time.monotonic() < deadline:
        time.sleep(0.005)
    assert writer.flush(10)


def test_login_keeps_the_key_in_session_storage_only(tab: Page) -> None:
    tab.login()
    page = tab.page
    assert page.evaluate("sessionStorage.getItem('relaygate.masterKey')") == MASTER
    assert page.evaluate("localStorage.length") == 0
    assert tab.context.cookies() == [] and MASTER not in page.url
    assert MASTER not in page.content()
    page.click("#logout")
    page.wait_for_selector("#login-form")
    assert page.evaluate("sessionStorage.getItem('relaygate.masterKey')") is None
    assert tab.errors == []


def test_create_a_key_find_its_call_edit_rotate_and_revoke_it(tab: Page) -> None:
    tab.login()
    page = tab.page
    tab.open("keys")
    page.fill("#create-key input[name=name]", "browser-app")
    page.click("#create-key button[type=submit]")
    secret = page.text_content("#new-secret", timeout=WAIT_MS) or ""
    assert secret.startswith("rg-") and len(secret) > 30
    key_id = page.get_attribute("#keys-table tr:has-text('browser-app')", "data-key-id")
    assert key_id

    writer = tab.gw.gateway.writer
    before = writer.submitted
    reply = client(tab.gw, secret).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "find me in the log"}])
    assert reply.choices[0].message.content
    logged(writer, before + 1)

    tab.open("logs")
    page.fill("#log-filters input[name=key_id]", key_id)
    page.click("#log-filters button[type=submit]")
    row = page.locator(f"#log-table tbody tr[data-uid]:has-text('{key_id}')")
    expect(page.locator("#log-table tbody tr[data-uid]")).to_have_count(1)  # only this key's call
    page.fill("#log-filters input[name=start]", "2099-01-01T00:00")  # the time filter: nothing that late
    page.click("#log-filters button[type=submit]")
    page.wait_for_selector("#log-table td:text('No calls match.')")
    page.fill("#log-filters input[name=start]", "")
    page.click("#log-filters button[type=submit]")
    row.click()
    detail = page.wait_for_selector("#call-detail")
    assert detail is not None
    text = detail.text_content() or ""
    assert "m/openai/0" in text and key_id in text and "find me in the log" in text  # deployment, key, body

    tab.open("keys")
    assert secret not in page.content()  # shown once, never again
    row_sel = f"#keys-table tr[data-key-id='{key_id}']"
    page.click(f"{row_sel} button:text('Edit')")
    page.fill("#edit-slot input[name=rpm]", "42")
    page.click("#edit-slot button[type=submit]")
    expect(page.locator(row_sel)).to_contain_text("42 / – / –")
    page.click(f"{row_sel} button:text('Rotate')")
    page.click(f"{row_sel} button:text('Confirm rotate')")
    rotated = page.text_content("#new-secret") or ""
    assert rotated.startswith("rg-") and rotated != secret
    assert client(tab.gw, rotated).chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    page.click("#view .secret button:text('Done')")
    assert rotated not in page.content()
    page.click(f"{row_sel} button:text('Revoke')")
    page.click(f"{row_sel} button:text('Confirm revoke')")
    page.wait_for_selector(f"text=Key {key_id} revoked.")
    assert page.locator(row_sel).count() == 0  # revoked keys are hidden unless asked for
    with pytest.raises(openai.AuthenticationError):
        client(tab.gw, secret).chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert tab.errors == []


def test_a_chaos_rule_is_switched_on_and_off_from_the_page(tab: Page) -> None:
    tab.login()
    page = tab.page
    tab.open("alerts")
    switch = "#chaos-table tr[data-rule='m-outage'] input[type=checkbox]"
    page.check(switch)
    page.wait_for_selector(switch + ":checked")
    with pytest.raises(openai.InternalServerError):
        client(tab.gw, MASTER).chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    page.uncheck(switch)
    page.wait_for_selector(switch + ":not(:checked)")
    assert client(tab.gw, MASTER).chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert tab.errors == []


def test_every_page_renders_without_console_errors(tab: Page, tmp_path: Path) -> None:
    gw = tab.gw
    admin = {"authorization": f"Bearer {MASTER}"}
    requests.post(gw.url + "/admin/teams", json={"id": "research", "budget_usd": 50, "budget_period": "month"},
                  headers=admin, timeout=10).raise_for_status()
    made = requests.post(gw.url + "/admin/keys", json={"name": "notebook", "team_id": "research", "rpm": 60,
                                                       "budget_usd": 0.00002, "budget_period": "day"},
                         headers=admin, timeout=10)
    made.raise_for_status()
    client(gw, made.json()["key"]).chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    llm = client(gw, MASTER)
    for i in range(4):
        llm.chat.completions.create(model="m", messages=[{"role": "user", "content": f"call {i}"}])
    for _ in llm.chat.completions.create(model="m", stream=True, messages=[{"role": "user", "content": "stream"}]):
        pass
    with pytest.raises(openai.NotFoundError):
        llm.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    logged(gw.gateway.writer, 7)
    catalog = requests.get(gw.url + "/api/models", headers={"authorization": f"Bearer {MASTER}"}, timeout=10)
    tab.login()
    page = tab.page
    shots = Path(os.environ.get("RELAYGATE_SCREENSHOTS") or tmp_path)
    for name in PAGES:
        tab.open(name)
        if name == "overview":
            page.click("button:text('Last day')")
            page.wait_for_selector("text=15-minute buckets")
            page.wait_for_selector(".uplot canvas")
            page.click("button:text('Last hour')")
            page.wait_for_selector("text=1-minute buckets")
            page.wait_for_selector(".uplot canvas")
            assert page.locator(".chart").count() == 7
        elif name == "models" and catalog.status_code == 404:  # the catalog API not there: said, not broken
            page.wait_for_selector("#catalog-missing")
        elif name == "models":  # the catalog with its filters: every card found has the capability asked
            page.wait_for_selector("#model-results .card")
            page.check("#model-filters input[name=supports_vision]")
            page.click("#model-filters button[type=submit]")
            expect(page.locator("#model-results .card:not(:has(.badge:text-is('vision')))")).to_have_count(0)
            assert page.locator("#model-results .card").count() > 0
            page.uncheck("#model-filters input[name=supports_vision]")
            page.click("#model-filters button[type=submit]")
        elif name == "logs":
            page.wait_for_selector("#log-table tbody tr[data-uid]")
        elif name == "keys":
            page.wait_for_selector("#keys-table tr:has-text('notebook')")
        elif name == "providers":
            page.wait_for_selector("text=m/openai/0")
        page.screenshot(path=str(shots / f"dashboard-{name}.png"), full_page=False)
        assert (shots / f"dashboard-{name}.png").stat().st_size > 10_000
    expected = [e for e in tab.errors if catalog.status_code == 404 and "404" in e and "/api/models" in e]
    assert [e for e in tab.errors if e not in expected] == []


def test_the_overview_narrows_to_a_model_a_key_or_a_team(tab: Page) -> None:
    gw = tab.gw
    admin = {"authorization": f"Bearer {MASTER}"}
    made = requests.post(gw.url + "/admin/keys", json={"name": "narrowed", "team_id": "overview-team"},
                         headers=admin, timeout=10)
    made.raise_for_status()
    key_id, secret = made.json()["id"], made.json()["key"]
    writer = gw.gateway.writer
    before = writer.submitted
    for _ in range(3):
        client(gw, secret).chat.completions.create(model="two", messages=[{"role": "user", "content": "mine"}])
    logged(writer, before + 3)

    def shown(**filters: str) -> str:  # what the API says the Requests tile must show
        data = requests.get(gw.url + "/dashboard/api/overview", params={"window": "hour", **filters}, headers=admin,
                            timeout=10).json()
        return f"{data['totals']['requests']:,}"

    tab.login()
    page = tab.page
    requests_tile = page.locator(".tile:has(.label:text-is('Requests')) .value")
    expect(requests_tile).to_have_text(shown())
    for name, value in (("key_id", key_id), ("team_id", "overview-team")):
        page.fill(f"#overview-filters input[name={name}]", value)
        page.click("#overview-filters button[type=submit]")
        expect(page.locator("#overview-scope")).to_contain_text(value)
        expect(requests_tile).to_have_text("3")
        page.fill(f"#overview-filters input[name={name}]", "")
    page.fill("#overview-filters input[name=model]", "m")  # the other model: none of this key's calls
    page.click("#overview-filters button[type=submit]")
    expect(page.locator("#overview-scope")).to_contain_text("calls of model m")
    expect(requests_tile).to_have_text(shown(model="m"))
    page.fill("#overview-filters input[name=model]", "")
    page.fill("#overview-filters input[name=key_id]", "not a key")  # refused, named, and the form stays
    page.click("#overview-filters button[type=submit]")
    expect(page.locator("#view .error")).to_contain_text("'key_id'")
    expect(page.locator("#overview-filters input[name=key_id]")).to_have_value("not a key")
    page.click("#overview-filters button:text('Clear')")
    expect(page.locator("#overview-scope")).to_contain_text("every call")
    expect(requests_tile).to_have_text(shown())
    page.wait_for_selector(f"#overview-key_id option[value='{key_id}']", state="attached")  # suggestions came
    # the console error the refused filter's 400 logged is the only one
    assert [e for e in tab.errors if "400" not in e] == []


def test_a_retried_call_shows_each_attempt_in_the_log_explorer(tab: Page, emulator: BackgroundServer,
                                                               tmp_path: Path) -> None:
    gw = tab.gw
    writer = gw.gateway.writer
    before = writer.submitted
    emulator.state.faults = FaultPlan(status=503, count=1, paths=["/chat/completions"])  # the first attempt fails
    try:
        reply = client(gw, MASTER).chat.completions.create(
            model="two", messages=[{"role": "user", "content": "retried"}])
    finally:
        emulator.state.faults = None
    assert reply.choices[0].message.content
    logged(writer, before + 1)
    tab.login()
    page = tab.page
    tab.open("logs")
    page.fill("#log-filters input[name=model]", "two")
    page.click("#log-filters button[type=submit]")
    row = page.locator("#log-table tbody tr[data-uid]:has(td.num:text-is('2'))").first
    row.click()
    attempts = page.locator("#call-attempts tbody tr")
    expect(attempts).to_have_count(2)
    expect(attempts.nth(0)).to_contain_text("503")
    expect(attempts.nth(0)).to_contain_text("unavailable")
    expect(attempts.nth(1)).to_contain_text("200")
    names = [attempts.nth(i).locator("td.mono").text_content() for i in range(2)]
    assert sorted(names) == ["two-a", "two-b"]  # one deployment, then the other
    bars = page.locator("#call-attempts .attempt-bar")
    widths = [b.evaluate("el => el.getBoundingClientRect().width") for b in bars.all()]
    assert len(widths) == 2 and all(w > 0 for w in widths)  # drawn through the CSSOM (the CSP allows no inline style)
    shot = Path(os.environ.get("RELAYGATE_SCREENSHOTS") or tmp_path) / "dashboard-attempts.png"
    page.locator("#call-detail").screenshot(path=str(shot))
    assert shot.stat().st_size > 5_000
    assert tab.errors == []
