"""The one redaction point for what comes from upstreams: secrets, their fragments and upstream addresses.

Everything an upstream sent (an answer's body or stream, the headers copied from it, an error's message,
code and param, a health probe's failure) passes a ``Scrubber`` before it reaches a client, a log line or a
request-log row (providers/base.py wraps every provider's handlers and probe; requestlog/audit.py scrubs its
rows; ``ScrubFilter`` every log record). It knows every secret of the config (upstream keys, AWS keys and
tokens, Vertex tokens as they are fetched, the master and declared keys, passwords in database and Redis
URLs) and every upstream address, and finds them all in one pass of an Aho-Corasick automaton (Rust), so an
answer without any of them costs one scan and no copy:

- any run of ``FRAGMENT`` characters of a secret (its every substring that long, so a truncated or partial
  echo is caught too; but for runs of lower-case letters or digits alone, which ordinary text has too:
  ``upstream``, ``sk-proj-``), widened to the whole token around it, and the whole secret;
- the masked echoes providers write (``sk-proj-****abcd``, ``sk-...abcd``): a masking character followed by
  the secret's last four characters, widened likewise;
- short secrets (passwords under ``FRAGMENT`` characters), whole;
- every upstream's ``host[:port]`` (and the URL around it), replaced by ``[upstream <deployment>]``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Callable, Hashable, Iterable, Mapping
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

import ahocorasick_rs

from relaygate.core.aiter import aclose

if TYPE_CHECKING:
    from relaygate.core.errors import GatewayError

MASK = "[REDACTED]"
FRAGMENT = 8  # a run of this many characters of a secret counts as the secret
MIN_SECRET = 4  # shorter values are not treated as secrets (they would mask half the text)
_SUFFIX = 4  # the characters providers leave visible when they echo a key masked
_MASKING = ("*", ".", "\u2026", "#")  # what providers put in place of a key's middle

# bytes a secret token is made of (the widening of a match stops at anything else: quotes, spaces, '\')
_TOKEN = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_+/=.*~:%")
# a run of a secret made only of these is a word or a common prefix, not a fragment that betrays it (a random
# key has other runs enough; the whole secret is always matched)
_WORDLIKE = frozenset(b"abcdefghijklmnopqrstuvwxyz-_.")
# bytes of a URL around an upstream's host (scheme and userinfo before it, path and query after it)
_URL = _TOKEN | frozenset(b"@?&#;,!$'()[]")

# key-shaped strings and AWS identities in error texts and log lines, configured or not (another key an
# upstream echoes, the IAM identity an AccessDenied names)
_KEYLIKE = re.compile(r"\b(?:sk|rg|pk|rk)-[A-Za-z0-9_\-*]{6,}|\bAKIA[0-9A-Z]{12,}|\bAIza[0-9A-Za-z_\-]{20,}")
_ARN = re.compile(r"\barn:aws[a-z\-]*:[^\s\"',]+")
_ACCOUNT = re.compile(r"(?<!\d)\d{12}(?!\d)")

# response headers an upstream's answer may pass on to the client (values scrubbed); anything else it sent
# stays with the gateway
UPSTREAM_HEADERS = frozenset({
    "x-ratelimit-limit-requests", "x-ratelimit-limit-tokens", "x-ratelimit-remaining-requests",
    "x-ratelimit-remaining-tokens", "x-ratelimit-reset-requests", "x-ratelimit-reset-tokens",
    "retry-after", "retry-after-ms", "content-disposition",
})
_OURS = "x-relaygate-"  # headers the gateway itself sets on a reply (dropped params, session ids)

_SECRET, _HOST = 0, 1


def url_secrets(url: str | None) -> list[str]:
    """The password (and user) in a URL's userinfo, as written and unquoted."""
    if not url:
        return []
    try:
        parts = urlsplit(url)
        found = [parts.password, parts.username if parts.password else None]
    except ValueError:
        return []
    return [v for s in found if s for v in {s, unquote(s)}]


def upstream_netloc(url: str) -> str | None:
    """``host[:port]`` of an upstream URL (without userinfo), lower-cased."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        port = parts.port
    except ValueError:
        return None
    if not host:
        return None
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{port}" if port is not None else host


class Scrubber:
    """Finds and replaces every configured secret (and its fragments) and every upstream address.

    ``secrets``: the values; ``upstreams``: URL -> the name of the deployment it belongs to. Secrets that
    appear later (an access token fetched, AWS credentials renewed) are set per owner with ``dynamic``."""

    def __init__(self, secrets: Iterable[str] = (), upstreams: Mapping[str, str] | None = None) -> None:
        self._static = {s for s in secrets if s and len(s) >= MIN_SECRET}
        self._hosts: dict[bytes, bytes] = {}
        for url, name in (upstreams or {}).items():
            self._static.update(s for s in url_secrets(url) if len(s) >= MIN_SECRET)
            netloc = upstream_netloc(url)
            if netloc is not None:
                label = re.sub(r"[^A-Za-z0-9._:/\-]", "_", name)
                self._hosts.setdefault(netloc.encode(), f"[upstream {label}]".encode())
        self._dynamic: dict[Hashable, tuple[str, ...]] = {}
        self._build()

    def dynamic(self, key: Hashable, values: Iterable[str | None]) -> None:
        """Replace the secrets held under ``key`` (a token source's current token, renewed AWS keys)."""
        found = tuple(v for v in values if v and len(v) >= MIN_SECRET)
        if self._dynamic.get(key) != found:
            self._dynamic[key] = found
            self._build()

    def _build(self) -> None:
        patterns: dict[bytes, tuple[int, bytes]] = {}
        for s in {*self._static, *(v for vs in self._dynamic.values() for v in vs)}:
            b = s.encode()
            if len(b) < FRAGMENT:
                patterns[b] = (_SECRET, b"")
                continue
            patterns[b] = (_SECRET, b"")
            for i in range(len(b) - FRAGMENT + 1):
                gram = b[i:i + FRAGMENT]
                if not (gram.isdigit() or set(gram) <= _WORDLIKE):  # "sk-proj-", "upstream": in any text
                    patterns[gram] = (_SECRET, b"")
            if len(b) >= 3 * _SUFFIX:
                for m in _MASKING:
                    patterns[m.encode() + b[-_SUFFIX:]] = (_SECRET, b"")
        for netloc, label in self._hosts.items():
            patterns[netloc] = (_HOST, label)
        # one attribute, swapped whole: a scan never sees an automaton with another one's pattern kinds
        self._ac = _Automata(list(patterns), list(patterns.values())) if patterns else None

    @property
    def active(self) -> bool:
        """Whether there is anything to find (a deployment without secrets or address, the demo, has not)."""
        return self._ac is not None

    # -- the scrubbing itself ---------------------------------------------------------------------

    def data(self, data: bytes) -> bytes:
        """``data`` with every secret and upstream address replaced (the same object when there is none)."""
        ac = self._ac
        if ac is None or not data or not ac.any(data):
            return data
        return self._replace(data, ac.matches(data), ac.kinds)

    @staticmethod
    def _replace(data: bytes, found: list[tuple[int, int, int]], kinds: list[tuple[int, bytes]]) -> bytes:
        spans: list[tuple[int, int, bytes]] = []
        n = len(data)
        for index, start, end in found:
            kind, label = kinds[index]
            chars = _TOKEN if kind == _SECRET else _URL
            while start > 0 and data[start - 1] in chars:
                start -= 1
            while end < n and data[end] in chars:
                end += 1
            while spans and start < spans[-1][1]:  # overlaps an earlier replacement: one replacement
                prev = spans.pop()
                start, end, label = min(start, prev[0]), max(end, prev[1]), prev[2] or label
            spans.append((start, end, label))
        out = bytearray()
        at = 0
        for start, end, label in spans:
            out += data[at:start]
            out += label or MASK.encode()
            at = end
        out += data[at:]
        return bytes(out)

    def text(self, text: str) -> str:
        """An error message, code, param or log line: also key-shaped strings and AWS identities masked."""
        if not text:
            return text
        if self._ac is not None:
            raw = text.encode("utf-8", "surrogatepass")
            clean = self.data(raw)
            if clean is not raw:
                text = clean.decode("utf-8", "surrogatepass")
        text = _KEYLIKE.sub(MASK, text)
        if "arn:" in text:
            text = _ARN.sub("arn:" + MASK, text)
        return _ACCOUNT.sub(MASK, text)

    def maybe(self, value: str | None) -> str | None:
        return self.text(value) if value else value

    def error(self, e: GatewayError) -> GatewayError:
        """An upstream's error made fit for a client, a log and a row (in place): message, code, param and the
        headers it carries."""
        e.message = self.text(e.message)
        e.args = (e.message,)
        if e.code:
            e.code = self.text(e.code)
        e.param = self.maybe(e.param)
        if e.headers:
            e.headers = self.headers(e.headers)
        return e

    def headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        """The headers of an upstream's answer a client may see: the allow-list and ours, values scrubbed."""
        return {k: self.text(v) for k, v in headers.items() if k in UPSTREAM_HEADERS or k.startswith(_OURS)}

    async def stream(self, stream: AsyncIterator[bytes], framed: bool = False) -> AsyncIterator[bytes]:
        """``stream`` scrubbed chunk by chunk. No secret or address holds a line break, so a chunk that ends
        with one (every SSE chunk: whole events) goes on at once; of any other, the bytes after its last line
        break that could start a secret (at most the longest one's length) wait for the next chunk. A
        GatewayError it raises (a failure mid-stream) is scrubbed too. ``framed``: every chunk is whole binary
        messages (AWS event stream), which hold no line break: none waits (a masked secret breaks that
        message's CRC, so the client refuses it rather than read the secret)."""
        from relaygate.core.errors import GatewayError

        keep = self._longest()
        tail = b""
        try:
            async for chunk in stream:
                ac = self._ac
                # the hot path: a whole event with nothing to hide goes on as it came, one scan and no copy
                if not tail and (framed or chunk[-1:] == b"\n") \
                        and (ac is None or not ac.any(chunk)):
                    yield chunk
                    continue
                if framed:
                    yield self.data(chunk)
                    continue
                joined = self.data(tail + chunk if tail else chunk)
                cut = max(len(joined) - keep, joined.rfind(b"\n") + 1)
                tail = joined[cut:]
                if cut:
                    yield joined[:cut]
            if tail:
                yield tail
        except GatewayError as e:
            if tail:  # what came before the failure goes first (as at the end): a binary stream (AWS event
                yield tail  # stream) holds a tail back, and the error frame must follow whole messages
            raise self.error(e) from None
        finally:
            await aclose(stream)

    def _longest(self) -> int:
        lengths = [FRAGMENT, *(len(h) for h in self._hosts), *(len(s) for s in self._static if len(s) < FRAGMENT)]
        return max(lengths) + 2  # a masked echo's '…' is 3 bytes


class _Automata:
    """The automata of one set of patterns. ``any`` tells whether a text holds one of them: it matches
    leftmost-longest, whose search skips ahead with a SIMD prefilter where the standard match kind steps its
    DFA through every byte (callgrind: a 763-byte answer with nothing to find 5.7k instructions in place of
    14.0k, a 248-byte stream chunk 4.7k in place of 6.6k). Both find a match when any pattern occurs; the
    spans to replace come from the standard kind, as they always did (built at the first text that holds
    one: most gateways never see one)."""

    __slots__ = ("any", "kinds", "_patterns", "_standard")

    def __init__(self, patterns: list[bytes], kinds: list[tuple[int, bytes]]) -> None:
        self.any: Callable[[bytes], list[tuple[int, int, int]]] = ahocorasick_rs.BytesAhoCorasick(
            patterns, matchkind=ahocorasick_rs.MatchKind.LeftmostLongest,
            implementation=ahocorasick_rs.Implementation.DFA).find_matches_as_indexes
        self.kinds = kinds
        self._patterns = patterns
        self._standard: Callable[[bytes], list[tuple[int, int, int]]] | None = None

    def matches(self, data: bytes) -> list[tuple[int, int, int]]:
        """(pattern index, start, end) of the matches the replacement masks (standard match kind)."""
        find = self._standard
        if find is None:
            find = self._standard = ahocorasick_rs.BytesAhoCorasick(
                self._patterns, implementation=ahocorasick_rs.Implementation.DFA).find_matches_as_indexes
        return find(data)


class ScrubFilter(logging.Filter):
    """Scrubs every record of the loggers it is attached to: the message with its arguments, and the
    traceback of an exception (whose text may name an upstream's address)."""

    def __init__(self, scrubber: Scrubber) -> None:
        super().__init__()
        self.scrubber = scrubber

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = self.scrubber.text(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = self.scrubber.text(logging.Formatter().formatException(record.exc_info))
        return True


LOGGERS = ("relaygate", "uvicorn.error", "aiohttp.client", "aiohttp.server")


def attach(filt: ScrubFilter) -> list[logging.Logger]:
    """Put ``filt`` on the gateway's loggers (each logger's filters see only its own records, so every
    ``relaygate.*`` one gets it); returns them, for ``detach``."""
    names = {n for n in logging.Logger.manager.loggerDict if n.startswith("relaygate.")} | set(LOGGERS)
    loggers = [logging.getLogger(n) for n in sorted(names)]
    for lg in loggers:
        lg.addFilter(filt)
    return loggers


def detach(filt: ScrubFilter, loggers: Iterable[logging.Logger]) -> None:
    for lg in loggers:
        lg.removeFilter(filt)
