"""Circuit breakers, one per deployment: in-process, or in Redis so that several instances share them.

closed --(``failures`` in a row, or ``failure_rate`` of at least ``min_calls`` calls in ``window``)--> open
open --(``cooldown`` elapsed)--> half-open, admitting ``probes`` calls at once
half-open --(a probe succeeds)--> closed;  half-open --(a probe fails)--> open again

On the hot path a closed breaker costs one attribute read (``ready``). The Redis backend keeps a view of
the shared state no older than ``SYNC_INTERVAL``; successes are counted locally and sent with the next
call to Redis, so a healthy deployment costs one Redis round trip per interval, not one per request. The
Redis backend uses the gateway's one Redis client (state/resp.py), the one the limits use, and its one
timeout policy: while Redis is down each breaker goes on in-process from its last view. Breakers count
upstream outcomes only: a timeout the gateway caused by its own waiting is not one (``starved``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from relaygate.config import BreakerConfig, ModelConfig
from relaygate.state.resp import RespClient, Script

log = logging.getLogger("relaygate.breaker")

CLOSED, OPEN, HALF_OPEN = 0, 1, 2
STATE_NAMES = ("closed", "open", "half_open")
SYNC_INTERVAL = 0.2  # seconds a Redis breaker trusts its local view of a closed state
MAX_PENDING = 1000  # background Redis writes in flight at most (beyond that, outcomes are batched)


class Breaker:
    """The breaker of one deployment; ``ready`` True means calls pass without asking."""

    __slots__ = ("name", "settings", "state", "fails", "wcalls", "wfails", "wstart", "opened", "probes",
                 "pstart", "ready")

    def __init__(self, name: str, settings: BreakerConfig) -> None:
        self.name = name
        self.settings = settings
        self.state = CLOSED
        self.fails = 0  # consecutive failures
        self.wcalls = 0  # calls and failures in the current window
        self.wfails = 0
        self.wstart = 0.0
        self.opened = 0.0  # when it last opened
        self.probes = 0  # probes admitted while half-open
        self.pstart = 0.0
        self.ready = True

    def ok(self, err_kind: str) -> bool:
        """Whether an error still shows the deployment working (a 400 does; a 503 or timeout does not)."""
        return err_kind not in self.settings.on

    async def admit(self) -> bool:
        """May a call go to this deployment now? (half-open: takes one of the probe slots)."""
        raise NotImplementedError

    async def record(self, ok: bool) -> None:
        raise NotImplementedError

    def record_later(self, ok: bool) -> None:
        """Record from a synchronous callback (the end of a streamed reply)."""
        raise NotImplementedError

    def retry_in(self) -> float:
        """Seconds until an open breaker admits probes (0 when not open), from the last known state."""
        if self.state != OPEN:
            return 0.0
        return max(0.0, self.opened + self.settings.cooldown - self._now())

    def _now(self) -> float:
        return time.monotonic()

    async def snapshot(self) -> dict[str, Any]:
        """The state for ``/health/providers``."""
        return self._view()

    def _view(self) -> dict[str, Any]:
        return {"state": STATE_NAMES[self.state], "consecutive_failures": self.fails,
                "window_calls": self.wcalls, "window_failures": self.wfails,
                "retry_in": round(self.retry_in(), 3)}

    def _step(self, op: str, now: float) -> bool:
        """Apply one event here (a LocalBreaker always; a RedisBreaker while Redis is down); the same
        transitions as the Redis script below."""
        s = self.settings
        admitted = True
        if now - self.wstart > s.window:
            self.wstart, self.wcalls, self.wfails = now, 0, 0
        if op == "failure":
            if self.state == HALF_OPEN:
                self.state, self.opened, self.probes = OPEN, now, 0
            elif self.state == CLOSED:
                self.fails += 1
                self.wcalls += 1
                self.wfails += 1
                if self.fails >= s.failures or (self.wcalls >= s.min_calls
                                                and self.wfails >= s.failure_rate * self.wcalls):
                    self.state, self.opened = OPEN, now
                    log.warning("circuit breaker of %s opened", self.name)
        elif op == "success":
            if self.state == HALF_OPEN:
                self.state, self.fails, self.probes = CLOSED, 0, 0
                self.wstart, self.wcalls, self.wfails = now, 0, 0
                log.info("circuit breaker of %s closed", self.name)
            elif self.state == CLOSED:
                self.fails = 0
                self.wcalls += 1
        elif op == "admit":
            if self.state == OPEN:
                if now - self.opened >= s.cooldown:
                    self.state, self.probes, self.pstart = HALF_OPEN, 1, now
                else:
                    admitted = False
            elif self.state == HALF_OPEN:
                if self.probes < s.probes:
                    self.probes += 1
                elif now - self.pstart >= s.cooldown:  # earlier probes never reported back
                    self.probes, self.pstart = 1, now
                else:
                    admitted = False
        self.ready = self.state == CLOSED
        return admitted


class LocalBreaker(Breaker):
    """A breaker kept in this process."""

    __slots__ = ()

    async def admit(self) -> bool:
        return self._step("admit", time.monotonic())

    async def record(self, ok: bool) -> None:
        self._step("success" if ok else "failure", time.monotonic())

    def record_later(self, ok: bool) -> None:
        self._step("success" if ok else "failure", time.monotonic())


# The same transitions as LocalBreaker._step, atomically in Redis (times in ms from Redis' clock so that
# every instance agrees). ARGV: op, successes not yet sent, failures, rate, min_calls, window ms,
# cooldown ms, probes, ttl s. Returns state, fails, ms until probes, admitted, window calls, window fails.
BREAKER_LUA = """
local key = KEYS[1]
local op = ARGV[1]
local oks = tonumber(ARGV[2])
local maxf = tonumber(ARGV[3])
local rate = tonumber(ARGV[4])
local minc = tonumber(ARGV[5])
local window = tonumber(ARGV[6])
local cool = tonumber(ARGV[7])
local nprobes = tonumber(ARGV[8])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local h = redis.call('HMGET', key, 'state', 'fails', 'wstart', 'wcalls', 'wfails', 'opened', 'probes', 'pstart')
local state = tonumber(h[1]) or 0
local fails = tonumber(h[2]) or 0
local wstart = tonumber(h[3]) or now
local wcalls = tonumber(h[4]) or 0
local wfails = tonumber(h[5]) or 0
local opened = tonumber(h[6]) or 0
local probes = tonumber(h[7]) or 0
local pstart = tonumber(h[8]) or 0
local admitted = 1
if now - wstart > window then wstart = now; wcalls = 0; wfails = 0 end
if oks > 0 and state == 0 then fails = 0; wcalls = wcalls + oks end
if op == 'failure' then
  if state == 2 then state = 1; opened = now; probes = 0
  elseif state == 0 then
    fails = fails + 1; wcalls = wcalls + 1; wfails = wfails + 1
    if fails >= maxf or (wcalls >= minc and wfails >= rate * wcalls) then state = 1; opened = now end
  end
elseif op == 'success' then
  if state == 2 then state = 0; fails = 0; probes = 0; wstart = now; wcalls = 0; wfails = 0
  elseif state == 0 then fails = 0; wcalls = wcalls + 1 end
elseif op == 'admit' then
  if state == 1 then
    if now - opened >= cool then state = 2; probes = 1; pstart = now else admitted = 0 end
  elseif state == 2 then
    if probes < nprobes then probes = probes + 1
    elseif now - pstart >= cool then probes = 1; pstart = now
    else admitted = 0 end
  end
end
if op ~= 'get' or oks > 0 then
  redis.call('HSET', key, 'state', state, 'fails', fails, 'wstart', wstart, 'wcalls', wcalls,
             'wfails', wfails, 'opened', opened, 'probes', probes, 'pstart', pstart)
  redis.call('EXPIRE', key, tonumber(ARGV[9]))
end
local remaining = 0
if state == 1 then remaining = math.max(0, cool - (now - opened)) end
return {state, fails, remaining, admitted, wcalls, wfails}
"""

KEY_PREFIX = "relaygate:breaker:"


class RedisBreaker(Breaker):
    """A breaker whose state lives in Redis (one Lua script per transition), shared by every instance.
    While Redis is down (the client's outage) it goes on from its last view of the shared state, in this
    process: failures still open it, and the next answer from Redis replaces the local view."""

    __slots__ = ("script", "outage", "key", "synced", "oks", "tasks", "_warned")

    def __init__(self, name: str, settings: BreakerConfig, script: Script, tasks: set[asyncio.Task[None]]) -> None:
        super().__init__(name, settings)
        self.script = script
        self.outage = script.client.outage
        self.key = KEY_PREFIX + name
        self.synced = 0.0  # monotonic time of the last answer from Redis (or local step while it is down)
        self.oks = 0  # successes not yet sent to Redis
        self.tasks = tasks  # background writes, shared by the gateway's breakers (bounded)
        self._warned = 0.0
        self.ready = False  # ask Redis before the first call

    async def _run(self, op: str) -> bool:
        s = self.settings
        oks, self.oks = self.oks, 0
        ttl = int(max(s.window, s.cooldown) * 4 + 60)
        try:
            r = await self.script(keys=[self.key], args=[
                op, oks, s.failures, s.failure_rate, s.min_calls, int(s.window * 1000), int(s.cooldown * 1000),
                s.probes, ttl])
        except Exception as e:  # Redis down or too slow (the client's timeout): go on locally
            now = time.monotonic()
            if now - self._warned > 30:
                self._warned = now
                log.warning("breaker state in Redis unavailable (%s); %s goes on from its last known state, "
                            "in this process", type(e).__name__, self.name)
            if self.state == CLOSED:
                self.wcalls += oks  # the successes not sent yet count in the local window
            return self._local(op, now)
        now = time.monotonic()
        self.state, self.fails = int(r[0]), int(r[1])
        self.opened = now + int(r[2]) / 1000 - s.cooldown
        self.wcalls, self.wfails = int(r[4]), int(r[5])
        self.synced = now
        self.ready = self.state == CLOSED
        if self.ready:
            # trust a closed view only briefly: another instance may open it meanwhile
            asyncio.get_running_loop().call_later(SYNC_INTERVAL, self._expire, now)
        return bool(int(r[3]))

    def _local(self, op: str, now: float) -> bool:
        """One event applied here; a closed view is trusted as briefly as Redis' so that Redis is asked again
        (it answers at once with an error while it is marked down)."""
        admitted = self._step(op, now) if op != "get" else True
        self.synced = now
        if self.ready:
            asyncio.get_running_loop().call_later(SYNC_INTERVAL, self._expire, now)
        return admitted

    def _expire(self, synced: float) -> None:
        if self.synced == synced:
            self.ready = False

    async def admit(self) -> bool:
        return await self._run("admit")

    async def record(self, ok: bool) -> None:
        if self.outage.down:  # no waiting on Redis for a known outcome: count it here
            self._local("success" if ok else "failure", time.monotonic())
            return
        if ok and self.state == CLOSED and self.fails == 0:
            self.oks += 1  # nothing changes: send it with the next call to Redis
            return
        await self._run("success" if ok else "failure")

    def record_later(self, ok: bool) -> None:
        if self.outage.down:
            self._local("success" if ok else "failure", time.monotonic())
            return
        if ok and self.state == CLOSED and self.fails == 0:
            self.oks += 1
            return
        if len(self.tasks) >= MAX_PENDING:
            if ok:
                self.oks += 1
            return
        task = asyncio.ensure_future(self.record(ok))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def snapshot(self) -> dict[str, Any]:
        await self._run("get")
        return self._view()


def starved(err_kind: str, call_started: float, deadline: float, attempt_started: float,
            upstream_timeout: float) -> bool:
    """Whether a timeout is the gateway's doing, not the upstream's: the attempt got less than half the time
    the upstream would have had on its own (its ``timeout``, or the call's whole deadline) because the
    gateway's own waits or earlier attempts used the rest. Such a timeout says nothing about the upstream,
    so breakers do not count it."""
    if err_kind != "timeout" or not deadline:
        return False
    full = min(upstream_timeout, deadline - call_started)
    given = min(upstream_timeout, deadline - attempt_started)
    return given < full / 2


def model_breaker(model: ModelConfig) -> BreakerConfig:
    """A model's breaker settings; unless configured, breakers are on where there is somewhere else to go
    (several deployments, or fallbacks)."""
    b = model.breaker
    if b.enabled is None:
        b = b.model_copy(update={"enabled": len(model.deployments) > 1 or bool(model.fallbacks)})
    return b


class Breakers:
    """Makes the breakers of a gateway: in Redis when it is given a Redis client, else in-process."""

    def __init__(self, redis: RespClient | None = None) -> None:
        self._script = Script(redis, BREAKER_LUA) if redis is not None else None
        self.tasks: set[asyncio.Task[None]] = set()

    def new(self, name: str, settings: BreakerConfig) -> Breaker | None:
        if settings.enabled is False:
            return None
        if self._script is not None:
            return RedisBreaker(name, settings, self._script, self.tasks)
        return LocalBreaker(name, settings)

    async def close(self) -> None:
        """Let pending writes finish (briefly)."""
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=1.0)
