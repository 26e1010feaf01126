"""The ASGI app: hot paths routed by a dict lookup (no framework), errors always in OpenAI's format."""

from __future__ import annotations

import asyncio
import gc
import importlib
import logging
from collections.abc import Awaitable, Callable

from relaygate.api.common import audit_refused
from relaygate.config import Config
from relaygate.core.errors import GatewayError, MethodNotAllowed, NotFound, cut_by_shutdown, shutdown_error
from relaygate.core.logtext import loggable
from relaygate.gateway import Gateway
from relaygate.server.disconnect import Watchers
from relaygate.server.http import (
    ClientGone,
    Receive,
    Request,
    RequestIds,
    Response,
    Scope,
    Send,
    StreamResponse,
    error_response,
)
from relaygate.server.reload import Reloader

log = logging.getLogger("relaygate")

RouteHandler = Callable[[Gateway, Request], Awaitable[Response | StreamResponse]]

# API modules, each exporting ROUTES = [(method, path, handler)]; a path ending in "{rest}" is a prefix
# The collector's first-generation threshold, raised from 700: a call allocates a few hundred container
# objects that die by reference count within the call, and request-log rows wait in the writer's queue,
# so at 700 a collection ran every few calls and walked every live request's frames (~25k instructions
# per call under callgrind, 3% of relaygate-full's CPU). Cycles still get collected, just in larger batches.
GC_THRESHOLDS = (20_000, 20, 20)

# the foreign client dialects, translated through the chat pipeline (docs/dialects.md)
DIALECT_APIS = ("gemini.endpoints", "cohere.endpoints", "bedrock.runtime")

API_MODULES = ("chat", "models", "catalog", "health", "embeddings", "providers", "audio", "anthropic.messages", "passthrough", "admin",
               "metrics", "drills", *DIALECT_APIS)

# the APIs over the gateway's stored objects: Responses, Conversations, hosted Assistants (docs/responses.md)
STORED_OBJECT_APIS = ("responses.endpoints", "responses.conversations", "assistants.endpoints")

# modules outside api/ with routes of their own: the dashboard's page and JSON (docs/dashboard.md)
OTHER_ROUTES = ("relaygate.dashboard.api",)


def _first_segment(path: str) -> str:
    """``/model/`` of ``/model/x/converse``; the whole path when it has one segment."""
    return path[:path.find("/", 1) + 1] or path


class RouteTable:
    """Exact paths in a dict; ``/prefix/{rest}`` paths matched by prefix, longest first, among the prefixes
    of the path's first segment (``/model/…`` is not tried against every ``/v1/…`` prefix)."""

    def __init__(self) -> None:
        self.exact: dict[str, dict[str, RouteHandler]] = {}
        self.prefixes: list[tuple[str, dict[str, RouteHandler]]] = []
        self._by_segment: dict[str, list[tuple[str, dict[str, RouteHandler]]]] = {}
        self._everywhere: list[tuple[str, dict[str, RouteHandler]]] = []

    def add(self, method: str, path: str, handler: RouteHandler) -> None:
        if path.endswith("{rest}"):
            prefix = path[: -len("{rest}")]
            for p, methods in self.prefixes:
                if p == prefix:
                    methods[method] = handler
                    break
            else:
                self.prefixes.append((prefix, {method: handler}))
                self.prefixes.sort(key=lambda pm: -len(pm[0]))
                # each first segment's prefixes, then those without a second "/" (tried for every path):
                # one list a segment, made here, so that a lookup builds nothing
                everywhere = [(p, m) for p, m in self.prefixes if p.find("/", 1) < 0]
                by_segment: dict[str, list[tuple[str, dict[str, RouteHandler]]]] = {}
                for p, m in self.prefixes:
                    if p.find("/", 1) > 0:
                        by_segment.setdefault(_first_segment(p), []).append((p, m))
                self._by_segment = {seg: [*ps, *everywhere] for seg, ps in by_segment.items()}
                self._everywhere = everywhere
        else:
            self.exact.setdefault(path, {})[method] = handler

    def match(self, method: str, path: str, params: dict[str, str]) -> RouteHandler:
        methods = self.exact.get(path)
        if methods is None and len(path) > 1 and path.endswith("/"):
            methods = self.exact.get(path.rstrip("/"))
        if methods is None:
            for prefix, m in self._by_segment.get(_first_segment(path), self._everywhere):
                if path.startswith(prefix) and len(path) > len(prefix):
                    params["rest"] = path[len(prefix):]
                    methods = m
                    break
        if methods is None:
            raise NotFound(f"Unknown route {method} {path}", code="unknown_route")
        handler = methods.get(method)
        if handler is None:
            allowed = ", ".join(sorted(methods))
            raise MethodNotAllowed(f"Method {method} is not allowed on {path}; allowed: {allowed}",
                                   headers={"allow": allowed})
        return handler


def default_routes() -> RouteTable:
    table = RouteTable()
    for name in (*(f"relaygate.api.{n}" for n in (*API_MODULES, *STORED_OBJECT_APIS)), *OTHER_ROUTES):
        module = importlib.import_module(name)
        for method, path, handler in module.ROUTES:
            table.add(method, path, handler)
    return table


class App:
    """The relaygate ASGI application; ``gateway`` is swapped whole on reload."""

    def __init__(self, config: Config, routes: RouteTable | None = None, freeze_gc: bool = False,
                 config_path: str | None = None, workers: int = 1, supervisor: int | None = None) -> None:
        self.config = config  # as the server started (a reload swaps the gateway, whose config is the current)
        self.routes = routes or default_routes()
        self.ids = RequestIds()
        self.watchers = Watchers()  # clients of calls in flight, watched for a disconnect once a call lasts
        self.gateway: Gateway | None = None
        # a server process (not a test process) moves what is alive after start-up out of the collector's
        # way: modules, config, pools never become garbage, and scanning them cost ~15-25 µs per request
        self.freeze_gc = freeze_gc
        self.draining = False
        self.reloader = Reloader(self, config_path, workers, supervisor)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self.http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self.lifespan(receive, send)

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        gw = self.gateway
        if gw is None:
            return await self.serve(None, scope, receive, send)
        gw.calls += 1  # a gateway replaced by a reload closes once its last call ended
        try:
            await self.serve(gw, scope, receive, send)
        finally:
            gw.calls -= 1
            if not gw.calls:
                gw.idle.set()

    async def serve(self, gw: Gateway | None, scope: Scope, receive: Receive, send: Send) -> None:
        req = Request(scope, receive, self.ids, self.watchers)
        matched = False
        resp: Response | StreamResponse | None = None
        try:
            if gw is None:
                raise GatewayError("the gateway is starting", status=503, code="not_ready")
            handler = self.routes.match(req.method, req.path, req.params)
            matched = True
            resp = await handler(gw, req)
        except GatewayError as e:
            resp = error_response(e)
            if matched:
                audit_refused(gw, req, e)
        except ClientGone:
            return
        except asyncio.CancelledError as e:
            if cut_by_shutdown(e):
                # the server is stopping and this call outlived the drain: it gets a 503 and its row says so
                task = asyncio.current_task()
                if task is not None:
                    task.uncancel()
                cut = shutdown_error()
                resp = error_response(cut)
                if matched and not getattr(e, "audited", False):
                    audit_refused(gw, req, cut)
            elif not req.client_left:
                raise  # cancelled from outside: not ours to swallow
        except Exception as e:
            log.exception("internal error on %s %s (request %s)", loggable(req.method), loggable(req.path), req.id)
            err = GatewayError(f"internal error in the gateway; see its log for request {req.id}",
                               code="internal_error")
            resp = error_response(err)
            if matched and not getattr(e, "audited", False):
                audit_refused(gw, req, err)
        finally:
            left = req.stop_watching()
        if left:  # the client left while the call was in flight: the upstream request was cancelled
            if req.task is not None:
                req.task.uncancel()
            if resp is not None and resp.reply is not None:  # the call finished anyway: its bookkeeping runs
                resp.reply.finish(ClientGone())
            return
        assert resp is not None
        try:
            await resp.send(send, receive, req.id, scope)
        except OSError:  # the client went away while we answered
            pass
        except asyncio.CancelledError as e:  # ended by the server's shutdown while answering: nothing to add
            if not cut_by_shutdown(e):
                raise

    def begin_drain(self) -> None:
        """The server is stopping: readiness answers 503 from now on (calls in flight go on)."""
        self.draining = True
        if self.gateway is not None:
            self.gateway.draining = True

    async def lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                try:
                    self.gateway = await self.reloader.start(self.config)
                    self.gateway.draining = self.draining
                except Exception as e:
                    log.exception("start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": str(e)})
                    return
                if self.freeze_gc:
                    gc.collect()
                    gc.freeze()
                    gc.set_threshold(*GC_THRESHOLDS)
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await self.reloader.close()  # the serving gateway, and any replaced one still finishing
                await send({"type": "lifespan.shutdown.complete"})
                return

