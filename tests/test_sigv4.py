"""SigV4 verification (providers/aws/sigv4.py) against botocore's signer: the canonical request's fixed parts
are kept per kind of request, and a request differing in any signed part is never verified by another's."""

from __future__ import annotations

import datetime
import time

import botocore.auth
import botocore.awsrequest
import botocore.credentials
import pytest

from relaygate.providers.aws.sigv4 import (
    AwsCredentials,
    SignatureError,
    SigV4Signer,
    parse_authorization,
    verify,
)

SECRET = "s" * 40
URL = "http://gw.example/model/anthropic.claude-3-5-haiku-20241022-v1%3A0/converse"


def signed(body: bytes, headers: dict[str, str], url: str = URL, secret: str = SECRET) -> dict[str, str]:
    req = botocore.awsrequest.AWSRequest(method="POST", url=url, data=body, headers=headers)
    botocore.auth.SigV4Auth(botocore.credentials.Credentials("key_a", secret), "bedrock", "us-east-1").add_auth(req)
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


# one kind of request in the seconds t, t, t + 1, t: the state kept for a kind's last x-amz-date (and the HMAC's
# for the last string to sign's head) must follow the date back and forth, never serve another second's
_SECONDS = (0, 0, 1, 0)


def test_one_kind_signed_in_seconds_back_and_forth_is_signed_as_botocore_signs(monkeypatch: pytest.MonkeyPatch) -> None:
    start = datetime.datetime.now(datetime.UTC).replace(microsecond=0, tzinfo=None)
    ours = SigV4Signer(AwsCredentials("key_a", SECRET), "us-east-1", "bedrock")
    fixed = {"content-type": "application/json"}
    for i, second in enumerate(_SECONDS):
        when = start + datetime.timedelta(seconds=second)
        monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda when=when: when)
        body = b'{"messages": [%d]}' % i
        theirs = signed(body, dict(fixed))
        mine = ours.sign("POST", "gw.example", URL.split("gw.example")[1], body, fixed,
                         now=when.replace(tzinfo=datetime.UTC).timestamp())
        assert (mine["x-amz-date"], mine["authorization"]) == (theirs["x-amz-date"], theirs["authorization"])


def test_one_kind_verified_in_seconds_back_and_forth_with_either_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    start = datetime.datetime.now(datetime.UTC).replace(microsecond=0, tzinfo=None)
    old = "o" * 40
    for i, second in enumerate(_SECONDS * 2):
        when = start + datetime.timedelta(seconds=second)
        monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda when=when: when)
        body = b'{"messages": [%d]}' % i
        headers = signed(body, {"content-type": "application/json"}, secret=(SECRET, old)[i % 2])
        assert verify(parse_authorization(headers["authorization"]), [SECRET, old], "bedrock", "POST",
                      URL.split("gw.example")[1], "", headers, body, now=time.time()) == i % 2
        with pytest.raises(SignatureError) as e:  # the other second's date on the same signature
            other = (start + datetime.timedelta(seconds=1 - second)).strftime("%Y%m%dT%H%M%SZ")
            verify(parse_authorization(headers["authorization"]), [SECRET, old], "bedrock", "POST",
                   URL.split("gw.example")[1], "", {**headers, "x-amz-date": other}, body, now=time.time())
        assert e.value.error_type == "InvalidSignatureException"
