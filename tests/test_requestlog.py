"""The audit log: one row per call, off the request path, redacted, and never lost."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
import requests
from sqlalchemy import create_engine, func, select

from relaygate.requestlog.redact import MASK, Redactor
from relaygate.requestlog.writer import RequestLogWriter
from relaygate.store import tables
from relaygate.store.db import Database, engine_url
from relaygate.testing.base import BackgroundServer, FaultPlan
from relaygate.testing.tcpproxy import TcpProxy
from tests.conftest import StartGateway, openai_model


def log_rows(url: str) -> list[dict[str, Any]]:
    engine = create_engine(engine_url(url))
    try:
        with engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(select(tables.request_log)
                                                           .order_by(tables.request_log.c.ts))]
    finally:
        engine.dispose()


def gateway_rows(gw: Any, expected: int = 1) -> list[dict[str, Any]]:
    """The log rows once ``expected`` calls were recorded (a row is queued just after the answer is sent)."""
    writer = gw.gateway.writer
    deadline = time.monotonic() + 10
    while writer.submitted < expected and time.monotonic() < deadline:
        time.sleep(0.005)
    assert writer.flush(10)
    return log_rows(gw.config.database.url)


def wait_until(predicate: Any, seconds: float) -> bool:
    """Whether ``predicate()`` became true within ``seconds``."""
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def client(gw: Any, key: str = "sk-none") -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0)


def test_every_call_leaves_one_row_with_usage_cost_and_timing(
        openai_emulator: BackgroundServer, start_gateway: StartGateway) -> None:
    gw = start_gateway({"models": [openai_model("m", openai_emulator)]})
    r = client(gw).chat.completions.create(model="m", messages=[{"role": "user", "content": "hi there"}])
    [row] = gateway_rows(gw)
    assert r.usage is not None
    assert row["request_id"].startswith("req_")
    assert (row["model"], row["deployment"], row["provider"], row["route"]) == ("m", "m/openai/0", "openai", "chat")
    assert row["status"] == 200 and row["error"] is None and row["attempts"] == 1
    assert row["prompt_tokens"] == r.usage.prompt_tokens and row["completion_tokens"] == r.usage.completion_tokens
    # gpt-4o-mini list price: $0.15 / $0.60 per million tokens
    expected = round((r.usage.prompt_tokens * 0.15e-6 + r.usage.completion_tokens * 0.60e-6) * 1e9)
    assert row["cost_nano"] == expected > 0
    assert row["client_ip"] == "127.0.0.1"
    assert 0 < row["ttft_ms"] <= row["latency_ms"]
    assert row["day"] == time.strftime("%Y-%m-%d", time.gmtime(row["ts"]))
    assert row["request_body"] is None  # bodies are off by default


def test_a_price_override_for_a_model_the_catalog_does_not_know_prices_its_calls(
        start_gateway: StartGateway, tmp_path: Path) -> None:
    """The shape docs/keys-limits-log.md shows for ``prices:``, on a name the bundled catalog lacks: start-up
    used to fail ('PriceBook' object has no attribute '_cache')."""
    from relaygate.config import load_config
    from relaygate.testing.base import BackgroundServer
    from relaygate.testing.openai import OpenAIEmulatorOptions, create_app

    with BackgroundServer(create_app(OpenAIEmulatorOptions(models=("my-model",)))) as upstream:
        path = tmp_path / "relaygate.yaml"
        path.write_text(f"""
models:
  - name: m
    deployments:
      - {{provider: openai, model: my-model, api_base: "{upstream.url}/v1"}}
prices: {{my-model: {{input_cost_per_token: 1.0e-6, output_cost_per_token: 2.0e-6, cached_input_cost_per_token: 5.0e-7}}}}
""")
        gw = start_gateway(load_config(str(path), {}))
        r = client(gw).chat.completions.create(model="m", messages=[{"role": "user", "content": "hi there"}])
        [row] = gateway_rows(gw)
    assert r.usage is not None
    assert row["cost_nano"] == round((r.usage.prompt_tokens * 1e-6 + r.usage.completion_tokens * 2e-6) * 1e9) > 0


def test_streamed_call_is_costed_without_showing_usage_to_the_client(
        openai_emulator: BackgroundServer, start_gateway: StartGateway) -> None:
    gw = start_gateway({"models": [openai_model("m", openai_emulator)]})
    chunks = list(client(gw).chat.completions.create(
        model="m", stream=True, messages=[{"role": "user", "content": "count the words here"}]))
    assert chunks and all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks)  # the usage-only chunk the gateway asked for was dropped
    upstream = openai_emulator.state.requests[-1]["json"]
    assert upstream["stream_options"] == {"include_usage": True}
    [row] = gateway_rows(gw)
    assert row["stream"] is True and row["status"] == 200
    assert row["prompt_tokens"] > 0 and row["completion_tokens"] > 0 and row["cost_nano"] > 0


@pytest.mark.parametrize("extra", [{}, {"responses_only": True}], ids=["chat", "via-responses"])
def test_a_client_that_hangs_up_after_the_last_event_got_a_whole_answer(
        openai_emulator: BackgroundServer, start_gateway: StartGateway, extra: dict[str, Any]) -> None:
    """The openai SDK closes its stream at ``[DONE]``; an upstream that ends its body a while after the event
    (as a proxy may) must not leave the gateway waiting for that end, nor log the call as the client's hang-up
    (CI once saw a 499 here: the client closed while the gateway read the last empty chunk)."""
    openai_emulator.state.faults = FaultPlan(end_delay_ms=1500)
    gw = start_gateway({"models": [openai_model("m", openai_emulator, **extra)]})
    for _ in range(2):
        chunks = list(client(gw).chat.completions.create(
            model="m", stream=True, messages=[{"role": "user", "content": "count the words here"}]))
        assert chunks and chunks[-1].choices[0].finish_reason == "stop"
    rows = gateway_rows(gw, expected=2)
    assert [(r["status"], r["error"]) for r in rows] == [(200, None), (200, None)]
    assert all(r["completion_tokens"] > 0 and r["cost_nano"] > 0 for r in rows)


def test_streamed_usage_reaches_a_client_that_asked_for_it(
        openai_emulator: BackgroundServer, start_gateway: StartGateway) -> None:
    gw = start_gateway({"models": [openai_model("m", openai_emulator)]})
    chunks = list(client(gw).chat.completions.create(
        model="m", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "hello"}]))
    usage = [c.usage for c in chunks if c.usage is not None]
    [row] = gateway_rows(gw)
    assert usage and usage[-1].completion_tokens == row["completion_tokens"]


def test_failure_before_a_reply_is_logged(
        openai_emulator: BackgroundServer, start_gateway: StartGateway) -> None:
    gw = start_gateway({"models": [openai_model("m", openai_emulator)]})
    with pytest.raises(openai.NotFoundError):
        client(gw).chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    [row] = gateway_rows(gw)
    assert (row["status"], row["error"], row["model"], row["deployment"]) == (404, "not_found", "nope", None)
    assert row["cost_nano"] == 0 and row["attempts"] == 0


def test_upstream_failure_is_logged_with_its_error_class(
        openai_emulator: BackgroundServer, start_gateway: StartGateway) -> None:
    gw = start_gateway({"models": [openai_model("m", openai_emulator)]})
    requests.post(openai_emulator.url + "/_emulator/faults", json={"status": 503, "count": 1}, timeout=5)
    with pytest.raises(openai.APIStatusError):
        client(gw).chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    [row] = gateway_rows(gw)
    assert row["status"] == 503 and row["error"] == "unavailable" and row["deployment"] == "m/openai/0"


def test_secrets_and_personal_data_are_redacted_before_writing(
        openai_emulator: BackgroundServer, start_gateway: StartGateway) -> None:
    gw = start_gateway({"models": [openai_model("m", openai_emulator)],
                        "request_log": {"bodies": True, "redact": [r"ACME-\d{6}"]}})
    secrets = ["sk-proj-abcdefghijklmnop123456", "jane.doe@example.com", "4111 1111 1111 1111",
               "+1 415 555 0100", "ACME-123456", "Bearer abcdefghijklmnopqrstuvwxyz"]
    text = "my data: " + " ; ".join(secrets)
    client(gw).chat.completions.create(model="m", messages=[{"role": "user", "content": text}])
    [row] = gateway_rows(gw)
    for body in (row["request_body"], row["response_body"]):
        assert body and MASK in body and "my data" in body
        for s in secrets:
            assert s not in body


def test_redaction_leaves_ordinary_numbers_alone() -> None:
    r = Redactor()
    assert r("order 1234567890123 costs 42, version 2024-01-15") == "order 1234567890123 costs 42, version 2024-01-15"
    assert MASK in r("card 4242-4242-4242-4242 ok")
    assert r("api_key=supersecretvalue") == MASK
    assert r("password: hunter22") == MASK


def _row(i: int) -> dict[str, Any]:
    now = time.time()
    return {"uid": os.urandom(16).hex(), "request_id": f"req_{i}", "ts": now, "day": "2026-01-01", "route": "chat",
            "stream": False, "status": 200, "latency_ms": 1.0, "cost_nano": i, "cache_hit": False, "attempts": 1,
            "model": "m"}


def _count(db: Database) -> int:
    with db.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(tables.request_log)).scalar() or 0)


def test_close_writes_everything_queued(tmp_path) -> None:  # type: ignore[no-untyped-def]
    db = Database(f"sqlite:///{tmp_path}/log.db")
    db.migrate()
    w = RequestLogWriter(db.log_target(2.0), str(tmp_path), batch_size=100, flush_interval=5)
    w.start()
    for i in range(1000):
        w.submit(_row(i))
    w.close()
    assert _count(db) == 1000
    db.close()


def test_a_full_queue_overflows_to_the_spool_not_the_floor(tmp_path) -> None:  # type: ignore[no-untyped-def]
    db = Database(f"sqlite:///{tmp_path}/log.db")
    db.migrate()
    w = RequestLogWriter(db.log_target(2.0), str(tmp_path), queue_size=10, batch_size=50)
    for i in range(200):  # the writer is not running yet: 190 rows must overflow
        w.submit(_row(i))
    assert w.spooled == 190
    w.start()
    assert w.flush(10)
    w.close()
    assert _count(db) == 200
    assert not list(tmp_path.glob("relaygate-spool-*.jsonl"))
    db.close()


def test_spool_left_by_a_dead_process_is_replayed(tmp_path) -> None:  # type: ignore[no-untyped-def]
    db = Database(f"sqlite:///{tmp_path}/log.db")
    db.migrate()
    rows = [_row(i) for i in range(30)]
    (tmp_path / "relaygate-spool-99999-deadbeef.jsonl").write_bytes(
        b"".join(orjson.dumps(r) + b"\n" for r in rows) + b'{"torn')
    with db.engine.begin() as conn:  # one row made it before the crash: the replay must not duplicate it
        conn.execute(tables.request_log.insert(), [rows[0]])
    w = RequestLogWriter(db.log_target(2.0), str(tmp_path), flush_interval=0.05)
    w.start()
    deadline = time.monotonic() + 10
    while _count(db) < 30 and time.monotonic() < deadline:
        time.sleep(0.05)
    w.close()
    assert _count(db) == 30
    assert not list(tmp_path.glob("relaygate-spool-*.jsonl"))
    db.close()


def test_rows_spool_while_postgres_is_unreachable_and_arrive_after(pg_url, tmp_path) -> None:  # type: ignore[no-untyped-def]
    Database(pg_url).migrate()
    host_port = pg_url.split("@", 1)[1].split("/", 1)[0]
    with TcpProxy("127.0.0.1", int(host_port.split(":")[1])) as proxy:
        via = pg_url.replace(host_port, f"127.0.0.1:{proxy.port}")
        db = Database(via)
        w = RequestLogWriter(db.engine, str(tmp_path), batch_size=20, flush_interval=0.05)
        w.start()
        for i in range(20):
            w.submit(_row(i))
        assert w.flush(10)
        proxy.cut()
        for i in range(20, 120):
            w.submit(_row(i))
        assert w.flush(20)
        assert w.spooled >= 100 and not w.db_ok
        proxy.restore()
        deadline = time.monotonic() + 20
        while w.written < 120 and time.monotonic() < deadline:
            time.sleep(0.05)
        w.close()
        db.close()
    direct = Database(pg_url)
    assert _count(direct) == 120
    direct.close()


def test_a_body_that_is_not_json_still_gets_its_row(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from relaygate.config import RequestLogConfig
    from relaygate.core.call import Call, Reply, Route, Usage
    from relaygate.requestlog.audit import COLUMNS, AuditLayer

    submitted: list[dict[str, Any]] = []

    class Sink:
        def submit(self, row: tuple[Any, ...]) -> None:
            submitted.append(dict(zip(COLUMNS, row, strict=True)))

    layer = AuditLayer(None, Sink(), RequestLogConfig(bodies=True), lambda c, r: 0)  # type: ignore[arg-type]
    call = Call(id="client-chosen id for jane@example.com", route=Route.TRANSCRIPTIONS, model="whisper-1",
                body={"model": "whisper-1", "file": b"\x00" * 10, "upload": object()})
    layer.record(call, Reply(body=b'{"text": "hi"}', usage=Usage(known=False)), None)
    [row] = submitted
    assert "<10 bytes>" in row["request_body"] and "<object>" in row["request_body"]
    assert row["request_id"] == "client-chosen id for " + MASK and row["prompt_tokens"] is None


def test_a_row_holds_each_value_under_its_column() -> None:
    """The audit layer builds rows as tuples in the table's column order: every value lands in its column."""
    from types import SimpleNamespace

    from relaygate.auth.principal import Principal
    from relaygate.config import RequestLogConfig
    from relaygate.core.call import Call, Condensed, Reply, Route, Usage
    from relaygate.requestlog.audit import COLUMNS, AuditLayer

    rows: list[tuple[Any, ...]] = []
    sink = SimpleNamespace(submit=rows.append)
    layer = AuditLayer(None, sink, RequestLogConfig(), lambda c, r: 4321)  # type: ignore[arg-type]
    call = Call(id="req_0123456789abcdef01234567", route=Route.CHAT, model="gpt-x", body={}, stream=True,
                client_ip="10.1.2.3", key=Principal(id="k1", team_id="t1", user_id="u1"), attempts=2,
                started=time.monotonic() - 1)  # a second ago: its attempts (below) are over
    call.deployment = SimpleNamespace(name="gpt-x/0", provider_type="openai")  # type: ignore[assignment]
    call.cache_hit = True
    # the first attempt failed on another deployment; the second (on gpt-x/0) began 100 ms in
    call.failed_attempts = [("gpt-x/1", "anthropic", 503, "unavailable", call.started + 0.0015, call.started + 0.0995)]
    call.attempt_at = call.started + 0.1
    call.condensed = Condensed("summarize", True, 40, 9, 2, 30, False, 1200, 500)
    reply = Reply(status=200, usage=Usage(prompt_tokens=11, completion_tokens=7, cached_tokens=3),
                  first_byte_at=call.started + 0.25)
    layer.record(call, reply, None)
    [values] = rows
    assert len(values) == len(COLUMNS) == len(tables.request_log.c)
    row = dict(zip(COLUMNS, values, strict=True))
    assert len(row.pop("uid")) == 32 and row.pop("ts") > 0 and row.pop("latency_ms") >= 0
    tries = orjson.loads(row.pop("attempt_log"))
    assert tries[0] == {"deployment": "gpt-x/1", "provider": "anthropic", "status": 503, "error": "unavailable",
                        "start_ms": 1.5, "ms": 98.0}
    assert tries[1].pop("ms") >= 900 and tries[1] == {"deployment": "gpt-x/0", "provider": "openai", "status": 200,
                                                    "error": None, "start_ms": 100.0}
    assert row.pop("day") == time.strftime("%Y-%m-%d", time.gmtime())
    assert row == {"request_id": call.id, "key_id": "k1", "team_id": "t1", "user_id": "u1", "model": "gpt-x",
                   "deployment": "gpt-x/0", "provider": "openai", "route": "chat", "stream": 1, "status": 200,
                   "error": None, "error_message": None, "ttft_ms": 250.0, "prompt_tokens": 11,
                   "completion_tokens": 7, "cached_tokens": 3, "cost_nano": 4321, "cache_hit": 1, "attempts": 2,
                   "client_ip": "10.1.2.3", "request_body": None, "response_body": None,
                   "usage_estimated": 0, "saved_nano": 0,
                   "condensed": '{"strategy":"summarize","retried":true,"messages_before":40,"messages_after":9,'
                                '"dropped":2,"summarized":30,"summary_reused":false,"tokens_before":1200,'
                                '"tokens_after":500}'}


def test_a_request_refused_before_the_pipeline_still_gets_one_row(
        openai_emulator: BackgroundServer, start_gateway: StartGateway) -> None:
    """Bodies that are not JSON or lack a field never reach a model, but the log shows them: once each,
    with the path as route, no model, the error, and the caller's key when the instance knows it. A call
    refused inside the pipeline (an unknown model) is not recorded twice; unknown routes and health checks
    leave no row."""
    gw = start_gateway({"models": [openai_model("m", openai_emulator)]})
    url = gw.base_url + "/chat/completions"
    assert requests.post(url, data=b"{not json", headers={"content-type": "application/json"}).status_code == 400
    assert requests.post(url, json={"model": "m"}).status_code == 400  # no messages
    assert requests.post(url, json={"model": "nope", "messages": [{"role": "user", "content": "x"}]}).status_code == 404
    assert requests.post(gw.base_url + "/no/such/route", json={}).status_code == 404
    assert requests.get(gw.base_url.removesuffix("/v1") + "/health").status_code == 200
    rows = gateway_rows(gw, expected=3)
    time.sleep(0.2)
    assert gw.gateway.writer.submitted == 3
    assert [(r["route"], r["model"], r["status"], r["error"]) for r in rows] == [
        ("chat/completions", None, 400, "bad_request"),
        ("chat/completions", None, 400, "bad_request"),
        ("chat", "nope", 404, "not_found"),
    ]
    assert all(r["latency_ms"] >= 0 and r["client_ip"] == "127.0.0.1" for r in rows)
    assert "not valid JSON" in rows[0]["error_message"]


def test_a_refused_request_names_its_key_and_one_without_a_key_is_refused_for_that(
        openai_emulator: BackgroundServer, start_gateway: StartGateway) -> None:
    """The key is checked before the body is read: a bad body with a key is that key's 400, the same body
    without a key is a 401 (its row has no key and no model)."""
    app_key = "sk-app-3b9d1f7e5c0a4e26b8d1f3a7c9e05d4b"
    gw = start_gateway({"models": [openai_model("m", openai_emulator)],
                        "auth": {"master_key": "rg-master-for-tests", "keys": [{"id": "app", "key": app_key}]}})
    url = gw.base_url + "/chat/completions"
    ok = requests.post(url, json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
                       headers={"authorization": f"Bearer {app_key}"})
    assert ok.status_code == 200
    bad = requests.post(url, data=b"[", headers={"authorization": f"Bearer {app_key}"})
    anonymous = requests.post(url, data=b"[")
    assert (bad.status_code, anonymous.status_code) == (400, 401)
    rows = gateway_rows(gw, expected=3)
    assert [(r["key_id"], r["status"]) for r in rows] == [("cfg_app", 200), ("cfg_app", 400), (None, 401)]


def test_row_ids_are_the_instance_prefix_and_a_zero_padded_hex_count() -> None:
    """uid: 16 hex digits of the instance's random prefix, then the row count in 16 zero-padded hex digits
    (the same shape however the count is formatted), each row its own."""
    from types import SimpleNamespace

    from relaygate.config import RequestLogConfig
    from relaygate.core.call import Call, Route
    from relaygate.requestlog.audit import AuditLayer

    rows: list[tuple[Any, ...]] = []
    layer = AuditLayer(None, SimpleNamespace(submit=rows.append), RequestLogConfig(),  # type: ignore[arg-type]
                       lambda c, r: 0)
    for i in range(20):
        layer.record(Call(id=f"req_{i:024x}", route=Route.CHAT, model="m", body={}), None, None)
    uids = [r[0] for r in rows]
    prefix = uids[0][:16]
    assert all(len(u) == 32 and int(u, 16) >= 0 and u[:16] == prefix for u in uids)
    assert [u[16:] for u in uids] == [f"{i:016x}" for i in range(20)]
