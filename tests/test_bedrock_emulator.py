"""boto3/botocore as the oracle: the Bedrock emulator's answers, stream framing and errors parse in the SDK,
and relaygate's SigV4 signer and event-stream decoder agree with botocore's."""

from __future__ import annotations

import base64
import datetime
import json
import zlib
from collections.abc import Iterator
from typing import Any

import boto3
import botocore.auth
import botocore.awsrequest
import botocore.credentials
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, EventStreamError

from relaygate.providers.aws import eventstream as es
from relaygate.providers.aws.sigv4 import AwsCredentials, SigV4Signer
from relaygate.testing.base import BackgroundServer, FaultPlan
from relaygate.testing.bedrock import TEST_ACCESS_KEY, TEST_SECRET_KEY, BedrockEmulatorOptions, create_app

from .bedrock_helpers import MODEL_ID, REGION

USER = [{"role": "user", "content": [{"text": "hello there"}]}]
TOOL_CONFIG = {"tools": [{"toolSpec": {"name": "lookup", "inputSchema": {"json": {
    "type": "object", "properties": {"q": {"type": "string"}, "n": {"type": "integer"}}, "required": ["q", "n"]}}}}]}


@pytest.fixture(scope="module")
def emu() -> Iterator[BackgroundServer]:
    opts = BedrockEmulatorOptions(credentials={TEST_ACCESS_KEY: TEST_SECRET_KEY, "AKIATEMPORARY0000001": "tmp"},
                                  session_tokens={"AKIATEMPORARY0000001": "session-token-1"})
    with BackgroundServer(create_app(opts)) as srv:
        yield srv


@pytest.fixture(autouse=True)
def clean(emu: BackgroundServer) -> None:
    emu.state.faults = None


def client(emu: BackgroundServer, service: str = "bedrock-runtime", **creds: Any) -> Any:
    creds = creds or {"aws_access_key_id": TEST_ACCESS_KEY, "aws_secret_access_key": TEST_SECRET_KEY}
    return boto3.client(service, endpoint_url=emu.url, region_name=REGION,
                        config=Config(retries={"total_max_attempts": 1, "mode": "standard"}), **creds)


def test_converse_parses_text_usage_and_metrics(emu: BackgroundServer) -> None:
    r = client(emu).converse(modelId=MODEL_ID, messages=USER, system=[{"text": "sys"}],
                             inferenceConfig={"maxTokens": 100})
    assert r["output"]["message"] == {"role": "assistant",
                                      "content": [{"text": "Hello! You said: hello there [system: sys]"}]}
    assert r["stopReason"] == "end_turn" and r["metrics"]["latencyMs"] >= 0
    assert r["usage"]["totalTokens"] == r["usage"]["inputTokens"] + r["usage"]["outputTokens"]


def test_converse_calls_the_first_tool_then_reads_its_result(emu: BackgroundServer) -> None:
    c = client(emu)
    r = c.converse(modelId=MODEL_ID, messages=USER, toolConfig=TOOL_CONFIG)
    assert r["stopReason"] == "tool_use"
    use = r["output"]["message"]["content"][1]["toolUse"]
    assert use["name"] == "lookup" and use["input"] == {"q": "hello there", "n": 1}
    follow = c.converse(modelId=MODEL_ID, toolConfig=TOOL_CONFIG, messages=USER + [
        r["output"]["message"],
        {"role": "user", "content": [{"toolResult": {"toolUseId": use["toolUseId"], "content": [{"json": {"t": 1}}]}}]}])
    assert follow["output"]["message"]["content"] == [{"text": 'The tool returned: [{"json":{"t":1}}]'}]


def test_converse_accepts_image_bytes(emu: BackgroundServer) -> None:
    r = client(emu).converse(modelId=MODEL_ID, messages=[{"role": "user", "content": [
        {"text": "see"}, {"image": {"format": "jpeg", "source": {"bytes": b"\xff\xd8\xff\xe0"}}}]}])
    assert r["output"]["message"]["content"][0]["text"] == "Hello! You said: see (I see 1 image)"


def test_converse_stream_frames_parse_in_botocore(emu: BackgroundServer) -> None:
    r = client(emu).converse_stream(modelId=MODEL_ID, messages=USER, toolConfig=TOOL_CONFIG)
    events = list(r["stream"])
    kinds = [next(iter(e)) for e in events]
    assert kinds[0] == "messageStart" and kinds[-2:] == ["messageStop", "metadata"]
    start = next(e["contentBlockStart"] for e in events if "contentBlockStart" in e)
    assert start["contentBlockIndex"] == 1 and start["start"]["toolUse"]["name"] == "lookup"
    args = "".join(e["contentBlockDelta"]["delta"]["toolUse"]["input"] for e in events
                   if "toolUse" in e.get("contentBlockDelta", {}).get("delta", {}))
    assert json.loads(args) == {"q": "hello there", "n": 1}
    assert events[-2]["messageStop"]["stopReason"] == "tool_use"
    assert events[-1]["metadata"]["usage"]["outputTokens"] > 0


@pytest.mark.parametrize("status,code,error", [
    (429, None, "ThrottlingException"), (400, None, "ValidationException"), (403, None, "AccessDeniedException"),
    (503, None, "ServiceUnavailableException"), (408, None, "ModelTimeoutException"),
    (429, "ModelNotReadyException", "ModelNotReadyException"), (500, None, "InternalServerException"),
    (424, None, "ModelErrorException"),
])
def test_errors_are_the_modelled_exceptions(emu: BackgroundServer, status: int, code: str | None,
                                            error: str) -> None:
    emu.state.faults = FaultPlan(status=status, error_code=code, count=1)
    c = client(emu)
    with pytest.raises(getattr(c.exceptions, error)) as e:
        c.converse(modelId=MODEL_ID, messages=USER)
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
    assert e.value.response["Error"]["Message"]


def test_exception_frame_raises_event_stream_error(emu: BackgroundServer) -> None:
    emu.state.faults = FaultPlan(status=429, disconnect_after_chunks=2, count=1)
    got = []
    with pytest.raises(EventStreamError) as e:
        for ev in client(emu).converse_stream(modelId=MODEL_ID, messages=USER)["stream"]:
            got.append(ev)
    assert len(got) == 2 and e.value.response["Error"]["Code"] == "throttlingException"


def test_validation_errors_match_bedrock(emu: BackgroundServer) -> None:
    c = client(emu)
    with pytest.raises(c.exceptions.ValidationException, match="must start with a user message"):
        c.converse(modelId=MODEL_ID, messages=[{"role": "assistant", "content": [{"text": "x"}]}])
    with pytest.raises(c.exceptions.ValidationException, match="toolConfig field must be defined"):
        c.converse(modelId=MODEL_ID, messages=[
            {"role": "user", "content": [{"text": "x"}]},
            {"role": "assistant", "content": [{"toolUse": {"toolUseId": "t1", "name": "f", "input": {}}}]},
            {"role": "user", "content": [{"toolResult": {"toolUseId": "t1", "content": [{"text": "r"}]}}]}])
    with pytest.raises(c.exceptions.ValidationException, match="Input is too long"):
        c.converse(modelId=MODEL_ID, messages=[{"role": "user", "content": [{"text": "w " * 200_001}]}])


def test_signature_is_verified(emu: BackgroundServer) -> None:
    bad = client(emu, aws_access_key_id=TEST_ACCESS_KEY, aws_secret_access_key="wrong")
    with pytest.raises(ClientError) as e:
        bad.converse(modelId=MODEL_ID, messages=USER)
    assert e.value.response["Error"]["Code"] == "InvalidSignatureException"
    unknown = client(emu, aws_access_key_id="AKIAUNKNOWN000000000", aws_secret_access_key="x")
    with pytest.raises(ClientError) as e:
        unknown.converse(modelId=MODEL_ID, messages=USER)
    assert e.value.response["Error"]["Code"] == "UnrecognizedClientException"
    temp = client(emu, aws_access_key_id="AKIATEMPORARY0000001", aws_secret_access_key="tmp",
                  aws_session_token="session-token-1")
    assert temp.converse(modelId=MODEL_ID, messages=USER)["stopReason"] == "end_turn"


def test_count_tokens(emu: BackgroundServer) -> None:
    r = client(emu).count_tokens(modelId=MODEL_ID, input={"converse": {"messages": USER}})
    assert r["inputTokens"] == 6


def test_invoke_model_titan_embeddings(emu: BackgroundServer) -> None:
    r = client(emu).invoke_model(modelId="amazon.titan-embed-text-v2:0",
                                 body=json.dumps({"inputText": "two words", "dimensions": 512}))
    data = json.loads(r["body"].read())
    assert len(data["embedding"]) == 512 and data["inputTextTokenCount"] == 2
    assert abs(sum(v * v for v in data["embedding"]) - 1) < 1e-9  # normalized by default


def test_invoke_agent_chunks_and_session(emu: BackgroundServer) -> None:
    agent = client(emu, "bedrock-agent-runtime")
    for turn in (1, 2):
        r = agent.invoke_agent(agentId="A1", agentAliasId="TSTALIASID", sessionId="sess-1", inputText="ça va?",
                               streamingConfigurations={"streamFinalResponse": turn == 2})
        assert r["sessionId"] == "sess-1"
        chunks = [e["chunk"]["bytes"] for e in r["completion"]]
        assert len(chunks) == (1 if turn == 1 else 3)
        assert b"".join(chunks).decode() == f"Agent A1 answered: ça va? [session turn {turn}]"


# ---- relaygate's own AWS pieces against botocore ------------------------------------------------------------

@pytest.mark.parametrize("token", [None, "session-token-xyz"])
def test_sigv4_signer_matches_botocore(monkeypatch: pytest.MonkeyPatch, token: str | None) -> None:
    fixed = datetime.datetime(2026, 1, 2, 3, 4, 5)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: fixed)
    body = b'{"messages": []}'
    path = "/model/anthropic.claude-3%3A0/converse-stream"
    request = botocore.awsrequest.AWSRequest(method="POST", url=f"https://bedrock-runtime.{REGION}.amazonaws.com"
                                             f"{path}", data=body,
                                             headers={"Content-Type": "application/json", "Accept": "x/y"})
    creds = botocore.credentials.Credentials(TEST_ACCESS_KEY, TEST_SECRET_KEY, token)
    botocore.auth.SigV4Auth(creds, "bedrock", REGION).add_auth(request)
    ours = SigV4Signer(AwsCredentials(TEST_ACCESS_KEY, TEST_SECRET_KEY, token), REGION, "bedrock").sign(
        "POST", f"bedrock-runtime.{REGION}.amazonaws.com", path, body,
        {"content-type": "application/json", "accept": "x/y"},
        now=fixed.replace(tzinfo=datetime.UTC).timestamp())
    assert ours["authorization"] == request.headers["Authorization"]
    assert ours["x-amz-date"] == request.headers["X-Amz-Date"]


def test_one_signer_signs_every_request_as_botocore_does_across_days_bodies_and_paths(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The signer keeps what does not change (the day's key, the canonical request around the date and the
    payload hash, the encoded headers): each later request, another body, path, accept or day, must still
    be signed as botocore signs it."""
    ours = SigV4Signer(AwsCredentials(TEST_ACCESS_KEY, TEST_SECRET_KEY, "tok"), REGION, "bedrock")
    host = f"bedrock-runtime.{REGION}.amazonaws.com"
    cases = [(datetime.datetime(2026, 1, 2, 23, 59, 59), "/model/m/converse", b'{"a": 1}', "application/json"),
             (datetime.datetime(2026, 1, 2, 23, 59, 59), "/model/m/converse", b'{"b": 2}', "application/json"),
             (datetime.datetime(2026, 1, 3, 0, 0, 1), "/model/m/converse", b'{"b": 2}', "application/json"),
             (datetime.datetime(2026, 1, 3, 0, 0, 2), "/model/m%3A1/converse-stream", b"{}", es.EVENTSTREAM)]
    for when, path, body, accept in cases:
        monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda when=when: when)
        request = botocore.awsrequest.AWSRequest(method="POST", url=f"https://{host}{path}", data=body,
                                                 headers={"Content-Type": "application/json", "Accept": accept})
        botocore.auth.SigV4Auth(botocore.credentials.Credentials(TEST_ACCESS_KEY, TEST_SECRET_KEY, "tok"),
                                "bedrock", REGION).add_auth(request)
        at = when.replace(tzinfo=datetime.UTC).timestamp()
        fixed = {"content-type": "application/json", "accept": accept}
        signed = ours.sign("POST", host, path, body, fixed, now=at)
        assert signed["authorization"] == request.headers["Authorization"]
        encoded = ours.sign_encoded("POST", host, path, body, fixed, now=at)
        assert not isinstance(encoded, dict)
        assert f"authorization: {signed['authorization']}\r\n".encode() in encoded.block
        assert b"x-amz-security-token: tok\r\n" in encoded.block and b"host: " + host.encode() in encoded.block


def test_event_stream_decoder_agrees_with_botocore_byte_by_byte() -> None:
    from botocore.eventstream import EventStreamBuffer

    frames = es.event("contentBlockDelta", b'{"delta":{"text":"h\xc3\xa9"}}') + es.exception(
        "throttlingException", b'{"message":"slow down"}')
    decoder = es.EventStreamDecoder()
    ours = [m for i in range(len(frames)) for m in decoder.feed(frames[i:i + 1])]
    buf = EventStreamBuffer()
    buf.add_data(frames)
    theirs = list(buf)
    assert [(m.headers, m.payload) for m in ours] == [(m.headers, m.payload) for m in theirs]
    assert ours[1].message_type == "exception" and decoder.pending == 0


def test_event_stream_decoder_rejects_corruption() -> None:
    frame = bytearray(es.event("messageStart", b'{"role":"assistant"}'))
    frame[-6] ^= 1  # payload byte: message CRC fails
    with pytest.raises(es.EventStreamError, match="message CRC"):
        es.EventStreamDecoder().feed(bytes(frame))
    frame = bytearray(es.event("messageStart", b"{}"))
    frame[3] ^= 1  # total length: prelude CRC fails
    with pytest.raises(es.EventStreamError, match="prelude CRC"):
        es.EventStreamDecoder().feed(bytes(frame))
    half = es.event("messageStart", b"{}")[:20]
    decoder = es.EventStreamDecoder()
    assert decoder.feed(half) == [] and decoder.pending == 20


def test_event_stream_decoder_reads_every_header_type() -> None:
    def header(name: str, kind: int, value: bytes) -> bytes:
        return bytes((len(name),)) + name.encode() + bytes((kind,)) + value

    import struct

    hb = (header("t", 0, b"") + header("f", 1, b"") + header("b", 2, b"\x05") + header("s", 3, b"\x00\x07")
          + header("i", 4, struct.pack(">i", -3)) + header("l", 5, struct.pack(">q", 2**40))
          + header("y", 6, b"\x00\x02ab") + header("ts", 8, struct.pack(">q", 1700000000000))
          + header("u", 9, b"\x01" * 16))
    total = 12 + len(hb) + 4
    prelude = struct.pack(">II", total, len(hb))
    msg = prelude + struct.pack(">I", zlib.crc32(prelude)) + hb
    msg += struct.pack(">I", zlib.crc32(msg))
    (m,) = es.EventStreamDecoder().feed(msg)
    assert m.headers == {"t": True, "f": False, "b": 5, "s": 7, "i": -3, "l": 2**40, "y": b"ab",
                         "ts": 1700000000000, "u": b"\x01" * 16}
    assert m.payload == b"" and base64  # noqa: B018


def test_container_credentials_endpoint_satisfies_botocore(emu: BackgroundServer) -> None:
    from botocore.credentials import ContainerProvider

    env = {"AWS_CONTAINER_CREDENTIALS_FULL_URI": emu.url + "/_aws/container-credentials",
           "AWS_CONTAINER_AUTHORIZATION_TOKEN": "container-auth-token"}
    creds = ContainerProvider(environ=env).load()
    assert creds is not None and creds.access_key.startswith("ASIA")
    frozen = creds.get_frozen_credentials()
    r = client(emu, aws_access_key_id=frozen.access_key, aws_secret_access_key=frozen.secret_key,
               aws_session_token=frozen.token).converse(modelId=MODEL_ID, messages=USER)
    assert r["stopReason"] == "end_turn"


def test_sts_web_identity_answers_parse_in_boto3(emu: BackgroundServer) -> None:
    sts = boto3.client("sts", endpoint_url=emu.url, region_name=REGION, aws_access_key_id="x",
                       aws_secret_access_key="y")
    r = sts.assume_role_with_web_identity(RoleArn="arn:aws:iam::000000000000:role/r", RoleSessionName="sess",
                                          WebIdentityToken="eyJ-web-identity-token")
    assert r["Credentials"]["AccessKeyId"].startswith("ASIA") and r["Credentials"]["Expiration"].year >= 2026
    with pytest.raises(ClientError) as e:
        sts.assume_role_with_web_identity(RoleArn="arn:aws:iam::000000000000:role/r", RoleSessionName="sess",
                                          WebIdentityToken="wrong")
    assert e.value.response["Error"]["Code"] == "InvalidIdentityToken"


def test_instance_metadata_service_satisfies_botocore(emu: BackgroundServer) -> None:
    from botocore.utils import InstanceMetadataFetcher

    fetcher = InstanceMetadataFetcher(timeout=2, num_attempts=1, env={},
                                      config={"ec2_metadata_service_endpoint": emu.url + "/"})
    creds = fetcher.retrieve_iam_role_credentials()
    assert creds["role_name"] == "emulated-instance-role" and creds["access_key"].startswith("ASIAINSTANCE")
    r = client(emu, aws_access_key_id=creds["access_key"], aws_secret_access_key=creds["secret_key"],
               aws_session_token=creds["token"]).converse(modelId=MODEL_ID, messages=USER)
    assert r["stopReason"] == "end_turn"
