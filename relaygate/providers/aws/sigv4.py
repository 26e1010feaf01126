"""AWS Signature Version 4 (header auth), written with hmac/hashlib: used to sign and, in the emulator, to verify.

Non-S3 services: path segments are URI-encoded twice (the path we send is encoded once), the body is hashed.
"""

from __future__ import annotations

import calendar
import functools
import hashlib
import hmac
import posixpath
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, NamedTuple
from urllib.parse import quote, unquote

from relaygate.upstream.http11 import EncodedHeaders

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


@functools.lru_cache(maxsize=1024)  # a pure function of a few paths per deployment: quote() costs ~20 µs a call
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


_IPAD = bytes(b ^ 0x36 for b in range(256))  # HMAC's paddings (RFC 2104), as translation tables
_OPAD = bytes(b ^ 0x5C for b in range(256))


@dataclass(frozen=True, slots=True)
class HmacKey:
    """HMAC-SHA256 with one key, its two padded key blocks hashed once: a MAC then copies the states and hashes
    only its message (OpenSSL's one-shot HMAC, ``hmac.digest``, costs about twice as much: it sets both up anew).
    The states are only ever copied, never updated, so one instance serves any number of MACs at once."""

    key: bytes
    inner: Any
    outer: Any

    @classmethod
    def of(cls, key: bytes) -> HmacKey:
        assert len(key) <= 64  # a SigV4 signing key is 32 bytes: never hashed down first
        block = key.ljust(64, b"\0")
        return cls(key, hashlib.sha256(block.translate(_IPAD)), hashlib.sha256(block.translate(_OPAD)))


@functools.lru_cache(maxsize=256)  # the same all day for a key, a region and a service: four HMACs spared a request
def _verifying_key(secret: str, date: str, region: str, service: str) -> HmacKey:
    return HmacKey.of(signing_key(secret, date, region, service))


@functools.lru_cache(maxsize=64)  # a client's x-amz-date: the same for every request it signs within a second
def _epoch(stamp: str) -> int:
    """Seconds since the epoch of an ``x-amz-date`` (``YYYYMMDDTHHMMSSZ``); ValueError when it is not one."""
    return calendar.timegm(time.strptime(stamp, "%Y%m%dT%H%M%SZ"))


def payload_sha256(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


@dataclass(slots=True)
class _Canonical:
    """What signing one kind of request (method, path, query, headers) repeats: the canonical request around
    its two varying parts (the x-amz-date line and the payload hash), the part before them already hashed
    (its whole 64-byte blocks are not hashed again), and the headers sent. Only ``dated`` ever changes."""

    source: dict[str, str]  # the headers it was made for (held: the memo is keyed by their identity)
    head: Any  # the SHA-256 state of the canonical request up to the x-amz-date header's value (copied per use)
    tail: str  # after it, up to the payload hash
    signed: str  # the signed header names, ;-joined
    headers: dict[str, str]  # the headers sent besides x-amz-date and authorization
    encoded: EncodedHeaders | None  # the same, checked and encoded once (None: not sendable as they are)
    # what this kind's signatures share in the second of the last one (replaced whole, never updated)
    dated: _Dated | None = None


class _Dated(NamedTuple):
    """What the signatures of one kind of request made within one second share besides ``_Tick``'s."""

    second: int
    canonical: Any  # the canonical request's SHA-256 state up to the payload hash (a block fewer per request)
    timestamp: str  # x-amz-date
    authorization: str  # the Authorization header up to the signature's value
    lines: str  # the x-amz-date and Authorization header lines up to the signature's value


class _Tick(NamedTuple):
    """What the signatures made within one second share (``SigV4Signer._tick_at``)."""

    second: int
    timestamp: str  # x-amz-date
    inner: Any  # the HMAC's inner SHA-256 state (day's key) over the string to sign up to the canonical hash
    outer: Any  # the HMAC's outer state (``HmacKey.outer`` of the day's key)
    authorization: str  # the Authorization header up to the signed headers' names


class SigV4Signer:
    """Signs requests of one service in one region with one set of credentials.

    What does not change from one request to the next is computed once: the signing key (once a day), the
    HMAC state keyed with it (so a signature hashes only the string to sign, not the key's two padding
    blocks again), the canonical request around the date and the payload hash for each kind of request,
    and the headers' encoding. A signature then costs the payload's SHA-256, the canonical request's and
    one HMAC."""

    _MAX_KINDS = 64  # kinds of request memoized (a deployment sends a handful: its paths and accept types)

    def __init__(self, credentials: AwsCredentials, region: str, service: str) -> None:
        self.credentials = credentials
        self.region = region
        self.service = service
        self._key: tuple[str, HmacKey] | None = None  # (date, the HMAC keyed with that day's key): once a day
        self._tick = _Tick(-1, "", None, None, "")  # what a signature made in this second repeats
        self._kinds: dict[tuple[Any, ...], _Canonical] = {}
        self._scope_tail = f"/{region}/{service}/aws4_request"
        self._plain = credentials.access_key.isascii() and not any(c in credentials.access_key for c in "\r\n\0")

    def _keyed(self, date: str) -> HmacKey:
        cached = self._key
        if cached is not None and cached[0] == date:
            return cached[1]
        keyed = HmacKey.of(signing_key(self.credentials.secret_key, date, self.region, self.service))
        self._key = (date, keyed)
        return keyed

    def _canonical(self, method: str, host: str, raw_path: str, raw_query: str,
                   headers: dict[str, str]) -> _Canonical:
        # by the headers' identity (a provider passes the same mapping each time) and checked to be them: a
        # memo entry holds its mapping, so no other can take its id while it is there
        kind = (method, host, raw_path, raw_query, id(headers))
        found = self._kinds.get(kind)
        if found is not None and found.source is headers:
            return found
        sent = {**headers, "host": host}
        sent.pop("x-amz-date", None)
        sent.pop("authorization", None)
        if self.credentials.session_token:
            sent["x-amz-security-token"] = self.credentials.session_token
        names = sorted([*sent, "x-amz-date"])
        at = names.index("x-amz-date")
        lines = [f"{h}:{' '.join(sent[h].split())}\n" for h in names[:at]]
        after = "".join(f"{h}:{' '.join(sent[h].split())}\n" for h in names[at + 1:])
        signed = ";".join(names)
        try:
            encoded: EncodedHeaders | None = EncodedHeaders(sent) if self._plain else None
        except ValueError:  # sent as a mapping: the client refuses it with its own error
            encoded = None
        head = f"{method.upper()}\n{canonical_uri(raw_path)}\n{canonical_query(raw_query)}\n{''.join(lines)}x-amz-date:"
        found = _Canonical(headers, hashlib.sha256(head.encode()), f"\n{after}\n{signed}\n", signed, sent, encoded)
        if len(self._kinds) >= self._MAX_KINDS:
            self._kinds.clear()
        self._kinds[kind] = found
        return found

    def _tick_at(self, t: float) -> _Tick:
        """What every signature made in the second of ``t`` repeats: its x-amz-date, the day's HMAC inner state
        having hashed the string to sign's head (algorithm, date, scope: its first block is not hashed again per
        signature) and its outer state, the authorization's head."""
        timestamp = amz_date(t)
        scope = timestamp[:8] + self._scope_tail
        key = self._keyed(timestamp[:8])
        inner = key.inner.copy()
        inner.update(f"{ALGORITHM}\n{timestamp}\n{scope}\n".encode())
        tick = self._tick = _Tick(int(t), timestamp, inner, key.outer,
                                  f"{ALGORITHM} Credential={self.credentials.access_key}/{scope}, SignedHeaders=")
        return tick

    def _signature(self, c: _Canonical, body: bytes, now: float | None, body_sha256: str | None) -> tuple[_Dated, str]:
        """What the signatures of kind ``c`` share this second, and the signature (hex) of the request of that
        kind with ``body`` (whose SHA-256, when known)."""
        t = time.time() if now is None else now
        tick = self._tick
        if tick.second != int(t):
            tick = self._tick_at(t)
        dated = c.dated
        if dated is None or dated.second != tick.second:
            state = c.head.copy()
            state.update(f"{tick.timestamp}{c.tail}".encode())
            authorization = f"{tick.authorization}{c.signed}, Signature="
            c.dated = dated = _Dated(tick.second, state, tick.timestamp, authorization,
                                     f"x-amz-date: {tick.timestamp}\r\nauthorization: {authorization}")
        canonical = dated.canonical.copy()
        canonical.update((body_sha256 or hashlib.sha256(body).hexdigest()).encode())
        mac = tick.inner.copy()  # the HMAC (as _signer's), written out: the hottest lines of a signature
        mac.update(canonical.hexdigest().encode())
        sig = tick.outer.copy()
        sig.update(mac.digest())
        return dated, sig.hexdigest()

    def sign(self, method: str, host: str, raw_path: str, body: bytes, headers: dict[str, str],
             raw_query: str = "", now: float | None = None, body_sha256: str | None = None) -> dict[str, str]:
        """``headers`` (lower-case names) plus host, x-amz-date, the session token and authorization. What is
        made of ``headers`` is kept for the next request passing the same mapping: it must not change after.
        ``body_sha256``: the body's SHA-256 (hex) when it is known already (not hashed again)."""
        c = self._canonical(method, host, raw_path, raw_query, headers)
        dated, signature = self._signature(c, body, now, body_sha256)
        return {**c.headers, "x-amz-date": dated.timestamp, "authorization": dated.authorization + signature}

    def sign_encoded(self, method: str, host: str, raw_path: str, body: bytes, headers: dict[str, str],
                     raw_query: str = "", now: float | None = None,
                     body_sha256: str | None = None) -> EncodedHeaders | dict[str, str]:
        """``sign``'s headers, encoded for the upstream client: the fixed ones were encoded once, only the
        date and the signature are added (a mapping when the fixed ones cannot be sent as they are)."""
        c = self._canonical(method, host, raw_path, raw_query, headers)
        dated, signature = self._signature(c, body, now, body_sha256)
        if c.encoded is None:
            return {**c.headers, "x-amz-date": dated.timestamp, "authorization": dated.authorization + signature}
        return c.encoded.plus(dated.lines + signature + "\r\n")


# ---- verification (relaygate's Bedrock ingress, and the emulator) -------------------------------------

_AUTHORIZATION = re.compile(r"^AWS4-HMAC-SHA256 Credential=([^/,\s]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request,\s*"
                            r"SignedHeaders=([a-z0-9;\-]+),\s*Signature=([0-9a-f]{64})$")


class SignatureError(ValueError):
    """A request whose signature is refused: ``error_type`` is the AWS error it answers with (all 403)."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message


class SignedBy(NamedTuple):
    """What a SigV4 ``Authorization`` header claims: who signed, for which scope, over which headers (a named
    tuple: made on every signed request, where a frozen dataclass costs three times as much to build)."""

    access_key: str
    date: str
    region: str
    service: str
    signed: tuple[str, ...]
    signature: str


_CLAIMS_KEPT = 1024  # Authorization headers' claims kept (a client's is the same all day but its signature)
_claims: dict[str, tuple[str, str, str, str, tuple[str, ...]]] = {}
_SIGNATURE = re.compile(r"[0-9a-f]{64}")


def parse_authorization(header: str) -> SignedBy:
    """The parts of an ``AWS4-HMAC-SHA256`` header; SignatureError when it is missing or malformed. A header
    whose part before the signature was read before is not matched again (the regex cost ~13k instructions
    a request): only its new signature is checked to be 64 hexadecimal digits."""
    if not header:
        raise SignatureError("MissingAuthenticationTokenException", "Missing Authentication Token")
    claim = _claims.get(header[:-64])
    signature = header[-64:]
    if claim is not None and _SIGNATURE.fullmatch(signature):
        return tuple.__new__(SignedBy, (*claim, signature))  # (SignedBy(...) costs a Python-level __new__ more)
    m = _AUTHORIZATION.match(header)
    if m is None:
        raise SignatureError("IncompleteSignatureException", "Authorization header requires 'Credential', "
                             "'Signature' and 'SignedHeaders' parameters.")
    access_key, date, region, service, signed, signature = m.groups()
    claim = (access_key, date, region, service, tuple(signed.split(";")))
    if m.end(6) == len(header):  # (the regex's $ also matches before a last line break)
        if len(_claims) >= _CLAIMS_KEPT:
            _claims.clear()
        _claims[header[:m.start(6)]] = claim
    return SignedBy(*claim, signature)


def _check_service(by: SignedBy, service: str) -> None:
    if by.service != service:
        raise SignatureError("InvalidSignatureException", f"Credential should be scoped to a valid region and to "
                             f"the service '{service}', not '{by.region}/{by.service}'.")


def _signed_headers(by: SignedBy) -> list[str]:
    """The headers ``by`` signed: ``host`` among them, in order."""
    return _signed_headers_of(by.signed)


def _signed_headers_of(names: tuple[str, ...]) -> list[str]:
    signed = list(names)
    if "host" not in signed or signed != sorted(signed):
        raise SignatureError("InvalidSignatureException", "'Host' must be a signed header.")
    return signed


def _signer(by: SignedBy, secrets: Sequence[str], stamp: str, digest: bytes) -> int | None:
    """The index of the secret whose signature is the one ``by`` claims, of the string to sign made at ``stamp``
    (x-amz-date) in ``by``'s scope around ``digest``, the canonical request's SHA-256 (hex, encoded): its head
    hashed once a second per secret (``_verifying_mac``). None for none."""
    for i, secret in enumerate(secrets):
        inner, outer = _verifying_mac(secret, by.date, by.region, by.service, stamp)
        mac = inner.copy()
        mac.update(digest)
        sig = outer.copy()
        sig.update(mac.digest())
        if hmac.compare_digest(sig.hexdigest(), by.signature):
            return i
    return None


def _mismatch() -> SignatureError:
    return SignatureError("InvalidSignatureException", "The request signature we calculated does not match the "
                          "signature you provided. Check your AWS Secret Access Key and signing method. Consult "
                          "the service documentation for details.")


@functools.lru_cache(maxsize=256)  # a client's x-amz-date and scope: the same for every request it signs in a second
def _verifying_mac(secret: str, date: str, region: str, service: str, stamp: str) -> tuple[Any, Any]:
    """The verifying key's HMAC inner state having hashed the string to sign up to the canonical request's hash
    (its first block: not hashed again per request), and the outer state."""
    key = _verifying_key(secret, date, region, service)
    inner = key.inner.copy()
    inner.update(f"{ALGORITHM}\n{stamp}\n{date}/{region}/{service}/aws4_request\n".encode())
    return inner, key.outer


class _Verifying:
    """A kind of header-signed request's canonical request around its two varying parts (``_Canonical``'s
    like): the SHA-256 state up to the x-amz-date value and what follows it up to the payload hash; and, for
    the last x-amz-date seen, the state up to the payload hash (replaced whole, never updated)."""

    __slots__ = ("head", "tail", "dated")

    def __init__(self, head: Any, tail: str) -> None:
        self.head = head
        self.tail = tail
        self.dated: tuple[str, Any] = ("", None)

    def up_to_payload(self, stamp: str) -> Any:
        """The canonical request's SHA-256 state up to the payload hash, for x-amz-date ``stamp`` (a copy)."""
        dated = self.dated
        if dated[0] != stamp:
            state = self.head.copy()
            state.update(f"{stamp}{self.tail}".encode())
            self.dated = dated = (stamp, state)
        return dated[1].copy()


_VERIFYING_KINDS = 256  # kinds of signed request memoized for verification, per set of signed headers
_SIGNED_SETS = 16  # sets of signed headers memoized (each SDK signs one or two)
# by the signed header names: those besides x-amz-date (and a getter of their values), and the kinds memoized
_verifying: dict[tuple[str, ...], tuple[tuple[str, ...], Callable[[Mapping[str, str]], Any],
                                        dict[tuple[Any, ...], _Verifying]]] = {}


def _verifying_canonical(signed: tuple[str, ...], method: str, raw_path: str, raw_query: str,
                         headers: Mapping[str, str]) -> _Verifying:
    """The canonical request of a header-signed request around its two varying parts, as the signer keeps
    its own (``_Canonical``). Memoized by what makes it: the signed header names, method, path,
    query and the other signed headers' values (a client signs the same few kinds of request all day; a
    memo is emptied when full). SignatureError when ``signed`` leaves out host or is not in order."""
    per = _verifying.get(signed)
    if per is None:
        names = _signed_headers_of(signed)
        others = tuple(h for h in names if h != "x-amz-date")  # (host among them)
        if len(_verifying) >= _SIGNED_SETS:
            _verifying.clear()
        per = _verifying[signed] = (others, itemgetter(*others), {})
    try:
        values = per[1](headers)
    except KeyError:  # a signed header not sent: its canonical value is empty
        values = tuple(headers.get(h, "") for h in per[0])
    kind = (method, raw_path, raw_query, values)
    kinds = per[2]
    found = kinds.get(kind)
    if found is not None:
        return found
    at = signed.index("x-amz-date")
    lines = [f"{h}:{' '.join(headers.get(h, '').split())}\n" for h in signed]
    head = f"{method.upper()}\n{canonical_uri(raw_path)}\n{canonical_query(raw_query)}\n{''.join(lines[:at])}x-amz-date:"
    found = _Verifying(hashlib.sha256(head.encode()), f"\n{''.join(lines[at + 1:])}\n{';'.join(signed)}\n")
    if len(kinds) >= _VERIFYING_KINDS:
        kinds.clear()
    kinds[kind] = found
    return found


def verify(by: SignedBy, secrets: Sequence[str], service: str, method: str, raw_path: str, raw_query: str,
           headers: Mapping[str, str], body: bytes, max_skew: float = 300.0, now: float | None = None,
           body_sha256: str | None = None) -> int:
    """Check the signature ``by`` claims against each of ``secrets`` (the key's current one, and a previous
    one still in its grace); the index of the secret that made it. ``headers`` has lower-case names;
    ``body_sha256`` is the body's SHA-256 (hex) when the caller hashed it already.
    Raises SignatureError (AWS's wording) for a wrong service, a stale or future date, a header set that
    leaves out ``host``, or a signature none of the secrets makes."""
    _check_service(by, service)
    stamp = headers.get("x-amz-date", "")
    try:
        signed_at = _epoch(stamp)
    except ValueError:
        raise SignatureError("IncompleteSignatureException", "Date must be in ISO-8601 'basic format'.") from None
    if abs((time.time() if now is None else now) - signed_at) > max_skew or stamp[:8] != by.date:
        raise SignatureError("InvalidSignatureException", f"Signature expired: {stamp} is outside the allowed "
                             "clock skew, or not the date of the credential scope.")
    # (x-amz-date signed, as every SDK signs it: the canonical request's fixed parts kept)
    memo = _verifying_canonical(by.signed, method, raw_path, raw_query, headers) if "x-amz-date" in by.signed \
        else None
    signed = _signed_headers(by) if memo is None else None
    payload_hash = body_sha256 or payload_sha256(body)
    if headers.get("x-amz-content-sha256", payload_hash) != payload_hash:  # no UNSIGNED-PAYLOAD: the body is signed
        raise SignatureError("InvalidSignatureException", "The provided 'x-amz-content-sha256' header does not "
                             "match what was computed.")
    if memo is None:
        assert signed is not None
        digest = hashlib.sha256(canonical_request(method, raw_path, raw_query, headers, signed,
                                                  payload_hash).encode()).hexdigest().encode()
    else:
        canonical = memo.up_to_payload(stamp)
        canonical.update(payload_hash.encode())
        digest = canonical.hexdigest().encode()
    i = _signer(by, secrets, stamp, digest)
    if i is None:
        raise _mismatch()
    return i


# ---- query-string (presigned) requests -------------------------------------------------------------------

UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
MAX_EXPIRES = 604_800  # a week, AWS's longest presigned validity
_QUERY_AUTH = ("X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires", "X-Amz-SignedHeaders",
               "X-Amz-Signature")


@dataclass(frozen=True, slots=True)
class Presigned:
    """A presigned request's query-string signature: who signed (``by``), when, for how many seconds."""

    by: SignedBy
    stamp: str
    expires: int
    content_sha256: str | None = None  # the payload hash the query says was signed (X-Amz-Content-Sha256)


def is_presigned(raw_query: str) -> bool:
    return "X-Amz-Algorithm=" in raw_query


def parse_presigned(raw_query: str) -> Presigned:
    """The ``X-Amz-*`` parameters of a presigned URL; SignatureError when one is missing or malformed."""
    params: dict[str, str] = {}
    for part in raw_query.split("&"):
        k, _, v = part.partition("=")
        if k.startswith("X-Amz-"):
            params[unquote(k)] = unquote(v)
    missing = [name for name in _QUERY_AUTH if not params.get(name)]
    if missing:
        raise SignatureError("IncompleteSignatureException", "AWS query-string parameters must include "
                             f"{', '.join(repr(n) for n in _QUERY_AUTH)}; missing {', '.join(missing)}.")
    if params["X-Amz-Algorithm"] != ALGORITHM:
        raise SignatureError("IncompleteSignatureException", f"X-Amz-Algorithm only supports '{ALGORITHM}'")
    parts = params["X-Amz-Credential"].split("/")
    signature = params["X-Amz-Signature"]
    if len(parts) != 5 or parts[4] != "aws4_request" or not all(parts) or not re.fullmatch(r"[0-9a-f]{64}", signature):
        raise SignatureError("IncompleteSignatureException", "X-Amz-Credential must be <access key>/<date>/<region>/"
                             "<service>/aws4_request and X-Amz-Signature 64 hexadecimal digits.")
    expires = params["X-Amz-Expires"]
    if not expires.isdigit() or not 1 <= int(expires) <= MAX_EXPIRES:
        raise SignatureError("AuthorizationQueryParametersError", "X-Amz-Expires must be a number of seconds from "
                             f"1 to {MAX_EXPIRES} (a week).")
    signed = tuple(params["X-Amz-SignedHeaders"].lower().split(";"))
    return Presigned(SignedBy(parts[0], parts[1], parts[2], parts[3], signed, signature), params["X-Amz-Date"],
                     int(expires), params.get("X-Amz-Content-Sha256") or None)


def verify_presigned(p: Presigned, secrets: Sequence[str], service: str, method: str, raw_path: str,
                     raw_query: str, headers: Mapping[str, str], body: bytes, max_skew: float = 300.0,
                     now: float | None = None, body_sha256: str | None = None) -> int:
    """Check a presigned request's signature as ``verify`` checks a header's: within its ``X-Amz-Expires``
    of its ``X-Amz-Date`` (and that date not ahead of the clock by more than ``max_skew``), over the query
    without ``X-Amz-Signature`` and the body's SHA-256 (or ``UNSIGNED-PAYLOAD``, as URLs presigned without
    knowing the body sign: anyone holding the URL may then send any body until it expires). Which one was
    signed, when the ``x-amz-content-sha256`` header or the query's ``X-Amz-Content-Sha256`` says, is the
    only one tried; else the body's hash, then UNSIGNED-PAYLOAD."""
    by = p.by
    _check_service(by, service)
    try:
        signed_at = _epoch(p.stamp)
    except ValueError:
        raise SignatureError("IncompleteSignatureException", "X-Amz-Date must be in ISO-8601 'basic format'.") from None
    clock = time.time() if now is None else now
    if p.stamp[:8] != by.date or signed_at - clock > max_skew:
        raise SignatureError("InvalidSignatureException", f"Signature not yet current: {p.stamp} is ahead of the "
                             "gateway's clock, or not the date of the credential scope.")
    if clock > signed_at + p.expires:
        raise SignatureError("InvalidSignatureException", f"Signature expired: {p.stamp} + {p.expires} s is "
                             "earlier than now.")
    signed = _signed_headers(by)
    payload_hash = body_sha256 or payload_sha256(body)
    claimed = headers.get("x-amz-content-sha256") or p.content_sha256  # said signed: only that one is tried
    if claimed is not None and claimed not in (payload_hash, UNSIGNED_PAYLOAD):
        raise SignatureError("InvalidSignatureException", "The provided 'x-amz-content-sha256' header does not "
                             "match what was computed.")
    query = "&".join(q for q in raw_query.split("&") if not q.startswith("X-Amz-Signature="))
    for payload in ((claimed,) if claimed is not None else (payload_hash, UNSIGNED_PAYLOAD)):
        canonical = canonical_request(method, raw_path, query, headers, signed, payload)
        i = _signer(by, secrets, p.stamp, hashlib.sha256(canonical.encode()).hexdigest().encode())
        if i is not None:
            return i
    raise _mismatch()
