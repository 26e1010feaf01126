"""Redaction of secrets and personal data before anything is written to the log."""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "[REDACTED]"

_BUILTIN = [
    # API keys of common providers and ours
    r"\b(?:sk|rg|pk|rk)-[A-Za-z0-9_\-]{12,}",
    r"\bsk-ant-[A-Za-z0-9_\-]{12,}",
    r"\bAKIA[0-9A-Z]{12,}",
    r"\bAIza[0-9A-Za-z_\-]{20,}",
    r"\bgh[pousr]_[A-Za-z0-9]{20,}",
    r"\bxox[abposr]-[A-Za-z0-9\-]{10,}",
    # bearer tokens and key=value secrets
    r"(?i:\bbearer\s+[A-Za-z0-9\-._~+/]{8,}=*)",
    r"(?i:\b(?:api[_-]?key|secret|password|passwd|token)\b[\"']?\s*[:=]\s*[\"']?[^\s\"',;}]{4,})",
    # e-mail addresses
    r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}",
]
# card numbers: 13–19 digits, optionally grouped by spaces or dashes; checked with Luhn before masking
_CARD = re.compile(r"\b\d(?:[ \-]?\d){12,18}\b")
# phone numbers: international (+…) or common national formats with separators
_PHONE = re.compile(r"(?<![\w])(?:\+\d{1,3}[ .\-]?)?(?:\(\d{2,4}\)[ .\-]?|\d{2,4}[ .\-])\d{2,4}[ .\-]\d{3,4}\b"
                    r"|(?<![\w+])\+\d{8,15}\b")


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


class Redactor:
    """Masks built-in secret/PII patterns plus the configured ones."""

    def __init__(self, extra: Iterable[str] = ()) -> None:
        self.pattern = re.compile("|".join(f"(?:{p})" for p in [*_BUILTIN, *extra]))

    def __call__(self, text: str) -> str:
        if not text:
            return text
        text = self.pattern.sub(MASK, text)
        text = _CARD.sub(self._card, text)
        return _PHONE.sub(MASK, text)

    @staticmethod
    def _card(m: re.Match[str]) -> str:
        digits = re.sub(r"\D", "", m.group(0))
        return MASK if _luhn(digits) else m.group(0)
