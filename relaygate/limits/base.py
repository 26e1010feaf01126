"""What a limiter is (``Limiter``), what it hands out (``Grant``), and the 429s and headers both backends share.

A call's scopes are its key and the key's team and user. ``acquire`` checks every limit of every scope and,
only if all pass, counts the request, reserves the estimated tokens and cost and takes a parallel slot: all at
once (in-process: no await between check and update; Redis: one Lua script). ``settle`` replaces the estimate
by the real usage and frees the slot. Windows for rpm/tpm are fixed UTC minutes.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from relaygate.auth.principal import Limits, Scope
from relaygate.core.call import header_pairs
from relaygate.core.errors import BudgetExceeded, RateLimited, Unavailable
from relaygate.core.pricing import NANO
from relaygate.limits.periods import period

log = logging.getLogger("relaygate")

# (scope name, period start) -> nano-dollars already spent in that period (from the request log)
SpentLoader = Callable[[str, float], Awaitable[int]]


@dataclass(slots=True)
class Grant:
    """What ``acquire`` took, to be given back or settled by ``settle``."""

    scopes: tuple[Scope, ...]
    minute: int
    periods: tuple[str, ...]  # budget period id per scope ("" when the scope has no budget)
    tokens: int
    cost: int
    head: bytes = b""  # the response's x-ratelimit-* header lines, in wire form (``rate_headers``)
    redis_keys: bytes = b""  # Redis: the scopes' key names, encoded, for the settlement
    local: bool = False  # Redis: granted in this process while Redis was down (settled here too)

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        """The x-ratelimit-* headers as (name, value) pairs."""
        return header_pairs(self.head)


def _reset(seconds: float) -> str:
    return f"{max(0.0, seconds):.0f}s"


def denial(scope: Scope, what: str, used: int, now: float) -> Exception:
    """The 429 for a refused call, with OpenAI's x-ratelimit-* headers and retry-after."""
    lim = scope.limits
    to_minute = 60 - now % 60
    headers: dict[str, str] = {}
    if lim.rpm is not None:
        headers["x-ratelimit-limit-requests"] = str(lim.rpm)
        headers["x-ratelimit-reset-requests"] = _reset(to_minute)
        if what == "requests":
            headers["x-ratelimit-remaining-requests"] = str(max(0, lim.rpm - used))
    if lim.tpm is not None:
        headers["x-ratelimit-limit-tokens"] = str(lim.tpm)
        headers["x-ratelimit-reset-tokens"] = _reset(to_minute)
        if what == "tokens":
            headers["x-ratelimit-remaining-tokens"] = str(max(0, lim.tpm - used))
    if what == "budget":
        _, _, end = period(lim.budget_period, now)
        budget = lim.budget_nano or 0
        refused = BudgetExceeded(
            f"Budget exceeded for {scope.name}: ${used / NANO:.6f} spent or reserved of ${budget / NANO:.6f} "
            f"({lim.budget_period}).", headers=headers, retry_after=(end - now) if end is not None else None)
        refused.left_nano = budget - used
        return refused
    if what == "parallel":
        return RateLimited(f"Too many parallel requests for {scope.name} (limit {lim.max_parallel}).",
                           headers=headers, retry_after=1, code="parallel_limit_exceeded")
    limit = lim.rpm if what == "requests" else lim.tpm
    return RateLimited(f"Rate limit reached for {scope.name}: {limit} {what} per minute.", headers=headers,
                       retry_after=to_minute)


def budget_unavailable(scope: Scope, why: str, retry_after: float = 1.0) -> Unavailable:
    """The 503 of a call whose budget cannot be checked now: refused rather than risk overspending it."""
    return Unavailable(f"The budget of {scope.name} cannot be checked right now ({why}); the call was refused "
                       "rather than risk overspending it. Retry shortly.", code="budget_unavailable",
                       retry_after=retry_after)


async def load_spent(loader: SpentLoader, scope: Scope, start: float) -> int:
    """A scope's spend this period from the log; a 503 for this scope (never a 500) when it cannot be read."""
    try:
        return await loader(scope.name, start)
    except Exception as e:
        log.warning("budget of %s: its spend this period could not be read (%s: %s)", scope.name,
                    type(e).__name__, e)
        raise budget_unavailable(scope, "its spend this period cannot be read from the database") from None


def rate_headers(lim: Limits, reqs: int, toks: int) -> bytes:
    """x-ratelimit-limit/remaining-requests|tokens (of the limits that are set) after ``reqs`` requests and
    ``toks`` tokens this minute, for a call let through, as header lines in wire form: one formatting of the
    limits' template. The HTTP server writes them as they are (``Reply.raw_headers``): lower-case names and
    digits, which its header check and its look for content-length or connection would only find fine (~3k
    instructions a header). The reset headers go with refusals only (with retry-after): on success they would
    only say when the current UTC minute ends."""
    rpm, tpm = lim.rpm, lim.tpm
    if rpm is not None:  # this runs on every call let through
        if tpm is None:
            return lim.rate_lines % (rpm - reqs if reqs < rpm else 0)
        return lim.rate_lines % (rpm - reqs if reqs < rpm else 0, tpm - toks if toks < tpm else 0)
    if tpm is not None:
        return lim.rate_lines % (tpm - toks if toks < tpm else 0)
    return b""


class Limiter(Protocol):
    """Rate limits, parallel caps and budgets of a gateway: ``MemoryLimiter`` (one process) or
    ``RedisLimiter`` (every instance sharing one Redis)."""

    def try_acquire(self, scopes: tuple[Scope, ...], tokens: int, cost: int) -> Grant | None:
        """The grant when it can be decided at once, without an await (raises the 429 of a refusal); None
        when ``acquire`` must be awaited instead."""
        ...

    async def acquire(self, scopes: tuple[Scope, ...], tokens: int, cost: int) -> Grant:
        """Check every limit of every scope and, only if all pass, take the call's share (raises the 429 of a
        refusal, or the 503 of a budget that cannot be checked now)."""
        ...

    def settle(self, grant: Grant, tokens: int, cost: int) -> None:
        """Replace the grant's reservation by the call's real usage and free its slot (now, or queued)."""
        ...

    async def known_spend(self, scopes: Sequence[tuple[str, str]]) -> list[int | None]:
        """Settled spend of each (scope name, budget period id) that the limiter holds, None where it holds
        none yet (the request log is then the source, as when ``acquire`` loads it): the admin API's view."""
        ...

    async def close(self) -> None:
        """Finish the settlements still queued."""
        ...
