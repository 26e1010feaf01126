"""AWS Signature Version 4 (header auth), written with hmac/hashlib: used to sign and, in the emulator, to verify.

Non-S3 services: path segments are URI-encoded twice (the path we send is encoded once), the body is hashed.
"""

from __future__ import annotations

import hashlib
import hmac
import posixpath
import time
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote, unquote

ALGORITHM = "AWS4-HMAC-SHA256"


@dataclass(frozen=True, slots=True)
class AwsCredentials:
    access_key: str
    secret_key: str
    session_token: str | None = None

    def __repr__(self) -> str:  # never show secrets in logs or tracebacks
        return f"AwsCredentials(access_key={self.access_key[:4]}…)"


def amz_date(now: float | None = None) -> str:
    """``YYYYMMDDTHHMMSSZ`` in UTC."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))


def canonical_uri(raw_path: str) -> str:
    """The path as sent (encoded once), normalized and encoded again."""
    path = raw_path or "/"
    normalized = posixpath.normpath(path)
    if path.endswith("/") and normalized != "/":
        normalized += "/"
    if normalized.startswith("//"):  # normpath keeps a leading double slash
        normalized = normalized[1:]
    return quote(normalized, safe="/~")


def canonical_query(raw_query: str) -> str:
    """Pairs sorted by name then value, each encoded with AWS's unreserved set."""
    if not raw_query:
        return ""
    pairs = []
    for part in raw_query.split("&"):
        if not part:
            continue
        k, _, v = part.partition("=")
        pairs.append((quote(unquote(k), safe="-_.~"), quote(unquote(v), safe="-_.~")))
    return "&".join(f"{k}={v}" for k, v in sorted(pairs))


def canonical_request(method: str, raw_path: str, raw_query: str, headers: Mapping[str, str],
                      signed: list[str], payload_hash: str) -> str:
    """``headers`` maps lower-case names to values; ``signed`` is the sorted list of names signed."""
    lines = "".join(f"{h}:{' '.join(headers.get(h, '').split())}\n" for h in signed)
    return "\n".join((method.upper(), canonical_uri(raw_path), canonical_query(raw_query), lines,
                      ";".join(signed), payload_hash))


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    return _hmac(_hmac(_hmac(_hmac(("AWS4" + secret).encode(), date), region), service), "aws4_request")


def string_to_sign(timestamp: str, scope: str, canonical: str) -> str:
    return f"{ALGORITHM}\n{timestamp}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"


class SigV4Signer:
    """Signs requests of one service in one region with one set of credentials."""

    def __init__(self, credentials: AwsCredentials, region: str, service: str) -> None:
        self.credentials = credentials
        self.region = region
        self.service = service
        self._key: tuple[str, bytes] | None = None  # (date, key): derived once a day, not per request

    def _signing_key(self, date: str) -> bytes:
        cached = self._key
        if cached is not None and cached[0] == date:
            return cached[1]
        key = signing_key(self.credentials.secret_key, date, self.region, self.service)
        self._key = (date, key)
        return key

    def sign(self, method: str, host: str, raw_path: str, body: bytes, headers: dict[str, str],
             raw_query: str = "", now: float | None = None) -> dict[str, str]:
        """``headers`` (lower-case names) plus host, x-amz-date, the session token and authorization."""
        timestamp = amz_date(now)
        date = timestamp[:8]
        out = {**headers, "host": host, "x-amz-date": timestamp}
        if self.credentials.session_token:
            out["x-amz-security-token"] = self.credentials.session_token
        signed = sorted(out)
        canonical = canonical_request(method, raw_path, raw_query, out, signed,
                                      hashlib.sha256(body).hexdigest())
        scope = f"{date}/{self.region}/{self.service}/aws4_request"
        sig = hmac.new(self._signing_key(date), string_to_sign(timestamp, scope, canonical).encode(),
                       hashlib.sha256).hexdigest()
        out["authorization"] = (f"{ALGORITHM} Credential={self.credentials.access_key}/{scope}, "
                                f"SignedHeaders={';'.join(signed)}, Signature={sig}")
        return out
