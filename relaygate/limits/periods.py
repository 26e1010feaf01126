"""Budget periods (UTC): an id per period, its start (to sum the log) and its end (for retry-after)."""

from __future__ import annotations

import calendar
import time


def period(kind: str, now: float) -> tuple[str, float, float | None]:
    """(id, start, end) of the ``day``/``month``/``total`` period containing ``now``; ``total`` never ends."""
    if kind == "total":
        return "t", 0.0, None
    t = time.gmtime(now)
    if kind == "day":
        start = calendar.timegm((t.tm_year, t.tm_mon, t.tm_mday, 0, 0, 0))
        return f"d{t.tm_year:04d}{t.tm_mon:02d}{t.tm_mday:02d}", float(start), float(start + 86400)
    start = calendar.timegm((t.tm_year, t.tm_mon, 1, 0, 0, 0))
    year, month = (t.tm_year + 1, 1) if t.tm_mon == 12 else (t.tm_year, t.tm_mon + 1)
    return f"m{t.tm_year:04d}{t.tm_mon:02d}", float(start), float(calendar.timegm((year, month, 1, 0, 0, 0)))


class PeriodClock:
    """``period`` memoised per UTC minute (periods change only on minute boundaries): hot-path cheap."""

    def __init__(self) -> None:
        self._memo: dict[str, tuple[int, tuple[str, float, float | None]]] = {}

    def __call__(self, kind: str, now: float) -> tuple[str, float, float | None]:
        minute = int(now // 60)
        hit = self._memo.get(kind)
        if hit is not None and hit[0] == minute:
            return hit[1]
        p = period(kind, now)
        self._memo[kind] = (minute, p)
        return p
