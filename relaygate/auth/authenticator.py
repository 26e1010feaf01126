"""Authentication on the hot path: the master key and virtual keys, looked up through a small TTL cache.

A key's database row is read at most once per ``auth.cache_ttl`` seconds per instance (concurrent misses share
one lookup). A revocation is therefore visible everywhere within ``cache_ttl`` and at once on the instance
that revoked (it drops the key from its cache).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable

from relaygate.auth.keys import MASTER, Principal, hash_secret
from relaygate.core.call import Call, Handler, Reply
from relaygate.core.errors import AuthError, PermissionDenied, Unavailable
from relaygate.routing.router import WILDCARD, ModelTable

log = logging.getLogger("relaygate")

MAX_CACHED = 50_000  # bound on cached lookups (unknown keys included) so random keys cannot grow memory


def presented_key(headers: dict[str, str]) -> str | None:
    """The key a client sent: ``Authorization: Bearer`` (OpenAI), ``x-api-key`` (Anthropic), ``api-key`` (Azure)."""
    auth = headers.get("authorization")
    if auth:
        if auth.startswith("Bearer ") and len(auth) > 7 and not auth[7].isspace() and not auth[-1].isspace():
            return auth[7:]  # the usual form, already clean
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return headers.get("x-api-key") or headers.get("api-key") or None


class Authenticator:
    """Resolves a presented secret to a Principal; raises AuthError otherwise."""

    def __init__(self, master_key: str, lookup: Callable[[str], Awaitable[Principal | None]],
                 cache_ttl: float) -> None:
        self._master_hash = hash_secret(master_key)
        self._lookup = lookup
        self.cache_ttl = cache_ttl
        self._cache: dict[str, tuple[Principal | None, float]] = {}
        self._pending: dict[str, asyncio.Future[Principal | None]] = {}

    def is_master(self, secret: str | None) -> bool:
        return secret is not None and hmac.compare_digest(hash_secret(secret), self._master_hash)

    def quick(self, secret: str | None) -> Principal | None:
        """The caller when the answer is known without a lookup (the master key, a cached key); None when the
        key store must be asked (``authenticate``). Raises AuthError for a missing or refused key."""
        if not secret:
            raise AuthError("Missing API key: send it as 'Authorization: Bearer <key>', 'x-api-key' or 'api-key'.",
                            code="missing_api_key")
        digest = hash_secret(secret)
        hit = self._cache.get(digest)  # virtual keys first: the master key is never looked up, so never cached
        if hit is None or hit[1] <= time.monotonic():
            return MASTER if hmac.compare_digest(digest, self._master_hash) else None
        return self._verify(digest, hit[0])

    async def authenticate(self, secret: str | None) -> Principal:
        principal = self.quick(secret)
        if principal is not None:
            return principal
        assert secret is not None
        digest = hash_secret(secret)
        return self._verify(digest, await self._cached(digest))

    def _verify(self, digest: str, principal: Principal | None) -> Principal:
        """The key's principal if ``digest`` is its current secret (or its previous one, within the rotation
        grace) and it has not expired."""
        if principal is None:
            raise AuthError("Invalid API key.")
        now = time.time()
        if hmac.compare_digest(digest, principal.hash):
            pass
        elif principal.old_hash is not None and hmac.compare_digest(digest, principal.old_hash):
            if principal.old_expires_at is None or principal.old_expires_at <= now:
                raise AuthError("This API key was rotated and its grace period is over.", code="key_rotated")
        else:  # the cached row changed under us; never accept on a mismatch
            raise AuthError("Invalid API key.")
        if principal.expires_at is not None and principal.expires_at <= now:
            raise AuthError("This API key has expired.", code="key_expired")
        return principal

    async def _cached(self, digest: str) -> Principal | None:
        hit = self._cache.get(digest)
        now = time.monotonic()
        if hit is not None and hit[1] > now:
            return hit[0]
        pending = self._pending.get(digest)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[Principal | None] = asyncio.get_running_loop().create_future()
        self._pending[digest] = fut
        try:
            principal = await self._lookup(digest)
        except Exception as e:
            if hit is not None:  # the database is down: a key we knew stays usable until it answers again
                log.warning("key lookup failed (%s); using the cached entry", type(e).__name__)
                self._cache[digest] = (hit[0], now + min(self.cache_ttl, 5.0))
                fut.set_result(hit[0])
                return hit[0]
            err = Unavailable("API keys cannot be checked right now (the key store is unreachable); retry shortly.",
                              code="key_store_unavailable", retry_after=1)
            fut.set_exception(err)
            fut.exception()  # retrieved: no "never retrieved" warning when nobody else waited
            raise err from None
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()
            raise
        finally:
            self._pending.pop(digest, None)
        fut.set_result(principal)
        if len(self._cache) >= MAX_CACHED:
            self._cache.clear()
        self._cache[digest] = (principal, now + self.cache_ttl)
        return principal

    def forget(self, key_id: str) -> None:
        """Drop a key from the cache at once (after a revoke, rotate or update on this instance)."""
        for digest, (p, _) in list(self._cache.items()):
            if p is not None and p.id == key_id:
                del self._cache[digest]

    def forget_all(self) -> None:
        """Drop every cached key (after a team or user changed on this instance)."""
        self._cache.clear()


class AuthLayer:
    """Refuses a model the caller's key may not use, compared after the model was resolved: the names checked
    are the names routed (the client-facing model, and for a ``*`` wildcard the model sent upstream), never a
    string that is transformed later. The API handlers authenticate before they read a body (``call.key``);
    a call that arrives without its caller is authenticated here."""

    def __init__(self, next_handler: Handler, auth: Authenticator, table: ModelTable) -> None:
        self.next = next_handler
        self.auth = auth
        self.table = table

    async def __call__(self, call: Call) -> Reply:
        principal = call.key
        if principal is None:
            principal = call.key = await self.auth.authenticate(presented_key(call.headers))
        # resolved here, once, before the limits (which price the resolved model); the router takes them
        deps = call.deployments = self.table.resolve(call)
        if principal.restricts_models:
            name = deps[0].model_name
            upstream = tuple({d.upstream_model(call.model) for d in deps}) if name == WILDCARD else ()
            if not principal.allows_model(name, upstream):
                raise PermissionDenied(f"This key may not use the model {call.model!r}.", param="model",
                                       code="model_not_allowed")
        return await self.next(call)


async def caller(auth: Authenticator | None, headers: dict[str, str]) -> Principal | None:
    """The authenticated caller of a data-plane route, asked before anything of its body is read (a request
    without a valid key is a 401 whatever it carries); None when the gateway is open (no master key)."""
    if auth is None:
        return None
    secret = presented_key(headers)
    return auth.quick(secret) or await auth.authenticate(secret)
