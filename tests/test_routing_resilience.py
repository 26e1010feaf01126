"""Retries, fallbacks, deadlines and streams, end to end: the openai SDK → relaygate → several emulators
with faults injected (5xx, 429 with retry-after, a closed port, latency beyond the timeout, a cut stream)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from relaygate.testing.base import BackgroundServer
from relaygate.testing.gateway import GatewayThread

from .routing_support import MESSAGES, chat_requests, dep, emulators, fault, reset, sdk_client

Start = Callable[..., GatewayThread]


@pytest.fixture(scope="module")
def emus() -> Iterator[list[BackgroundServer]]:
    with emulators({"context_window": 50}, {}, {}) as servers:
        yield servers


@pytest.fixture(autouse=True)
def clean(emus: list[BackgroundServer]) -> None:
    reset(emus)


def client(gw: GatewayThread) -> openai.OpenAI:
    return sdk_client(gw.base_url)


def ask(gw: GatewayThread, model: str = "m", **kw: Any) -> Any:
    """One completion; returns (the raw response, the parsed completion)."""
    raw = client(gw).chat.completions.with_raw_response.create(model=model, messages=MESSAGES, **kw)
    return raw, raw.parse()


# ---- retries -----------------------------------------------------------------------------------------

def test_failed_deployment_fails_over_to_the_next_and_headers_say_so(emus: list[BackgroundServer],
                                                                     start_gateway: Start) -> None:
    fault(emus[0], status=500)
    gw = start_gateway({"models": [{"name": "m", "deployments": [dep(emus[0], "bad"), dep(emus[1], "good")]}]})
    raw, done = ask(gw)
    assert done.choices[0].message.content.endswith("hello there")
    assert raw.headers["x-relaygate-deployment"] == "good"
    assert raw.headers["x-relaygate-attempts"] == "2"


def test_connection_refused_fails_over(emus: list[BackgroundServer], start_gateway: Start) -> None:
    gw = start_gateway({"models": [{"name": "m", "deployments": [dep(None, "down"), dep(emus[1], "up")]}]})
    raw, _ = ask(gw)
    assert (raw.headers["x-relaygate-deployment"], raw.headers["x-relaygate-attempts"]) == ("up", "2")


def test_timeout_fails_over(emus: list[BackgroundServer], start_gateway: Start) -> None:
    fault(emus[0], latency_ms=3000)
    gw = start_gateway({"models": [{"name": "m", "deployments": [dep(emus[0], "slow", timeout=0.3),
                                                                 dep(emus[1], "quick")]}]})
    t = time.monotonic()
    raw, _ = ask(gw)
    assert raw.headers["x-relaygate-deployment"] == "quick"
    assert time.monotonic() - t < 2


def test_429_is_retried_on_the_same_deployment_after_its_retry_after(emus: list[BackgroundServer],
                                                                     start_gateway: Start) -> None:
    fault(emus[1], status=429, count=1, retry_after=0.4)
    gw = start_gateway({"models": [{"name": "m", "retry": {"attempts": 2, "backoff": 0.01},
                                    "deployments": [dep(emus[1], "only")]}]})
    t = time.monotonic()
    raw, _ = ask(gw)
    waited = time.monotonic() - t
    assert raw.headers["x-relaygate-attempts"] == "2"
    assert 0.38 <= waited < 2, waited  # the upstream's retry-after-ms (400), not the 10 ms backoff
    assert chat_requests(emus[1]) == 2


def test_repeats_back_off_exponentially(emus: list[BackgroundServer], start_gateway: Start) -> None:
    fault(emus[1], status=503, count=3)
    gw = start_gateway({"models": [{"name": "m", "breaker": {"enabled": False},
                                    "retry": {"attempts": 4, "backoff": 0.1, "jitter": 0},
                                    "deployments": [dep(emus[1], "only")]}]})
    t = time.monotonic()
    raw, _ = ask(gw)
    assert raw.headers["x-relaygate-attempts"] == "4"
    assert 0.69 <= time.monotonic() - t < 1.5  # 0.1 + 0.2 + 0.4


@pytest.mark.parametrize("status", [400, 401, 404])
def test_errors_of_non_retryable_classes_are_not_retried(status: int, emus: list[BackgroundServer],
                                                         start_gateway: Start) -> None:
    fault(emus[1], status=status, count=1)
    gw = start_gateway({"models": [{"name": "m", "retry": {"attempts": 3},
                                    "deployments": [dep(emus[1], "a"), dep(emus[2], "b")]}]})
    with pytest.raises(openai.APIStatusError) as e:
        ask(gw)
    assert e.value.status_code == status
    assert chat_requests(emus[1]) == 1 and chat_requests(emus[2]) == 0


def test_retry_classes_are_configurable(emus: list[BackgroundServer], start_gateway: Start) -> None:
    fault(emus[1], status=429, count=1)  # rate limited, but only timeouts are retried here
    gw = start_gateway({"models": [{"name": "m", "retry": {"attempts": 3, "on": ["timeout"]},
                                    "deployments": [dep(emus[1], "a"), dep(emus[2], "b")]}]})
    with pytest.raises(openai.RateLimitError):
        ask(gw)
    assert chat_requests(emus[2]) == 0


def test_retry_after_beyond_the_deadline_is_not_waited_for(emus: list[BackgroundServer],
                                                            start_gateway: Start) -> None:
    fault(emus[1], status=429, retry_after=5)
    gw = start_gateway({"server": {"request_timeout": 1.0},
                        "models": [{"name": "m", "retry": {"attempts": 3}, "deployments": [dep(emus[1], "a")]}]})
    t = time.monotonic()
    with pytest.raises(openai.RateLimitError) as e:
        ask(gw)
    assert time.monotonic() - t < 0.8
    assert e.value.response.headers["retry-after"] == "5"
    assert chat_requests(emus[1]) == 1


def test_rate_limited_deployment_is_skipped_while_it_cools_down(emus: list[BackgroundServer],
                                                                 start_gateway: Start) -> None:
    fault(emus[1], status=429, count=1, retry_after=30)
    gw = start_gateway({"models": [{"name": "m", "deployments": [dep(emus[1], "a"), dep(emus[2], "b")]}]})
    served = [ask(gw)[0].headers["x-relaygate-deployment"] for _ in range(6)]
    assert served == ["b"] * 6  # the first call went to a (429), then b; a then sits out its retry-after
    assert chat_requests(emus[1]) == 1


# ---- fallbacks ---------------------------------------------------------------------------------------

FAULTS: dict[str, dict[str, Any]] = {
    "unavailable": {"status": 503},
    "rate_limited": {"status": 429},
    "timeout": {"latency_ms": 2000},
    "content_filtered": {"status": 400, "error_code": "content_filter"},
}


@pytest.mark.parametrize("configured", ["unavailable", "rate_limited", "timeout", "content_filtered"])
@pytest.mark.parametrize("happening", ["unavailable", "rate_limited", "timeout", "content_filtered"])
def test_fallback_happens_for_exactly_the_configured_classes(configured: str, happening: str,
                                                            emus: list[BackgroundServer],
                                                            start_gateway: Start) -> None:
    fault(emus[1], **FAULTS[happening])
    gw = start_gateway({"models": [
        {"name": "m", "fallbacks": [{"on": [configured], "models": ["backup"]}],
         "deployments": [dep(emus[1], "primary", timeout=0.3)]},
        {"name": "backup", "deployments": [dep(emus[2], "second")]},
    ]})
    if configured == happening:
        raw, _ = ask(gw)
        assert raw.headers["x-relaygate-deployment"] == "second"
    else:
        with pytest.raises(openai.APIStatusError):
            ask(gw)
        assert chat_requests(emus[2]) == 0


def test_context_too_long_falls_back_to_the_larger_model(
        emus: list[BackgroundServer], start_gateway: Start) -> None:
    gw = start_gateway({"models": [
        {"name": "small", "fallbacks": [{"on": ["context_too_long"], "models": ["large"]},
                                        {"on": ["unavailable"], "models": ["other"]}],
         "deployments": [dep(emus[0], "small-0")]},  # emus[0] has a 50-token context window
        {"name": "large", "deployments": [dep(emus[1], "large-0")]},
        {"name": "other", "deployments": [dep(emus[2], "other-0")]},
    ]})
    assert ask(gw, "small")[0].headers["x-relaygate-deployment"] == "small-0"  # short prompts stay
    long: list[ChatCompletionMessageParam] = [{"role": "user", "content": "word " * 200}]
    raw = client(gw).chat.completions.with_raw_response.create(model="small", messages=long)
    assert raw.headers["x-relaygate-deployment"] == "large-0"
    assert chat_requests(emus[2]) == 0


def test_fallback_chain_is_followed_in_order_and_each_model_tried_once(emus: list[BackgroundServer],
                                                                       start_gateway: Start) -> None:
    fault(emus[1], status=503)
    gw = start_gateway({"models": [
        {"name": "a", "fallbacks": [{"models": ["b", "c"]}], "deployments": [dep(None, "a-0")]},
        {"name": "b", "fallbacks": [{"models": ["a"]}], "deployments": [dep(emus[1], "b-0")]},
        {"name": "c", "deployments": [dep(emus[2], "c-0")]},
    ]})
    raw, _ = ask(gw, "a")
    assert raw.headers["x-relaygate-deployment"] == "c-0"
    assert raw.headers["x-relaygate-attempts"] == "3"


def test_fallbacks_are_transitive_a_fallback_models_own_rules_come_first(emus: list[BackgroundServer],
                                                                          start_gateway: Start) -> None:
    """a falls back to b and d, b to c: a → b → c (b's own rule), and d only once c failed too."""
    fault(emus[1], status=503)
    gw = start_gateway({"models": [
        {"name": "a", "fallbacks": [{"models": ["b", "d"]}], "deployments": [dep(None, "a-0")]},
        {"name": "b", "fallbacks": [{"models": ["c"]}], "deployments": [dep(emus[1], "b-0")]},
        {"name": "c", "deployments": [dep(emus[2], "c-0")]},
        {"name": "d", "deployments": [dep(emus[2], "d-0")]},
    ]})
    raw, _ = ask(gw, "a")
    assert raw.headers["x-relaygate-deployment"] == "c-0" and raw.headers["x-relaygate-attempts"] == "3"
    fault(emus[2], status=503)  # c and d both fail now: d is still reached, and each model tried once
    with pytest.raises(openai.InternalServerError) as e:
        ask(gw, "a")
    assert e.value.response.headers["x-relaygate-deployment"] == "d-0"
    assert e.value.response.headers["x-relaygate-attempts"] == "4"


def test_a_fallback_chain_is_bounded(emus: list[BackgroundServer], start_gateway: Start) -> None:
    """A chain of 12 models, each falling back to the next: at most 8 fallback models per call."""
    fault(emus[1], status=503)
    gw = start_gateway({"models": [
        {"name": f"m{i}", "fallbacks": [{"models": [f"m{i + 1}"]}] if i < 11 else [],
         "deployments": [dep(emus[1], f"m{i}-0")]} for i in range(12)]})
    with pytest.raises(openai.InternalServerError) as e:
        ask(gw, "m0")
    assert e.value.response.headers["x-relaygate-attempts"] == "9" and chat_requests(emus[1]) == 9


def test_fallback_loops_are_impossible(emus: list[BackgroundServer], start_gateway: Start) -> None:
    fault(emus[1], status=503)
    fault(emus[2], status=503)
    gw = start_gateway({"models": [
        {"name": "a", "fallbacks": [{"models": ["b"]}], "deployments": [dep(emus[1], "a-0")]},
        {"name": "b", "fallbacks": [{"models": ["a"]}], "deployments": [dep(emus[2], "b-0")]},
    ]})
    with pytest.raises(openai.InternalServerError) as e:
        ask(gw, "a")
    assert chat_requests(emus[1]) == 1 and chat_requests(emus[2]) == 1
    headers = e.value.response.headers
    assert headers["x-relaygate-attempts"] == "2" and headers["x-relaygate-deployment"] == "b-0"


def test_deadline_bounds_retries_and_fallbacks_together(
        emus: list[BackgroundServer], start_gateway: Start) -> None:
    fault(emus[1], latency_ms=600)
    fault(emus[2], latency_ms=600)
    gw = start_gateway({"server": {"request_timeout": 1.0}, "models": [
        {"name": "a", "retry": {"attempts": 5}, "fallbacks": [{"models": ["b"]}],
         "deployments": [dep(emus[1], "a-0", timeout=0.4), dep(emus[2], "a-1", timeout=0.4)]},
        {"name": "b", "deployments": [dep(emus[2], "b-0", timeout=0.4)]},
    ]})
    t = time.monotonic()
    with pytest.raises(openai.APIStatusError) as e:
        ask(gw, "a")
    assert time.monotonic() - t < 1.6  # the 1 s deadline, plus a loaded machine's slack
    assert e.value.status_code == 504


# ---- streams -----------------------------------------------------------------------------------------

def test_stream_failing_after_its_first_byte_is_not_retried_and_ends_with_an_error_event(
        emus: list[BackgroundServer], start_gateway: Start) -> None:
    fault(emus[1], disconnect_after_chunks=3)
    gw = start_gateway({"models": [{"name": "m", "retry": {"attempts": 3},
                                    "fallbacks": [{"models": ["backup"]}],
                                    "deployments": [dep(emus[1], "cut"), dep(emus[2], "whole")]},
                                   {"name": "backup", "deployments": [dep(emus[2], "backup-0")]}]})
    got = []
    with pytest.raises(openai.APIError) as e:
        for chunk in client(gw).chat.completions.create(model="m", messages=MESSAGES, stream=True):
            got.append(chunk)
    assert len(got) == 3
    assert "stream broke" in str(e.value)
    assert chat_requests(emus[1]) == 1 and chat_requests(emus[2]) == 0


def test_stream_failing_before_its_first_byte_is_retried(
        emus: list[BackgroundServer], start_gateway: Start) -> None:
    fault(emus[1], status=502)
    gw = start_gateway({"models": [{"name": "m", "deployments": [dep(emus[1], "bad"), dep(emus[2], "good")]}]})
    with client(gw).chat.completions.with_streaming_response.create(
            model="m", messages=MESSAGES, stream=True) as resp:
        assert resp.headers["x-relaygate-deployment"] == "good"
        text = "".join(c.choices[0].delta.content or "" for c in resp.parse() if c.choices)
    assert text.endswith("hello there")


# ---- capacity limits ---------------------------------------------------------------------------------

def test_deployment_at_max_parallel_is_skipped_not_overloaded(emus: list[BackgroundServer],
                                                              start_gateway: Start) -> None:
    import concurrent.futures

    fault(emus[1], latency_ms=900)  # long enough that all ten arrive while narrow's two are out
    gw = start_gateway({"models": [{"name": "m", "deployments": [dep(emus[1], "narrow", max_parallel=2),
                                                                 dep(emus[2], "wide")]}]})
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        served = list(pool.map(lambda _: ask(gw)[0].headers["x-relaygate-deployment"], range(10)))
    assert served.count("narrow") == 2 and served.count("wide") == 8
    assert emus[1].state.cancelled == 0


def test_calls_over_max_parallel_queue_for_a_slot_then_fall_over(emus: list[BackgroundServer],
                                                                  start_gateway: Start) -> None:
    """Every deployment full: a call waits for a slot (each freed slot goes to one waiting call) instead of a
    429 at once; past the model's queue_timeout it moves to its fallback model."""
    import concurrent.futures

    fault(emus[1], latency_ms=300)
    gw = start_gateway({"models": [
        {"name": "m", "deployments": [dep(emus[1], "narrow", max_parallel=2)], "queue_timeout": 5},
        {"name": "short", "deployments": [dep(emus[1], "narrow-too", max_parallel=2)], "queue_timeout": 0.4,
         "fallbacks": [{"on": ["rate_limited"], "models": ["spare"]}]},
        {"name": "spare", "deployments": [dep(emus[2], "spare-0")]}]})
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        served = list(pool.map(lambda _: ask(gw)[0].headers["x-relaygate-deployment"], range(6)))
    assert served == ["narrow"] * 6 and time.monotonic() - started >= 0.85  # three rounds of two
    with concurrent.futures.ThreadPoolExecutor(8) as pool:  # 2 at once, 2 after 0.3 s, 4 give up at 0.4 s
        served = list(pool.map(lambda _: ask(gw, "short")[0].headers["x-relaygate-deployment"], range(8)))
    assert 2 <= served.count("narrow-too") <= 4 and served.count("spare-0") == 8 - served.count("narrow-too")
    assert served.count("spare-0") >= 4


def test_rpm_limit_is_respected_and_then_refused_with_429(emus: list[BackgroundServer],
                                                          start_gateway: Start) -> None:
    gw = start_gateway({"models": [{"name": "m", "deployments": [dep(emus[1], "a", rpm=3)]}]})
    for _ in range(3):
        ask(gw)
    with pytest.raises(openai.RateLimitError) as e:
        ask(gw)
    assert e.value.code == "deployment_capacity"
    assert chat_requests(emus[1]) == 3


def test_tpm_limit_counts_the_tokens_used(emus: list[BackgroundServer], start_gateway: Start) -> None:
    gw = start_gateway({"models": [{"name": "m", "deployments": [dep(emus[1], "a", tpm=20),
                                                                 dep(emus[2], "b")]}]})
    served = [ask(gw)[0].headers["x-relaygate-deployment"] for _ in range(6)]
    # each call uses 6 prompt + 5 completion tokens: a takes two (22 tokens), then only b has room
    assert served[:2] == ["a", "b"] and served.count("a") == 2


def test_a_deployment_that_cannot_do_what_is_asked_passes_to_one_that_can(emus: list[BackgroundServer],
                                                                          start_gateway: Start) -> None:
    anthropic = {"name": "claude", "provider": "anthropic", "model": "claude-sonnet-4-5",
                 "api_base": "http://127.0.0.1:9", "api_key": "sk-ant-x"}  # refuses n=2 before any request
    gw = start_gateway({"models": [{"name": "m", "deployments": [anthropic, dep(emus[1], "gpt")]}]})
    raw = client(gw).chat.completions.with_raw_response.create(model="m", messages=MESSAGES, n=2)
    assert raw.headers["x-relaygate-deployment"] == "gpt" and raw.headers["x-relaygate-attempts"] == "2"
    assert len(raw.parse().choices) == 2
