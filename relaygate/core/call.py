"""The unit of work that flows through the pipeline (``Call``) and what comes back (``Reply``)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from relaygate.auth.principal import Principal
    from relaygate.core.pricing import Meter
    from relaygate.observability.tracing import CallTrace
    from relaygate.routing.deployment import Deployment
    from relaygate.server.multipart import AudioUpload
    from relaygate.server.upload import ForwardedRequest


class Route(StrEnum):
    """What a call asks of a provider: each provider's route table maps these to its methods."""

    CHAT = "chat"
    EMBEDDINGS = "embeddings"
    TRANSCRIPTIONS = "transcriptions"
    TRANSLATIONS = "translations"
    SPEECH = "speech"
    COUNT_TOKENS = "count_tokens"  # Anthropic's /v1/messages/count_tokens
    PASSTHROUGH = "passthrough"  # OpenAI's other REST routes (files, batches, images, …), forwarded as they are
    # a /v1/responses request only a deployment serving OpenAI's Responses API natively can answer (built-in
    # tools, items chat cannot carry): ``Call.body`` is the Responses request itself
    RESPONSES = "responses"


class Dialect(StrEnum):
    """A foreign client dialect whose requests a deployment of the same kind can send as they came."""

    GEMINI = "gemini"  # /v1beta/models/{model}:generateContent
    COHERE = "cohere"  # /v2/chat
    BEDROCK = "bedrock"  # /model/{modelId}/converse, /converse-stream


# where a native body carries its output cap and its choices: (container field names, cap names, choices names);
# Google takes a field by its camelCase or snake_case name
_GEMINI_CONFIG = ("generationConfig", "generation_config")
_BINARY = frozenset(("data", "bytes"))  # inline media: Gemini's inlineData.data, Bedrock's source.bytes


@dataclass(slots=True)
class NativeRequest:
    """A foreign client's own request body, riding along its chat translation: a deployment speaking
    ``dialect`` sends it (model and stream set by the provider) and its answer is relayed untouched
    (``Reply.native``). ``dropped`` names the fields the chat translation left out, once it was made
    (``NativeCall``)."""

    dialect: Dialect
    body: dict[str, Any]
    dropped: list[str] = field(default_factory=list)
    # ``body`` serialised (``cap_output`` lets it go), and its SHA-256 (hex) when the client sent these very
    # bytes and a SigV4 check hashed them: a provider sending ``body`` unchanged sends them (Bedrock: signed
    # without hashing them again). Never the client's bytes when they differ: a key given twice reads as its
    # last value here and maybe as its first upstream, which would then answer another request than the one
    # estimated, limited, logged and cached
    raw: bytes | None = None
    sha256: str | None = None

    def _gemini_config(self) -> dict[str, Any] | None:
        for name in _GEMINI_CONFIG:
            gc = self.body.get(name)
            if isinstance(gc, dict):
                return gc
        return None

    def output_cap(self) -> Any:
        """The output cap the body sets (in its own field), as it is (not checked)."""
        if self.dialect is Dialect.GEMINI:
            gc = self._gemini_config()
            return None if gc is None else gc.get("maxOutputTokens", gc.get("max_output_tokens"))
        if self.dialect is Dialect.BEDROCK:
            cfg = self.body.get("inferenceConfig")
            return cfg.get("maxTokens") if isinstance(cfg, dict) else None
        return self.body.get("max_tokens")

    def choices(self) -> int:
        """The answers the body asks for (Gemini's ``candidateCount``; 1 elsewhere)."""
        if self.dialect is Dialect.GEMINI:
            gc = self._gemini_config()
            n = None if gc is None else gc.get("candidateCount", gc.get("candidate_count"))
            return n if type(n) is int and n > 0 else 1
        return 1

    def prompt_tokens(self) -> int:
        """The prompt as a reservation counts it without the chat translation: ~4 characters a token of the
        body's text (its strings and field names), 1,000 characters for each piece of inline media."""
        return _text_chars(self.body, "") // 4 + 1

    def cap_output(self, cap: int) -> tuple[bool, bool]:
        """Lower the body's own output cap to ``cap`` (the budget's hold); set it when absent. (whether the
        client set a cap, whether it was lowered)."""
        self.raw = self.sha256 = None  # the body may change: its bytes are made anew
        if self.dialect is Dialect.GEMINI:  # Google takes a field by its camelCase or snake_case name
            name = "generation_config" if "generation_config" in self.body else "generationConfig"
            gc = self.body.get(name)
            if not isinstance(gc, dict):
                gc = self.body[name] = {}
            given = lowered = False
            for field_name in ("max_output_tokens", "maxOutputTokens"):
                value = gc.get(field_name)
                if value is not None:
                    given = given or type(value) is int
                    if type(value) is not int or value > cap:
                        gc[field_name] = cap
                        lowered = True
            if gc.get("max_output_tokens") is None:
                gc["maxOutputTokens"] = min(cap, gc.get("maxOutputTokens") or cap)
            return given, lowered
        if self.dialect is Dialect.BEDROCK:
            cfg = self.body.get("inferenceConfig")
            if not isinstance(cfg, dict):
                cfg = self.body["inferenceConfig"] = {}
            value = cfg.get("maxTokens")
            if type(value) is not int or value > cap:
                cfg["maxTokens"] = cap
                return type(value) is int, True
            return True, False
        value = self.body.get("max_tokens")
        if type(value) is not int or value > cap:
            self.body["max_tokens"] = cap
            return type(value) is int, True
        return True, False


def _text_chars(value: Any, key: str) -> int:
    """The characters of a native body's text: its strings and field names; inline media (base64 data, a
    ``data:`` URI) 1,000 each, as the chat estimate counts a non-text part."""
    if type(value) is str:
        return 1000 if key in _BINARY or value.startswith("data:") else len(value)
    if type(value) is dict:
        return sum(len(k) + _text_chars(v, k) for k, v in value.items())
    if type(value) is list:
        return sum(_text_chars(v, key) for v in value)
    return 1


@dataclass(slots=True)
class Usage:
    """Token usage of one call; ``known`` is False when the upstream does not report it."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    known: bool = True
    audio_seconds: float = 0.0
    characters: int = 0
    estimated: bool = False  # counted by the gateway from what a stream delivered: the upstream never said

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def uncached_prompt_tokens(self) -> int:
        """The prompt tokens neither read from nor written to a cache: Anthropic's and Converse's input count."""
        return max(0, self.prompt_tokens - self.cached_tokens - self.cache_write_tokens)

    @classmethod
    def cache_apart(cls, uncached: Any, output: Any, read: Any, write: Any) -> Usage:
        """A native usage whose input count leaves cache reads and writes apart (Anthropic's, Converse's), each
        count read by ``token_count``: our prompt_tokens includes them, as OpenAI's does."""
        r, w = token_count(read), token_count(write)
        return cls(prompt_tokens=token_count(uncached) + r + w, completion_tokens=token_count(output), cached_tokens=r,
                   cache_write_tokens=w)

    def as_openai(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }
        if self.cached_tokens:
            out["prompt_tokens_details"] = {"cached_tokens": self.cached_tokens}
        return out

    @classmethod
    def from_openai(cls, u: Any) -> Usage | None:
        if not isinstance(u, dict):
            return None
        details = u.get("prompt_tokens_details") or u.get("input_tokens_details") or {}
        prompt = u.get("prompt_tokens", u.get("input_tokens", 0)) or 0
        completion = u.get("completion_tokens", u.get("output_tokens", 0)) or 0
        return cls(
            prompt_tokens=int(prompt),
            completion_tokens=int(completion),
            cached_tokens=int((details.get("cached_tokens") if isinstance(details, dict) else 0) or 0),
        )


def token_count(value: Any) -> int:
    """A token count from a native usage a translation re-serialises: a number below 2^62 (so that sums still
    fit 64 bits), else 0, whatever the upstream sent."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 2 ** 62:
        return 0
    return int(value)


@dataclass(frozen=True, slots=True)
class UpstreamChain:
    """A stored response that deployment ``deployment`` answered natively, as upstream response ``upstream_id``:
    that deployment may send ``previous_response_id`` with only the turn's new ``input`` instead of the
    whole conversation (the upstream keeps what it stored, reasoning and built-in tool calls included)."""

    deployment: str
    upstream_id: str
    input: Any


@dataclass(slots=True)
class Condensed:
    """What context condensation did to a call (condense/layer.py): its log row's ``condensed`` column.
    Token counts are the gateway's estimates (condense/tokens.py)."""

    strategy: str  # truncate_middle | summarize (the last one applied)
    retried: bool  # condensed after the upstream's context-length error and tried once more
    messages_before: int
    messages_after: int
    dropped: int  # messages dropped (truncate_middle)
    summarized: int  # messages replaced by a summary (summarize; the summary is one more system message)
    summary_reused: bool  # the summary was one made for an earlier turn of the conversation
    tokens_before: int
    tokens_after: int

    def as_json(self) -> str:
        """The column's value: a small JSON object (numbers and names only: nothing of the conversation)."""
        return orjson.dumps({"strategy": self.strategy, "retried": self.retried,
                             "messages_before": self.messages_before, "messages_after": self.messages_after,
                             "dropped": self.dropped, "summarized": self.summarized,
                             "summary_reused": self.summary_reused, "tokens_before": self.tokens_before,
                             "tokens_after": self.tokens_after}).decode()


@dataclass(slots=True)
class Call:
    """One client request on its way through the pipeline."""

    id: str
    route: Route
    model: str  # the model name the client asked for
    body: dict[str, Any]  # the parsed OpenAI-format request body
    stream: bool = False
    headers: dict[str, str] = field(default_factory=dict)  # client headers, lower-case names
    client_ip: str = ""
    provider: str | None = None  # explicit provider asked for (body "provider" or "provider/model")
    wants_usage: bool = False  # the client asked for stream_options.include_usage
    started: float = field(default_factory=time.monotonic)
    deadline: float = 0.0  # monotonic time by which the call must finish
    key: Principal | None = None  # the authenticated caller (None: an open gateway)
    # the model's deployments once resolved: the auth layer resolves them to check the key against the names
    # the router will use, and the router takes them from here
    deployments: list[Deployment] | None = None
    attempts: int = 0
    deployment: Deployment | None = None  # the deployment that served (or last tried) the call
    tried: list[str] = field(default_factory=list)  # deployment names attempted, in order
    attempt_at: float = 0.0  # monotonic start of the latest attempt
    # the attempts that failed (None until one does): (deployment, provider, status, error kind, start, end),
    # monotonic times; the request log keeps them for a call tried more than once (requestlog/audit.py)
    failed_attempts: list[tuple[str, str, int, str, float, float]] | None = None
    upload: AudioUpload | None = None  # transcriptions, translations: the multipart upload, streamed
    forward: ForwardedRequest | None = None  # passthrough: the client's request, forwarded as it is
    meter: Meter | None = None  # passthrough: how the forwarded request is priced
    anthropic_request: dict[str, Any] | None = None  # /v1/messages: the client's own Messages body
    native: NativeRequest | None = None  # Gemini, Cohere and Bedrock clients: their own request body
    # /v1/responses: the Responses request a deployment serving that API natively sends (the whole conversation
    # as its input), and how it may chain on its own stored response instead (api/responses/native.py)
    responses_request: dict[str, Any] | None = None
    responses_chain: UpstreamChain | None = None
    # the conversation may be shortened to fit the model's context window ("auto": the Responses API's
    # ``truncation``, an Assistants run's ``truncation_strategy``), or never ("disabled": the context error
    # stands, whatever the model's ``condense`` config says); None: the model's config decides
    truncation: str | None = None
    max_prompt_tokens: int | None = None  # an Assistants run's ``max_prompt_tokens``: the prompt shortened to fit
    fallbacks: tuple[str, ...] = ()  # the fallback models the call moved on to, in order
    cost_nano: int | None = None  # what the call cost, once known (the limits and the log share it)
    cache_hit: bool = False  # answered from the response cache
    condensed: Condensed | None = None  # the conversation was shortened to fit the model's context window
    saved_nano: int = 0  # a cache hit: what the answer cost when it was made (what the hit did not spend)
    shape_checked: bool = False  # the body passed the typed chat request check (core/shapes), done for translators
    trace: CallTrace | None = None  # the call's trace, when tracing is on (observability/tracing.py)
    faults: tuple[str, ...] = ()  # the chaos rules that injected a fault into it (observability/chaos.py)
    # the output tokens the gateway holds the answer to (what the caller's remaining budget pays for): the
    # client's caps in the body are lowered to it; where it set none, each provider sends this in its own field
    output_cap: int | None = None
    # the request body's bytes as the client sent them (``/v1/chat/completions``; None elsewhere): the cache key
    # hashes them instead of dumping ``body`` again while the body is as parsed from them
    raw: bytes | None = None

    @property
    def translated(self) -> bool:
        """Whether ``body`` exists already (always, but for a ``NativeCall`` not yet translated)."""
        return True

    @property
    def untranslated(self) -> NativeRequest | None:
        """The client's own request while its chat form was never made (the same-dialect fast path): the body
        sent upstream, which the limits, prices and log read instead of ``body``; else None."""
        native = self.native
        return native if native is not None and not self.translated else None


_CHAT_BODY = Call.__dict__["body"]  # the slot that holds Call.body (a NativeCall fills it when asked)


class NativeCall(Call):
    """A Gemini, Cohere or Bedrock client's chat call whose OpenAI chat body (``body``) is made from its own
    (``native``) only when something reads it: a deployment of another kind, or condensing. A deployment of
    the client's kind sends ``native.body`` as it came and the limits read what they need from it
    (``NativeRequest``), so the same-dialect fast path never makes the chat form (the log of request bodies
    logs the client's own, tracing leaves out the chat parameters). The translation may refuse the body
    (BadRequest), then, wherever it is asked for."""

    __slots__ = ("_translate",)

    def __init__(self, native: NativeRequest, translate: Callable[[], dict[str, Any]], id: str, model: str,
                 stream: bool = False, headers: dict[str, str] | None = None, client_ip: str = "",
                 key: Principal | None = None, wants_usage: bool = False, deadline: float = 0.0) -> None:
        # the fields named one by one, not passed on as **fields: a call made per request, which unpacking a
        # keyword dict into the dataclass's ~40 parameters made cost twice a Call's construction (~26k
        # instructions against ~12k under callgrind)
        Call.__init__(self, id=id, route=Route.CHAT, model=model, body={}, stream=stream,
                      headers={} if headers is None else headers, client_ip=client_ip, key=key,
                      wants_usage=wants_usage, deadline=deadline)
        self.native = native
        self._translate: Callable[[], dict[str, Any]] | None = translate

    @property
    def body(self) -> dict[str, Any]:
        translate = self._translate
        if translate is not None:
            _CHAT_BODY.__set__(self, translate())  # (kept unmade if the translation refuses the body)
            self._translate = None
        made: dict[str, Any] = _CHAT_BODY.__get__(self, Call)
        return made

    @body.setter
    def body(self, value: dict[str, Any]) -> None:
        self._translate = None
        _CHAT_BODY.__set__(self, value)

    @property
    def translated(self) -> bool:
        return self._translate is None


CHARS_PER_TOKEN = 4  # the documented estimate (docs/keys-limits-log.md): ~4 characters a token, as prompts


class Delivered:
    """The text a stream carried to its client: content, reasoning and tool-call arguments, counted as it was
    passed on by the piece that reads that stream's format (the provider: its translator to OpenAI chunks, or
    its relay of a dialect's own events; ``providers/delivered.py``), for the usage of a stream whose upstream
    never said (cut by either side, or a server that ignores ``include_usage``): see ``completion_tokens``.
    One per stream reply (``delivered_of``), whatever wraps its stream afterwards.

    A relay that does not parse its events holds them (``hold``) instead of reading each as it goes: they are
    read (``fold``) only when the estimate is needed, or when the relay has held enough (it folds then), so a
    stream whose usage comes pays a list append an event."""

    __slots__ = ("chars", "pieces", "held", "reader")

    def __init__(self) -> None:
        self.chars = 0  # characters of text
        self.pieces = 0  # non-empty text deltas
        self.held: list[Any] | None = None  # events relayed, not read yet
        self.reader: Callable[[Delivered, list[Any]], None] | None = None

    def text(self, chars: int) -> None:
        """One delta of ``chars`` characters of text (nothing when empty)."""
        if chars:
            self.chars += chars
            self.pieces += 1

    def hold(self, reader: Callable[[Delivered, list[Any]], None]) -> list[Any]:
        """The list a relay appends its events to; ``reader`` counts their text when they are folded."""
        self.reader = reader
        self.held = []
        return self.held

    def fold(self) -> None:
        """Count the text of the events held, and let them go."""
        held = self.held
        if held and self.reader is not None:
            self.reader(self, held)
            held.clear()

    def completion_tokens(self) -> int:
        """The output tokens delivered, estimated: the larger of ~4 characters a token of the text and one
        token per text delta (OpenAI and the servers that mimic it, Cohere too, send about one token a delta;
        Gemini, Anthropic and translated streams carry several)."""
        self.fold()
        return max(self.pieces, -(-self.chars // CHARS_PER_TOKEN))


def delivered_of(reply: Reply) -> Delivered:
    """The reply's count of the text its stream delivered, made on first use."""
    d = reply.delivered
    if d is None:
        d = reply.delivered = Delivered()
    return d


DoneCallback = Callable[["Reply", BaseException | None], None]


def header_pairs(lines: bytes) -> list[tuple[bytes, bytes]]:
    """Header lines in wire form (``Reply.raw_headers``) as (name, value) pairs."""
    return [(name, value) for name, _, value in (line.partition(b": ") for line in lines.split(b"\r\n") if line)]


@dataclass(slots=True)
class Reply:
    """A response from upstream in OpenAI's format: a whole body, or a stream of SSE-framed bytes."""

    status: int = 200
    body: bytes | None = None
    stream: AsyncIterator[bytes] | None = None
    media_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    # more response headers in wire form, "name: value\r\n" each, written by the HTTP server as they are: the
    # cache's x-relaygate-cache, x-relaygate-cache-key and a hit's age, then the key's x-ratelimit-* (lower-case
    # names, words, digits and hex; never content-length, transfer-encoding or connection); a layer adds to them
    raw_headers: bytes = b""
    usage: Usage | None = None
    first_byte_at: float | None = None  # monotonic time of the first upstream byte (TTFT for streams)
    anthropic_native: bool = False  # the body or stream is Anthropic's own Messages format, relayed untouched
    native: bool = False  # the body or stream is in the call's own dialect (``Call.native``), relayed untouched
    responses_native: bool = False  # the body or stream is OpenAI's Responses API format, relayed as it came
    delivered: Delivered | None = None  # a stream's count of the text it delivered (``delivered_of``)
    _done: list[DoneCallback] = field(default_factory=list)
    _finished: bool = False

    def on_done(self, cb: DoneCallback) -> None:
        """Run ``cb(reply, error)`` once the reply was fully delivered (or failed)."""
        self._done.append(cb)

    def finish(self, error: BaseException | None = None) -> None:
        """Called exactly once by whoever delivered the reply to the client."""
        if self._finished:
            return
        self._finished = True
        for cb in reversed(self._done):
            try:
                cb(self, error)
            except Exception:  # a bookkeeping bug must never break delivery
                import logging

                logging.getLogger("relaygate").exception("on_done callback failed")


Handler = Callable[[Call], Awaitable[Reply]]
