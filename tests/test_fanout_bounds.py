"""A small request cannot make a huge answer or many upstream calls: ``n``, ``top_logprobs``, embedding inputs
and the like are bounded by what providers accept (OpenAI's spec), on the gateway, on the demo model and in
the emulators, each refused with an OpenAI-format 400 that names the parameter."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest
import requests
from openai.types.chat import ChatCompletionMessageParam

from relaygate.config import default_config
from relaygate.testing.base import BackgroundServer
from relaygate.testing.gateway import GatewayThread
from relaygate.testing.gemini import GeminiEmulatorOptions
from relaygate.testing.gemini import create_app as create_gemini_app

from .conftest import UPSTREAM_KEY, openai_model

HI: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


def refused(call: Callable[[], Any]) -> dict[str, Any]:
    with pytest.raises(openai.BadRequestError) as e:
        call()
    assert e.value.status_code == 400
    body = e.value.body
    assert isinstance(body, dict) and set(body) == {"message", "type", "param", "code"}
    return body


@pytest.fixture
def demo(start_gateway: Callable[..., GatewayThread]) -> openai.OpenAI:
    """The open zero-config gateway and its demo model."""
    gw = start_gateway(default_config({}))
    return openai.OpenAI(base_url=gw.base_url, api_key="none", max_retries=0)


def test_n_beyond_openais_maximum_is_refused_on_the_open_demo_gateway(demo: openai.OpenAI) -> None:
    started = time.monotonic()
    err = refused(lambda: demo.chat.completions.create(model="demo", messages=HI, n=3_000_000))
    assert time.monotonic() - started < 2
    assert (err["param"], err["code"]) == ("n", "integer_above_max_value")
    assert "<= 128" in err["message"]
    err = refused(lambda: demo.chat.completions.create(model="demo", messages=HI, n=0))
    assert (err["param"], err["code"]) == ("n", "integer_below_min_value")
    err = refused(lambda: demo.chat.completions.create(model="demo", messages=HI, logprobs=True, top_logprobs=21))
    assert err["param"] == "top_logprobs"


def test_the_demo_model_answers_at_most_8_choices_of_bounded_size(demo: openai.OpenAI) -> None:
    err = refused(lambda: demo.chat.completions.create(model="demo", messages=HI, n=9))
    assert err["param"] == "n"
    big: list[ChatCompletionMessageParam] = [{"role": "user", "content": "word " * 100_000}]
    r = demo.chat.completions.with_raw_response.create(model="demo", messages=big, n=8, logprobs=True)
    assert len(r.http_response.content) < 1_000_000
    answer = r.parse()
    assert len(answer.choices) == 8 and answer.choices[0].finish_reason == "length"
    err = refused(lambda: demo.chat.completions.create(model="demo", messages=[
        {"role": "user", "content": "x" * 600_000}]))
    assert (err["param"], err["code"]) == ("messages", "context_length_exceeded")


def test_embedding_inputs_are_bounded_by_the_gateway(openai_emulator: BackgroundServer,
                                                     start_gateway: Callable[..., GatewayThread]) -> None:
    gw = start_gateway({"models": [openai_model("embed", openai_emulator, "text-embedding-3-small")]})
    client = openai.OpenAI(base_url=gw.base_url, api_key="none", max_retries=0)
    err = refused(lambda: client.embeddings.create(model="embed", input=["a"] * 40_000))
    assert (err["param"], err["code"]) == ("input", "array_above_max_length")
    assert openai_emulator.state.requests == []
    err = refused(lambda: client.embeddings.create(model="embed", input="a", dimensions=0))
    assert err["param"] == "dimensions"


@pytest.fixture
def emulator_client(openai_emulator: BackgroundServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=openai_emulator.url + "/v1", api_key=UPSTREAM_KEY, max_retries=0)


def test_the_openai_emulator_refuses_what_openai_refuses(emulator_client: openai.OpenAI) -> None:
    c = emulator_client
    assert refused(lambda: c.chat.completions.create(model="gpt-4o-mini", messages=HI, n=129))["param"] == "n"
    assert len(c.chat.completions.create(model="gpt-4o-mini", messages=HI, n=128).choices) == 128
    assert refused(lambda: c.chat.completions.create(model="gpt-4o-mini", messages=HI, logprobs=True,
                                                     top_logprobs=21))["param"] == "top_logprobs"
    assert refused(lambda: c.embeddings.create(model="text-embedding-3-small", input=["a"] * 2049))["param"] == "input"
    assert refused(lambda: c.embeddings.create(model="text-embedding-3-small", input="a",
                                               dimensions=1537))["param"] == "dimensions"
    assert len(c.embeddings.create(model="text-embedding-3-large", input="a", dimensions=3072).data[0].embedding) \
        == 3072
    assert refused(lambda: c.completions.create(model="gpt-3.5-turbo-instruct", prompt="x",
                                                best_of=21))["param"] == "best_of"
    assert refused(lambda: c.images.generate(prompt="x", n=11))["param"] == "n"


def test_the_openai_emulator_cuts_an_echo_at_a_models_output_size(emulator_client: openai.OpenAI) -> None:
    r = emulator_client.chat.completions.create(model="gpt-4o-mini", messages=[
        {"role": "user", "content": "x" * 200_000}])
    assert r.choices[0].finish_reason == "length" and len(r.choices[0].message.content or "") == 64 * 1024


@pytest.fixture
def gemini() -> Iterator[BackgroundServer]:
    with BackgroundServer(create_gemini_app(GeminiEmulatorOptions(api_key="k"))) as srv:
        yield srv


def test_the_gemini_emulator_makes_at_most_8_candidates(gemini: BackgroundServer) -> None:
    def post(count: int) -> requests.Response:
        return requests.post(gemini.url + "/v1beta/models/gemini-2.5-flash:generateContent", timeout=5,
                             headers={"x-goog-api-key": "k"},
                             json={"contents": [{"role": "user", "parts": [{"text": "hi"}]}],
                                   "generationConfig": {"candidateCount": count}})

    assert len(post(8).json()["candidates"]) == 8
    r = post(9)
    assert r.status_code == 400 and "candidate_count" in r.json()["error"]["message"]
