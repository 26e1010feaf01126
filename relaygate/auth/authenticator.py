"""Authentication on the hot path: the master key and virtual keys, looked up through a small TTL cache.

A key's database row is read about once per ``auth.cache_ttl`` seconds per instance: in the last quarter of its
TTL a key in use is looked up again in the background while the cached entry serves, so calls never wait on
the database for a key in use; past its TTL it is looked up before use (concurrent misses share one lookup).
A revocation is therefore visible everywhere within ``cache_ttl`` (plus the time its refresh takes, at most
the store's lookup timeout) and at once on the instance that revoked (it drops the key from its cache). While lookups fail (the database down or too slow: the lookup is bounded
by the store), a key seen within ``stale_ttl`` past its TTL is served as it was, at once; a key not seen
before gets a 503 ``key_store_unavailable``.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from relaygate.auth.principal import MASTER, Principal, hash_secret
from relaygate.core.call import Call, Handler, Reply
from relaygate.core.errors import AuthError, PermissionDenied, Unavailable
from relaygate.routing.router import ModelTable

if TYPE_CHECKING:
    from relaygate.routing.deployment import Deployment

log = logging.getLogger("relaygate")

MAX_CACHED = 50_000  # bound on cached lookups (unknown keys included) so random keys cannot grow memory
REFRESH_AT = 0.75  # a key in use is looked up again in the background from this fraction of its TTL on
ID_PREFIX = "id:"  # cache entries of keys looked up by id (SigV4's access key id), beside the digests
AWS_DERIVATION = b"relaygate/aws-sigv4/v1"  # domain separation: this HMAC of the master key is for SigV4 only


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
                 cache_ttl: float, stale_ttl: float = 600.0,
                 lookup_id: Callable[[str], Awaitable[Principal | None]] | None = None) -> None:
        self._master_hash = hash_secret(master_key)
        self._lookup = lookup
        self._lookup_id = lookup_id  # by key id: SigV4 names the key, then proves it knows its secret (auth/aws.py)
        # the root of every key's SigV4 secret: only the master key's holder (the gateway) can derive them
        self.aws_root = hmac.new(master_key.encode("utf-8", "surrogateescape"), AWS_DERIVATION, "sha256").digest()
        self.aws_secrets: dict[str, str] = {}  # key hash -> its SigV4 secret, derived once (auth/aws.py)
        self.cache_ttl = cache_ttl
        self.stale_ttl = stale_ttl
        # digest -> (principal or None, refresh in the background from, look up before use from)
        self._cache: dict[str, tuple[Principal | None, float, float]] = {}
        # secret -> its digest, for the secrets that authenticated (sha256 is the costliest step of a cached
        # key's check); a pure function of the secret, so it never goes stale; bounded like the cache, emptied
        # with it so that a revoked key's secret is not kept
        self._digests: dict[str, str] = {}
        self._pending: dict[str, asyncio.Future[Principal | None]] = {}
        self._refreshing: set[asyncio.Task[None]] = set()
        self._generation = 0  # bumped by forget: a lookup that started before must not re-cache what it read
        self._failing = False  # the last lookup failed (database down): serve stale entries at once
        self._next_try = 0.0  # while failing: when a background refresh may ask the database again

    def is_master(self, secret: str | None) -> bool:
        return secret is not None and hmac.compare_digest(hash_secret(secret), self._master_hash)

    def quick(self, secret: str | None) -> Principal | None:
        """The caller when the answer is known without a lookup (the master key, a cached key); None when the
        key store must be asked (``authenticate``). Raises AuthError for a missing or refused key."""
        if not secret:
            raise AuthError("Missing API key: send it as 'Authorization: Bearer <key>', 'x-api-key' or 'api-key'.",
                            code="missing_api_key")
        digest = self._digests.get(secret)
        if digest is None:
            digest = hash_secret(secret)
            fresh = True
        else:
            fresh = False
        hit = self._cache.get(digest)  # virtual keys first: the master key is never looked up, so never cached
        if hit is None:
            if hmac.compare_digest(digest, self._master_hash):
                if fresh:
                    self._remember(secret, digest)
                return MASTER
            return None
        now = time.monotonic()
        if hit[1] <= now:  # last quarter of its TTL: refreshed in the background, served meanwhile
            if hit[2] <= now:
                return None  # past its TTL: ``authenticate`` looks it up (or serves it stale if the store fails)
            self._refresh_later(digest, now)
        principal = self._verify(digest, hit[0])
        if fresh:
            self._remember(secret, digest)
        return principal

    def _remember(self, secret: str, digest: str) -> None:
        """Keep the digest of a secret that authenticated (bounded: random keys never get here)."""
        if len(self._digests) >= MAX_CACHED:
            self._digests.clear()
        self._digests[secret] = digest

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
        """A key past its TTL or never seen: looked up now (bounded by the store's own timeout); while the
        store fails, a key seen within ``stale_ttl`` past its TTL is served as it was."""
        hit = self._cache.get(digest)
        now = time.monotonic()
        if hit is not None:
            if now < hit[2]:
                return hit[0]
            if (self._failing or digest in self._pending) and now < hit[2] + self.stale_ttl:
                self._refresh_later(digest, now)  # its refresh is under way, or the store is failing:
                return hit[0]  # no call waits on a store that may hang
        try:
            return await self._load(digest)
        except Exception:
            if hit is not None and time.monotonic() < hit[2] + self.stale_ttl:
                return hit[0]
            raise Unavailable("API keys cannot be checked right now (the key store is unreachable); retry shortly.",
                              code="key_store_unavailable", retry_after=1) from None

    def by_id_cached(self, key_id: str) -> tuple[Principal | None] | None:
        """``by_id``'s answer without awaiting when the cache holds it within its TTL (a one-tuple: the key, or
        None for no such key); None when ``by_id`` must be awaited."""
        hit = self._cache.get(ID_PREFIX + key_id)
        if hit is not None and time.monotonic() < hit[2]:
            return (hit[0],)
        return None

    async def by_id(self, key_id: str) -> Principal | None:
        """The active key with this id (None: none), through the same cache as the secrets' digests (keyed
        ``id:<key id>``, which no hex digest can equal); expiry and rotation are the caller's to check."""
        if self._lookup_id is None:
            return None
        return await self._cached(ID_PREFIX + key_id)

    async def _load(self, digest: str) -> Principal | None:
        """One lookup per digest at a time (concurrent callers share it); the result is cached."""
        pending = self._pending.get(digest)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[Principal | None] = asyncio.get_running_loop().create_future()
        self._pending[digest] = fut
        generation = self._generation
        try:
            if digest.startswith(ID_PREFIX) and self._lookup_id is not None:
                principal = await self._lookup_id(digest[len(ID_PREFIX):])
            else:
                principal = await self._lookup(digest)
        except BaseException as e:
            if isinstance(e, Exception):
                self._lookup_failed(e)
            fut.set_exception(e)
            fut.exception()  # retrieved: no "never retrieved" warning when nobody else waited
            raise
        finally:
            self._pending.pop(digest, None)
        if self._failing:
            self._failing = False
            log.warning("key lookups work again")
        fut.set_result(principal)
        if generation == self._generation:
            if len(self._cache) >= MAX_CACHED:
                self._cache.clear()
            now = time.monotonic()
            self._cache[digest] = (principal, now + self.cache_ttl * REFRESH_AT, now + self.cache_ttl)
        return principal

    def _lookup_failed(self, e: Exception) -> None:
        if not self._failing:
            self._failing = True
            log.warning("key lookup failed (%s: %s); cached keys are served up to %g s past their TTL until the "
                        "key store answers again", type(e).__name__, e, self.stale_ttl)
        self._next_try = time.monotonic() + 1.0

    def _refresh_later(self, digest: str, now: float) -> None:
        """Look ``digest`` up again in the background (at most one lookup a second while lookups fail)."""
        if digest in self._pending or (self._failing and now < self._next_try):
            return
        if self._failing:
            self._next_try = now + 1.0
        task = asyncio.get_running_loop().create_task(self._refresh(digest))
        self._refreshing.add(task)
        task.add_done_callback(self._refreshing.discard)

    async def _refresh(self, digest: str) -> None:
        try:
            await self._load(digest)
        except Exception:
            pass  # noted by _load; the cached entry serves on, within its TTL and then ``stale_ttl``

    def forget(self, key_id: str) -> None:
        """Drop a key from the cache at once (after a revoke, rotate or update on this instance)."""
        self._generation += 1
        self._digests.clear()
        for digest, (p, _, _) in list(self._cache.items()):
            if p is not None and p.id == key_id:
                del self._cache[digest]

    def forget_all(self) -> None:
        """Drop every cached key (after a team or user changed on this instance)."""
        self._generation += 1
        self._cache.clear()
        self._digests.clear()


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
        call.deployments = allowed_deployments(self.table, call, principal)
        return await self.next(call)


def allowed_deployments(table: ModelTable, call: Call, principal: Principal | None) -> list[Deployment]:
    """The deployments that may serve the call, once its key is known to be allowed the model they serve."""
    deps = table.resolve(call)
    if principal is not None and principal.restricts_models:
        if not principal.allows_deployments(deps[0].model_name, deps, call.model):
            raise PermissionDenied(f"This key may not use the model {call.model!r}.", param="model",
                                   code="model_not_allowed")
    return deps


async def caller(auth: Authenticator | None, headers: dict[str, str]) -> Principal | None:
    """The authenticated caller of a data-plane route, asked before anything of its body is read (a request
    without a valid key is a 401 whatever it carries); None when the gateway is open (no master key)."""
    if auth is None:
        return None
    secret = presented_key(headers)
    return auth.quick(secret) or await auth.authenticate(secret)
