"""The response cache layer (between the limits and the router): exact-match answers served again.

The key is a hash of what changes the answer: the route, the model after resolution (the config's model and
the deployments that may serve it, the name they are asked for), the request body without the fields that do not (``stream``,
``stream_options``, ``user``, …) and the namespace (a team's or a key's, when configured). A miss goes on
to the router; concurrent identical misses make one upstream call (the others wait for its answer, and go on
alone if it fails; a streamed one that asks for the same framing gets the leader's stream as it arrives, also
when it came before that stream started). Only whole, clean answers are kept: no errors, partial streams, refusals or filtered
answers. A hit is served at once: as it was, or, for a streamed chat request, replayed as SSE. The layer
is passed by at the cost of one dict lookup for a model without ``cache``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
import zlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from relaygate.cache.disk import DiskCache
from relaygate.cache.entry import CHAT, UNPRICED, WHOLE, Entry, Unfinished, gather, refused, replay
from relaygate.cache.semantic import SemanticIndex, conversation_text, scope_of, unit
from relaygate.cache.stores import CACHE_ERRORS, MemoryCache, RedisCache
from relaygate.config import CacheConfig, Config, ModelCacheConfig, SemanticCacheConfig
from relaygate.core.aiter import aclose
from relaygate.core.call import Call, Handler, Reply, Route
from relaygate.core.errors import GatewayError, Unavailable, UpstreamTimeout

if TYPE_CHECKING:
    from relaygate.core.pricing import Pricing
    from relaygate.routing.router import ModelTable
    from relaygate.state.resp import RespClient

log = logging.getLogger("relaygate.cache")
T = TypeVar("T")

CHAT_ROUTE = Route.CHAT  # bound once: an enum class attribute costs a lookup each time
CACHED_ROUTES = frozenset({Route.CHAT, Route.EMBEDDINGS, Route.SPEECH})
# request fields that do not change the answer: a streamed request is served from a whole answer and the
# reverse; who asks (``user``, ``safety_identifier``) and what is stored with the call do not matter
IGNORED = frozenset({"model", "stream", "stream_options", "user", "safety_identifier", "metadata", "store",
                     "service_tier", "prompt_cache_key"})
_IGNORED_BUT_MODEL = IGNORED - {"model"}
HEADER = "x-relaygate-cache"
KEY_HEADER = "x-relaygate-cache-key"
SIMILARITY_HEADER = "x-relaygate-cache-similarity"  # a semantic hit: the cosine of the two conversations
# a miss's and a hit's headers in wire form (``Reply.raw_headers``), written by the server as they are: lower-case
# names, a word, digits and the hex key, none the server must look at; as dict entries, each cost the server ~3k
# instructions (its encoding, checks and look for content-length, transfer-encoding and connection)
_MISS_LINES = b"x-relaygate-cache: miss\r\nx-relaygate-cache-key: %s\r\n"
_HIT_LINES = b"x-relaygate-cache: hit\r\nage: %d\r\nx-relaygate-cache-key: %s\r\n"

MAX_NAMES = 4096  # (model, provider) pairs whose deployment names are kept
MEMO_BODY = 16384  # the largest client body whose key is remembered (``Scope.keys``)
MEMO_BYTES = 4 << 20  # the client bodies remembered with their keys, all scopes together
READ, REFRESH, BYPASS = 0, 1, 2
_READ_ANY: tuple[int, float | None] = (READ, None)  # what the client asked of the cache
_OBJECT = re.compile(rb"\s*\{")
# a body that opens with a key whose closing quote is not followed by a space (see ``cache_key``): one match of
# the first few bytes costs less than the two ``startswith`` and the ``find`` it replaces (~1.2k instructions)
_FIRST_KEY = re.compile(rb'\{"[^"]*"(?!: )').match
_SPACE_OR_COLON = (b" ", b"\t", b"\n", b"\r", b":")


@dataclass(slots=True)
class CacheStats:
    hits: int = 0
    memory_hits: int = 0
    disk_hits: int = 0
    redis_hits: int = 0
    coalesced: int = 0  # hits served by waiting for an identical call in flight
    semantic_hits: int = 0  # hits served for a similar conversation (cache.semantic)
    semantic_errors: int = 0  # conversations that could not be embedded: exact matching only
    misses: int = 0
    bypasses: int = 0
    stored: int = 0
    not_stored: int = 0  # answers not kept: refusals, errors, partial streams, too large
    errors: int = 0  # a cache level failed (Redis down): the call went on without it
    saved_nano: dict[str, int] = field(default_factory=dict)  # per model: what the hits did not spend

    def as_json(self) -> dict[str, Any]:
        return {"hits": self.hits, "memory_hits": self.memory_hits, "disk_hits": self.disk_hits,
                "redis_hits": self.redis_hits,
                "coalesced": self.coalesced, "semantic_hits": self.semantic_hits,
                "semantic_errors": self.semantic_errors, "misses": self.misses, "bypasses": self.bypasses,
                "stored": self.stored, "not_stored": self.not_stored, "errors": self.errors,
                "saved_usd": {m: n / 1e9 for m, n in sorted(self.saved_nano.items())}}


def control(headers: dict[str, str]) -> tuple[int, float | None]:
    """What the client asked: (READ, REFRESH or BYPASS, the oldest answer it takes in seconds or None).

    ``x-relaygate-cache: off`` and ``Cache-Control: no-store`` bypass the cache (no read, nothing kept);
    ``x-relaygate-cache: refresh`` and ``no-cache`` ask upstream and keep the new answer; ``max-age=N`` takes
    an answer at most N seconds old (0: refresh)."""
    ours = headers.get(HEADER)
    if ours == "refresh":  # as sent by most clients: no copies of the value
        return REFRESH, None
    if ours is not None:
        ours = ours.strip().lower()
        if ours == "off":
            return BYPASS, None
        if ours == "refresh":
            return REFRESH, None
    cc = headers.get("cache-control")
    if cc is None:
        return READ, None
    mode, max_age = READ, None
    for directive in cc.lower().split(","):
        name, _, value = directive.strip().partition("=")
        if name == "no-store":
            return BYPASS, None
        if name == "no-cache":
            mode = REFRESH
        elif name == "max-age":
            try:
                max_age = max(0.0, float(value.strip().strip('"')))
            except ValueError:
                continue
            if max_age == 0:
                mode = REFRESH
    return mode, max_age


def deterministic(call: Call) -> bool:
    """Whether a request asks for a repeatable answer: a chat with temperature 0 or a seed; embeddings and
    speech always."""
    if call.route is not Route.CHAT:
        return True
    body = call.body
    t = body.get("temperature")
    seed = body.get("seed")
    return (type(t) in (int, float) and t == 0) or (type(seed) is int)


def namespace(call: Call, config: CacheConfig) -> str:
    key = call.key
    if config.namespace == "shared" or key is None:
        return ""
    if config.namespace == "team" and key.team_id:
        return "team:" + key.team_id
    return "key:" + key.id


def cache_key(call: Call, names: Sequence[str], space: str, base: hashlib.blake2b | None = None) -> str:
    """The hash of everything that changes the answer (see the module docstring). The model is the one
    routed: the deployments that may serve the call (``openai/m`` is ``m`` when all of m's are OpenAI's) and
    the name they are asked for (a wildcard deployment sends the client's); ``names``: the deployments'.
    ``base``: ``scope_hash(call.route, names, call.model)``, when the caller keeps it (one per model)."""
    native = call.native
    raw = None
    if native is not None:  # its own dialect's body: the reply relayed to it is in that dialect
        body, dialect = native.body, native.dialect.value
    elif call.anthropic_request is not None:
        body, dialect = call.anthropic_request, "messages"
    else:
        body, dialect = call.body, ""
        raw = call.raw
        if raw is not None:
            raw = raw.strip()  # whitespace around the value (a file's last line break) is not the body's
            # whether the client's bytes read as orjson writes them, so that hashing them gives the key of their
            # dump: no space after a key (Python's json.dumps), no line break (pretty-printed), no \u or \/
            # escape (ASCII-only writers). A streamed request is always dumped (its ``stream`` is left out), and
            # must meet the whole one's key. A body that fails a check is dumped. Bytes that pass but are not
            # orjson's (a space after a comma) only get a key of their own: the key is still the hash of exactly
            # what the client sent. The searches are what cost here (~2k instructions each for a 3-byte needle
            # over a small request; ``in`` on bytes more: it first tries its operand as an integer, raising and
            # clearing a TypeError), so the writer is told by the body's start: pretty-printed JSON breaks the
            # line after the opening brace, and a writer that puts a space after a key puts it after the first
            # one; a backslash is one byte (``memchr``), and the two escapes are looked for only in a body that
            # has one. Inline: a call of its own cost a miss ~1k instructions.
            if _FIRST_KEY(raw) is None or (raw.find(b"\\") >= 0 and (raw.find(b"\\u") >= 0 or raw.find(b"\\/") >= 0)):
                raw = None
    if call.responses_request is not None:  # a /v1/responses call a native deployment may answer in its shape
        dialect, raw = "responses", None
    model = call.model
    # what is hashed is the body with the model as routed (``openai/m`` and ``m`` share answers) and without
    # the ignored fields; the usual request is that already (no ignored field but its model, named as routed)
    # and is hashed as it is: no copy of it per miss
    if not _IGNORED_BUT_MODEL.isdisjoint(body) or body.get("model") != model:
        # in the client's order, the model where it named it (the keys are not sorted: see below)
        body = {k: model if k == "model" else v for k, v in body.items() if k == "model" or k not in IGNORED}
        body.setdefault("model", model)
        raw = None
    elif call.provider is not None:  # the client's bytes named a provider (taken out of the body)
        raw = None
    h = (scope_hash(call.route, names, model) if base is None else base).copy()
    # what else scopes the answer, each on a line of its own (the body, last, starts with "{")
    if dialect:
        h.update(b"d" + dialect.encode() + b"\n")
    if space:
        h.update(b"s" + orjson.dumps(space) + b"\n")  # as JSON: a team id with a line break stays one line
    if call.output_cap is not None:  # the limits hold this caller's answer to fewer tokens than it asked for
        h.update(b"c%d\n" % call.output_cap)
    # the body's keys in the client's order (a client sends its requests alike; sorting them cost as much as
    # the rest of the dump); a chat body as parsed from the client's bytes is those bytes, not dumped again
    # (the same key as its dump when the client writes compact JSON, as httpx, the SDKs and ``fetch`` do)
    h.update(orjson.dumps(body) if raw is None else raw)
    return h.hexdigest()


@dataclass(slots=True)
class Scope:
    """What a model's calls on one route share in their keys: the deployments' names, the BLAKE2b state that
    has read them (``scope_hash``), and the keys of chat bodies as clients sent them, once served (a memo)."""

    names: tuple[str, ...]
    base: hashlib.blake2b
    keys: dict[str | bytes | tuple[str, bytes], str]


def scope_hash(route: Route, names: Sequence[str], model: str) -> hashlib.blake2b:
    """A BLAKE2b state that has read the route, the deployment names and the model, to be copied per call.
    BLAKE2b: Python's own, without OpenSSL's per-hash setup (SHA-256 through OpenSSL costs ~8k instructions
    a call); 128 bits leave no chance of two requests sharing a key by accident."""
    return hashlib.blake2b(orjson.dumps([str(route), list(names), model]) + b"\n", digest_size=16)


class Broadcast:
    """A leader's stream as it passes, for identical streamed calls that joined it: each follower reads every
    chunk from the first, as the leader's client is sent them; they end as the leader's stream ends, with
    its error if it broke."""

    def __init__(self, wants_usage: bool, reply: Reply, saved: Callable[[Call], None]) -> None:
        self.wants_usage = wants_usage  # the leader's: whether its stream carries the usage chunk
        self.reply = reply
        self.saved = saved  # records on a follower what it saved (the leader's cost, known once it ended)
        self.chunks: list[bytes] = []
        self.ended = False
        self.error: BaseException | None = None
        self._moved = asyncio.get_running_loop().create_future()  # resolved (and replaced) at each change

    def add(self, chunk: bytes) -> None:
        self.chunks.append(chunk)
        self._wake()

    def end(self, error: BaseException | None = None) -> None:
        if not self.ended:
            self.ended, self.error = True, error
            self._wake()

    def _wake(self) -> None:
        moved, self._moved = self._moved, asyncio.get_running_loop().create_future()
        moved.set_result(None)

    async def follow(self, call: Call, reply: Reply) -> AsyncIterator[bytes]:
        i = 0
        while True:
            while i < len(self.chunks):
                i += 1
                yield self.chunks[i - 1]
            if self.ended:
                break
            await asyncio.shield(self._moved)
        if self.error is not None:
            raise self.error if isinstance(self.error, GatewayError) else Unavailable(
                "the identical request this one joined ended before its answer did", status=502)
        reply.usage = self.reply.usage
        self.saved(call)


def keepable_chat(body: bytes) -> bool:
    """Whether a whole chat answer may be kept: a JSON object with choices, none a refusal (a ``refusal``
    that is a string, not null) or filtered. Substring searches, not a regex or a parse: a regex tries its
    pattern at every byte, ~20 instructions a byte of answer."""
    if not (body[:1] == b"{" or _OBJECT.match(body)) or body.find(b'"choices"') < 0 \
            or body.find(b'"content_filter"') >= 0:
        return False
    refusals = body.count(b'"refusal"')
    if not refusals or refusals == body.count(b'"refusal":null') + body.count(b'"refusal": null'):
        return True  # the usual answer: every refusal null, as compact or spaced JSON writes it
    at = body.find(b'"refusal"')
    while at >= 0:
        at += 9
        while body[at:at + 1] in _SPACE_OR_COLON:
            at += 1
        if body[at:at + 1] == b'"':
            return False
        at = body.find(b'"refusal"', at)
    return True


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


class CacheLayer:
    """See the module docstring; ``models`` maps a config model name to its cache settings."""

    def __init__(self, next_handler: Handler, config: Config, table: ModelTable, pricing: Pricing,
                 redis: RespClient | None, embed: Handler | None = None) -> None:
        self.next = next_handler
        self.embed = embed  # the whole pipeline, for the embedding calls of cache.semantic
        self.config = config.cache
        self.table = table
        self.pricing = pricing
        self.models: dict[str, ModelCacheConfig] = {m.name: m.cache for m in config.models if m.cache is not None}
        mem = config.cache.memory
        self.memory = MemoryCache(mem.max_bytes, mem.ttl, mem.compress) if mem.max_bytes else None
        dc = config.cache.disk
        self.disk = DiskCache(dc.path, dc.max_bytes, dc.ttl, dc.timeout) if dc is not None else None
        rc = config.cache.redis
        self.redis = RedisCache(redis, rc.prefix, rc.ttl) if rc is not None and redis is not None else None
        self.max_entry = config.cache.max_entry_bytes
        self.stats = CacheStats()
        # the leaders in flight (their calls), and the futures of the calls waiting for one (made by the first
        # that waits: most misses have no follower)
        self._inflight: dict[str, Call] = {}
        self._waiting: dict[str, asyncio.Future[Entry | None]] = {}
        self._streams: dict[str, Broadcast] = {}  # leaders' streams in flight, for followers that stream too
        # the futures of streamed calls waiting for a streamed leader's stream to start (to join it), resolved
        # with its Broadcast, or with the leader's entry (None: it failed) when it ends without one
        self._starting: dict[str, asyncio.Future[Broadcast | Entry | None]] = {}
        self._writes: set[asyncio.Task[None]] = set()
        self._shared = [level for level in (self.disk, self.redis) if level is not None]  # memory, then these
        # (model asked, provider asked, route) -> the names of the deployments that may serve it and the hash
        # state of that scope (``scope_hash``), built once
        self._names: dict[tuple[str, str | None, Route], Scope] = {}
        self._memo_bytes = 0  # the client bodies the scopes' memos hold (``Scope.keys``)
        self._spaced = config.cache.namespace != "shared"
        self._semantic = {name: SemanticIndex(s.semantic.max_entries) for name, s in self.models.items()
                          if s.semantic is not None}
        # a leader's conversation embedded on its way upstream: added to the index if its answer is kept
        self._vectors: dict[str, tuple[SemanticIndex, str, list[float]]] = {}

    async def __call__(self, call: Call) -> Reply:
        deps = call.deployments
        if deps is None:
            deps = call.deployments = self.table.resolve(call)
        model = deps[0].model_name
        settings = self.models.get(model)
        if settings is None or call.route not in CACHED_ROUTES:
            return await self.next(call)
        headers = call.headers
        # most requests say nothing to the cache: no call to read what they did not say
        mode, max_age = control(headers) if HEADER in headers or "cache-control" in headers else _READ_ANY
        if mode == BYPASS or (settings.mode == "deterministic" and not deterministic(call)):
            self.stats.bypasses += 1
            reply = await self.next(call)
            reply.headers[HEADER] = "bypass"
            return reply
        scope = self._names.get((call.model, call.provider, call.route))
        if scope is None:
            names = tuple(d.name for d in deps)
            scope = Scope(names, scope_hash(call.route, names, call.model), {})
            if len(self._names) < MAX_NAMES:
                self._names[(call.model, call.provider, call.route)] = scope
        names = scope.names
        space = namespace(call, self.config) if self._spaced else ""
        # a chat body as the client sent it that was served before has its key in the scope's memo (a pure
        # function of the bytes there: no BLAKE2b for a repeated request); a body the limits changed is not
        raw = call.raw
        memo = None
        if raw is not None and call.output_cap is None and len(raw) <= MEMO_BODY:
            memo = (space, raw) if space else raw
            # (an empty memo, while no body of the scope was served again, is not looked in: hashing the client's
            # bytes for the lookup costs ~1k instructions a miss)
            key = scope.keys.get(memo) if scope.keys else None
            if key is None:
                key = cache_key(call, names, space, scope.base)
        else:
            key = cache_key(call, names, space, scope.base)
        lead = True
        if mode == READ:
            oldest = settings.ttl if max_age is None else max_age if settings.ttl is None else min(max_age, settings.ttl)
            if call.trace is None and not self._shared:  # the usual: one level in the process, nothing to await
                hit = self._memory_hit(call, key, oldest)
            else:
                span = call.trace.step("relaygate.cache") if call.trace is not None else None  # the lookup
                hit = await self._find(call, model, key, oldest)
                if span is not None:
                    span.set_attribute("relaygate.cache.result", "miss" if hit is None else "hit")
                    span.end()
            if hit is not None:
                if memo is not None and raw is not None and memo not in scope.keys:
                    self._remember(scope, memo, raw, key)
                return hit
            pending = self._inflight.get(key)
            if pending is not None:
                # a streamed chat call may join a streamed leader that asks for the same framing (the same key:
                # the same route and dialect, so the leader's stream is broadcast as this call's would be)
                joins = call.stream and pending.stream and pending.wants_usage == call.wants_usage \
                    and call.anthropic_request is None and call.native is None and call.responses_request is None
                entry: Entry | None
                if joins:
                    cast = self._streams.get(key)
                    if cast is not None:
                        return self._joined(call, cast, key)
                    # the leader's stream has not started: join it when it does (or take its whole answer)
                    starting = self._starting.get(key)
                    if starting is None:
                        starting = self._starting[key] = asyncio.get_running_loop().create_future()
                    got = await self._follow(call, starting)
                    if isinstance(got, Broadcast):
                        return self._joined(call, got, key)
                    entry = got
                else:
                    waiting = self._waiting.get(key)
                    if waiting is None:
                        waiting = self._waiting[key] = asyncio.get_running_loop().create_future()
                    entry = await self._follow(call, waiting)
                if entry is not None and (hit := self._hit(call, entry, key)) is not None:
                    self.stats.coalesced += 1
                    return hit
                lead = False  # the leader failed: this call goes on alone
            elif settings.semantic is not None and call.route is CHAT_ROUTE and call.anthropic_request is None \
                    and call.native is None and call.responses_request is None:
                hit = await self._similar(call, model, key, names, space, settings.semantic, oldest)
                if hit is not None:
                    return hit
        # a miss, here rather than in a coroutine of its own (a frame and a send less per miss); identical
        # calls wait for this one when it leads
        self.stats.misses += 1
        leader: Call | None = None
        if lead and key not in self._inflight:
            leader = self._inflight[key] = call
        try:
            reply = await self.next(call)
        except BaseException:
            self._settle(key, leader, None)
            raise
        return self._missed(call, reply, model, key, settings, leader)

    async def _similar(self, call: Call, model: str, key: str, names: Sequence[str], space: str,
                       semantic: SemanticCacheConfig, oldest: float | None) -> Reply | None:
        """A hit for a conversation close enough to one answered before; else None, with the conversation's
        vector kept for the answer this call is about to get."""
        text = conversation_text(call.body)
        if not text:
            return None
        vector = await self._embed(call, semantic.model, text)
        if vector is None:
            return None
        index = self._semantic[model]
        scope = scope_of(call, names, space, IGNORED)
        found = index.nearest(scope, vector, semantic.threshold)
        if found is not None:
            near, cosine = found
            hit = await self._find(call, model, near, oldest)
            if hit is not None:
                self.stats.semantic_hits += 1
                hit.headers[SIMILARITY_HEADER] = f"{cosine:.4f}"
                return hit
            if oldest is None:  # its answer is in no level any more
                index.drop(near)
        self._vectors[key] = (index, scope, vector)
        return None

    async def _embed(self, call: Call, model: str, text: str) -> list[float] | None:
        """The unit vector of ``text`` by the embeddings ``model``, through the pipeline (logged and billed to
        the caller's key); None when that fails: the call then goes on with exact matching only."""
        assert self.embed is not None
        sub = Call(id=call.id + "-semantic", route=Route.EMBEDDINGS, model=model, body={"model": model, "input": text},
                   client_ip=call.client_ip, deadline=call.deadline, key=call.key)
        reply: Reply | None = None
        try:
            reply = await self.embed(sub)
            if reply.status != 200 or reply.stream is not None or reply.body is None:
                raise ValueError("no whole answer")
            vector = unit(orjson.loads(reply.body)["data"][0]["embedding"])
            if vector is None:
                raise ValueError("not a vector")
        except (GatewayError, ValueError, KeyError, IndexError, TypeError) as e:
            self.stats.semantic_errors += 1
            log.warning("cache: the embeddings model %s failed (%s); exact matching only for this call", model,
                        e.message if isinstance(e, GatewayError) else type(e).__name__)
            if reply is not None:
                reply.finish(e if isinstance(e, GatewayError) else None)
            return None
        reply.finish(None)  # delivered (to us): its log row, limits and statistics are settled
        return vector

    def _remember(self, scope: Scope, memo: str | bytes | tuple[str, bytes], raw: bytes, key: str) -> None:
        """Keep ``key`` as the key of the client's body ``raw`` (``memo``) in its scope; past MEMO_BYTES of
        bodies, every scope's memo starts again."""
        if self._memo_bytes + len(raw) > MEMO_BYTES:
            for each in self._names.values():
                each.keys.clear()
            self._memo_bytes = 0
        scope.keys[memo] = key
        self._memo_bytes += len(raw)

    def _memory_hit(self, call: Call, key: str, oldest: float | None) -> Reply | None:
        """The hit for ``key`` from the memory level (an answer at most ``oldest`` seconds old), or None; its
        hits count only a served answer (not one dropped as it was asked for: a refusal)."""
        memory = self.memory
        entry = memory.get(key) if memory is not None else None
        if entry is None or (oldest is not None and entry.age() > oldest):
            return None
        hit = self._hit(call, entry, key)
        if hit is not None:
            self.stats.memory_hits += 1
        return hit

    async def _find(self, call: Call, model: str, key: str, oldest: float | None) -> Reply | None:
        """The hit for ``key`` from the first level that holds an answer at most ``oldest`` seconds old, or
        None; the level's hits count only a served answer (not one dropped as it was asked for: a refusal)."""
        hit = self._memory_hit(call, key, oldest)
        if hit is not None:
            return hit
        memory = self.memory
        for level in self._shared:
            try:
                entry = await level.get(model, key)
            except CACHE_ERRORS:
                self.stats.errors += 1
                continue
            if entry is None or (oldest is not None and entry.age() > oldest):
                continue
            if memory is not None:
                memory.put(key, entry)
            hit = self._hit(call, entry, key)
            if hit is not None:
                if level is self.disk:
                    self.stats.disk_hits += 1
                else:
                    self.stats.redis_hits += 1
            return hit
        return None

    async def _follow(self, call: Call, pending: asyncio.Future[T]) -> T:
        """Wait for the identical call in flight (not past the deadline): its entry, or None if it failed (or
        its stream, as it starts)."""
        left = call.deadline - time.monotonic() if call.deadline else None
        try:
            return await asyncio.wait_for(asyncio.shield(pending), left)
        except TimeoutError:
            raise UpstreamTimeout("the request deadline passed while an identical request was answered") from None

    def _joined(self, call: Call, cast: Broadcast, key: str) -> Reply:
        """A streamed call served from an identical leader's stream as it arrives (no upstream call)."""
        call.cache_hit = True
        self.stats.hits += 1
        self.stats.coalesced += 1
        reply = Reply(media_type="text/event-stream", raw_headers=_HIT_LINES % (0, key.encode()),
                      first_byte_at=time.monotonic())
        reply.stream = cast.follow(call, reply)
        return reply

    def _hit(self, call: Call, entry: Entry, key: str) -> Reply | None:
        """The reply served from ``entry``; None (and the entry dropped) when it cannot be replayed."""
        body = zlib.decompress(entry.body) if entry.compressed else entry.body  # (Entry.content, inline)
        stream = None
        if not entry.checked and not self._checked(entry, key, body):
            return None
        if call.stream and entry.kind == CHAT and call.anthropic_request is None and call.native is None:
            try:
                stream = _once(replay(orjson.loads(body), call.wants_usage))
            except (orjson.JSONDecodeError, TypeError, AttributeError):
                if self.memory is not None:
                    self.memory.purge(key=key)
                return None
        call.cache_hit = True
        cost = entry.cost_nano
        if cost == UNPRICED:
            cost = self._cost(entry)
        call.saved_nano = cost
        stats = self.stats
        stats.hits += 1
        stats.saved_nano[entry.model] = stats.saved_nano.get(entry.model, 0) + cost
        age = time.time() - entry.created  # (Entry.age, inline)
        lines = _HIT_LINES % (int(age) if age >= 1 else 0, key.encode())
        # Reply's fields in order (status, body, stream, media type, headers, raw headers, usage, first byte):
        # by name, binding them to its parameters took longer than the rest of this
        if stream is not None:
            return Reply(200, None, stream, "text/event-stream", {}, lines, entry.usage, time.monotonic())
        return Reply(200, body, None, entry.media_type, {}, lines, entry.usage, time.monotonic())

    def _cost(self, entry: Entry) -> int:
        """What the answer of an entry kept UNPRICED cost (its usage at its deployment's price), worked out once."""
        dep, usage = entry.deployment, entry.usage
        entry.cost_nano = 0 if dep is None or usage is None else self.pricing.price(dep, entry.asked).cost_nano(usage)
        entry.deployment = None
        return entry.cost_nano

    def _checked(self, entry: Entry, key: str, body: bytes | None = None) -> bool:
        """Whether a whole chat answer kept unread may be served (``keepable_chat``), now that it is asked for
        (or goes to a shared level): marked so, or dropped and counted as not kept, once (the calls that waited
        for its call each hold the entry)."""
        if entry.checked is None:
            return False
        if keepable_chat(entry.content() if body is None else body):
            entry.checked = True
            return True
        entry.checked = None
        if self.memory is not None:
            self.memory.purge(key=key)
        self.stats.stored -= 1
        self.stats.not_stored += 1
        return False

    def _missed(self, call: Call, reply: Reply, model: str, key: str, settings: ModelCacheConfig,
                leader: Call | None) -> Reply:
        """A missed call's reply from upstream: marked a miss, and its answer kept (a stream's as it ends)."""
        headers = reply.headers
        if headers:  # (an upstream's own, were it to pass them on, would go out beside these)
            headers.pop(HEADER, None)
            headers.pop(KEY_HEADER, None)
        reply.raw_headers += _MISS_LINES % key.encode()
        if reply.status != 200 or reply.anthropic_native or reply.native or reply.responses_native:
            self.stats.not_stored += 1
            self._settle(key, leader, None)
        elif reply.stream is None:
            self._keep(call, reply, model, key, leader, reply.body or b"", settings)
        else:
            cast = None
            if leader is not None and call.route is Route.CHAT and call.anthropic_request is None and call.native is None \
                    and call.responses_request is None:
                cast = self._streams[key] = Broadcast(call.wants_usage, reply, self._saver(call, reply, model))
                if self._starting:  # the streamed calls that came before it started join it now
                    starting = self._starting.pop(key, None)
                    if starting is not None and not starting.done():
                        starting.set_result(cast)
            reply.stream = self._tee(reply.stream, call, reply, model, key, leader, settings, cast)

            def done(r: Reply, error: BaseException | None) -> None:  # a stream cut short wakes the others
                self._settle(key, leader, None)
                if cast is not None:
                    cast.end(error or Unavailable("the stream ended early", status=502))

            reply.on_done(done)
        return reply

    def _saver(self, leader: Call, reply: Reply, model: str) -> Callable[[Call], None]:
        """What records, on a call that followed the leader's stream, the leader's cost as what it saved."""
        def saved(follower: Call) -> None:
            cost = follower.saved_nano = self.pricing.cost(leader, reply)
            self.stats.saved_nano[model] = self.stats.saved_nano.get(model, 0) + cost
        return saved

    async def _tee(self, stream: AsyncIterator[bytes], call: Call, reply: Reply, model: str, key: str,
                   leader: Call | None, settings: ModelCacheConfig, cast: Broadcast | None) -> AsyncIterator[bytes]:
        """Pass the stream on as it comes (to the calls that joined it too), keeping its bytes; a whole, clean
        stream is kept at its end."""
        kept: list[bytes] | None = []
        size = 0
        try:
            async for chunk in stream:
                if cast is not None:
                    cast.add(chunk)
                if kept is not None:
                    size += len(chunk)
                    if size > self.max_entry:
                        kept = None
                    else:
                        kept.append(chunk)
                yield chunk
        finally:
            await aclose(stream)
        body = None
        gathered = False
        if kept is not None:
            body = b"".join(kept)
            if call.route is Route.CHAT:
                try:
                    completion = gather(body, reply.usage)
                    body = None if refused(completion) else orjson.dumps(completion)
                    gathered = True
                except (Unfinished, ValueError, TypeError, AttributeError):
                    body = None
        if cast is not None:
            cast.end()
        self._keep(call, reply, model, key, leader, body, settings, gathered)

    def _keep(self, call: Call, reply: Reply, model: str, key: str, leader: Call | None, body: bytes | None,
              settings: ModelCacheConfig, gathered: bool = False) -> None:
        """Keep a whole answer (``body``; None: none to keep; ``gathered``: a chat stream's completion, already
        checked) in each level (disk and Redis in the background) and hand its entry to the calls waiting for it."""
        entry = None
        if body is not None and len(body) <= self.max_entry:
            # its cost is worked out when first needed (``_cost``), unless the call knows it already (the limits
            # settled a stream's): a cached route has no meter (passthrough's), so the cost is the usage's price
            cost = call.cost_nano
            if call.route is CHAT_ROUTE:
                # whether it is a JSON object with choices and no refusal or filtered choice (``keepable_chat``) is
                # looked at when it is first asked for (``_hit``), or before it goes to a shared level: most answers
                # kept are never asked for again, and the scan costs a fifth of a miss; a hit that cannot be read
                # back is dropped then too
                entry = Entry(CHAT, body, "application/json", time.time(), model, reply.usage,
                              UNPRICED if cost is None else cost, False, gathered, call.deployment, call.model)
            elif not reply.media_type.startswith("text/event-stream"):  # speech as SSE events: not kept
                entry = Entry(WHOLE, body, reply.media_type, time.time(), model, reply.usage,
                              UNPRICED if cost is None else cost, False, True, call.deployment, call.model)
        if self._shared and entry is not None and not entry.checked:  # never a refusal in a shared level
            if keepable_chat(entry.body):
                entry.checked = True
            else:
                entry = None
        if self._vectors:
            vec = self._vectors.pop(key, None)
            if vec is not None and entry is not None:
                vec[0].add(vec[1], key, vec[2])
        if leader is not None:
            if self._waiting or self._streams or self._starting:
                self._release(key, leader, entry)
            elif self._inflight.get(key) is leader:  # the usual: nobody waits, the leader is only forgotten
                del self._inflight[key]
        if entry is None:
            self.stats.not_stored += 1
            return
        self.stats.stored += 1
        if self.memory is not None:
            self.memory.put(key, entry, settings.ttl)
        if self._shared:
            if entry.cost_nano == UNPRICED:  # a shared level keeps the cost with the answer
                self._cost(entry)
            for level in self._shared:
                task = asyncio.ensure_future(self._write(level, key, entry, settings.ttl))
                self._writes.add(task)
                task.add_done_callback(self._writes.discard)

    async def _write(self, level: DiskCache | RedisCache, key: str, entry: Entry, ttl: float | None) -> None:
        try:
            await level.put(key, entry, ttl)
        except CACHE_ERRORS:
            self.stats.errors += 1

    def _settle(self, key: str, leader: Call | None, entry: Entry | None) -> None:
        """The leader is done without an answer to keep: the calls waiting for it go on alone."""
        if self._vectors:
            self._vectors.pop(key, None)  # no answer kept: no vector either
        self._release(key, leader, entry)

    def _release(self, key: str, leader: Call | None, entry: Entry | None) -> None:
        """The leader of ``key`` (the call the identical ones wait for) is done: it is forgotten, and the calls
        waiting for it get ``entry`` (None: they go on alone)."""
        if leader is None or self._inflight.get(key) is not leader:
            return
        del self._inflight[key]
        if self._streams:
            self._streams.pop(key, None)
        if self._waiting:
            waiting = self._waiting.pop(key, None)
            if waiting is not None and not waiting.done():
                waiting.set_result(entry)
        if self._starting:
            starting = self._starting.pop(key, None)
            if starting is not None and not starting.done():
                starting.set_result(entry)

    async def purge(self, model: str | None = None, key: str | None = None) -> dict[str, int]:
        """Drop the entries of every level: all, one model's, or one cache key's."""
        out = {"memory": self.memory.purge(model, key) if self.memory is not None else 0}
        for name, level in (("disk", self.disk), ("redis", self.redis)):
            if level is not None:
                try:
                    out[name] = await level.purge(model, key)
                except CACHE_ERRORS:
                    self.stats.errors += 1
                    out[name] = -1
        return out

    async def close(self) -> None:
        """Let the writes in flight finish, then close the disk level."""
        if self._writes:
            await asyncio.wait(list(self._writes), timeout=5)
        if self.disk is not None:
            await self.disk.close()

    def snapshot(self) -> dict[str, Any]:
        mem = self.memory
        return {**self.stats.as_json(), "entries": len(mem) if mem is not None else 0,
                "bytes": mem.bytes if mem is not None else 0, "max_bytes": mem.max_bytes if mem is not None else 0,
                "evictions": mem.evictions if mem is not None else 0, "redis": self.redis is not None,
                "disk": None if self.disk is None else {"entries": self.disk.entries, "bytes": self.disk.bytes,
                                                        "max_bytes": self.disk.max_bytes,
                                                        "evictions": self.disk.evictions}}
