"""The typed request models (core/shapes) held to OpenAI's OpenAPI description: the same fields, the same
required ones, the same enums; and bodies the spec's own examples describe pass."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml

from relaygate.core import shapes
from relaygate.core.errors import BadRequest
from relaygate.core.shapes.openai import ChatRequest, EmbeddingRequest, SpeechRequest

SPEC = yaml.safe_load((Path(__file__).parent / "specs" / "openai-openapi.yaml").read_text())
SCHEMAS = SPEC["components"]["schemas"]


def resolve(node: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    return resolve(SCHEMAS[ref.rsplit("/", 1)[1]]) if isinstance(ref, str) else node


def properties(schema: dict[str, Any]) -> tuple[dict[str, Any], set[str]]:
    """(properties, required) of an object schema, ``allOf`` merged."""
    schema = resolve(schema)
    props: dict[str, Any] = dict(schema.get("properties") or {})
    required = set(schema.get("required") or ())
    for part in schema.get("allOf") or ():
        p, r = properties(part)
        props.update(p)
        required |= r
    return props, required


def enum_of(node: dict[str, Any]) -> set[str] | None:
    node = resolve(node)
    if "enum" in node:
        return {v for v in node["enum"] if v is not None}
    for key in ("anyOf", "oneOf"):
        for option in node.get(key) or ():
            found = enum_of(option)
            if found:
                return found
    return None


def literals(tp: Any) -> set[str] | None:
    for arg in typing.get_args(tp) or (tp,):
        if typing.get_origin(arg) is typing.Literal:
            return set(typing.get_args(arg))
        if typing.get_origin(arg) is list:
            inner = literals(typing.get_args(arg)[0])
            if inner:
                return inner
    return None


MODELS = [(ChatRequest, "CreateChatCompletionRequest"), (EmbeddingRequest, "CreateEmbeddingRequest"),
          (SpeechRequest, "CreateSpeechRequest")]


@pytest.mark.parametrize(("model", "name"), MODELS)
def test_every_spec_field_is_typed_and_required_ones_are_required(model: Any, name: str) -> None:
    props, required = properties(SCHEMAS[name])
    fields = {f.name: f for f in msgspec.structs.fields(model)}
    assert set(props) <= set(fields), f"{name}: not typed: {sorted(set(props) - set(fields))}"
    assert {n for n, f in fields.items() if f.required} == required


@pytest.mark.parametrize(("model", "name"), MODELS)
def test_enums_are_the_specs(model: Any, name: str) -> None:
    props, _ = properties(SCHEMAS[name])
    hints = typing.get_type_hints(model, include_extras=True)
    for field, schema in props.items():
        ours = literals(hints[field])
        if ours is not None:
            assert ours == enum_of(schema), field


def test_message_roles_and_content_parts_are_the_specs() -> None:
    roles = {resolve(option)["properties"]["role"]["enum"][0]
             for option in SCHEMAS["ChatCompletionRequestMessage"]["oneOf"]}
    assert roles == {"system", "developer", "user", "assistant", "tool", "function"}
    parts = {resolve(option)["properties"]["type"]["enum"][0]
             for option in SCHEMAS["ChatCompletionRequestUserMessageContentPart"]["oneOf"]}
    for kind in parts:
        part = {"type": kind, "text": "x", "image_url": {"url": "https://x/y.png"},
                "input_audio": {"data": "aGk=", "format": "wav"}, "file": {"file_id": "f"}}
        shapes.check({"model": "m", "messages": [{"role": "user", "content": [part]}]}, ChatRequest)
    with pytest.raises(BadRequest) as e:
        shapes.check({"model": "m", "messages": [{"role": "user", "content": [{"type": "video"}]}]}, ChatRequest)
    assert e.value.param == "messages[0].content[0].type"


def test_a_full_request_in_the_specs_terms_passes() -> None:
    body = {
        "model": "gpt-4o", "messages": [
            {"role": "developer", "content": [{"type": "text", "text": "be brief"}], "name": "d"},
            {"role": "user", "content": [{"type": "text", "text": "hi"},
                                         {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGk=",
                                                                            "detail": "low"}}]},
            {"role": "assistant", "content": None, "refusal": None, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "ok"},
            {"role": "function", "name": "f", "content": None}],
        "temperature": 0, "top_p": 1, "n": 1, "stop": ["x"], "max_completion_tokens": 5, "seed": -(2 ** 63),
        "presence_penalty": -2, "frequency_penalty": 2, "logit_bias": {"50256": -100}, "logprobs": True,
        "top_logprobs": 20, "user": "u", "metadata": {"k": "v"}, "store": False, "service_tier": "auto",
        "reasoning_effort": "low", "verbosity": "low", "modalities": ["text", "audio"],
        "audio": {"voice": {"id": "v"}, "format": "wav"}, "prediction": {"type": "content", "content": "x"},
        "stream": True, "stream_options": {"include_usage": True},
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}, "strict": True}},
                  {"type": "custom", "custom": {"name": "c"}}],
        "tool_choice": {"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": [{"type": "function"}]}},
        "parallel_tool_calls": False,
        "response_format": {"type": "json_schema", "json_schema": {"name": "o", "schema": {}, "strict": None}},
        "web_search_options": {}, "prompt_cache_key": "k", "safety_identifier": "s",
    }
    shapes.check(body, ChatRequest)
    shapes.check({"model": "m", "input": [[1, 2], [3]], "encoding_format": "base64", "dimensions": 8}, EmbeddingRequest)
    shapes.check({"model": "m", "input": "x", "voice": "alloy", "speed": 4.0, "stream_format": "sse"}, SpeechRequest)
