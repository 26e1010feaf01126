"""Fuzz the real gateway over HTTP: no input, and no upstream answer, gives a 500 or an internal error.

- schemathesis over OpenAI's OpenAPI description (tests/specs/openai-openapi.yaml, the routes relaygate
  serves: chat, embeddings, speech, transcriptions, translations, models) and over relaygate's own routes
  (tests/specs/relaygate.yaml: the admin API with the master key, the model and provider listings), data
  that fits the schema and data that does not, with model names steered to every provider;
- hypothesis for Anthropic's Messages API (``/v1/messages``, ``/v1/messages/count_tokens``);
- a hostile upstream: random native answers and streams, in each provider's format, behind every provider.

The gateway runs on PostgreSQL (whose refusals of NUL and of 64-bit integers were 500s) with every
provider's emulator behind it. FUZZ_EXAMPLES scales each test (tests/fuzz_strategies.py); docs/inputs.md has
the long run's command and figures.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests
import schemathesis
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.core.result import Ok

from relaygate.providers.aws.eventstream import event, exception
from relaygate.testing.base import BackgroundServer
from relaygate.testing.gateway import GatewayThread

from .fuzz_strategies import FUZZ, TIMEOUT, json_value, messages_request, text
from .stack_support import CHAT_MODELS, MASTER, Stack, deployments, run_stack
from .test_fuzz_translators import (
    ANTHROPIC_ANSWER,
    BEDROCK_ANSWER,
    COHERE_ANSWER,
    GEMINI_ANSWER,
    OPENAI_ANSWER,
    OPENAI_CHUNK,
)

pytestmark = pytest.mark.timeout(TIMEOUT)
SPECS = Path(__file__).parent / "specs"
MODELS = [*CHAT_MODELS, "text-embedding-3-small", "embed-cohere", "embed-gemini", "tts-1", "whisper-1", "nope"]


@pytest.fixture(scope="module")
def stack(pg_module_url: str) -> Iterator[Stack]:
    with run_stack(pg_module_url) as s:
        yield s


def assert_no_internal_error(status: int, body: bytes, what: Any, relayed: bool = False) -> None:
    """Neither an internal error (status 500, or code internal_error mid-stream) nor any 500, unless it
    ``relayed`` the upstream's own."""
    assert b'"internal_error"' not in body and (status != 500 or relayed), (what, status, body[:500])


def forget_requests(stack: Stack) -> None:
    """The emulators keep every request they saw: a long run would keep them all."""
    for emu in stack.emulators.values():
        if len(emu.state.requests) > 200:
            emu.state.requests.clear()


# ---- schemathesis --------------------------------------------------------------------------------------

def cases(spec: str) -> Any:
    """Cases for every operation of ``spec``, positive and negative, with the body's model (when it has one)
    often one the gateway serves."""
    schema = schemathesis.openapi.from_path(SPECS / spec)
    ops = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result  # the specs in tests/specs are valid: every operation loads
        ops.append(result.ok())
    strategy = st.one_of([op.as_strategy(mode) for op in ops for mode in (GenerationMode.POSITIVE,
                                                                         GenerationMode.NEGATIVE)])

    def steer(pair: tuple[Any, str | None]) -> Any:
        case, model = pair
        if model is not None and isinstance(case.body, dict) and "model" in case.body:
            case.body["model"] = model
        return case

    return st.tuples(strategy, st.sampled_from([*MODELS, None])).map(steer)


def call(stack: Stack, case: Any, base: str) -> None:
    resp = case.call(base_url=stack.gateway.url + base, headers=stack.headers, timeout=30)
    assert_no_internal_error(resp.status_code, resp.content, (case.method, case.path, case.query, case.body))
    forget_requests(stack)


def test_openai_routes_never_answer_500(stack: Stack) -> None:
    @FUZZ
    @given(cases("openai-openapi.yaml"))
    def run(case: Any) -> None:
        call(stack, case, "/v1")

    run()


def test_relaygate_routes_never_answer_500(stack: Stack) -> None:
    @FUZZ
    @given(cases("relaygate.yaml"))
    def run(case: Any) -> None:
        call(stack, case, "")

    run()


# ---- Anthropic's Messages API --------------------------------------------------------------------------

@FUZZ
@given(st.one_of(messages_request(st.sampled_from(MODELS)), json_value), st.booleans())
def test_messages_api_never_answers_500(stack: Stack, body: Any, count: bool) -> None:
    path = "/v1/messages/count_tokens" if count else "/v1/messages"
    r = requests.post(stack.gateway.url + path, data=orjson.dumps(body), timeout=30,
                      headers={"x-api-key": MASTER, "anthropic-version": "2023-06-01",
                               "content-type": "application/json"})
    assert_no_internal_error(r.status_code, r.content, body)
    forget_requests(stack)


# ---- a hostile upstream --------------------------------------------------------------------------------

class Answer:
    """What the hostile upstream answers next (one test example at a time)."""

    def __init__(self) -> None:
        self.status = 200
        self.content_type = "application/json"
        self.chunks: list[bytes] = []
        self.lock = threading.Lock()


def hostile_app(answer: Answer) -> web.Application:
    async def handle(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(status=answer.status, headers={"content-type": answer.content_type})
        await resp.prepare(request)
        for chunk in answer.chunks:
            await resp.write(chunk)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def sse(events: list[Any], named: bool = False) -> list[bytes]:
    out = []
    for e in events:
        data = e if isinstance(e, bytes) else orjson.dumps(e)
        kind = e.get("type", "x") if named and isinstance(e, dict) and isinstance(e.get("type"), str) else None
        out.append((f"event: {kind}\n".encode() if kind else b"") + b"data: " + data + b"\n\n")
    return out


ANTHROPIC_EVENT = st.one_of(
    st.fixed_dictionaries({"type": st.just("message_start"), "message": ANTHROPIC_ANSWER}),
    st.fixed_dictionaries({"type": st.just("content_block_start"), "index": st.integers(0, 2),
                           "content_block": st.one_of(st.fixed_dictionaries({"type": st.just("text"), "text": text}),
                                                      st.fixed_dictionaries({"type": st.just("tool_use"), "id": text,
                                                                             "name": text, "input": st.just({})}),
                                                      json_value)}),
    st.fixed_dictionaries({"type": st.just("content_block_delta"), "index": st.integers(0, 2), "delta": st.one_of(
        st.fixed_dictionaries({"type": st.sampled_from(["text_delta", "input_json_delta", "thinking_delta",
                                                        "signature_delta"]), "text": text, "partial_json": text,
                               "thinking": text, "signature": text}), json_value)}),
    st.fixed_dictionaries({"type": st.sampled_from(["content_block_stop", "message_stop", "ping", "error"]),
                           "index": st.integers(0, 2), "error": json_value}),
    st.fixed_dictionaries({"type": st.just("message_delta"), "delta": json_value, "usage": json_value}),
    json_value,
)
GARBAGE = st.lists(st.binary(max_size=40), max_size=3)
NATIVE = {  # model -> (whole answers, stream chunks)
    "gpt": (OPENAI_ANSWER, st.lists(st.one_of(OPENAI_CHUNK, json_value), max_size=5).map(sse)),
    "claude": (ANTHROPIC_ANSWER, st.lists(ANTHROPIC_EVENT, max_size=6).map(lambda es: sse(es, named=True))),
    "gemini": (GEMINI_ANSWER, st.lists(st.one_of(GEMINI_ANSWER, json_value), max_size=4).map(sse)),
    "cohere": (COHERE_ANSWER, st.lists(json_value, max_size=5).map(lambda es: sse(es, named=True))),
    "bedrock": (BEDROCK_ANSWER, st.lists(st.one_of(
        st.tuples(st.sampled_from(["messageStart", "contentBlockDelta", "contentBlockStart", "contentBlockStop",
                                   "messageStop", "metadata"]), json_value).map(
            lambda p: event(p[0], orjson.dumps(p[1]))),
        st.tuples(st.sampled_from(["throttlingException", "modelStreamErrorException", "x"]), json_value).map(
            lambda p: exception(p[0], orjson.dumps(p[1]))),
        st.binary(max_size=30)), max_size=5)),
}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayThread, Answer]]:
    answer = Answer()
    with BackgroundServer(hostile_app(answer)) as upstream:
        urls = dict.fromkeys(("openai", "anthropic", "gemini", "cohere", "bedrock"), upstream.url)
        config = {"models": deployments(urls),
                  "database": {"url": f"sqlite:///{tmp_path_factory.mktemp('hostile')}/rg.db"}}
        with GatewayThread(config) as gw:
            yield gw, answer


@st.composite
def upstream_answer(draw: st.DrawFn) -> tuple[str, bool, int, str, list[bytes]]:
    model = draw(st.sampled_from(CHAT_MODELS))
    stream = draw(st.booleans())
    whole, chunks = NATIVE[model]
    body = draw(st.one_of(chunks if stream else whole.map(lambda a: [orjson.dumps(a)]), GARBAGE,
                          json_value.map(lambda v: [orjson.dumps(v)])))
    status = draw(st.sampled_from([200, 200, 200, 201, 204, 400, 401, 404, 408, 413, 422, 429, 500, 503, 529]))
    ctype = draw(st.sampled_from(["application/json", "text/event-stream", "application/vnd.amazon.eventstream",
                                  "text/plain"]))
    return model, stream, status, ctype, body


@FUZZ
@given(upstream_answer())
def test_random_upstream_answers_never_give_a_500(hostile: tuple[GatewayThread, Answer],
                                                   drawn: tuple[str, bool, int, str, list[bytes]]) -> None:
    gw, answer = hostile
    model, stream, status, ctype, body = drawn
    with answer.lock:
        answer.status, answer.content_type, answer.chunks = status, ctype, body
        r = requests.post(gw.base_url + "/chat/completions", timeout=30,
                          json={"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
        m = requests.post(gw.url + "/v1/messages", timeout=30, headers={"anthropic-version": "2023-06-01"},
                          json={"model": model, "stream": stream, "max_tokens": 10,
                                "messages": [{"role": "user", "content": "hi"}]})
    # an upstream's own 500 (its status, or Anthropic's api_error in a 200) is relayed as one, by design
    relayed = status == 500 or b"api_error" in b"".join(body)
    for resp in (r, m):
        assert_no_internal_error(resp.status_code, resp.content, drawn, relayed)
