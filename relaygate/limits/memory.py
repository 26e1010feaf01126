"""Rate limits, parallel caps and budgets of one process, checked and reserved atomically across a call's
scopes (see limits/base.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from relaygate.auth.principal import Scope
from relaygate.limits.base import Grant, SpentLoader, denial, load_spent, rate_headers
from relaygate.limits.periods import PeriodClock


@dataclass(slots=True)
class _ScopeState:
    minute: int = -1
    requests: int = 0
    tokens: int = 0
    parallel: int = 0
    spent: dict[str, int] = field(default_factory=dict)  # period id -> nano-dollars settled
    reserved: int = 0


class MemoryLimiter:
    """One process's limits; state lives in this object (one per Gateway)."""

    def __init__(self, load_spent: SpentLoader) -> None:
        self._load_spent = load_spent
        self._state: dict[str, _ScopeState] = {}
        self._loading: dict[tuple[str, str], asyncio.Future[None]] = {}
        self._period = PeriodClock()
        self._minute = -1
        self._pids: dict[str, str] = {}  # budget period id per period kind, this minute

    def _st(self, name: str) -> _ScopeState:
        st = self._state.get(name)
        if st is None:
            st = self._state[name] = _ScopeState()
        return st

    async def _ensure_spent(self, scope: Scope, pid: str, start: float) -> None:
        st = self._st(scope.name)
        if pid in st.spent:
            return
        key = (scope.name, pid)
        fut = self._loading.get(key)
        if fut is not None:
            await asyncio.shield(fut)
            return
        fut = asyncio.get_running_loop().create_future()
        self._loading[key] = fut
        try:
            spent = await load_spent(self._load_spent, scope, start)
            if pid not in st.spent:
                st.spent = {pid: spent}  # older periods are done with
            fut.set_result(None)
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()
            raise
        finally:
            self._loading.pop(key, None)

    async def acquire(self, scopes: tuple[Scope, ...], tokens: int, cost: int) -> Grant:
        grant = self.try_acquire(scopes, tokens, cost)
        while grant is None:  # a budget's spend in this period is not known yet: read it from the log
            now = time.time()
            for s in scopes:
                if s.limits.budget_nano is not None:
                    pid, start, _ = self._period(s.limits.budget_period, now)
                    await self._ensure_spent(s, pid, start)
            grant = self.try_acquire(scopes, tokens, cost)
        return grant

    def try_acquire(self, scopes: tuple[Scope, ...], tokens: int, cost: int) -> Grant | None:
        """Check every limit of every scope and, only if all pass, take the call's share: one step, no await.
        None when a budget's spend for the current period must be loaded first (``acquire`` does that)."""
        now = time.time()
        minute = int(now // 60)
        if minute != self._minute:  # budget period ids change on minute boundaries at most
            self._minute, self._pids = minute, {}
        state = self._state
        taken: list[tuple[Scope, _ScopeState, str]] = []
        for s in scopes:
            lim = s.limits
            st = state.get(s.name)
            if st is None:
                st = self._st(s.name)
            if st.minute != minute:
                st.minute, st.requests, st.tokens = minute, 0, 0
            if lim.rpm is not None and st.requests >= lim.rpm:
                raise denial(s, "requests", st.requests, now)
            if lim.tpm is not None and (st.tokens >= lim.tpm or (st.tokens > 0 and st.tokens + tokens > lim.tpm)):
                raise denial(s, "tokens", st.tokens, now)
            if lim.max_parallel is not None and st.parallel >= lim.max_parallel:
                raise denial(s, "parallel", st.parallel, now)
            pid = ""
            if lim.budget_nano is not None:
                pid = self._pids.get(lim.budget_period) or self._pid(lim.budget_period, now)
                spent = st.spent.get(pid)
                if spent is None:
                    return None
                committed = spent + st.reserved
                if committed + cost > lim.budget_nano:
                    raise denial(s, "budget", committed, now)
            taken.append((s, st, pid))
        headers: bytes | None = None
        for s, st, _ in taken:
            st.requests += 1
            st.tokens += tokens
            st.parallel += 1
            st.reserved += cost
            if headers is None and (s.limits.rpm is not None or s.limits.tpm is not None):
                headers = rate_headers(s.limits, st.requests, st.tokens)
        pids = (taken[0][2],) if len(taken) == 1 else tuple([t[2] for t in taken])
        return Grant(scopes, minute, pids, tokens, cost, headers or b"")

    def _pid(self, kind: str, now: float) -> str:
        pid = self._pids[kind] = self._period(kind, now)[0]
        return pid

    def settle(self, grant: Grant, tokens: int, cost: int) -> None:
        state = self._state
        for s, pid in zip(grant.scopes, grant.periods, strict=True):
            st = state.get(s.name)
            if st is None:
                st = self._st(s.name)
            st.parallel = st.parallel - 1 if st.parallel > 0 else 0
            st.reserved = st.reserved - grant.cost if st.reserved > grant.cost else 0
            if st.minute == grant.minute:
                left = st.tokens + tokens - grant.tokens
                st.tokens = left if left > 0 else 0
            if pid:
                spent = st.spent
                spent[pid] = spent.get(pid, 0) + cost

    def seed(self, name: str, minute: int, requests: int, tokens: int) -> None:
        """Count at least ``requests`` and ``tokens`` in ``minute`` for a scope (what Redis had counted when it
        went down)."""
        st = self._st(name)
        if st.minute != minute:
            st.minute, st.requests, st.tokens = minute, 0, 0
        st.requests = max(st.requests, requests)
        st.tokens = max(st.tokens, tokens)

    def minute_counts(self, minute: int) -> list[tuple[str, int, int]]:
        """(scope name, requests, tokens) counted in ``minute``."""
        return [(name, st.requests, st.tokens) for name, st in self._state.items() if st.minute == minute]

    async def known_spend(self, scopes: Sequence[tuple[str, str]]) -> list[int | None]:
        """Settled spend of each (scope name, budget period id) that this limiter holds, None where it holds
        none yet (the request log is then the source, as when ``acquire`` loads it): the admin API's view."""
        out: list[int | None] = []
        for name, pid in scopes:
            st = self._state.get(name)
            out.append(st.spent.get(pid) if st is not None else None)
        return out

    async def close(self) -> None:
        return None
