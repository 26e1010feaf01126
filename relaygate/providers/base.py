"""What every provider adapter implements, and the HTTP plumbing they share."""

from __future__ import annotations

import errno
import logging
import re
import resource
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote

import orjson

from relaygate.config import DeploymentBase
from relaygate.core import jsonvalue, shapes
from relaygate.core.aiter import aclose
from relaygate.core.call import Call, Dialect, Handler, Reply, Route
from relaygate.core.errors import (
    BadRequest,
    GatewayError,
    ServerBusy,
    Unavailable,
    Unsupported,
    UpstreamTimeout,
)
from relaygate.core.scrub import Scrubber
from relaygate.core.shapes.openai import ChatRequest
from relaygate.providers.aws.eventstream import EVENTSTREAM
from relaygate.providers.listing import ListedModel
from relaygate.server.upload import ClientBody
from relaygate.upstream import (
    Client,
    ConnectFailed,
    EncodedHeaders,
    PoolTimeout,
    Response,
    Timeouts,
    UpstreamError,
)

if TYPE_CHECKING:
    from relaygate.server.multipart import AudioUpload, Keep

log = logging.getLogger("relaygate")


class Provider:
    """An upstream's wire format: OpenAI-format requests in, OpenAI-format replies out.

    One instance per deployment. What it can do is declared on its class: ``routes`` it serves (a method
    each: ``chat``, ``embeddings``, …), reached through ``handlers``, its route table; every other route
    answers ``Unsupported``. Failures are raised as ``GatewayError`` subclasses. A streamed ``Reply`` is
    returned only once the upstream accepted the request, so that errors before the first byte can still be
    retried elsewhere. Upstream requests never outlive a deadline (the call's, or a health probe's).
    """

    routes: ClassVar[frozenset[Route]] = frozenset()
    cache_control: ClassVar[bool] = False  # keeps Anthropic's cache_control markers (prompt caching)
    # reads the OpenAI chat request to build its own (a translator): such chat calls are checked against the
    # typed request model first (core/shapes), once per call; a provider that forwards the body as it is
    # leaves it to its upstream and spares the hot path the full check
    translates: ClassVar[bool] = True
    # sends a /v1/messages request as the client wrote it (``call.anthropic_request``, checked by that route)
    relays_messages: ClassVar[bool] = False
    # sends a Gemini or Cohere client's own request (``call.native``) when it is of this dialect
    relays: ClassVar[Dialect | None] = None

    def __init__(self, config: DeploymentBase, client: Client, scrub: Scrubber | None = None) -> None:
        self.config = config
        self.kind = config.provider
        self.client = client
        self._pool_refused = 0  # calls refused for want of an upstream connection (the gateway's cap)
        self._pool_warned = 0.0
        # the gateway's (every secret and upstream of the config); alone, this deployment's own
        self.scrub = scrub if scrub is not None else Scrubber(config.secret_values(), upstreams_of(config))
        self._timeouts = Timeouts(connect=config.connect_timeout, read=config.read_timeout, total=config.timeout)
        self._encoded_from: Mapping[str, str] | None = None
        self._encoded = EncodedHeaders({})
        methods: dict[Route, Handler] = {
            Route.CHAT: self.chat, Route.EMBEDDINGS: self.embeddings, Route.TRANSCRIPTIONS: self.transcriptions,
            Route.TRANSLATIONS: self.translations, Route.SPEECH: self.speech,
            Route.COUNT_TOKENS: self.count_tokens, Route.PASSTHROUGH: self.passthrough,
            Route.RESPONSES: self.responses,
        }
        # a route the class does not declare is refused even where a base class implements it (Azure does
        # not take OpenAI's passthrough URLs)
        self.handlers: dict[Route, Handler] = {r: methods[r] if r in self.routes else self.refuse for r in Route}
        if self.translates:
            for r in self.routes:
                self.handlers[r] = translated(self.handlers[r], self.kind, r in CHAT_SHAPED, self.relays_messages,
                                              self.relays)
        for r in self.routes:  # outermost: nothing the upstream sent leaves unscrubbed
            self.handlers[r] = scrubbed(self.handlers[r], self.scrub)
        # its own route table, kept: fault injection (observability/chaos.py) wraps ``handlers`` from this one
        # and puts it back, whichever gateway (a reload's) the deployment serves next
        self.own_handlers: dict[Route, Handler] = dict(self.handlers)

    # the routes; a subclass implements those it declares in ``routes``

    async def chat(self, call: Call) -> Reply:
        return await self.refuse(call)

    async def embeddings(self, call: Call) -> Reply:
        return await self.refuse(call)

    async def transcriptions(self, call: Call) -> Reply:
        return await self.refuse(call)

    async def translations(self, call: Call) -> Reply:
        return await self.refuse(call)

    async def speech(self, call: Call) -> Reply:
        return await self.refuse(call)

    async def count_tokens(self, call: Call) -> Reply:
        """``{"input_tokens": n}`` for a chat request (Anthropic's ``/v1/messages/count_tokens``)."""
        return await self.refuse(call)

    async def passthrough(self, call: Call) -> Reply:
        """One of OpenAI's other REST routes (``call.forward``), forwarded as it is."""
        return await self.refuse(call)

    async def responses(self, call: Call) -> Reply:
        """A Responses API request (``call.responses_request``) sent to an upstream that serves it natively."""
        return await self.refuse(call)

    async def refuse(self, call: Call) -> Reply:
        """The answer to a route this provider does not serve."""
        raise Unsupported(f"provider {self.kind!r} {_CANNOT[call.route]}", param="model")

    async def start(self) -> None:
        """Get ready before the gateway serves (what needs I/O: credentials); a ValueError is a config error."""
        return None

    async def probe(self, deadline: float) -> None:
        """A cheap health check, done by ``deadline`` (monotonic); raise a GatewayError when the upstream is
        not usable."""
        return None

    # answers ``list_models`` from its upstream's model listing (model discovery, catalog/discovery.py)
    lists_models: ClassVar[bool] = False

    async def list_models(self, deadline: float) -> list[ListedModel]:
        """The models this upstream serves, from its listing API (providers/listing.py), done by ``deadline``;
        Unsupported where it has none the gateway reads."""
        raise Unsupported(f"provider {self.kind!r} has no model listing the gateway reads")

    async def get_json(self, deadline: float, url: str, headers: Mapping[str, str] | EncodedHeaders,
                       error: Callable[[Response], Awaitable[GatewayError]]) -> dict[str, Any]:
        """GET a JSON object; an error status becomes the provider's error (``error`` reads it)."""
        resp = await self.request(deadline, "GET", url, headers=headers)
        if resp.status >= 400:
            raise await error(resp)
        return await self.read_json_object(resp)

    async def check(self, deadline: float) -> None:
        """``probe``, its failure scrubbed (what the health checker calls)."""
        try:
            await self.probe(deadline)
        except GatewayError as e:
            self.scrub.error(e)
            raise

    # -- shared helpers -------------------------------------------------------------------------

    def encoded(self, headers: Mapping[str, str]) -> EncodedHeaders:
        """``headers`` checked and encoded once for as long as the same mapping is passed (a deployment's static
        headers; one that changes, such as a refreshed token's, is a new mapping and is encoded anew)."""
        if headers is not self._encoded_from:
            self._encoded = EncodedHeaders(headers)
            self._encoded_from = headers
        return self._encoded

    async def request(
        self,
        deadline: float,
        method: str,
        url: str,  # sent as given: percent-escapes stay exactly as signed (AWS)
        *,
        headers: Mapping[str, str] | EncodedHeaders,
        data: bytes | AsyncIterator[bytes] | None = None,
    ) -> Response:
        """Send one upstream request within the deployment's timeouts and ``deadline`` (monotonic; 0: none);
        connection failures, timeouts and redirects become gateway errors.

        Redirects are not followed (the upstream URL comes from the config alone) and are no answer either:
        a 3xx would otherwise pass as a success with an empty or foreign body."""
        try:
            resp = await self.client.request(method, url, headers=headers, data=data, timeouts=self._timeouts,
                                             deadline=deadline or None)
        except TimeoutError:
            raise UpstreamTimeout(f"upstream {self.kind} timed out") from None
        except ConnectFailed as e:
            if e.errno in (errno.EMFILE, errno.ENFILE):
                raise out_of_files(self.kind) from None
            raise Unavailable(f"upstream {self.kind} is unreachable ({type(e).__name__})", status=502) from None
        except PoolTimeout:  # the gateway's own cap on upstream connections (server.max_upstream_connections)
            raise self.connections_full() from None
        except UpstreamError as e:
            raise Unavailable(f"upstream {self.kind} is unreachable ({type(e).__name__})", status=502) from None
        except ValueError as e:  # a URL or header of the config the client will not send (credentials in the
            # URL, CR/LF in a header): nothing was sent; the message names neither value
            raise Unavailable(f"upstream {self.kind} cannot be called as configured: {e}", status=502,
                              code="upstream_misconfigured") from None
        if 300 <= resp.status < 400:
            resp.close()
            raise Unavailable(f"upstream {self.kind} answered with a redirect (HTTP {resp.status}), which the "
                              "gateway does not follow", status=502, code="upstream_redirect")
        return resp

    def connections_full(self) -> ServerBusy:
        """Every upstream connection the gateway may open is in use, and none freed within
        ``server.upstream_queue_timeout``: a 503 of the gateway's own (no breaker or fallback acts on it),
        logged (once per 10 s per deployment, with the count)."""
        self._pool_refused += 1
        now = time.monotonic()
        if now - self._pool_warned >= 10:
            self._pool_warned = now
            log.warning("upstream connections: all in use, a call to %s refused after waiting for one (%d so far; "
                        "server.max_upstream_connections, server.upstream_queue_timeout)", self.kind,
                        self._pool_refused)
        return ServerBusy("the gateway's upstream connections are all in use and none freed in time; try again "
                          "shortly", code="upstream_connections_full", retry_after=1.0)

    async def send_body(self, deadline: float, method: str, url: str, headers: dict[str, str], upload: ClientBody,
                        data: AsyncIterator[bytes]) -> Response:
        """Send a request whose body streams from the client; a client-side failure is reported as such."""
        try:
            resp = await self.request(deadline, method, url, headers=headers, data=data)
        except GatewayError:
            upload.reraise()  # the client's body failed (too large, malformed, gone), not the upstream
            raise
        if upload.error is not None:
            resp.close()
            upload.reraise()
        return resp

    async def send_upload(self, deadline: float, url: str, headers: dict[str, str], upload: AudioUpload, model: str,
                          keep: Keep | None = None, *, buffer: bool = False) -> Response:
        """POST a multipart upload with ``model`` rewritten (and only the fields ``keep`` accepts): streamed as
        it arrives, or, with ``buffer`` (the deployment's ``buffer_uploads``), read whole first and sent with a
        Content-Length."""
        headers = {**headers, "content-type": upload.content_type}
        if buffer:
            await upload.read_all()
            headers["content-length"] = str(upload.encoded_length(model, keep))
        return await self.send_body(deadline, "POST", url, headers, upload, upload.body(model, keep))

    async def read_body(self, resp: Response) -> bytes:
        """The whole upstream body; the connection is released after, however the read ended."""
        try:
            return await resp.read()
        except TimeoutError:
            raise UpstreamTimeout(f"upstream {self.kind} timed out") from None
        except UpstreamError as e:
            raise Unavailable(f"upstream {self.kind} failed mid-response ({type(e).__name__})", status=502) from None
        finally:
            resp.release()

    async def read_json_object(self, resp: Response) -> dict[str, Any]:
        """A whole upstream JSON object body (the connection is released); anything else is Unavailable."""
        return (await self.read_json_raw(resp))[1]

    async def read_json_raw(self, resp: Response) -> tuple[bytes, dict[str, Any]]:
        """``read_json_object`` and the bytes it was read from (for an answer relayed as it came)."""
        raw = await self.read_body(resp)
        return raw, self.json_object(raw)

    def json_object(self, raw: bytes) -> dict[str, Any]:
        """An upstream body's JSON object; anything else is Unavailable."""
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise Unavailable(f"upstream {self.kind} returned a body that is not JSON", status=502) from None
        if not isinstance(data, dict):
            raise Unavailable(f"upstream {self.kind} returned an unexpected body", status=502)
        return data

    @staticmethod
    async def error_body(resp: Response) -> bytes:
        """The body of an upstream error response (b"" when unreadable); the connection is released."""
        try:
            return await resp.read()
        except (UpstreamError, TimeoutError):
            return b""
        finally:
            resp.release()


MAX_MODEL_NAME = 256
_NOT_IN_A_NAME = re.compile(r"[/\\\x00-\x1f\x7f-\x9f]")  # separators and control characters


def model_segment(model: str, safe: str = "") -> str:
    """A model name as one URL path segment, percent-encoded (but for the characters in ``safe``).

    Every provider that puts a model into a URL path builds it here. Through a ``*`` wildcard the name is the
    client's: a ``/`` or ``\\`` would add segments, and ``.`` or ``..`` would be normalised away by the HTTP
    client, sending the deployment's credentials to another path of its host. Those are a 400 naming
    ``model``, never a URL.
    """
    if not model or model in (".", "..") or len(model) > MAX_MODEL_NAME or _NOT_IN_A_NAME.search(model):
        raise BadRequest(f"{model[:80]!r} is not a model name this deployment can put into its URL (no '/', "
                         "'\\', control characters or '.'/'..' segments, at most "
                         f"{MAX_MODEL_NAME} characters)", param="model", code="invalid_model")
    return quote(model, safe=safe)


def out_of_files(kind: str) -> ServerBusy:
    """The gateway, not the upstream, is out of file descriptors: logged, and a 503 that says so (no breaker
    or fallback acts on it)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    log.error("out of file descriptors (open-file limit %d): cannot open a connection to upstream %s", soft, kind)
    return ServerBusy("the gateway has run out of file descriptors and cannot reach the upstream; try again "
                      "shortly", code="out_of_file_descriptors", retry_after=1.0)


CHAT_SHAPED = (Route.CHAT, Route.COUNT_TOKENS)  # routes whose body is an OpenAI chat request
# what reading an upstream answer of a shape the translation did not expect raises (a missing key, a list
# where an object was): the upstream's fault, a 502, never an internal error
ANSWER_ERRORS = (KeyError, IndexError, TypeError, AttributeError, ValueError)


def translated(handler: Handler, kind: str, chat_shaped: bool, relays_messages: bool,
               relays: Dialect | None = None) -> Handler:
    """A translating provider's ``handler``: the call's chat body checked against the typed request first,
    and for room to nest it deeper (once per call, so a fallback to another translator does not check it
    again; not when the client's Messages body is relayed as it came), and an answer it cannot read made a
    502, whole or mid-stream."""
    async def run(call: Call) -> Reply:
        # a foreign client's body sent as it came: its chat body is neither checked nor made (NativeCall)
        native = relays is not None and call.native is not None and call.native.dialect is relays
        if chat_shaped and not call.shape_checked and not native \
                and not (relays_messages and call.anthropic_request is not None):
            shapes.check(call.body, ChatRequest)
            jsonvalue.room_to_translate(call.body)
            call.shape_checked = True
        cap = call.output_cap
        if cap is not None and not native and "max_completion_tokens" not in call.body and "max_tokens" not in call.body:
            call.body["max_completion_tokens"] = cap  # every translator reads it (the limits layer set it)
        try:
            reply = await handler(call)
        except ANSWER_ERRORS as e:
            raise unreadable(kind, e) from None
        if reply.stream is not None:
            reply.stream = readable(reply.stream, kind)
        return reply

    return run


def scrubbed(handler: Handler, scrub: Scrubber) -> Handler:
    """A provider's ``handler`` whose every output passes ``scrub``: the reply's body, stream and headers
    (only the allowed ones are kept), and an error's message, code, param and headers, whole or mid-stream."""
    async def run(call: Call) -> Reply:
        try:
            reply = await handler(call)
        except GatewayError as e:
            scrub.error(e)
            raise
        if reply.body:
            reply.body = scrub.data(reply.body)
        if reply.stream is not None and scrub.active:  # no secret and no upstream address: nothing to find
            # an AWS event stream is relayed in whole binary messages, none of them ending in a line break
            reply.stream = scrub.stream(reply.stream, framed=reply.media_type == EVENTSTREAM)
        if reply.headers:
            reply.headers = scrub.headers(reply.headers)
        return reply

    return run


def upstreams_of(config: DeploymentBase) -> dict[str, str]:
    """The upstream URL a deployment's config names (``api_base``), with the name to show in its place."""
    base = getattr(config, "api_base", None)
    return {base: config.name or f"{config.provider}/{config.model}"} if isinstance(base, str) else {}


def unreadable(kind: str, error: BaseException) -> Unavailable:
    log.warning("upstream %s answered in a shape the gateway could not read (%s)", kind, type(error).__name__)
    return Unavailable(f"upstream {kind} answered in a shape the gateway could not read ({type(error).__name__})",
                       status=502, code="upstream_unreadable")


async def readable(stream: AsyncIterator[bytes], kind: str) -> AsyncIterator[bytes]:
    """``stream``, with an upstream chunk it could not read made a 502 (an error event, the stream ended)."""
    try:
        async for chunk in stream:
            yield chunk
    except ANSWER_ERRORS as e:
        raise unreadable(kind, e) from None
    finally:
        await aclose(stream)


_CANNOT = {
    Route.CHAT: "does not serve chat completions", Route.EMBEDDINGS: "does not serve embeddings",
    Route.TRANSCRIPTIONS: "does not serve audio transcriptions",
    Route.TRANSLATIONS: "does not serve audio translations", Route.SPEECH: "does not serve speech",
    Route.COUNT_TOKENS: "does not count tokens",
    Route.PASSTHROUGH: "does not serve OpenAI's other routes (files, images, …)",
    Route.RESPONSES: "does not serve OpenAI's Responses API natively (responses_native in the config)",
}


def retry_after_seconds(headers: Any) -> float | None:
    """Seconds to wait from ``retry-after-ms`` / ``retry-after`` (seconds form), if present."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    ra = headers.get("retry-after")
    if ra:
        try:
            return max(0.0, float(ra))
        except ValueError:
            return None
    return None


RATE_LIMIT_HEADERS = (
    "x-ratelimit-limit-requests", "x-ratelimit-limit-tokens", "x-ratelimit-remaining-requests",
    "x-ratelimit-remaining-tokens", "x-ratelimit-reset-requests", "x-ratelimit-reset-tokens",
)


def error_json(body: bytes) -> dict[str, Any]:
    """The upstream's error object when the body is JSON, else {}."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    if isinstance(data, dict):
        err = data.get("error", data)
        return err if isinstance(err, dict) else {"message": str(err)}
    if isinstance(data, list) and data and isinstance(data[0], dict):  # Gemini sometimes wraps in a list
        return error_json(orjson.dumps(data[0]))
    return {}
