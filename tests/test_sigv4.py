"""SigV4 verification (providers/aws/sigv4.py) against botocore's signer: the canonical request's fixed parts
are kept per kind of request, and a request differing in any signed part is never verified by another's."""

from __future__ import annotations

import time

import botocore.auth
import botocore.awsrequest
import botocore.credentials
import pytest

from relaygate.providers.aws.sigv4 import SignatureError, parse_authorization, verify

SECRET = "s" * 40
URL = "http://gw.example/model/anthropic.claude-3-5-haiku-20241022-v1%3A0/converse"


def signed(body: bytes, headers: dict[str, str], url: str = URL) -> dict[str, str]:
    req = botocore.awsrequest.AWSRequest(method="POST", url=url, data=body, headers=headers)
    botocore.auth.SigV4Auth(botocore.credentials.Credentials("key_a", SECRET), "bedrock", "us-east-1").add_auth(req)
    return {k.lower(): v for k, v in req.headers.items()} | {"host": "gw.example"}


def check(headers: dict[str, str], body: bytes, path: str = URL.split("gw.example")[1]) -> int:
    return verify(parse_authorization(headers["authorization"]), [SECRET], "bedrock", "POST", path, "", headers,
                  body, now=time.time())


def test_requests_of_one_kind_verify_each_with_its_own_date_and_body() -> None:
    for i in range(3):
        body = b'{"messages": [%d]}' % i
        assert check(signed(body, {"content-type": "application/json"}), body) == 0


@pytest.mark.parametrize("part", ["header", "path", "body", "date"])
def test_a_signed_part_changed_after_signing_is_refused_even_when_its_kind_was_verified(part: str) -> None:
    body = b'{"messages": []}'
    headers = signed(body, {"content-type": "application/json", "x-custom": "one"})
    assert check(headers, body) == 0  # the kind is known now
    path = URL.split("gw.example")[1]
    if part == "header":
        headers = {**headers, "x-custom": "two"}
    elif part == "path":
        path = path.replace("converse", "converse-stream")
    elif part == "body":
        body = b'{"messages": [1]}'
    else:
        headers = {**headers, "x-amz-date": time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() - 2))}
    with pytest.raises(SignatureError) as e:
        check(headers, body, path)
    assert e.value.error_type == "InvalidSignatureException"


def test_a_signature_over_headers_without_host_is_refused_whether_or_not_its_kind_is_known() -> None:
    body = b"{}"
    headers = signed(body, {"content-type": "application/json"})
    auth = headers["authorization"].replace("SignedHeaders=content-type;host;x-amz-date",
                                            "SignedHeaders=content-type;x-amz-date")
    for _ in range(2):
        with pytest.raises(SignatureError, match="Host"):
            check({**headers, "authorization": auth}, body)


def test_a_signed_header_left_out_of_the_request_is_a_mismatch_not_an_error() -> None:
    body = b"{}"
    headers = signed(body, {"content-type": "application/json", "x-custom": "one"})
    assert check(headers, body) == 0
    with pytest.raises(SignatureError) as e:
        check({k: v for k, v in headers.items() if k != "x-custom"}, body)
    assert e.value.error_type == "InvalidSignatureException"


@pytest.mark.parametrize("signature", ["G" * 64, "A" * 64, "a" * 63, "a" * 65, "a" * 63 + "\n"])
def test_an_authorization_header_read_before_is_still_refused_with_a_malformed_signature(signature: str) -> None:
    body = b"{}"
    header = signed(body, {"content-type": "application/json"})["authorization"]
    assert parse_authorization(header) == parse_authorization(header)  # the second read from what the first kept
    with pytest.raises(SignatureError) as e:
        parse_authorization(header[:-64] + signature)
    assert e.value.error_type == "IncompleteSignatureException"
