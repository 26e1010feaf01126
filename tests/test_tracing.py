"""OpenTelemetry traces, exported over OTLP/HTTP (protobuf) to a collector written here: the request span, a
span per upstream attempt and the limits' span, their parent/child structure, a continued ``traceparent``,
the trace id on the answer, and no secret in anything exported."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import openai
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from relaygate.config import ConfigError, parse_config
from relaygate.testing.gateway import GatewayThread

from .conftest import UPSTREAM_KEY
from .routing_support import MESSAGES, dep, emulators, fault

MASTER = "rg-master-tracing-0123456789abcdef"
LIMITED = "sk-tracing-limited-0123456789abcdef"
SERVER, CLIENT, INTERNAL = 2, 3, 1  # Span.SpanKind values of the OTLP protocol
Start = Callable[..., GatewayThread]


class Collector:
    """An OTLP/HTTP trace receiver on a loopback port: every exported span, and the raw bodies."""

    def __init__(self) -> None:
        self.spans: list[Any] = []
        self.bodies: list[bytes] = []
        self.lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["content-length"]))
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                with collector.lock:
                    collector.bodies.append(body)
                    for rs in request.resource_spans:
                        for ss in rs.scope_spans:
                            collector.spans.extend(ss.spans)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200 if self.path == "/v1/traces" else 404)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def trace(self, trace_id: str, count: int, timeout: float = 10.0) -> list[Any]:
        """The spans of one trace, once at least ``count`` arrived (bounded wait)."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                found = [s for s in self.spans if s.trace_id.hex() == trace_id]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.02)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector()
    yield c
    c.close()


def attrs(span: Any) -> dict[str, Any]:
    def plain(v: AnyValue) -> Any:
        which = v.WhichOneof("value")
        if which == "array_value":
            return [plain(x) for x in v.array_value.values]
        assert which is not None
        return getattr(v, which)

    return {kv.key: plain(kv.value) for kv in span.attributes}


def config(emu: Any, collector: Collector) -> dict[str, Any]:
    return {"models": [{"name": "m", "retry": {"attempts": 2, "backoff": 0.01}, "deployments": [dep(emu, "m-a")]}],
            "auth": {"master_key": MASTER, "keys": [{"id": "lim", "key": LIMITED, "rpm": 100}]},
            "tracing": {"endpoint": collector.url, "batch_delay": 0.05, "service_name": "gw-under-test",
                        "headers": {"authorization": "Bearer collector-token-0123456789"}}}


def test_a_retried_call_is_one_trace_continuing_the_clients_traceparent(start_gateway: Start,
                                                                         collector: Collector) -> None:
    trace_id, parent_id = os.urandom(16).hex(), os.urandom(8).hex()
    with emulators({}) as (emu,):
        gw = start_gateway(config(emu, collector))
        fault(emu, status=500, count=1)
        client = openai.OpenAI(base_url=gw.base_url, api_key=LIMITED, max_retries=0)
        raw = client.chat.completions.with_raw_response.create(
            model="m", messages=MESSAGES, max_tokens=20,
            extra_headers={"traceparent": f"00-{trace_id}-{parent_id}-01"})
        assert raw.headers["x-relaygate-trace-id"] == trace_id
        spans = collector.trace(trace_id, 4)
    by_kind: dict[int, list[Any]] = {}
    for s in spans:
        by_kind.setdefault(s.kind, []).append(s)
    [server] = by_kind[SERVER]
    assert server.parent_span_id.hex() == parent_id  # continues the client's trace
    a = attrs(server)
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.request.model"] == "m"
    assert a["gen_ai.request.max_tokens"] == 20 and a["relaygate.attempts"] == 2
    assert a["relaygate.deployment"] == "m-a" and a["gen_ai.provider.name"] == "openai"
    assert a["http.response.status_code"] == 200 and a["gen_ai.usage.input_tokens"] > 0
    first, second = sorted(by_kind[CLIENT], key=lambda s: s.start_time_unix_nano)
    for attempt in (first, second):
        assert attempt.parent_span_id == server.span_id
        assert attrs(attempt)["relaygate.deployment"] == "m-a"
        assert attrs(attempt)["gen_ai.request.model"] == "gpt-4o-mini"
    assert attrs(first)["error.type"] == "unavailable" and attrs(first)["http.response.status_code"] == 500
    assert first.status.code == 2  # STATUS_CODE_ERROR
    assert attrs(second)["relaygate.retry_reason"] == "unavailable" and attrs(second)["relaygate.attempt"] == 2
    assert attrs(second)["gen_ai.usage.output_tokens"] > 0
    [limits] = by_kind[INTERNAL]
    assert limits.name == "relaygate.limits" and limits.parent_span_id == server.span_id
    assert attrs(limits)["relaygate.limits.outcome"] == "granted"
    exported = b"".join(collector.bodies)
    assert b"gw-under-test" in exported  # the resource's service.name
    for secret in (UPSTREAM_KEY, MASTER, LIMITED, "collector-token"):
        assert secret.encode() not in exported


def test_a_new_trace_without_traceparent_and_the_trace_id_on_errors(start_gateway: Start,
                                                                    collector: Collector) -> None:
    with emulators({}) as (emu,):
        gw = start_gateway(config(emu, collector))
        client = openai.OpenAI(base_url=gw.base_url, api_key=MASTER, max_retries=0)
        raw = client.chat.completions.with_raw_response.create(model="m", messages=MESSAGES)
        trace_id = raw.headers["x-relaygate-trace-id"]
        assert len(trace_id) == 32 and int(trace_id, 16)
        [server, attempt] = sorted(collector.trace(trace_id, 2), key=lambda s: s.kind)
        assert server.kind == SERVER and not server.parent_span_id and attempt.parent_span_id == server.span_id
        with pytest.raises(openai.NotFoundError) as e:
            client.chat.completions.create(model="no-such-model", messages=MESSAGES)
        missing = e.value.response.headers["x-relaygate-trace-id"]
        [span] = collector.trace(missing, 1)
    assert attrs(span)["error.type"] == "not_found" and attrs(span)["http.response.status_code"] == 404
    assert span.status.code != 2  # a client's 4xx is not the server span's error


def test_tracing_endpoint_must_be_an_http_url() -> None:
    with pytest.raises(ConfigError) as e:
        parse_config({"tracing": {"endpoint": "file:///etc/passwd"}}, {})
    assert "tracing.endpoint" in str(e.value)


def test_a_sampled_out_call_exports_nothing_and_a_sampled_parent_is_followed(start_gateway: Start,
                                                                             collector: Collector) -> None:
    with emulators({}) as (emu,):
        cfg = config(emu, collector)
        cfg["tracing"]["sample_ratio"] = 0.0
        gw = start_gateway(cfg)
        client = openai.OpenAI(base_url=gw.base_url, api_key=MASTER, max_retries=0)
        dropped = client.chat.completions.with_raw_response.create(model="m", messages=MESSAGES)
        dropped_id = dropped.headers["x-relaygate-trace-id"]
        trace_id = os.urandom(16).hex()
        client.chat.completions.with_raw_response.create(
            model="m", messages=MESSAGES, extra_headers={"traceparent": f"00-{trace_id}-{os.urandom(8).hex()}-01"})
        assert len(collector.trace(trace_id, 2)) == 2  # the client sampled it: the gateway follows
    assert len(dropped_id) == 32 and collector.trace(dropped_id, 1, timeout=0.3) == []


@pytest.mark.parametrize("traceparent", [
    "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # an all-zero trace id
    "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  # upper case
    "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # version ff
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",  # version 00 has four fields
])
def test_a_malformed_traceparent_starts_a_new_trace(start_gateway: Start, collector: Collector,
                                                    traceparent: str) -> None:
    with emulators({}) as (emu,):
        gw = start_gateway(config(emu, collector))
        client = openai.OpenAI(base_url=gw.base_url, api_key=MASTER, max_retries=0)
        raw = client.chat.completions.with_raw_response.create(model="m", messages=MESSAGES,
                                                               extra_headers={"traceparent": traceparent})
        trace_id = raw.headers["x-relaygate-trace-id"]
        [server, _] = sorted(collector.trace(trace_id, 2), key=lambda s: s.kind)
    assert trace_id not in traceparent.lower() and not server.parent_span_id


def test_cache_and_condensation_have_spans_when_they_act(start_gateway: Start, collector: Collector) -> None:
    with emulators({}) as (emu,):
        cfg = config(emu, collector)
        cfg["models"] += [{"name": "c", "deployments": [dep(emu, "c-a")], "cache": {}},
                          {"name": "w", "deployments": [dep(emu, "w-a")],
                           "condense": {"context_window": 1000, "headroom": 0, "keep_last": 2}}]
        gw = start_gateway(cfg)
        client = openai.OpenAI(base_url=gw.base_url, api_key=MASTER, max_retries=0)
        ids = [client.chat.completions.with_raw_response.create(model="c", messages=MESSAGES, temperature=0)
               .headers["x-relaygate-trace-id"] for _ in range(2)]
        miss, hit = (sorted(collector.trace(t, n), key=lambda s: s.kind) for t, n in zip(ids, (3, 2), strict=True))
        long = [{"role": "user", "content": f"question {i} " + "word " * 200} for i in range(12)]
        condensed = client.chat.completions.with_raw_response.create(model="w", messages=long)  # type: ignore[arg-type]
        spans = collector.trace(condensed.headers["x-relaygate-trace-id"], 3)
    # a miss: the lookup's span, then the upstream attempt; a hit: the lookup's span and no attempt
    assert [(s.kind, s.name) for s in miss] == [(INTERNAL, "relaygate.cache"), (SERVER, "chat c"),
                                               (CLIENT, "chat gpt-4o-mini")]
    assert attrs(miss[0])["relaygate.cache.result"] == "miss" and miss[0].parent_span_id == miss[1].span_id
    assert [(s.kind, s.name) for s in hit] == [(INTERNAL, "relaygate.cache"), (SERVER, "chat c")]
    assert attrs(hit[0])["relaygate.cache.result"] == "hit"
    [step] = [s for s in spans if s.name == "relaygate.condense"]
    a = attrs(step)
    assert a["relaygate.condense.strategy"] == condensed.headers["x-relaygate-condensed"]
    assert 0 < a["relaygate.condense.tokens_saved"] < a["relaygate.condense.tokens_before"]


def test_a_kept_alive_connection_the_collector_closed_is_replaced_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The exporter connects before its first batch and keeps the connection; a collector that closes it
    between batches (an idle timeout) costs the next batch a new connection, not a pause and a retry."""
    import re
    import socket

    from relaygate.observability.otlp import OtlpExporter, SpanQueue, SpanRecord

    pauses: list[float] = []
    monkeypatch.setattr(time, "sleep", pauses.append)  # the exporter's retry pauses, recorded (not waited)

    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    answered: list[int] = []

    def answer_one(conn: socket.socket) -> None:  # one request answered 200 (keep-alive), then the close
        with conn:
            conn.settimeout(10)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            m = re.search(rb"content-length: *(\d+)", head, re.I)
            assert m is not None
            while len(body) < int(m[1]):
                body += conn.recv(65536)
            answered.append(len(body))
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:  # closed: the test is over
                return
            accepted.append(conn)
            threading.Thread(target=answer_one, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    queue = SpanQueue(10)
    port = listener.getsockname()[1]
    exporter = OtlpExporter(queue, f"http://127.0.0.1:{port}/v1/traces", {}, 5.0, 60.0, {"service.name": "t"})
    try:
        deadline = time.monotonic() + 10
        while not accepted and time.monotonic() < deadline:  # connected at start, before any span
            threading.Event().wait(0.01)
        assert len(accepted) == 1
        for n in (1, 2):
            SpanRecord(queue, 1, 0, "s", 1, {}, n).end()
            assert exporter.flush()
        assert len(answered) == 2 and len(accepted) == 2 and exporter.failed == 0 and exporter.sent == 2
        assert pauses == []  # the second batch went on a new connection at once, not after a retry's pause
    finally:
        exporter.close()
        listener.close()
