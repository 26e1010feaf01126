"""Shared by the Bedrock tests: config entries for the emulator, and botocore's check of recorded requests."""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import unquote

import botocore.session
import orjson
from botocore.model import Shape
from botocore.serialize import create_serializer
from botocore.validate import ParamValidator

from relaygate.testing.base import BackgroundServer
from relaygate.testing.bedrock import TEST_ACCESS_KEY, TEST_SECRET_KEY

MODEL_ID = "anthropic.claude-3-5-sonnet-20240620-v1:0"
REGION = "us-east-1"


def bedrock_deployment(emu: BackgroundServer, **extra: Any) -> dict[str, Any]:
    return {"provider": "bedrock", "model": MODEL_ID, "api_base": emu.url, "region": REGION,
            "aws_access_key_id": TEST_ACCESS_KEY, "aws_secret_access_key": TEST_SECRET_KEY, "timeout": 10,
            **extra}


def _blobs_to_bytes(shape: Shape, value: Any) -> Any:
    """JSON carries blobs as base64; botocore's validator wants bytes."""
    if shape.type_name == "blob" and isinstance(value, str):
        return base64.b64decode(value)
    if shape.type_name == "structure" and isinstance(value, dict):
        members = shape.members
        return {k: _blobs_to_bytes(members[k], v) if k in members else v for k, v in value.items()}
    if shape.type_name == "list" and isinstance(value, list):
        return [_blobs_to_bytes(shape.member, v) for v in value]
    if shape.type_name == "map" and isinstance(value, dict):
        return {k: _blobs_to_bytes(shape.value, v) for k, v in value.items()}
    return value


def botocore_request(service: str, operation: str, params: dict[str, Any]) -> dict[str, Any]:
    """botocore's validation and serialization of ``params`` (raises when the input shape refuses them)."""
    op = botocore.session.get_session().get_service_model(service).operation_model(operation)
    report = ParamValidator().validate(params, op.input_shape)
    assert not report.has_errors(), report.generate_report()
    request: dict[str, Any] = create_serializer("rest-json").serialize_to_request(params, op)
    return request


def assert_botocore_accepts(service: str, operation: str, recorded: dict[str, Any], **uri: str) -> None:
    """The JSON relaygate sent validates against botocore's input shape and re-serializes to the same JSON,
    for the same path."""
    op = botocore.session.get_session().get_service_model(service).operation_model(operation)
    params = {**_blobs_to_bytes(op.input_shape, recorded["json"]), **uri}
    serialized = botocore_request(service, operation, params)
    assert orjson.loads(serialized["body"]) == recorded["json"]
    assert unquote(serialized["url_path"]) == recorded["path"]


def sent(emu: BackgroundServer, action: str = "converse") -> list[dict[str, Any]]:
    """What the emulator received on ``/…/{action}``, in order."""
    return [r for r in emu.state.requests if r["path"].endswith("/" + action)]
