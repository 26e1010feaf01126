"""The usage-only decoder gives what parsing the whole answer gives, for any answer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hypothesis
import orjson
import pytest
from hypothesis import strategies as st

from relaygate.providers.openai.usage import usage_of
from relaygate.providers.openai_format import usage_of as _usage_of

CANNED = Path(__file__).resolve().parent.parent / "bench" / "upstream" / "chat.json"


def test_the_canned_chat_answer_gives_its_usage() -> None:
    u = usage_of(CANNED.read_bytes())
    assert u is not None and (u.prompt_tokens, u.completion_tokens, u.cached_tokens) == (41, 52, 0)
    assert u == _usage_of(CANNED.read_bytes())


@pytest.mark.parametrize("body", [
    b'{"usage":null}', b'{"id":"x"}', b"[]", b'[{"usage":{"prompt_tokens":1}}]', b'{"usage":',
    b'{"usage":{"prompt_tokens":null,"input_tokens":7}}', b'{"usage":{"input_tokens":7,"output_tokens":3}}',
    b'{"usage":{"prompt_tokens":2.0,"completion_tokens":true}}', b'{"usage":{"prompt_tokens":"5"}}',
    b'{"usage":{"type":"duration","seconds":3}}', b'{"usage":{"type":"duration","seconds":"x"}}',
    b'{"usage":{"prompt_tokens":1,"prompt_tokens_details":{"cached_tokens":null}}}',
    b'{"usage":{"prompt_tokens":1,"prompt_tokens_details":[1]}}',
    b'{"usage":[]}', b'"usage"', b'{"usage":{"prompt_tokens":1e999}}',
], ids=repr)
def test_odd_answers_give_what_a_whole_parse_gives(body: bytes) -> None:
    assert usage_of(body) == whole_parse(body)


def test_integers_beyond_64_bits_are_read_exactly() -> None:  # orjson reads them as floats
    u = usage_of(b'{"usage":{"prompt_tokens":123456789012345678901}}')
    assert u is not None and u.prompt_tokens == 123456789012345678901


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8)
usage_keys = st.sampled_from(["prompt_tokens", "completion_tokens", "input_tokens", "output_tokens",
                              "prompt_tokens_details", "type", "seconds", "total_tokens", "cached_tokens"])
usages = st.dictionaries(usage_keys, st.integers(0, 10**6) | json_values | st.just("duration")
                         | st.fixed_dictionaries({"cached_tokens": st.integers(0, 100) | json_values}), max_size=6)


def whole_parse(body: bytes) -> Any:
    try:
        return _usage_of(body)
    except (TypeError, ValueError):  # the whole-parse path fails on counts that are not numbers
        return None


@hypothesis.settings(max_examples=200, deadline=None, derandomize=True, database=None)
@hypothesis.given(usage=usages | json_values, rest=st.dictionaries(st.text(max_size=8), json_values, max_size=4))
def test_any_answer_gives_what_a_whole_parse_gives(usage: Any, rest: dict[str, Any]) -> None:
    body = orjson.dumps({**rest, "usage": usage})
    assert usage_of(body) == whole_parse(body)


def test_counts_that_are_not_numbers_leave_the_usage_unknown() -> None:
    assert usage_of(b'{"usage":{"prompt_tokens":"many"}}') is None
