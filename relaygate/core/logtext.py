"""Text from clients in log lines: escaped, so that a URL path or a header can neither break a line nor
forge one."""

from __future__ import annotations


def loggable(value: object, limit: int = 300) -> str:
    """``value`` as one safe piece of a log line: CR, LF, NUL and every other non-printable character (and
    the backslash, so an escape cannot be faked) written as Python escapes; cut to ``limit`` characters."""
    text = value if isinstance(value, str) else str(value)
    if len(text) > limit:
        text = text[:limit] + "..."
    if text.isprintable() and "\\" not in text:
        return text
    return "".join(c if c.isprintable() and c != "\\" else repr(c)[1:-1] for c in text)
