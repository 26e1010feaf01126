"""The same limits as ``MemoryLimiter``, shared by every instance through Redis: one Lua script per check."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from relaygate.auth.principal import Scope
from relaygate.limits.base import Grant, SpentLoader, budget_unavailable, denial, load_spent, rate_headers
from relaygate.limits.memory import MemoryLimiter
from relaygate.limits.periods import PeriodClock, period
from relaygate.state.resp import RespClient, RespError, Script, bulk, bulk_ascii

log = logging.getLogger("relaygate")

SLOTS = 5  # keys per scope: requests, tokens (this minute), parallel, spent, reserved (this budget period)

# KEYS: SLOTS per scope. ARGV: n, slot ttl, per scope: rpm, tpm, parallel, budget (-1: none), then tokens, cost
# (last, so that a scope set's command is a cached prefix plus the two numbers that change per call).
# Returns a status line (one line is the cheapest reply to read): "1 requests tokens ..." (per scope) when
# granted, "0 scope-index what used" when refused, "-1 scope-index" when a scope's spend for this period is not
# in Redis yet (the caller loads it and retries).
ACQUIRE = """
local n, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local tokens, cost = tonumber(ARGV[3 + n * 4]), tonumber(ARGV[4 + n * 4])
for i = 1, n do
  local k, a = (i - 1) * 5, 2 + (i - 1) * 4
  local rpm, tpm, par, budget = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  if rpm >= 0 then
    local c = tonumber(redis.call('GET', KEYS[k + 1]) or '0')
    if c + 1 > rpm then return {ok = '0 ' .. i .. ' requests ' .. c} end
  end
  if tpm >= 0 then
    local u = tonumber(redis.call('GET', KEYS[k + 2]) or '0')
    if u >= tpm or (u > 0 and u + tokens > tpm) then return {ok = '0 ' .. i .. ' tokens ' .. u} end
  end
  if par >= 0 then
    local p = tonumber(redis.call('GET', KEYS[k + 3]) or '0')
    if p + 1 > par then return {ok = '0 ' .. i .. ' parallel ' .. p} end
  end
  if budget >= 0 then
    local s = redis.call('GET', KEYS[k + 4])
    if not s then return {ok = '-1 ' .. i} end
    local used = tonumber(s) + tonumber(redis.call('GET', KEYS[k + 5]) or '0')
    if used + cost > budget then return {ok = '0 ' .. i .. ' budget ' .. string.format('%d', used)} end
  end
end
local out = {'1'}
for i = 1, n do
  local k = (i - 1) * 5
  local c = redis.call('INCR', KEYS[k + 1]); redis.call('EXPIRE', KEYS[k + 1], 120)
  local u = redis.call('INCRBY', KEYS[k + 2], tokens); redis.call('EXPIRE', KEYS[k + 2], 120)
  redis.call('INCR', KEYS[k + 3]); redis.call('EXPIRE', KEYS[k + 3], ttl)
  redis.call('INCRBY', KEYS[k + 5], cost); redis.call('EXPIRE', KEYS[k + 5], ttl)
  out[#out + 1] = c
  out[#out + 1] = u
end
return {ok = table.concat(out, ' ')}
"""

# Settlements of many calls at once. KEYS: SLOTS per entry (a scope of a call). ARGV: m entries, then one
# string per entry, "reserved-tokens reserved-cost real-tokens real-cost has-budget(1/0)" (one argument per
# entry instead of five: the gateway encodes it with one format).
SETTLE = """
local m = tonumber(ARGV[1])
for i = 1, m do
  local k = (i - 1) * 5
  local rt, rc, t, c, b = string.match(ARGV[1 + i], '^(%d+) (%d+) (%d+) (%d+) ([01])$')
  rt, rc, t, c = tonumber(rt), tonumber(rc), tonumber(t), tonumber(c)
  if redis.call('EXISTS', KEYS[k + 2]) == 1 then
    if tonumber(redis.call('INCRBY', KEYS[k + 2], t - rt)) < 0 then redis.call('SET', KEYS[k + 2], 0, 'KEEPTTL') end
  end
  if tonumber(redis.call('DECR', KEYS[k + 3])) < 0 then redis.call('SET', KEYS[k + 3], 0, 'KEEPTTL') end
  if tonumber(redis.call('DECRBY', KEYS[k + 5], rc)) < 0 then redis.call('SET', KEYS[k + 5], 0, 'KEEPTTL') end
  -- a spend Redis lost (restart) is loaded again from the log, which has this call: never start it here
  if b == '1' and redis.call('EXISTS', KEYS[k + 4]) == 1 then redis.call('INCRBY', KEYS[k + 4], c) end
end
return 1
"""


# Counts made in-process during an outage, added to this minute's counters when Redis is back.
# KEYS: counter names; ARGV: the amount to add to each.
ADD = """
for i = 1, #KEYS do
  redis.call('INCRBY', KEYS[i], ARGV[i]); redis.call('EXPIRE', KEYS[i], 120)
end
return 1
"""

MAX_UNSENT = 100_000  # settlements kept while Redis is down (beyond that they are lost, and logged)


def _keys(name: str, minute: int, pid: str) -> list[str]:
    base = "rg:lim:" + name
    return [f"{base}:r:{minute}", f"{base}:t:{minute}", f"{base}:p", _spent_key(name, pid),
            f"{base}:v:{pid or '-'}"]


def _spent_key(name: str, pid: str) -> str:
    return f"rg:lim:{name}:s:{pid or '-'}"


# (command prefix, key names, budget period per scope, minute, key names encoded) of a scope set
Command = tuple[bytes, list[str], tuple[str, ...], int, bytes]


def _limit(v: int | None) -> int:
    return -1 if v is None else v


class RedisLimiter:
    """Limits in Redis (through the gateway's one client). Parallel slots and reservations expire after
    ``slot_ttl`` seconds so that those of a crashed instance do not leak forever. While Redis is down or too
    slow (the client's timeout), rpm/tpm/parallel are counted in this process and calls with a budget are
    refused (503): see ``_fallback``."""

    def __init__(self, redis: RespClient, load_spent: SpentLoader, slot_ttl: int) -> None:
        self.redis = redis
        self._load_spent = load_spent
        self.slot_ttl = slot_ttl
        self._acquire = Script(redis, ACQUIRE)
        self._settle = Script(redis, SETTLE)
        self._add = Script(redis, ADD)
        self._warned = 0.0
        self._period = PeriodClock()
        # while Redis is down: rpm/tpm/parallel counted here, from the counts Redis last gave per scope set
        self._local = MemoryLimiter(load_spent)
        self._seen: dict[int, list[bytes]] = {}  # id(scopes) -> Redis' last granted reply, this minute
        self._seeds: dict[str, tuple[int, int, int]] = {}  # scope name -> (minute, requests, tokens) seeded
        self._unsent: list[tuple[Grant, int, int]] = []  # settlements Redis did not take, sent when it is back
        redis.on_up.append(self._redis_up)
        self._settling: list[tuple[Grant, int, int]] = []  # settlements of this loop turn
        self._settled: asyncio.Future[Any] | None = None
        self._unsettled: set[asyncio.Future[Any]] = set()  # settlements sent and not yet acknowledged
        self._keys_minute = -1
        # this minute's Redis keys per (scope, budget period): their names and their bulk strings
        self._key_names: dict[tuple[str, str], tuple[list[str], bytes]] = {}
        self._commands: dict[int, tuple[tuple[Scope, ...], Command]] = {}
        self._evalsha_settle = bulk("EVALSHA") + bulk(self._settle.sha)

    def _scope_keys(self, name: str, pid: str, minute: int, scope: Scope) -> tuple[list[str], bytes]:
        hit = self._key_names.get((name, pid)) if minute == self._keys_minute else None
        if hit is None:
            ks = _keys(name, minute, pid)
            hit = (ks, b"".join(map(bulk, ks)))
            if minute == self._keys_minute:
                self._key_names[(name, pid)] = hit
        return hit

    def _command(self, scopes: tuple[Scope, ...], now: float) -> Command:
        """(the encoded EVALSHA command but for its last two arguments, its keys, the budget periods, the
        minute, the keys encoded) for a scope set, built once per scope set and minute."""
        minute = int(now // 60)
        if minute != self._keys_minute:
            self._keys_minute, self._key_names, self._commands, self._seen = minute, {}, {}, {}
        hit = self._commands.get(id(scopes))  # by identity: a cached key's scopes are the same tuple every
        if hit is not None and hit[0] is scopes:  # call, and hashing frozen dataclasses runs Python code
            return hit[1]
        pids = tuple(self._period(s.limits.budget_period, now)[0] if s.limits.budget_nano is not None else ""
                     for s in scopes)
        keys: list[str] = []
        encoded: list[bytes] = []
        args: list[int] = [len(scopes), self.slot_ttl]
        for s, pid in zip(scopes, pids, strict=True):
            names, enc = self._scope_keys(s.name, pid, minute, s)
            keys += names
            encoded.append(enc)
            lim = s.limits
            args += [_limit(lim.rpm), _limit(lim.tpm), _limit(lim.max_parallel), _limit(lim.budget_nano)]
        prefix = b"".join([b"*%d\r\n" % (3 + len(keys) + len(args) + 2), bulk("EVALSHA"), bulk(self._acquire.sha),
                           bulk(str(len(keys))), *encoded, bulk_ascii([str(a) for a in args])])
        command = (prefix, keys, pids, minute, b"".join(encoded))
        if len(self._commands) < 10_000:
            self._commands[id(scopes)] = (scopes, command)
        return command

    def try_acquire(self, scopes: tuple[Scope, ...], tokens: int, cost: int) -> Grant | None:
        return None  # Redis answers over the network: always ``acquire``

    async def acquire(self, scopes: tuple[Scope, ...], tokens: int, cost: int) -> Grant:
        now = time.time()
        prefix, keys, pids, minute, encoded = self._command(scopes, now)
        for _ in range(3):
            try:
                proto = self.redis.connected()
                if proto is not None:  # the usual case: one write of a mostly cached command, one reply
                    t, c = str(tokens), str(cost)
                    res = await self.redis.send_raw(proto, prefix + f"${len(t)}\r\n{t}\r\n${len(c)}\r\n{c}\r\n".encode())
                else:  # connects within the client's timeout, or fails at once while Redis is marked down
                    res = await self._acquire(keys=keys, args=self._args(scopes, tokens, cost))
            except RespError as e:
                if not str(e).startswith("NOSCRIPT"):
                    return self._fallback(scopes, tokens, cost, now, e)
                try:  # Redis restarted and forgot the script: EVAL loads it again
                    res = await self._acquire(keys=keys, args=self._args(scopes, tokens, cost))
                except Exception as e2:
                    return self._fallback(scopes, tokens, cost, now, e2)
            except Exception as e:  # Redis down or too slow (the client's timeout): decide here instead
                return self._fallback(scopes, tokens, cost, now, e)
            res = res.split()
            if res[0] == b"1":
                if len(self._seen) < 10_000:
                    self._seen[id(scopes)] = res  # this minute's counts, should Redis fail next
                for i, s in enumerate(scopes):  # x-ratelimit-* of the first scope with rate limits
                    if s.limits.rpm is not None or s.limits.tpm is not None:
                        return Grant(scopes, minute, pids, tokens, cost,
                                     rate_headers(s.limits, int(res[1 + 2 * i]), int(res[2 + 2 * i])), encoded)
                return Grant(scopes, minute, pids, tokens, cost, b"", encoded)
            if res[0] == b"0":
                raise denial(scopes[int(res[1]) - 1], res[2].decode(), int(res[3]), now)
            # a budget scope's spend is not in Redis yet: load it from the log once, for every instance
            i = int(res[1]) - 1
            s = scopes[i]
            pid, start, end = period(s.limits.budget_period, now)
            spent = await load_spent(self._load_spent, s, start)
            ttl = int(end - now) + 86400 if end is not None else None
            try:
                await self.redis.call("SET", keys[i * SLOTS + 3], spent, "NX", *(("EX", ttl) if ttl else ()))
            except Exception as e:
                return self._fallback(scopes, tokens, cost, now, e)
        raise RuntimeError("budget state could not be initialised in Redis")

    def _fallback(self, scopes: tuple[Scope, ...], tokens: int, cost: int, now: float, error: Exception) -> Grant:
        """Redis cannot decide: rpm, tpm and parallel caps are counted in this process (starting from the
        counts Redis last gave for this minute); a budget is refused, since instances that cannot see each
        other's spend could together overspend it."""
        self._warn(error)
        for s in scopes:
            if s.limits.budget_nano is not None:
                raise budget_unavailable(s, "the shared limits store (Redis) is unreachable",
                                         max(1.0, self.redis.outage.retry_in()))
        minute = int(now // 60)  # ``acquire`` built the command first: the caches are this minute's
        seen = self._seen.get(id(scopes))
        cached = self._commands.get(id(scopes))
        if cached is None or cached[0] is not scopes:  # an id reused by another scope set: no counts known
            seen = None
        for i, s in enumerate(scopes):
            seed = self._seeds.get(s.name)
            if seed is None or seed[0] != minute:
                r, t = (int(seen[1 + 2 * i]), int(seen[2 + 2 * i])) if seen is not None else (0, 0)
                self._seeds[s.name] = (minute, r, t)
                self._local.seed(s.name, minute, r, t)
        grant = self._local.try_acquire(scopes, tokens, cost)
        assert grant is not None  # no budget among these scopes: decided at once
        grant.local = True
        return grant

    def _redis_up(self) -> None:
        """Redis answers again: add the requests and tokens counted here meanwhile to its minute counters
        (so that this minute's limits still hold across instances), and send the settlements kept back."""
        local, self._local = self._local, MemoryLimiter(self._load_spent)
        seeds, self._seeds = self._seeds, {}
        minute = int(time.time() // 60)
        keys: list[str] = []
        args: list[int] = []
        for name, requests, tokens in local.minute_counts(minute):
            sm, sr, st = seeds.get(name, (minute, 0, 0))
            if sm != minute:
                sr = st = 0
            if requests > sr or tokens > st:
                names = _keys(name, minute, "")
                keys += names[:2]
                args += [max(0, requests - sr), max(0, tokens - st)]
        unsent, self._unsent = self._unsent, []
        if keys:
            # queued on the connection now, before any acquire that runs after this callback: an acquire
            # sent first would be judged on counts missing this process's grants (the minute's limit overrun)
            proto = self.redis.connected()
            if proto is not None:
                self._track(self.redis.send(proto, "EVAL", ADD, len(keys), *keys, *args))
            else:
                self._track(asyncio.ensure_future(self._add(keys=keys, args=args)))  # a failure: _failed warns
        if unsent:
            log.warning("rate limits: Redis is back; sending %d settlements kept during the outage", len(unsent))
        for i in range(0, len(unsent), 1000):  # scripts of a bounded size
            self._track(asyncio.ensure_future(self._settle_batch(unsent[i:i + 1000])))

    def _track(self, fut: asyncio.Future[Any]) -> None:
        self._unsettled.add(fut)
        fut.add_done_callback(self._unsettled.discard)
        fut.add_done_callback(self._failed)

    def _failed(self, fut: asyncio.Future[Any]) -> None:
        if not fut.cancelled() and (e := fut.exception()) is not None:
            self._warn(e)

    def _args(self, scopes: tuple[Scope, ...], tokens: int, cost: int) -> list[int]:
        args: list[int] = [len(scopes), self.slot_ttl]
        for s in scopes:
            lim = s.limits
            args += [_limit(lim.rpm), _limit(lim.tpm), _limit(lim.max_parallel), _limit(lim.budget_nano)]
        return args + [tokens, cost]

    def _settle_command(self, batch: list[tuple[Grant, int, int]]) -> bytes:
        """EVALSHA SETTLE of a batch, encoded: each scope's key names come encoded from this minute's cache."""
        keys: list[bytes] = []
        args: list[str] = []
        for grant, tokens, cost in batch:
            encoded = grant.redis_keys
            keys.append(encoded if encoded else b"".join(
                [self._scope_keys(s.name, pid, grant.minute, s)[1] for s, pid in zip(grant.scopes, grant.periods,
                                                                                   strict=True)]))
            head = f"{grant.tokens} {grant.cost} {tokens} {cost} "
            for pid in grant.periods:
                args.append(head + ("1" if pid else "0"))
        nkeys = len(args) * SLOTS
        return b"".join([b"*%d\r\n" % (4 + nkeys + len(args)), self._evalsha_settle, bulk(str(nkeys)), *keys,
                         bulk_ascii([str(len(args)), *args])])

    def _settle_args(self, batch: list[tuple[Grant, int, int]]) -> tuple[list[str], list[str]]:
        keys: list[str] = []
        args: list[str] = []
        for grant, tokens, cost in batch:
            for s, pid in zip(grant.scopes, grant.periods, strict=True):
                keys += self._scope_keys(s.name, pid, grant.minute, s)[0]
                args.append(f"{grant.tokens} {grant.cost} {tokens} {cost} {1 if pid else 0}")
        return keys, [str(len(args)), *args]

    def settle(self, grant: Grant, tokens: int, cost: int) -> None:
        """Queue the settlement; every settlement of this loop turn goes to Redis as one script call."""
        if grant.local:  # granted in this process while Redis was down
            self._local.settle(grant, tokens, cost)
            return
        if not self._settling:
            loop = asyncio.get_running_loop()
            self._settled = settled = loop.create_future()
            self._track(settled)
            loop.call_soon(self._send_settlements)
        self._settling.append((grant, tokens, cost))

    def _send_settlements(self) -> None:
        batch, self._settling = self._settling, []
        done = self._settled
        assert done is not None

        def finished(_: Any) -> None:
            if not done.done():
                done.set_result(None)

        proto = self.redis.connected()
        if proto is None:
            asyncio.ensure_future(self._settle_batch(batch)).add_done_callback(finished)
            return
        fut = self.redis.send_raw(proto, self._settle_command(batch))

        def sent(f: asyncio.Future[Any]) -> None:
            if f.cancelled() or f.exception() is not None:  # e.g. Redis restarted and forgot the script
                asyncio.ensure_future(self._settle_batch(batch)).add_done_callback(finished)
            else:
                finished(None)

        fut.add_done_callback(sent)

    async def _settle_batch(self, batch: list[tuple[Grant, int, int]]) -> None:
        keys, args = self._settle_args(batch)
        try:
            await self._settle(keys=keys, args=args)
        except Exception as e:  # kept for when Redis answers again: a budget's spend must not be lost
            self._warn(e)
            room = MAX_UNSENT - len(self._unsent)
            self._unsent += batch[:room]
            if len(batch) > room:
                log.error("rate limits: %d settlements were lost (Redis unreachable, %d kept already)",
                          len(batch) - room, MAX_UNSENT)

    async def known_spend(self, scopes: Sequence[tuple[str, str]]) -> list[int | None]:
        """Settled spend of each (scope name, budget period id) held in Redis, None where Redis holds none
        yet (the request log is then the source, as when ``acquire`` loads it): the admin API's view."""
        if not scopes:
            return []
        try:
            values = await self.redis.call("MGET", *[_spent_key(name, pid) for name, pid in scopes])
        except Exception as e:  # Redis down: the request log's figure (without the settlements kept back)
            self._warn(e)
            return [None] * len(scopes)
        return [None if v is None else int(v) for v in values]

    def _warn(self, e: BaseException) -> None:
        now = time.monotonic()
        if now - self._warned > 10:
            self._warned = now
            log.warning("rate limits: Redis failed (%s: %s); counting rpm/tpm/parallel in this process, refusing "
                        "calls with a budget", type(e).__name__, e)

    async def close(self) -> None:
        if self._unsettled:
            await asyncio.wait(list(self._unsettled), timeout=10)
        if self._unsent:
            log.error("rate limits: %d settlements never reached Redis (down at shutdown)", len(self._unsent))
