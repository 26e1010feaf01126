"""Query parameters and path segments, checked before they reach a query or a comparison.

Every value is text of bounded length without NUL or control characters (PostgreSQL refuses NUL in text, and
a filter longer than its column matches nothing); numbers are finite and in range (an integer column is 32
bits). A value that does not fit is a 400 that names the parameter.
"""

from __future__ import annotations

import calendar
import math
import re
import time
from typing import Any
from urllib.parse import parse_qsl

from relaygate.core.errors import BadRequest

MAX_FIELDS = 50
MAX_TEXT = 300
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_INT = re.compile(r"-?[0-9]{1,18}")


def plain_text(value: str, name: str, max_len: int = MAX_TEXT) -> str:
    """``value`` when it is at most ``max_len`` characters without NUL or control characters."""
    if len(value) > max_len:
        raise BadRequest(f"'{name}' must be at most {max_len} characters", param=name, code="invalid_value")
    if _CONTROL.search(value):
        raise BadRequest(f"'{name}' must not contain NUL or control characters", param=name, code="invalid_value")
    return value


def no_nul(value: Any, name: str) -> None:
    """Refuse NUL in any string or key inside an admin body (PostgreSQL cannot store it)."""
    stack: list[Any] = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            if "\x00" in v:
                raise BadRequest(f"'{name}' must not contain NUL characters", param=name, code="invalid_value")
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)


class Query:
    """A request's query string, parsed once (the last of repeated names wins)."""

    def __init__(self, raw: str) -> None:
        try:
            pairs = parse_qsl(raw, keep_blank_values=False, max_num_fields=MAX_FIELDS)
        except ValueError:
            raise BadRequest(f"at most {MAX_FIELDS} query parameters are accepted") from None
        self.values: dict[str, str] = dict(pairs)

    def __contains__(self, name: str) -> bool:
        return name in self.values

    def text(self, name: str, max_len: int = MAX_TEXT) -> str | None:
        value = self.values.get(name)
        return None if value is None else plain_text(value, name, max_len)

    def integer(self, name: str, low: int, high: int, default: int | None = None) -> int | None:
        value = self.values.get(name)
        if value is None:
            return default
        if not _INT.fullmatch(value):
            raise BadRequest(f"'{name}' must be an integer", param=name, code="invalid_type")
        number = int(value)
        if not low <= number <= high:
            raise BadRequest(f"'{name}' must be between {low} and {high}", param=name, code="invalid_value")
        return number

    def flag(self, name: str) -> bool:
        value = self.values.get(name)
        if value is None or value == "false":
            return False
        if value == "true":
            return True
        raise BadRequest(f"'{name}' must be true or false", param=name, code="invalid_value")

    def choice(self, name: str, options: tuple[str, ...] | dict[str, Any], default: str) -> str:
        value = self.values.get(name, default)
        if value not in options:
            raise BadRequest(f"'{name}' must be one of {', '.join(options)}", param=name, code="invalid_value")
        return value

    def instant(self, name: str) -> float | None:
        """A time: epoch seconds or a UTC date (YYYY-MM-DD)."""
        value = self.values.get(name)
        if value is None:
            return None
        plain_text(value, name, 40)
        try:
            seconds = float(value)
        except ValueError:
            try:
                seconds = float(calendar.timegm(time.strptime(value, "%Y-%m-%d")))
            except ValueError:
                raise BadRequest(f"'{name}' must be epoch seconds or a date YYYY-MM-DD", param=name) from None
        if not math.isfinite(seconds) or abs(seconds) > 1e11:
            raise BadRequest(f"'{name}' must be a time between the years 1 and 5000", param=name)
        return seconds
