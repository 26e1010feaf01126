"""SigV4 credentials of virtual keys, for AWS SDKs calling the Bedrock routes (docs/bedrock.md).

To verify an HMAC signature the gateway must know the secret, and it stores keys only hashed. So a key's AWS
secret is derived: ``HMAC-SHA256(HMAC-SHA256(master key, "relaygate/aws-sigv4/v1"), key hash)``, base64url,
40 characters (the length of an AWS secret key). The access key id is the key's id (``key_…``, ``cfg_…``).
Only the gateway can derive a secret (it needs the master key), the database alone does not give it, a key's
rotation changes it (the previous one verifies during the rotation grace, like the previous key), revoking
the key refuses it, and changing the master key changes every one of them. A caller learns its pair from
``GET /bedrock/credentials`` with the key itself as bearer.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable, Mapping

from relaygate.auth.authenticator import Authenticator
from relaygate.auth.principal import Principal, hash_secret
from relaygate.core.errors import AuthError
from relaygate.providers.aws.sigv4 import (
    Presigned,
    SignatureError,
    SignedBy,
    payload_sha256,
    verify,
    verify_presigned,
)

SERVICE = "bedrock"  # what boto3's bedrock-runtime client signs for
AWS_SECRETS_KEPT = 4096  # derived secrets an authenticator keeps (by key hash)


class SigV4Refused(AuthError):
    """A SigV4 request refused: ``error_type`` is the AWS error its client expects (all answered 403)."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message, code="invalid_signature")
        self.status = 403
        self.error_type = error_type


def aws_secret(auth: Authenticator, key_hash: str) -> str:
    """The SigV4 secret of the key whose secret hashes to ``key_hash`` (derived once per key and kept: an
    HMAC costs a verification as much as its own)."""
    secrets = auth.aws_secrets
    secret = secrets.get(key_hash)
    if secret is None:
        digest = hmac.new(auth.aws_root, key_hash.encode(), hashlib.sha256).digest()
        secret = base64.urlsafe_b64encode(digest).decode()[:40]
        if len(secrets) >= AWS_SECRETS_KEPT:
            secrets.clear()
        secrets[key_hash] = secret
    return secret


def credentials(auth: Authenticator, principal: Principal) -> dict[str, str]:
    return {"aws_access_key_id": principal.id, "aws_secret_access_key": aws_secret(auth, principal.hash)}


def issued_credentials(auth: Authenticator, key_id: str, secret: str) -> dict[str, str]:
    """The SigV4 pair of a key just created or rotated (shown with it, like the key itself)."""
    return {"aws_access_key_id": key_id, "aws_secret_access_key": aws_secret(auth, hash_secret(secret))}


async def sigv4_caller(auth: Authenticator, by: SignedBy | Presigned, method: str, raw_path: str, raw_query: str,
                       headers: Mapping[str, str], read_body: Callable[[], Awaitable[bytes]]) -> tuple[Principal, str]:
    """The key that signed the request (its ``Authorization`` header, or a presigned URL's query), once the
    signature verifies with the key's derived secret (or, in the rotation grace, the previous key's), and the
    body's SHA-256 (hex; signing the same bytes upstream need not hash them again); the body (whose hash is
    signed) is read only for a known key. Raises SigV4Refused in AWS's terms."""
    presigned = by if isinstance(by, Presigned) else None
    if presigned is not None:
        by = presigned.by
    assert isinstance(by, SignedBy)
    known = auth.by_id_cached(by.access_key)  # (two coroutines fewer a request while the key is cached)
    principal = known[0] if known is not None else await auth.by_id(by.access_key)
    if principal is None:
        raise SigV4Refused("UnrecognizedClientException", "The security token included in the request is invalid.")
    body = await read_body()
    now = time.time()
    secrets = [aws_secret(auth, principal.hash)]
    if principal.old_hash is not None and principal.old_expires_at is not None and principal.old_expires_at > now:
        secrets.append(aws_secret(auth, principal.old_hash))
    digest = payload_sha256(body)
    try:
        if presigned is not None:
            verify_presigned(presigned, secrets, SERVICE, method, raw_path, raw_query, headers, body, now=now,
                             body_sha256=digest)
        else:
            verify(by, secrets, SERVICE, method, raw_path, raw_query, headers, body, now=now, body_sha256=digest)
    except SignatureError as e:
        raise SigV4Refused(e.error_type, e.message) from None
    if principal.expires_at is not None and principal.expires_at <= now:
        raise SigV4Refused("ExpiredTokenException", "The security token included in the request is expired.")
    return principal, digest
