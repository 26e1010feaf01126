"""Rows that fit their table: every value made storable, on SQLite and PostgreSQL alike.

A client controls some of a log row's text (the model it names, its ``x-request-id``, the path) and an
upstream some of it (error texts, bodies) and of its numbers (token counts). PostgreSQL refuses a NUL in text
and text over a ``VARCHAR(n)``; psycopg's binary COPY wraps an integer beyond an ``INTEGER`` column's range
silently (2**32 + 7 tokens would be stored as 7); SQLite takes all of it. Fitted, a value keeps what it can:
NUL becomes U+FFFD (so that what was there still shows), text longer than its column is cut and ends with
``CUT``, an integer is clamped to its column's range. Sizes and ranges come from the table's description
(``schema.py``: no SQLAlchemy).
"""

from __future__ import annotations

import math
import os
from typing import Any

from relaygate.store.schema import Column, TableDef

CUT = "…[cut]"  # ends a text that was cut to its column's size
NUL_STANDIN = "\ufffd"  # PostgreSQL text cannot hold NUL

_INT_RANGE: dict[str, tuple[int, int]] = {"INTEGER": (-2**31, 2**31 - 1), "BIGINT": (-2**63, 2**63 - 1)}  # PostgreSQL's; SQLite's is wider
_TEXT = ("VARCHAR", "TEXT")


def size(column: Column) -> int:
    """The size of a text column (``VARCHAR(n)``), from the table definition."""
    n = column.length
    assert isinstance(n, int)
    return n


def fit_text(text: str, size: float) -> str:
    """``text`` without NUL and within ``size`` characters, ending with ``CUT`` when something was cut off."""
    if "\0" in text:
        text = text.replace("\0", NUL_STANDIN)
    if len(text) <= size:
        return text
    n = int(size)
    return text[:max(n - len(CUT), 0)] + CUT[:n]


class RowFitter:
    """Fits rows (tuples in column order) to a table's column sizes, NUL-free text and integer ranges."""

    def __init__(self, table: TableDef) -> None:
        columns = table.columns
        # (index, size) of every text column; a TEXT column has no size
        self.text = [(i, c.length or math.inf) for i, c in enumerate(columns) if c.type in _TEXT]
        self.ints = [(i, *_INT_RANGE[c.type]) for i, c in enumerate(columns) if c.type in _INT_RANGE]
        self.columns = columns

    def row(self, row: tuple[Any, ...]) -> tuple[Any, ...]:
        """One row fitted: each value as its column can store it."""
        values = list(row)
        for i, size in self.text:
            v = values[i]
            if v is None:
                continue
            values[i] = fit_text(v if isinstance(v, str) else str(v), size)
        for i, lo, hi in self.ints:
            v = values[i]
            if isinstance(v, int) and not lo <= v <= hi:  # bool is an int, and always in range
                values[i] = min(max(v, lo), hi)
        return tuple(values)

    def salvage(self, row: tuple[Any, ...]) -> tuple[Any, ...]:
        """A row the database refused, made storable at any cost (its original goes to the dead-letter file):
        text that cannot be encoded is re-encoded with replacement characters, a value of the wrong type
        becomes NULL, or the column's default, or zero where the column must have a value (a random one for
        a missing text key)."""
        values = list(self.row(row))
        for i, c in enumerate(self.columns):
            v = values[i]
            t = c.type
            try:
                if v is None:
                    pass
                elif t in _TEXT:
                    v = v.encode("utf-8", "replace").decode("utf-8")
                elif t == "BOOLEAN":
                    v = 1 if v else 0
                elif t == "FLOAT":
                    v = float(v)
                    if not math.isfinite(v):
                        v = None
                elif t in _INT_RANGE:
                    lo, hi = _INT_RANGE[t]
                    v = min(max(int(v), lo), hi)
            except (TypeError, ValueError, OverflowError):
                v = None
            if v is None and c.primary_key and t in _TEXT:  # a key of its own, not one shared by all
                v = os.urandom(16).hex()[:c.length or 32]
            if v is None and c.required:
                v = c.default if c.default is not None else _zero(t)
            values[i] = v
        return tuple(values)


def _zero(t: str) -> Any:
    if t in _TEXT:
        return ""
    if t == "FLOAT":
        return 0.0
    return 0
