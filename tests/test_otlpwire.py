"""The OTLP span encoder (observability/otlpwire.py) against ``opentelemetry-proto``, the oracle: for the same
spans, the bytes it writes are the library's serialisation, byte for byte, and parse back with the library's
own classes to the same ids, times, kinds, flags, status and attributes."""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.resource.v1 import resource_pb2

from relaygate.observability import otlpwire
from relaygate.observability.otlp import CLIENT, INTERNAL, SERVER, Span, SpanQueue, SpanRecord
from relaygate.observability.otlpwire import HAS_IS_REMOTE, IS_REMOTE, SAMPLED, SpanEncoder

RESOURCE = {"service.name": "gw", "telemetry.sdk.name": "relaygate", "telemetry.sdk.language": "python"}


def set_value(v: common_pb2.AnyValue, value: Any) -> None:
    """What the exporter did with the library before the encoder: the oracle's AnyValue."""
    if isinstance(value, str):
        v.string_value = value
    elif isinstance(value, bool):
        v.bool_value = value
    elif isinstance(value, int) and -(1 << 63) <= value < (1 << 63):
        v.int_value = value
    elif isinstance(value, float):
        v.double_value = value
    elif isinstance(value, (list, tuple)):
        v.array_value.SetInParent()  # an empty array is still an array value
        values = v.array_value.values
        for item in value:
            set_value(values.add(), item)
    else:
        v.string_value = str(value)


def library(batch: Sequence[Span], resource: dict[str, Any] = RESOURCE) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.CopyFrom(resource_pb2.Resource(attributes=[
        common_pb2.KeyValue(key=k, value=common_pb2.AnyValue(string_value=v)) for k, v in resource.items()]))
    ss = rs.scope_spans.add()
    ss.scope.name = "relaygate"
    for rec in batch:
        s = ss.spans.add(trace_id=rec.trace_id.to_bytes(16, "big"), span_id=rec.span_id.to_bytes(8, "big"),
                         parent_span_id=rec.parent_id.to_bytes(8, "big") if rec.parent_id else b"",
                         trace_state=rec.trace_state, name=rec.name, kind=rec.kind,
                         flags=SAMPLED | HAS_IS_REMOTE | (IS_REMOTE if rec.remote_parent else 0),
                         start_time_unix_nano=rec.start, end_time_unix_nano=rec.end_time)
        if rec.error:
            s.status.code = 2
        for key, value in rec.attrs.items():
            set_value(s.attributes.add(key=key).value, value)
    return request


def record(attrs: dict[str, Any], trace_id: int = 0x4BF92F3577B34DA6A3CE929D0E0E4736, span_id: int = 0x00F067AA0BA902B7,
           parent_id: int = 0, name: str = "chat m", kind: int = SERVER, trace_state: str = "",
           remote: bool = False, error: bool = False) -> SpanRecord:
    rec = SpanRecord(SpanQueue(10), trace_id, parent_id, name, kind, attrs, span_id, trace_state, remote)
    rec.start, rec.end_time, rec.error = 1764950400123456789, 1764950400923456789, error
    return rec


class Color(enum.StrEnum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


def test_a_batch_is_the_librarys_serialisation_byte_for_byte() -> None:
    server = record({"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o-mini",
                     "relaygate.request_id": "req_0123456789abcdef01234567", "relaygate.stream": False,
                     "gen_ai.request.max_tokens": 20, "gen_ai.request.temperature": 0.0, "relaygate.attempts": 2,
                     "relaygate.fallbacks": ["b", "c"], "relaygate.cost_usd": 2.58e-05, "http.response.status_code": 200},
                    parent_id=0x1122334455667788, trace_state="vendor=x,other=y", remote=True)
    attempt = record({"gen_ai.provider.name": "openai", "relaygate.attempt": 1, "error.type": "unavailable",
                      "http.response.status_code": 500, "relaygate.retry_reason": "timeout", "relaygate.fallback": True},
                     span_id=0x0102030405060708, parent_id=server.span_id, name="chat gpt-4o-mini", kind=CLIENT,
                     error=True)
    step = record({}, span_id=0xFFFFFFFFFFFFFFFF, parent_id=server.span_id, name="relaygate.limits", kind=INTERNAL)
    odd = record({"neg": -1, "min": -(1 << 63), "max": (1 << 63) - 1, "huge": 1 << 70, "zero": 0, "empty": "",
                  "unicode": "modèle ✓ 模型", "long": "x" * 300, "enum": Color.RED, "int-enum": Level.HIGH,
                  "nan": math.nan, "inf": -math.inf, "mixed": [1, "a", True, 2.5, []], "tuple": ("t",),
                  "other": None},
                 trace_id=1, span_id=1, name="")
    batch = [server, attempt, step, odd]
    encoder = SpanEncoder(RESOURCE, "relaygate")
    assert encoder.encode(batch) == library(batch).SerializeToString()
    # again, now that the repeated attributes come from the encoder's cache
    assert encoder.encode(batch[::-1]) == library(batch[::-1]).SerializeToString()
    parsed = ExportTraceServiceRequest.FromString(encoder.encode(batch))
    [rs] = parsed.resource_spans
    assert {kv.key: kv.value.string_value for kv in rs.resource.attributes} == RESOURCE
    [ss] = rs.scope_spans
    assert ss.scope.name == "relaygate" and [s.name for s in ss.spans] == ["chat m", "chat gpt-4o-mini",
                                                                          "relaygate.limits", ""]
    s0, s1, s2, s3 = ss.spans
    assert s0.trace_id.hex() == "4bf92f3577b34da6a3ce929d0e0e4736" and s0.parent_span_id.hex() == "1122334455667788"
    assert s0.trace_state == "vendor=x,other=y" and s0.flags == 0x301 and s1.flags == 0x101
    assert s1.status.code == 2 and s0.status.code == 0 and s1.parent_span_id == s0.span_id
    assert s2.kind == INTERNAL and s2.span_id == b"\xff" * 8 and not s2.attributes
    a3 = {kv.key: kv.value for kv in s3.attributes}
    assert a3["neg"].int_value == -1 and a3["min"].int_value == -(1 << 63) and a3["huge"].string_value == str(1 << 70)
    assert a3["zero"].WhichOneof("value") == "int_value" and a3["empty"].WhichOneof("value") == "string_value"
    assert a3["unicode"].string_value == "modèle ✓ 模型" and a3["enum"].string_value == "red"
    assert a3["int-enum"].int_value == 3 and math.isnan(a3["nan"].double_value)
    assert [v.WhichOneof("value") for v in a3["mixed"].array_value.values] == [
        "int_value", "string_value", "bool_value", "double_value", "array_value"]
    assert a3["other"].string_value == "None"


def test_a_full_batch_with_long_lengths() -> None:
    """512 spans (the exporter's batch): the lengths of the scope's and the request's fields take 3 bytes."""
    batch = [record({"gen_ai.request.model": f"model-{i % 7}", "relaygate.request_id": f"req_{i:024x}",
                     "relaygate.attempt": i, "text": "y" * (i % 200)}, span_id=i + 1, parent_id=i // 2)
             for i in range(512)]
    encoder = SpanEncoder(RESOURCE, "relaygate", unique={"relaygate.request_id"}, most=5)  # the cache cleared often
    body = encoder.encode(batch)
    assert len(body) > 1 << 14 and body == library(batch).SerializeToString()
    assert len(encoder.kept) <= 5 and not any(k[0] == "relaygate.request_id" for k in encoder.kept)


def test_a_lone_surrogate_is_replaced_rather_than_failing_the_batch() -> None:
    batch = [record({"gen_ai.request.model": "bad\udc80name"}, name="chat bad\udc80")]
    parsed = ExportTraceServiceRequest.FromString(SpanEncoder(RESOURCE, "relaygate").encode(batch))
    span = parsed.resource_spans[0].scope_spans[0].spans[0]
    assert span.name == "chat bad?" and span.attributes[0].value.string_value == "bad?name"


def test_varint_against_the_spec() -> None:
    assert otlpwire.varint(0) == b"\x00" and otlpwire.varint(127) == b"\x7f"
    assert otlpwire.varint(300) == b"\xac\x02"  # the protobuf encoding guide's example
    assert otlpwire.varint((1 << 64) - 1) == b"\xff" * 9 + b"\x01"


values = st.recursive(
    st.one_of(st.text(max_size=150), st.booleans(), st.integers(min_value=-(1 << 70), max_value=1 << 70),
              st.floats(allow_nan=False)),
    lambda inner: st.lists(inner, max_size=4), max_leaves=8)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.dictionaries(st.text(max_size=40), values, max_size=6), min_size=1, max_size=5),
       st.integers(min_value=1, max_value=(1 << 128) - 1), st.text(max_size=200), st.booleans())
def test_any_spans_are_the_librarys_bytes(attrs: list[dict[str, Any]], trace_id: int, name: str,
                                          error: bool) -> None:
    batch = [record(a, trace_id=trace_id, span_id=i + 1, parent_id=i, name=name, error=error,
                    kind=i % 4, remote=bool(i % 2)) for i, a in enumerate(attrs)]
    encoder = SpanEncoder({"service.name": name}, "relaygate")
    for _ in range(2):  # the second time through the encoder's cache
        assert encoder.encode(batch) == library(batch, {"service.name": name}).SerializeToString()


def test_equal_values_of_other_types_are_not_taken_from_the_cache() -> None:
    """``True == 1 == 1.0`` in Python: a value kept encoded must not stand in for another type's."""
    batch = [record({"x": v, "y": str(v)}, span_id=i + 1) for i, v in enumerate([1, True, 1.0, "1", 0, False, 0.0])]
    encoder = SpanEncoder(RESOURCE, "relaygate")
    assert encoder.encode(batch) == encoder.encode(batch) == library(batch).SerializeToString()
    parsed = ExportTraceServiceRequest.FromString(encoder.encode(batch))
    kinds = [s.attributes[0].value.WhichOneof("value") for s in parsed.resource_spans[0].scope_spans[0].spans]
    assert kinds == ["int_value", "bool_value", "double_value", "string_value", "int_value", "bool_value",
                     "double_value"]


def test_the_gateways_spans_encode_as_the_library_does() -> None:
    """Calls through a gateway's pipeline (the demo provider): their request and attempt spans, whose shared
    attributes are encoded once per group, are the library's serialisation of their ``name`` and ``attrs``."""
    import asyncio

    from relaygate.config import parse_config
    from relaygate.core.call import Call, Route
    from relaygate.core.errors import GatewayError
    from relaygate.gateway import Gateway
    from relaygate.observability.tracing import CallTrace

    cfg = parse_config({"models": [{"name": "m", "deployments": [{"provider": "demo", "model": "demo"}]}],
                        "request_log": {"enabled": False},
                        "tracing": {"endpoint": "http://127.0.0.1:9/v1/traces", "batch_delay": 60}}, {})
    loop = asyncio.new_event_loop()
    try:
        gw = loop.run_until_complete(Gateway.create(cfg))
        assert gw.tracing is not None
        bodies = [{"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20},
                  {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 1},
                  {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 1.0,
                   "top_p": [1]},  # a list: not a parameter, not hashable
                  {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 1.0}]  # 1.0 == 1

        async def call(i: int, body: dict[str, Any], headers: dict[str, str]) -> None:
            try:
                reply = await gw.handle(Call(id="client id sk-live-0123456789abcdef" if "x-request-id" in headers
                                             else f"req_{i:024x}", route=Route.CHAT, model="m", body=body,
                                             headers=headers))
            except GatewayError:  # the list: a 400 (an error span)
                return
            reply.finish()

        continued = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "tracestate": "v=1"}
        for i, body in enumerate(bodies * 2):
            loop.run_until_complete(call(i, body, {"x-request-id": "x"} if i == 4 else continued if i == 3 else {}))
        records = list(gw.tracing.queue.spans)  # a call's record holds its first attempt's span too
        gw.tracing.queue.spans.clear()
        calls = [rec for rec in records if isinstance(rec, CallTrace)]
        assert len(calls) == len(records) == 8
        spans = [s for rec in calls for s in rec.spans()]
        assert len(spans) == 16 and sum(s.error for s in spans) == 2  # the 400s' attempts
        assert sum(s.remote_parent for s in spans) == 1 and sum(s.trace_state == "v=1" for s in spans) == 2
        assert [s.kind for s in spans] == [SERVER, CLIENT] * 8 and all(
            c.parent_id == s.span_id and c.trace_id == s.trace_id for s, c in zip(spans[::2], spans[1::2], strict=True))
        encoder = gw.tracing.exporter._encoder
        for _ in range(2):
            assert encoder.encode(records) == library(spans, {"service.name": "relaygate", "telemetry.sdk.name": "relaygate",
                                                              "telemetry.sdk.language": "python"}).SerializeToString()
        server = [s for s in spans if s.kind == SERVER]
        assert server[1].attrs["gen_ai.request.temperature"] == 1 and type(server[1].attrs["gen_ai.request.temperature"]) is int
        assert type(server[2].attrs["gen_ai.request.temperature"]) is float and "gen_ai.request.top_p" not in server[2].attrs
        assert type(server[3].attrs["gen_ai.request.temperature"]) is float and type(server[5].attrs[
            "gen_ai.request.temperature"]) is int  # the same value, not the same kind of call
        assert server[4].attrs["relaygate.request_id"] == "client id [REDACTED]"
        loop.run_until_complete(gw.close())
    finally:
        loop.close()


def test_plain_calls_of_one_kind_with_token_counts_of_other_lengths() -> None:
    """Plain calls (one attempt, a success, our request id) are written by one pack per kind and length of their
    token counts: calls of one kind whose counts take one byte and two, in turn, and one of another kind (a
    stream) between them, are still the library's bytes."""
    import asyncio

    from relaygate.config import parse_config
    from relaygate.core.call import Call, Route
    from relaygate.gateway import Gateway
    from relaygate.observability.tracing import CallTrace

    async def traced() -> tuple[list[Any], bytes]:
        gw = await Gateway.create(parse_config({
            "models": [{"name": "m", "deployments": [{"provider": "demo", "model": "demo"}]}],
            "request_log": {"enabled": False}, "tracing": {"endpoint": "http://127.0.0.1:9/v1/traces"}}, {}))
        assert gw.tracing is not None
        for i, (words, stream) in enumerate([(1, False), (400, False), (1, True), (1, False), (400, False)]):
            body = {"model": "m", "messages": [{"role": "user", "content": "hi " * words}], "max_tokens": 20}
            reply = await gw.handle(Call(id=f"req_{i:024x}", route=Route.CHAT, model="m", body=body, stream=stream))
            if reply.stream is not None:
                async for _ in reply.stream:
                    pass
            reply.finish()
        records = list(gw.tracing.queue.spans)
        gw.tracing.queue.spans.clear()
        encoded = gw.tracing.exporter.encode(records)
        assert gw.tracing.exporter.encode(records) == encoded  # the packers made by the first, used by the second
        await gw.close()
        return records, encoded

    records, encoded = asyncio.run(traced())
    assert len(records) == 5 and all(isinstance(rec, CallTrace) and len(rec.a_key) == 3 for rec in records)
    spans = [s for rec in records for s in rec.spans()]
    prompts = {s.attrs["gen_ai.usage.input_tokens"] for s in spans}
    assert min(prompts) < 128 <= max(prompts)  # one byte and two
    assert encoded == library(spans, {"service.name": "relaygate", "telemetry.sdk.name": "relaygate",
                                      "telemetry.sdk.language": "python"}).SerializeToString()
