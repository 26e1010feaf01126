"""Alerts: rules over the gateway's own figures fire once per cooldown and resolve, delivered to local receivers
of each channel (a webhook and a Slack-style endpoint on an HTTP server written here, e-mail to aiosmtpd,
the log); /admin/alerts shows them."""

from __future__ import annotations

import email
import logging
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import pytest
import requests
from aiosmtpd.controller import Controller

from relaygate.config import ConfigError, parse_config
from relaygate.testing.base import free_port
from relaygate.testing.gateway import GatewayThread

from .routing_support import MESSAGES, dep, emulators, fault, reset

MASTER = "rg-master-alerts-0123456789abcdef"
ADMIN = {"authorization": f"Bearer {MASTER}"}
HOOK_TOKEN = "hook-token-0123456789abcdef"
Start = Callable[..., GatewayThread]


class Receiver:
    """An HTTP server that records every JSON body POSTed to it, by path."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, dict[str, Any], str | None]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.posts.append((self.path, orjson.loads(body), self.headers.get("authorization")))
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def bodies(self, path: str) -> list[dict[str, Any]]:
        return [b for p, b, _ in list(self.posts) if p == path]


class Mailbox:
    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 (aiosmtpd's)
        self.messages.append(email.message_from_bytes(envelope.content))
        return "250 OK"

    def __init__(self) -> None:
        self.messages: list[Any] = []


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()
    r.server.server_close()


@pytest.fixture
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    box = Mailbox()
    port = free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    yield box, port
    controller.stop()


def wait_for(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def alerting(emu: Any, receiver: Receiver, smtp_port: int) -> dict[str, Any]:
    channels = {
        "hook": {"type": "webhook", "url": receiver.url + "/hook", "headers": {"authorization": HOOK_TOKEN}},
        "slack": {"type": "slack", "url": receiver.url + "/slack"},
        "mail": {"type": "email", "host": "127.0.0.1", "port": smtp_port, "starttls": False,
                 "sender": "gw@example.test", "to": ["ops@example.test"]},
        "log": {"type": "log"},
    }
    rules = [
        {"name": "errors", "kind": "error_rate", "threshold": 0.5, "window": 0.6, "min_calls": 2,
         "cooldown": 60, "severity": "critical", "channels": ["hook", "log"]},
        {"name": "breaker", "kind": "breaker_open", "cooldown": 60, "channels": ["slack"]},
        {"name": "unhealthy", "kind": "deployment_unhealthy", "threshold": 50, "cooldown": 60, "channels": ["mail"]},
        {"name": "slow", "kind": "p95_latency", "model": "m", "threshold": 0.1, "window": 0.6, "min_calls": 2,
         "cooldown": 60, "channels": ["log"]},
        {"name": "spend", "kind": "spend_per_hour", "threshold": 1e-9, "window": 0.6, "cooldown": 60,
         "channels": ["hook"]},
    ]
    return {"models": [{"name": "m", "retry": {"attempts": 1},
                        "breaker": {"enabled": True, "failures": 3, "cooldown": 0.5},
                        "deployments": [dep(emu, "only")]}],
            "auth": {"master_key": MASTER},
            "alerts": {"interval": 0.05, "channels": channels, "rules": rules}}


def chat(gw: GatewayThread) -> int:
    return requests.post(gw.base_url + "/chat/completions", headers=ADMIN, timeout=10,
                         json={"model": "m", "messages": MESSAGES}).status_code


def test_rules_fire_once_per_cooldown_and_resolve_on_every_channel(
        start_gateway: Start, receiver: Receiver, mailbox: tuple[Mailbox, int],
        caplog: pytest.LogCaptureFixture) -> None:
    box, smtp_port = mailbox
    with emulators({}) as (emu,), caplog.at_level(logging.INFO, logger="relaygate.alerts"):
        gw = start_gateway(alerting(emu, receiver, smtp_port))
        fault(emu, status=500)
        assert [chat(gw) for _ in range(4)] == [500, 500, 500, 503]  # the breaker opened after three
        wait_for(lambda: len(receiver.bodies("/slack")) == 1 and len(box.messages) == 1
                 and any(b["alert"] == "errors" for b in receiver.bodies("/hook")))
        time.sleep(0.3)  # several more rounds while they hold: nothing is sent again within the cooldown
        firing_hooks = [b for b in receiver.bodies("/hook") if b["alert"] == "errors"]
        assert len(firing_hooks) == 1 and len(receiver.bodies("/slack")) == 1 and len(box.messages) == 1
        reset([emu])
        fault(emu, latency_ms=150)  # slow but answering: the p95 rule's turn
        time.sleep(0.55)  # the breaker's cooldown: it admits a probe again
        assert [chat(gw) for _ in range(4)] == [200] * 4
        wait_for(lambda: any(b["alert"] == "errors" and b["status"] == "resolved" for b in receiver.bodies("/hook"))
                 and len(receiver.bodies("/slack")) == 2)
        view = requests.get(gw.url + "/admin/alerts", headers=ADMIN, timeout=5).json()
        assert requests.get(gw.url + "/admin/alerts", timeout=5).status_code == 401
    errors = [b for b in receiver.bodies("/hook") if b["alert"] == "errors"]
    assert [b["status"] for b in errors] == ["firing", "resolved"]
    assert errors[0]["severity"] == "critical" and errors[0]["value"] == 1.0 and errors[0]["threshold"] == 0.5
    assert all(auth == HOOK_TOKEN for p, _, auth in receiver.posts if p == "/hook")  # the channel's header
    assert [b["text"].split()[0] for b in receiver.bodies("/slack")] == ["[FIRING]", "[RESOLVED]"]
    assert "breaker" in receiver.bodies("/slack")[0]["text"] and "only" in receiver.bodies("/slack")[0]["text"]
    assert box.messages[0]["Subject"].startswith("[relaygate] [FIRING] warning unhealthy")
    assert box.messages[0]["To"] == "ops@example.test"
    spend = [b for b in receiver.bodies("/hook") if b["alert"] == "spend"]
    assert spend and spend[0]["status"] == "firing"  # the successful calls cost something
    logged = [r.getMessage() for r in caplog.records if r.name == "relaygate.alerts"]
    assert any(m.startswith("ALERT [FIRING] critical errors") for m in logged)
    assert any(m.startswith("ALERT [FIRING] warning slow") for m in logged)
    rules = {r["name"]: r for r in view["rules"]}
    assert set(rules) == {"errors", "breaker", "unhealthy", "slow", "spend"}
    assert rules["errors"]["firing"] is False and rules["slow"]["firing"] is True
    assert view["sent"] >= 5 and view["failed"] == 0 and view["dropped"] == 0
    assert {n["alert"] for n in view["recent"]} >= {"errors", "breaker", "unhealthy", "slow", "spend"}
    sent = orjson.dumps(receiver.posts).decode() + "".join(str(m) for m in box.messages)
    assert MASTER not in sent and "sk-upstream" not in sent and "api_base" not in sent


def test_alert_config_errors_name_their_path() -> None:
    with pytest.raises(ConfigError) as e:
        parse_config({"alerts": {"channels": {"h": {"type": "webhook", "url": "ftp://x"}},
                                 "rules": [{"name": "r", "kind": "error_rate", "channels": ["h", "nope"]}]}}, {})
    text = str(e.value)
    assert "alerts.channels.h" in text
    with pytest.raises(ConfigError) as e:
        parse_config({"alerts": {"channels": {"h": {"type": "log"}},
                                 "rules": [{"name": "r", "kind": "error_rate", "threshold": 0.1,
                                            "channels": ["nope"]}]}}, {})
    assert "no channel named 'nope'" in str(e.value)
    with pytest.raises(ConfigError):
        parse_config({"alerts": {"channels": {"h": {"type": "log"}},
                                 "rules": [{"name": "r", "kind": "budget", "threshold": 80, "channels": ["h"]}]}}, {})


def test_a_team_budget_rule_fires_at_its_share_and_resolves_when_the_budget_grows(
        start_gateway: Start, receiver: Receiver) -> None:
    team = "t-alerts"
    with emulators({}) as (emu,):
        gw = start_gateway({
            "models": [{"name": "m", "deployments": [dep(emu, "only")]}],
            "auth": {"master_key": MASTER},
            "alerts": {"interval": 0.05, "channels": {"hook": {"type": "webhook", "url": receiver.url + "/hook"}},
                       "rules": [{"name": "budget", "kind": "budget", "team": team, "threshold": 0.01,
                                  "cooldown": 60, "channels": ["hook"]}]}})
        admin = gw.url + "/admin"
        time.sleep(0.2)  # rounds with no such team yet: nothing to say
        assert requests.post(admin + "/teams", headers=ADMIN, timeout=5,
                             json={"id": team, "budget_usd": 0.01, "budget_period": "day"}).status_code == 201
        key = requests.post(admin + "/keys", headers=ADMIN, timeout=5, json={"team_id": team}).json()["key"]
        r = requests.post(gw.base_url + "/chat/completions", headers={"authorization": f"Bearer {key}"},
                          json={"model": "m", "messages": MESSAGES}, timeout=10)
        assert r.status_code == 200
        wait_for(lambda: len(receiver.bodies("/hook")) == 1)
        firing = receiver.bodies("/hook")[0]
        assert requests.patch(f"{admin}/teams/{team}", headers=ADMIN, json={"budget_usd": 1000},
                              timeout=5).status_code == 200
        wait_for(lambda: len(receiver.bodies("/hook")) == 2)
    assert firing["status"] == "firing" and firing["subject"] == f"team:{team}" and firing["value"] >= 0.01
    assert receiver.bodies("/hook")[1]["status"] == "resolved"
