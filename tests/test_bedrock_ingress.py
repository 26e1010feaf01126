"""boto3's bedrock-runtime client → relaygate's Bedrock routes (SigV4 with a key's derived secret, or the key as
bearer) → every upstream kind (OpenAI, Anthropic, Gemini, Cohere, Bedrock emulators)."""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import botocore.auth
import botocore.awsrequest
import botocore.credentials
import httpx
import orjson
import pytest
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError, EventStreamError

from relaygate.testing import anthropic, bedrock, cohere, gemini, openai
from relaygate.testing.base import BackgroundServer, FaultPlan
from relaygate.testing.gateway import GatewayThread

from .conftest import inside_one_minute
from .stack_support import CHAT_MODELS, KEYS, MASTER, deployments

APP_KEY = "rg-bedrock-app-" + "7c1e9a3f5b2d4068" * 2
LIMITED_KEY = "rg-bedrock-limited-" + "a5e3c7f9b1d2e4f6" * 2
TOOLS = {"tools": [{"toolSpec": {"name": "get_weather", "description": "weather for a city", "inputSchema": {
    "json": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}}]}
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 16


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayThread, dict[str, BackgroundServer]]]:
    with contextlib.ExitStack() as es:
        apps = {
            "openai": openai.create_app(openai.OpenAIEmulatorOptions(api_key=KEYS["openai"])),
            "anthropic": anthropic.create_app(anthropic.AnthropicEmulatorOptions(api_key=KEYS["anthropic"])),
            "gemini": gemini.create_app(gemini.GeminiEmulatorOptions(api_key=KEYS["gemini"])),
            "cohere": cohere.create_app(cohere.CohereEmulatorOptions(api_key=KEYS["cohere"])),
            "bedrock": bedrock.create_app(bedrock.BedrockEmulatorOptions()),
        }
        emus = {name: es.enter_context(BackgroundServer(app)) for name, app in apps.items()}
        config: dict[str, Any] = {
            "models": deployments({n: s.url for n, s in emus.items()}),
            "database": {"url": f"sqlite:///{tmp_path_factory.mktemp('bedrock-in')}/rg.db"},
            "auth": {"master_key": MASTER, "keys": [{"id": "app", "key": APP_KEY},
                                                     {"id": "limited", "key": LIMITED_KEY, "rpm": 2}]}}
        yield es.enter_context(GatewayThread(config)), emus


def aws_pair(gw: GatewayThread, key: str) -> dict[str, str]:
    r = httpx.get(gw.url + "/bedrock/credentials", headers={"authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    pair: dict[str, str] = r.json()
    return pair


def runtime(gw: GatewayThread, key: str = APP_KEY, **override: str) -> Any:
    pair = {**aws_pair(gw, key), **override}
    return boto3.client("bedrock-runtime", region_name="us-east-1", endpoint_url=gw.url,
                        config=BotoConfig(retries={"max_attempts": 1, "mode": "standard"}), **pair)


@pytest.fixture(scope="module")
def client(stack: tuple[GatewayThread, dict[str, BackgroundServer]]) -> Any:
    return runtime(stack[0])


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": [{"text": text}]}


def stream_events(resp: dict[str, Any]) -> list[dict[str, Any]]:
    return list(resp["stream"])


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_converse_answers_from_every_upstream_kind(client: Any, model: str) -> None:
    resp = client.converse(modelId=model, system=[{"text": "be brief"}],
                           messages=[user("hello from boto3")], inferenceConfig={"maxTokens": 50})
    content = resp["output"]["message"]["content"]
    assert resp["output"]["message"]["role"] == "assistant"
    assert "hello from boto3" in content[0]["text"]
    assert resp["stopReason"] == "end_turn"
    usage = resp["usage"]
    assert usage["inputTokens"] > 0 and usage["outputTokens"] > 0
    assert usage["totalTokens"] == usage["inputTokens"] + usage["outputTokens"] + usage.get("cacheReadInputTokens", 0)
    assert resp["ResponseMetadata"]["HTTPHeaders"]["x-relaygate-deployment"]


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_converse_stream_from_every_upstream_kind(client: Any, model: str) -> None:
    resp = client.converse_stream(modelId=model, messages=[user("stream me please")])
    events = stream_events(resp)
    kinds = [next(iter(e)) for e in events]
    assert kinds[0] == "messageStart" and kinds[-2:] == ["messageStop", "metadata"]
    text = "".join(e["contentBlockDelta"]["delta"].get("text", "") for e in events if "contentBlockDelta" in e)
    assert "stream me please" in text
    assert events[-2]["messageStop"]["stopReason"] == "end_turn"
    assert events[-1]["metadata"]["usage"]["outputTokens"] > 0


def _tool_round_trip(client: Any, model: str, stream: bool) -> None:
    first_turn = [user("What is the weather in Paris?")]
    if stream:
        events = stream_events(client.converse_stream(modelId=model, messages=first_turn, toolConfig=TOOLS))
        start = next(e["contentBlockStart"] for e in events if "contentBlockStart" in e)
        tool = start["start"]["toolUse"]
        index = start["contentBlockIndex"]
        args = "".join(e["contentBlockDelta"]["delta"]["toolUse"]["input"] for e in events
                       if "contentBlockDelta" in e and e["contentBlockDelta"]["contentBlockIndex"] == index)
        assert any("contentBlockStop" in e and e["contentBlockStop"]["contentBlockIndex"] == index for e in events)
        stop = next(e["messageStop"]["stopReason"] for e in events if "messageStop" in e)
        use = {"toolUseId": tool["toolUseId"], "name": tool["name"], "input": orjson.loads(args)}
    else:
        resp = client.converse(modelId=model, messages=first_turn, toolConfig=TOOLS)
        use = next(b["toolUse"] for b in resp["output"]["message"]["content"] if "toolUse" in b)
        stop = resp["stopReason"]
    assert stop == "tool_use" and use["name"] == "get_weather" and isinstance(use["input"], dict)
    second = first_turn + [
        {"role": "assistant", "content": [{"toolUse": use}]},
        {"role": "user", "content": [{"toolResult": {"toolUseId": use["toolUseId"],
                                                     "content": [{"json": {"temp_c": 21}}]}}]}]
    resp = client.converse(modelId=model, messages=second, toolConfig=TOOLS)
    assert resp["stopReason"] == "end_turn"
    assert resp["output"]["message"]["content"][0]["text"]


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_converse_tool_call_round_trip(client: Any, model: str) -> None:
    _tool_round_trip(client, model, stream=False)


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_converse_stream_tool_call_round_trip(client: Any, model: str) -> None:
    _tool_round_trip(client, model, stream=True)


def test_an_image_reaches_the_upstream_as_an_image(
        client: Any, stack: tuple[GatewayThread, dict[str, BackgroundServer]]) -> None:
    emu = stack[1]["openai"]
    emu.state.requests.clear()
    client.converse(modelId="gpt", messages=[{"role": "user", "content": [
        {"text": "what is this"}, {"image": {"format": "png", "source": {"bytes": PNG}}}]}])
    parts = emu.state.requests[-1]["json"]["messages"][0]["content"]
    assert parts[1] == {"type": "image_url",
                        "image_url": {"url": "data:image/png;base64," + base64.b64encode(PNG).decode()}}


def test_a_bedrock_deployment_gets_the_converse_body_as_the_client_sent_it(
        client: Any, stack: tuple[GatewayThread, dict[str, BackgroundServer]]) -> None:
    emu = stack[1]["bedrock"]
    emu.state.requests.clear()
    body = {"messages": [user("hi"), {"role": "assistant", "content": [{"text": "hello"}]},
                         {"role": "user", "content": [{"text": "again"}, {"cachePoint": {"type": "default"}}]}],
            "inferenceConfig": {"maxTokens": 40, "topP": 0.5},
            "additionalModelRequestFields": {"top_k": 5}}
    resp = client.converse(modelId="bedrock", **body)
    assert "again" in resp["output"]["message"]["content"][0]["text"]
    sent = emu.state.requests[-1]
    assert sent["path"].endswith("/converse") and sent["json"] == body  # cachePoint and top_k survive
    assert "x-relaygate-dropped-params" not in resp["ResponseMetadata"]["HTTPHeaders"]


BYTES_BODY = {"messages": [user("very bytes")], "inferenceConfig": {"maxTokens": 30}}
DUPLICATE_KEYS = b'{"messages": [{"role": "user", "content": [{"text": "first said"}]}], "inferenceConfig": ' \
    b'{"maxTokens": 30, "maxTokens": 7}, "messages": [{"role": "user", "content": [{"text": "very bytes"}]}]}'


@pytest.mark.parametrize("raw", [orjson.dumps(BYTES_BODY), json.dumps(BYTES_BODY).encode(), DUPLICATE_KEYS],
                         ids=["compact", "spaced", "duplicate-keys"])
def test_a_body_signed_by_the_client_goes_upstream_as_the_gateway_read_it(
        stack: tuple[GatewayThread, dict[str, BackgroundServer]], raw: bytes) -> None:
    """Compact JSON (as the JS, Java and Go SDKs send) goes upstream as the client's very bytes, and their
    SHA-256, computed to check the client's signature, signs the upstream request too (which the emulator
    verifies). Other bytes (boto3's spaced JSON; a key given twice, which the gateway reads as its last value and
    another parser may read as its first) go as the gateway serialised what it read, hashed anew: upstream
    answers the very request that was estimated, limited, logged and cached."""
    gw, emu = stack[0], stack[1]["bedrock"]
    pair = aws_pair(gw, APP_KEY)
    request = botocore.awsrequest.AWSRequest(method="POST", url=gw.url + "/model/bedrock/converse", data=raw,
                                             headers={"Content-Type": "application/json"})
    botocore.auth.SigV4Auth(botocore.credentials.Credentials(pair["aws_access_key_id"], pair["aws_secret_access_key"]),
                            "bedrock", "us-east-1").add_auth(request)
    r = httpx.post(request.url, content=raw, headers=dict(request.headers))
    assert r.status_code == 200, r.text
    assert "very bytes" in r.json()["output"]["message"]["content"][0]["text"]
    sent = emu.state.requests[-1]
    read = orjson.loads(raw)  # the last of a key given twice, as the gateway reads it
    assert read["inferenceConfig"]["maxTokens"] == (7 if raw is DUPLICATE_KEYS else 30)
    assert sent["json"] == read and sent["path"].endswith("/converse")
    assert sent["body_len"] == len(orjson.dumps(read))  # exactly what was read: no key twice, no spaces


def test_an_arn_model_id_names_the_model_after_its_last_slash(client: Any) -> None:
    arn = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/gpt"
    resp = client.converse(modelId=arn, messages=[user("by arn")])
    assert "by arn" in resp["output"]["message"]["content"][0]["text"]


def test_invoke_model_with_an_anthropic_body(client: Any) -> None:
    for model in ("claude", "gpt", "bedrock"):
        body = {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 60,
                "messages": [{"role": "user", "content": "invoke me"}]}
        resp = client.invoke_model(modelId=model, body=orjson.dumps(body))
        message = orjson.loads(resp["body"].read())
        assert message["type"] == "message" and message["role"] == "assistant", model
        assert "invoke me" in message["content"][0]["text"]
        assert message["usage"]["output_tokens"] > 0
        assert int(resp["ResponseMetadata"]["HTTPHeaders"]["x-amzn-bedrock-output-token-count"]) > 0


def test_invoke_model_with_response_stream_carries_messages_events(client: Any) -> None:
    for model in ("claude", "gemini"):
        body = {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 60,
                "messages": [{"role": "user", "content": "stream by invoke"}]}
        resp = client.invoke_model_with_response_stream(modelId=model, body=orjson.dumps(body))
        events = [orjson.loads(e["chunk"]["bytes"]) for e in resp["body"]]
        kinds = [e["type"] for e in events]
        assert kinds[0] == "message_start" and kinds[-1] == "message_stop", model
        text = "".join(e["delta"].get("text", "") for e in events if e["type"] == "content_block_delta")
        assert "stream by invoke" in text
        assert events[-1]["amazon-bedrock-invocationMetrics"]["outputTokenCount"] > 0


def test_an_anthropic_body_goes_to_claude_on_bedrock_as_it_came(
        client: Any, stack: tuple[GatewayThread, dict[str, BackgroundServer]]) -> None:
    """The same dialect: Claude on Bedrock gets the client's InvokeModel body untouched (top_k, anthropic_beta
    and all, nothing named dropped) and its answer, whole or streamed, is Bedrock's own."""
    emu = stack[1]["bedrock"]
    body = {"anthropic_version": "bedrock-2023-05-31", "anthropic_beta": ["token-efficient-tools-2025-02-19"],
            "max_tokens": 60, "system": "be brief", "top_k": 5,
            "messages": [{"role": "user", "content": "straight to claude"}]}
    resp = client.invoke_model(modelId="bedrock", body=orjson.dumps(body))
    message = orjson.loads(resp["body"].read())
    assert message["id"].startswith("msg_bdrk_") and "straight to claude" in message["content"][0]["text"]
    assert "x-relaygate-dropped-params" not in resp["ResponseMetadata"]["HTTPHeaders"]
    assert int(resp["ResponseMetadata"]["HTTPHeaders"]["x-amzn-bedrock-output-token-count"]) > 0
    sent = emu.state.requests[-1]
    assert sent["path"].endswith("/invoke") and sent["json"] == body
    resp = client.invoke_model_with_response_stream(modelId="bedrock", body=orjson.dumps(body))
    events = [orjson.loads(e["chunk"]["bytes"]) for e in resp["body"]]
    assert events[0]["message"]["id"].startswith("msg_bdrk_") and events[-1]["type"] == "message_stop"
    assert "straight to claude" in "".join(e["delta"].get("text", "") for e in events
                                           if e["type"] == "content_block_delta")
    assert events[-1]["amazon-bedrock-invocationMetrics"]["outputTokenCount"] > 0
    sent = emu.state.requests[-1]
    assert sent["path"].endswith("/invoke-with-response-stream") and sent["json"] == body


def test_a_messages_client_reaches_claude_on_bedrock_through_invoke_model(
        stack: tuple[GatewayThread, dict[str, BackgroundServer]]) -> None:
    """/v1/messages in front of Claude on Bedrock: the Messages request becomes Claude's InvokeModel body as it
    is (the anthropic-beta header as anthropic_beta), and Bedrock's Message comes back untouched."""
    gw, emu = stack
    request = {"model": "bedrock", "max_tokens": 50, "messages": [{"role": "user", "content": "messages to bedrock"}]}
    headers = {"x-api-key": APP_KEY, "anthropic-version": "2023-06-01", "anthropic-beta": "a-beta-2025-01-01"}
    r = httpx.post(gw.url + "/v1/messages", json=request, headers=headers)
    assert r.status_code == 200, r.text
    assert r.json()["id"].startswith("msg_bdrk_") and "messages to bedrock" in r.json()["content"][0]["text"]
    sent = emu["bedrock"].state.requests[-1]
    assert sent["path"].endswith("/invoke")
    assert sent["json"] == {"max_tokens": 50, "messages": request["messages"],
                            "anthropic_version": "bedrock-2023-05-31", "anthropic_beta": ["a-beta-2025-01-01"]}
    with httpx.stream("POST", gw.url + "/v1/messages", json={**request, "stream": True}, headers=headers) as r:
        assert r.status_code == 200
        text = r.read().decode()
    assert text.startswith("event: message_start") and "msg_bdrk_" in text and "event: message_stop" in text
    assert emu["bedrock"].state.requests[-1]["path"].endswith("/invoke-with-response-stream")


def test_invoke_refuses_a_body_of_no_family_it_knows(client: Any) -> None:
    with pytest.raises(ClientError) as e:
        client.invoke_model(modelId="gpt", body=orjson.dumps({"inputs": "a Hugging Face body?"}))
    assert e.value.response["Error"]["Code"] == "ValidationException"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


# (body, the answer's text, its output token count, its stop) of each InvokeModel body family, and of each of its
# stream chunks (text, the last chunk's stop); every upstream kind serves them (the emulators echo the prompt)
FAMILIES: dict[str, tuple[dict[str, Any], Any, Any, Any, Any, Any]] = {
    "nova": ({"schemaVersion": "messages-v1", "system": [{"text": "be brief"}],
              "messages": [{"role": "user", "content": [{"text": "family nova"}]}],
              "inferenceConfig": {"max_new_tokens": 60, "temperature": 0.2, "top_p": 0.9, "top_k": 5}},
             lambda a: a["output"]["message"]["content"][0]["text"], lambda a: a["usage"]["outputTokens"],
             lambda a: a["stopReason"],
             lambda c: (c.get("contentBlockDelta") or {}).get("delta", {}).get("text", ""),
             lambda c: (c.get("messageStop") or {}).get("stopReason")),
    "llama": ({"prompt": "<|begin_of_text|>family llama", "max_gen_len": 60, "temperature": 0.5, "top_p": 0.9},
              lambda a: a["generation"], lambda a: a["generation_token_count"], lambda a: a["stop_reason"],
              lambda c: c["generation"], lambda c: c["stop_reason"]),
    "mistral": ({"prompt": "<s>[INST] family mistral [/INST]", "max_tokens": 60, "top_k": 5, "stop": ["</s>"]},
                lambda a: a["outputs"][0]["text"], lambda a: 1, lambda a: a["outputs"][0]["stop_reason"],
                lambda c: c["outputs"][0]["text"], lambda c: c["outputs"][0]["stop_reason"]),
    "mistral-chat": ({"messages": [{"role": "system", "content": "be brief"},
                                   {"role": "user", "content": "family mistral-chat"}],
                      "max_tokens": 60, "temperature": 0.2, "top_p": 0.9},
                     lambda a: a["choices"][0]["message"]["content"], lambda a: 1,
                     lambda a: a["choices"][0]["stop_reason"],
                     lambda c: c["choices"][0]["message"]["content"], lambda c: c["choices"][0]["stop_reason"]),
    "jamba": ({"messages": [{"role": "user", "content": "family jamba"}], "max_tokens": 60, "temperature": 0.3,
               "stop": ["###"]},
              lambda a: a["choices"][0]["message"]["content"], lambda a: a["usage"]["completion_tokens"],
              lambda a: a["choices"][0]["finish_reason"],
              lambda c: c["choices"][0]["delta"].get("content") if c["choices"] else "",
              lambda c: c["choices"][0]["finish_reason"]),
    "titan": ({"inputText": "family titan", "textGenerationConfig": {"maxTokenCount": 60, "temperature": 0.1,
                                                                      "topP": 0.9, "stopSequences": []}},
              lambda a: a["results"][0]["outputText"], lambda a: a["results"][0]["tokenCount"],
              lambda a: a["results"][0]["completionReason"],
              lambda c: c["outputText"], lambda c: c["completionReason"]),
    "cohere": ({"message": "family cohere", "preamble": "be brief", "max_tokens": 60, "p": 0.9,
                "chat_history": [{"role": "USER", "message": "hi"}, {"role": "CHATBOT", "message": "hello"}]},
               lambda a: a["text"], lambda a: a["meta"]["billed_units"]["output_tokens"], lambda a: a["finish_reason"],
               lambda c: c.get("text", "") if c["event_type"] == "text-generation" else "",
               lambda c: c.get("finish_reason")),
}
STOPS = {"nova": "end_turn", "llama": "stop", "mistral": "stop", "mistral-chat": "stop", "jamba": "stop",
         "titan": "FINISH", "cohere": "COMPLETE"}


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("model", ["gpt", "claude", "bedrock"])
def test_invoke_model_serves_each_bodys_family_in_its_own_shape(client: Any, family: str, model: str) -> None:
    body, text, tokens, stop, _, _ = FAMILIES[family]
    resp = client.invoke_model(modelId=model, body=orjson.dumps(body))
    answer = orjson.loads(resp["body"].read())
    assert f"family {family}" in text(answer), answer
    assert tokens(answer) > 0 and stop(answer) == STOPS[family]
    assert int(resp["ResponseMetadata"]["HTTPHeaders"]["x-amzn-bedrock-output-token-count"]) > 0


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("model", ["gpt", "gemini"])
def test_invoke_model_with_response_stream_streams_each_family_in_its_own_chunks(
        client: Any, family: str, model: str) -> None:
    body, _, _, _, piece, last = FAMILIES[family]
    resp = client.invoke_model_with_response_stream(modelId=model, body=orjson.dumps(body))
    chunks = [orjson.loads(e["chunk"]["bytes"]) for e in resp["body"]]
    assert len(chunks) > 2
    assert f"family {family}" in "".join(piece(c) or "" for c in chunks)
    assert last(chunks[-1] if family != "nova" else chunks[-2]) == STOPS[family]
    assert chunks[-1]["amazon-bedrock-invocationMetrics"]["outputTokenCount"] > 0
    assert chunks[-1]["amazon-bedrock-invocationMetrics"]["inputTokenCount"] > 0
    if family == "nova":
        assert list(chunks[0]) == ["messageStart"] and chunks[-1]["metadata"]["usage"]["outputTokens"] > 0
    if family == "cohere":
        assert chunks[0]["event_type"] == "stream-start" and chunks[-1]["is_finished"]
        assert f"family {family}" in chunks[-1]["response"]["text"]


@pytest.mark.parametrize("stream", [False, True])
def test_a_mistral_chat_body_calls_tools_in_mistrals_shape(client: Any, stream: bool) -> None:
    spec: Any = TOOLS["tools"]
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "weather for a city",
                                               "parameters": spec[0]["toolSpec"]["inputSchema"]["json"]}}]
    body: dict[str, Any] = {"messages": [{"role": "user", "content": "Lima"}], "max_tokens": 60, "tools": tools,
            "tool_choice": "any"}
    if stream:
        resp = client.invoke_model_with_response_stream(modelId="gpt", body=orjson.dumps(body))
        chunks = [orjson.loads(e["chunk"]["bytes"]) for e in resp["body"]]
        calls = [c["choices"][0]["message"]["tool_calls"] for c in chunks if c["choices"][0]["message"].get("tool_calls")]
        assert len(calls) == 1 and chunks[-1]["choices"][0]["stop_reason"] == "tool_calls"
        call = calls[0][0]
    else:
        answer = orjson.loads(client.invoke_model(modelId="gpt", body=orjson.dumps(body))["body"].read())
        assert answer["choices"][0]["stop_reason"] == "tool_calls"
        call = answer["choices"][0]["message"]["tool_calls"][0]
    assert call["function"]["name"] == "get_weather" and orjson.loads(call["function"]["arguments"]) == {"city": "Lima"}
    follow = {"messages": [*body["messages"], {"role": "assistant", "content": "", "tool_calls": [
        {"id": call["id"], "function": call["function"]}]}, {"role": "tool", "tool_call_id": call["id"], "content": "mild"}],
        "max_tokens": 60}
    answer = orjson.loads(client.invoke_model(modelId="gpt", body=orjson.dumps(follow))["body"].read())
    assert "mild" in answer["choices"][0]["message"]["content"]


@pytest.mark.parametrize("body", [{"text_prompts": [{"text": "a lighthouse"}], "cfg_scale": 7},
                                  {"prompt": "a lighthouse", "aspect_ratio": "1:1", "output_format": "png"},
                                  {"taskType": "TEXT_IMAGE", "textToImageParams": {"text": "a lighthouse"}}])
def test_an_image_generation_body_is_a_validation_error_that_says_so(client: Any, body: dict[str, Any]) -> None:
    with pytest.raises(ClientError) as e:
        client.invoke_model(modelId="gpt", body=orjson.dumps(body))
    assert e.value.response["Error"]["Code"] == "ValidationException"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert "no image generation" in e.value.response["Error"]["Message"]


def test_an_invoke_family_names_the_fields_it_left_out(client: Any) -> None:
    body = {"prompt": "dropped", "max_tokens": 20, "top_k": 3}
    resp = client.invoke_model(modelId="gpt", body=orjson.dumps(body))
    assert resp["ResponseMetadata"]["HTTPHeaders"]["x-relaygate-dropped-params"] == "top_k"


def test_a_wrong_secret_is_refused_in_bedrocks_format(stack: tuple[GatewayThread, dict[str, BackgroundServer]]) -> None:
    bad = runtime(stack[0], aws_secret_access_key="x" * 40)
    with pytest.raises(ClientError) as e:
        bad.converse(modelId="gpt", messages=[user("hi")])
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert e.value.response["Error"]["Code"] == "InvalidSignatureException"
    assert "signature" in e.value.response["Error"]["Message"]


def test_an_unknown_access_key_is_refused(stack: tuple[GatewayThread, dict[str, BackgroundServer]]) -> None:
    with pytest.raises(ClientError) as e:
        runtime(stack[0], aws_access_key_id="key_nobody").converse(modelId="gpt", messages=[user("hi")])
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert e.value.response["Error"]["Code"] == "UnrecognizedClientException"


def test_a_relaygate_key_as_bearer_works_and_a_wrong_one_is_refused(
        stack: tuple[GatewayThread, dict[str, BackgroundServer]]) -> None:
    gw = stack[0]
    body = {"messages": [user("bearer")]}
    ok = httpx.post(gw.url + "/model/gpt/converse", json=body, headers={"authorization": f"Bearer {APP_KEY}"})
    assert ok.status_code == 200 and "bearer" in ok.json()["output"]["message"]["content"][0]["text"]
    bad = httpx.post(gw.url + "/model/gpt/converse", json=body, headers={"authorization": "Bearer rg-wrong"})
    assert bad.status_code == 403 and bad.headers["x-amzn-errortype"].startswith("AccessDeniedException")
    assert set(bad.json()) == {"message"}


def test_errors_are_bedrocks(client: Any) -> None:
    with pytest.raises(ClientError) as e:
        client.converse(modelId="no-such-model", messages=[user("hi")])
    assert e.value.response["Error"]["Code"] == "ResourceNotFoundException"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    with pytest.raises(ClientError) as e:
        client.converse(modelId="gpt", messages=[{"role": "system", "content": [{"text": "x"}]}])
    assert e.value.response["Error"]["Code"] == "ValidationException"


def test_the_keys_rate_limit_applies(stack: tuple[GatewayThread, dict[str, BackgroundServer]]) -> None:
    limited = runtime(stack[0], LIMITED_KEY)
    inside_one_minute()
    for _ in range(2):
        limited.converse(modelId="gpt", messages=[user("count me")])
    with pytest.raises(ClientError) as e:
        limited.converse(modelId="gpt", messages=[user("one too many")])
    assert e.value.response["Error"]["Code"] == "ThrottlingException"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429


def admin(gw: GatewayThread, method: str, path: str, body: Any = None, **params: Any) -> Any:
    r = httpx.request(method, gw.url + "/admin" + path, json=body, params=params,
                      headers={"authorization": f"Bearer {MASTER}"}, timeout=10)
    assert r.status_code < 300, r.text
    return r.json()


def test_calls_and_refusals_are_in_the_request_log(
        stack: tuple[GatewayThread, dict[str, BackgroundServer]], client: Any) -> None:
    gw = stack[0]
    resp = client.converse(modelId="claude", messages=[user("log me")])
    rid = resp["ResponseMetadata"]["HTTPHeaders"]["x-amzn-requestid"]
    with pytest.raises(ClientError):
        runtime(gw, aws_secret_access_key="y" * 40).converse(modelId="claude", messages=[user("refused")])
    deadline = time.monotonic() + 10
    rows: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        rows = admin(gw, "GET", "/logs", limit=50)["data"]
        refused = [r for r in rows if (r["status"], r["route"]) == (403, "/model/claude/converse")]
        if any(r["request_id"] == rid for r in rows) and refused:
            break
        time.sleep(0.2)
    ours = next(r for r in rows if r["request_id"] == rid)
    assert ours["key_id"] == "cfg_app" and ours["model"] == "claude" and ours["status"] == 200
    assert [r["error"] for r in refused] == ["auth"]


def test_rotation_changes_the_aws_secret_and_revocation_refuses_it(
        stack: tuple[GatewayThread, dict[str, BackgroundServer]]) -> None:
    gw = stack[0]
    created = admin(gw, "POST", "/keys", {"name": "sigv4-rotation"})
    old = runtime(gw, created["key"])
    assert old.converse(modelId="gpt", messages=[user("before")])["stopReason"] == "end_turn"
    assert aws_pair(gw, created["key"]) == {k: created[k] for k in ("aws_access_key_id", "aws_secret_access_key")}
    rotated = admin(gw, "POST", f"/keys/{created['id']}/rotate", {"grace_seconds": 0})
    assert rotated["aws_secret_access_key"] != created["aws_secret_access_key"]
    new = runtime(gw, rotated["key"])
    assert new.converse(modelId="gpt", messages=[user("after")])["stopReason"] == "end_turn"
    with pytest.raises(ClientError) as e:
        old.converse(modelId="gpt", messages=[user("old secret")])
    assert e.value.response["Error"]["Code"] == "InvalidSignatureException"
    admin(gw, "DELETE", f"/keys/{created['id']}")
    with pytest.raises(ClientError) as e:
        new.converse(modelId="gpt", messages=[user("revoked")])
    assert e.value.response["Error"]["Code"] == "UnrecognizedClientException"


@pytest.fixture
def faults(stack: tuple[GatewayThread, dict[str, BackgroundServer]]) -> Iterator[dict[str, BackgroundServer]]:
    yield stack[1]
    for emu in stack[1].values():
        emu.state.faults = None


@pytest.mark.parametrize("model", ["gpt", "bedrock"])
def test_a_stream_that_fails_midway_ends_with_an_exception_event(
        client: Any, faults: dict[str, BackgroundServer], model: str) -> None:
    upstream = "openai" if model == "gpt" else "bedrock"
    # the OpenAI emulator cuts the stream; Bedrock's sends a throttlingException frame (relayed as ours)
    faults[upstream].state.faults = FaultPlan(disconnect_after_chunks=2, status=None if model == "gpt" else 429)
    resp = client.converse_stream(modelId=model, messages=[user("a long answer that will not finish")])
    got: list[str] = []
    with pytest.raises(EventStreamError) as e:
        for event in resp["stream"]:
            got.append(next(iter(event)))
    assert got[0] == "messageStart" and "messageStop" not in got
    assert e.value.response["Error"]["Code"] in ("modelStreamErrorException", "throttlingException")


def test_an_upstream_refusal_before_the_first_byte_is_a_bedrock_error(
        client: Any, faults: dict[str, BackgroundServer]) -> None:
    faults["anthropic"].state.faults = FaultPlan(status=429, retry_after=1)
    with pytest.raises(ClientError) as e:
        client.converse_stream(modelId="claude", messages=[user("throttled")])
    assert e.value.response["Error"]["Code"] == "ThrottlingException"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429


def test_fields_without_a_chat_counterpart_are_named_as_dropped(
        client: Any, stack: tuple[GatewayThread, dict[str, BackgroundServer]]) -> None:
    emu = stack[1]["openai"]
    emu.state.requests.clear()
    resp = client.converse(modelId="gpt", messages=[user("drop")], requestMetadata={"team": "a"},
                           inferenceConfig={"maxTokens": 33, "topP": 0.9, "stopSequences": ["END"]},
                           additionalModelRequestFields={"top_k": 3, "seed": 7})
    assert resp["ResponseMetadata"]["HTTPHeaders"]["x-relaygate-dropped-params"] == \
        "requestMetadata,additionalModelRequestFields.top_k"
    sent = emu.state.requests[-1]["json"]
    assert (sent["max_completion_tokens"], sent["top_p"], sent["stop"], sent["seed"]) == (33, 0.9, ["END"], 7)


def test_a_model_still_loading_upstream_is_modelnotready_for_the_client(
        client: Any, faults: dict[str, BackgroundServer]) -> None:
    faults["bedrock"].state.faults = FaultPlan(status=429, error_code="ModelNotReadyException")
    with pytest.raises(ClientError) as e:
        client.converse(modelId="bedrock", messages=[user("not ready")])
    assert e.value.response["Error"]["Code"] == "ModelNotReadyException"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429


def _presigned(gw: GatewayThread, path: str, body: bytes, signer: Any, expires: int = 60,
               when: datetime.datetime | None = None, key: str = APP_KEY) -> tuple[str, dict[str, str]]:
    """A presigned URL for ``POST path`` made by one of botocore's query-string signers with the key's AWS
    pair, and the headers to send with it."""
    pair = aws_pair(gw, key)
    creds = botocore.credentials.Credentials(pair["aws_access_key_id"], pair["aws_secret_access_key"])
    headers = {"Content-Type": "application/json"}
    if signer is botocore.auth.SigV4QueryAuth:  # it signs the body's hash: given as a header (else it would
        headers["X-Amz-Content-SHA256"] = hashlib.sha256(body).hexdigest()  # move the body into the query)
    request = botocore.awsrequest.AWSRequest(method="POST", url=gw.url + path, headers=headers)
    if when is not None:
        request.context["timestamp"] = when.strftime("%Y%m%dT%H%M%SZ")
        original = botocore.auth.get_current_datetime
        botocore.auth.get_current_datetime = lambda: when
    try:
        signer(creds, "bedrock", "us-east-1", expires=expires).add_auth(request)
    finally:
        if when is not None:
            botocore.auth.get_current_datetime = original
    assert "X-Amz-Signature=" in request.url and "authorization" not in {k.lower() for k in request.headers}
    return request.url, dict(request.headers)


@pytest.mark.parametrize("signer", ["SigV4QueryAuth", "S3SigV4QueryAuth"])
def test_a_presigned_url_is_accepted_within_its_expiry(
        stack: tuple[GatewayThread, dict[str, BackgroundServer]], signer: str) -> None:
    """Query-string SigV4 (X-Amz-Algorithm, -Credential, -Date, -Expires, -SignedHeaders, -Signature): the
    body's hash signed (botocore's SigV4QueryAuth, the hash as x-amz-content-sha256) or UNSIGNED-PAYLOAD
    (S3SigV4QueryAuth: a URL presigned without knowing the body)."""
    gw = stack[0]
    body = orjson.dumps({"messages": [user("presigned hello")]})
    url, headers = _presigned(gw, "/model/gpt/converse", body, getattr(botocore.auth, signer))
    r = httpx.post(url, content=body, headers=headers)
    assert r.status_code == 200, r.text
    assert "presigned hello" in r.json()["output"]["message"]["content"][0]["text"]
    if signer == "SigV4QueryAuth":  # another body than the one signed is refused
        r = httpx.post(url, content=body.replace(b"hello", b"HELLO"), headers=headers)
        assert r.status_code == 403 and r.headers["x-amzn-errortype"].startswith("InvalidSignatureException")


def test_a_presigned_url_that_says_which_payload_it_signed_is_checked_with_that_one_only(
        stack: tuple[GatewayThread, dict[str, BackgroundServer]]) -> None:
    """X-Amz-Content-Sha256 in the (signed) query says what the signature covers: UNSIGNED-PAYLOAD verifies
    such a URL; one that claims the body's hash while UNSIGNED-PAYLOAD was signed is refused (without the
    claim both are tried)."""
    gw = stack[0]
    body = orjson.dumps({"messages": [user("declared")]})
    for declared, status in (("UNSIGNED-PAYLOAD", 200), (hashlib.sha256(body).hexdigest(), 403)):
        url, headers = _presigned(gw, "/model/gpt/converse?X-Amz-Content-Sha256=" + declared, body,
                                  botocore.auth.S3SigV4QueryAuth)
        r = httpx.post(url, content=body, headers=headers)
        assert r.status_code == status, (declared, r.text)


def test_a_presigned_url_is_refused_once_expired_or_tampered_with(
        stack: tuple[GatewayThread, dict[str, BackgroundServer]]) -> None:
    gw = stack[0]
    body = orjson.dumps({"messages": [user("too late")]})
    ago = datetime.datetime.now(datetime.UTC).replace(tzinfo=None) - datetime.timedelta(seconds=120)
    url, headers = _presigned(gw, "/model/gpt/converse", body, botocore.auth.S3SigV4QueryAuth, expires=60, when=ago)
    r = httpx.post(url, content=body, headers=headers)
    assert r.status_code == 403 and r.headers["x-amzn-errortype"].startswith("InvalidSignatureException")
    assert "expired" in r.json()["message"]
    url, headers = _presigned(gw, "/model/gpt/converse", body, botocore.auth.S3SigV4QueryAuth, expires=600, when=ago)
    assert httpx.post(url, content=body, headers=headers).status_code == 200  # the same age, a longer expiry
    r = httpx.post(url.replace("/model/gpt/", "/model/claude/"), content=body, headers=headers)
    assert r.status_code == 403, r.text  # the path is signed
    r = httpx.post(url.replace("X-Amz-Expires=600", "X-Amz-Expires=6000"), content=body, headers=headers)
    assert r.status_code == 403, r.text  # so is the expiry
    r = httpx.post(url.replace("X-Amz-Expires=600", "X-Amz-Expires=999999"), content=body, headers=headers)
    assert r.status_code == 403 and r.headers["x-amzn-errortype"].startswith("AuthorizationQueryParametersError")


def test_a_jamba_answer_carries_an_id_of_its_own_kind_never_the_chat_answers(client: Any) -> None:
    """A translated answer never reuses the id of the answer that served it (issue 26): Jamba's is a uuid."""
    body = FAMILIES["jamba"][0]
    answer = orjson.loads(client.invoke_model(modelId="gpt", body=orjson.dumps(body))["body"].read())
    resp = client.invoke_model_with_response_stream(modelId="gpt", body=orjson.dumps(body))
    ids = {orjson.loads(e["chunk"]["bytes"]).get("id") for e in resp["body"]}
    assert len(ids) == 1
    for id_ in (answer["id"], *ids):
        assert str(uuid.UUID(id_)) == id_, id_
    assert answer["id"] not in ids
