"""Runs of the hosted Assistants API, executed by the gateway in tasks of its own (not in the request that
created them): each step is one chat call through the whole pipeline (keys, limits, routing, fallbacks, the
request log) to the assistant's model, streamed, and turned into the run's messages, steps and events.

A run's state lives in the object store; a client that streams the run listens to the task's events. A run
left ``queued`` or ``in_progress`` by a gateway that stopped is failed when it is next read (its lease, the
longest a live run's call may take, has passed), and a gateway that closes fails the runs it still executes:
no run hangs. Runs waiting for tool outputs expire after ten minutes, as at OpenAI.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from relaygate.api.assistants.shapes import chat_message, now, run_usage
from relaygate.api.chunks import chat_completion, stream_error_message, translate_stream, whole_as_chunk
from relaygate.core.call import Call, Reply, Route, Usage
from relaygate.core.errors import GatewayError
from relaygate.providers.streaming import sse
from relaygate.store.objects import ObjectStore, Stored

if TYPE_CHECKING:
    from relaygate.auth.principal import Principal

log = logging.getLogger("relaygate")

ACTIVE = ("queued", "in_progress", "cancelling")
TERMINAL = ("completed", "failed", "cancelled", "expired", "incomplete")
TOOL_WAIT = 600  # seconds a run waits for tool outputs before it expires (OpenAI's ten minutes)
DONE = b"event: done\ndata: [DONE]\n\n"

Emit = Callable[[bytes], None]
Handle = Callable[[Call], Awaitable[Reply]]


def event(name: str, data: dict[str, Any]) -> bytes:
    return sse(data, name.encode())


def settle_stale(run: Stored, running: bool) -> bool:
    """Move a run whose time is up to where it must be: a run waiting for tool outputs past its expiry is
    ``expired``; an active run whose lease has passed with no task of this gateway executing it was cut off
    by a stopped gateway and is ``failed``. True when the run changed."""
    d, t = run.data, time.time()
    if d["status"] == "requires_action" and d.get("expires_at") and t > d["expires_at"]:
        d.update(status="expired", required_action=None)
        return True
    lease = (run.extra or {}).get("lease_until")
    if d["status"] in ACTIVE and not running and lease is not None and t > lease:
        d.update(status="failed", failed_at=int(t), last_error={
            "code": "server_error", "message": "the gateway executing this run stopped before it finished; "
                                               "create a new run"})
        return True
    return False


class RunEvents:
    """Chat chunks in, the run's message and tool-call step (and their events) out."""

    def __init__(self, store: ObjectStore, run: Stored, emit: Emit) -> None:
        self.store = store
        self.run = run
        self.emit = emit
        self.message: Stored | None = None
        self.step: Stored | None = None  # the message-creation step
        self.tool_step: Stored | None = None
        self.calls: dict[int, dict[str, Any]] = {}
        self.finish_reason: str | None = None
        self.failure: str | None = None

    def _new_step(self, details: dict[str, Any]) -> Stored:
        d = self.run.data
        step = self.store.new("step", "step_", self.run.owner, {
            "object": "thread.run.step", "run_id": self.run.id, "assistant_id": d["assistant_id"],
            "thread_id": d["thread_id"], "type": details["type"], "status": "in_progress", "step_details": details,
            "last_error": None, "expired_at": None, "cancelled_at": None, "failed_at": None, "completed_at": None,
            "usage": None, "metadata": {}}, parent=self.run.id)
        self.emit(event("thread.run.step.created", step.data) + event("thread.run.step.in_progress", step.data))
        return step

    def _text(self, piece: str) -> None:
        if self.message is None:
            d = self.run.data
            self.message = self.store.new("message", "msg_", self.run.owner, {
                "object": "thread.message", "thread_id": d["thread_id"], "role": "assistant", "status": "in_progress",
                "content": [], "assistant_id": d["assistant_id"], "run_id": self.run.id, "attachments": [],
                "metadata": {}, "completed_at": None, "incomplete_at": None, "incomplete_details": None},
                parent=d["thread_id"])
            self.step = self._new_step({"type": "message_creation",
                                        "message_creation": {"message_id": self.message.id}})
            self.emit(event("thread.message.created", self.message.data)
                      + event("thread.message.in_progress", self.message.data))
            self.message.data["content"] = [{"type": "text", "text": {"value": "", "annotations": []}}]
        self.message.data["content"][0]["text"]["value"] += piece
        self.emit(event("thread.message.delta", {"id": self.message.id, "object": "thread.message.delta", "delta": {
            "content": [{"index": 0, "type": "text", "text": {"value": piece, "annotations": []}}]}}))

    def _tool(self, tc: dict[str, Any]) -> None:
        if self.tool_step is None:
            self.tool_step = self._new_step({"type": "tool_calls", "tool_calls": []})
        index = tc.get("index", 0)
        fn = tc.get("function") or {}
        call = self.calls.get(index)
        delta: dict[str, Any] = {"index": index, "type": "function", "function": {}}
        if call is None:
            call = self.calls[index] = {"id": tc.get("id") or "call_" + os.urandom(12).hex(), "type": "function",
                                        "function": {"name": fn.get("name") or "", "arguments": "", "output": None}}
            delta.update(id=call["id"], function={"name": call["function"]["name"], "arguments": "", "output": None})
        args = fn.get("arguments")
        if isinstance(args, str) and args:
            call["function"]["arguments"] += args
            delta["function"]["arguments"] = args
        self.emit(event("thread.run.step.delta", {"id": self.tool_step.id, "object": "thread.run.step.delta",
                                                  "delta": {"step_details": {"type": "tool_calls",
                                                                             "tool_calls": [delta]}}}))

    # ChunkWriter
    def chunk(self, chunk: dict[str, Any]) -> bytes:
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if isinstance(delta.get("content"), str) and delta["content"]:
                self._text(delta["content"])
            for tc in delta.get("tool_calls") or ():
                if isinstance(tc, dict):
                    self._tool(tc)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return b""

    def error(self, err: dict[str, Any]) -> bytes:
        self.failure = stream_error_message(err)
        return b""

    def end(self, usage: Usage | None) -> bytes:
        return b""

    def finished(self, usage: Usage | None) -> list[Stored]:
        """Close the message and the steps; the objects to store."""
        out: list[Stored] = []
        t = now()
        step_usage = run_usage(None, usage.prompt_tokens, usage.completion_tokens) if usage else None
        if self.message is not None and self.step is not None:
            m = self.message.data
            if self.finish_reason == "length":
                m.update(status="incomplete", incomplete_at=t, incomplete_details={"reason": "max_tokens"})
                self.emit(event("thread.message.incomplete", m))
            else:
                m.update(status="completed", completed_at=t)
                self.emit(event("thread.message.completed", m))
            self.step.data.update(status="completed", completed_at=t, usage=None if self.calls else step_usage)
            self.emit(event("thread.run.step.completed", self.step.data))
            out += [self.message, self.step]
        if self.tool_step is not None:
            self.tool_step.data["step_details"]["tool_calls"] = [self.calls[i] for i in sorted(self.calls)]
            self.tool_step.data["usage"] = step_usage
            out.append(self.tool_step)
        return out


class Runner:
    """Executes runs in tasks of the gateway; ``listen`` streams a run's events to one client."""

    def __init__(self, store: ObjectStore, call_timeout: float) -> None:
        self.store = store
        self.call_timeout = call_timeout
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.listeners: dict[str, asyncio.Queue[bytes | None]] = {}
        self.closing = False

    def running(self, run_id: str) -> bool:
        return run_id in self.tasks

    def lease(self, run: Stored) -> None:
        """Note in ``run`` how long a live run may stay active (past it, a reader fails it: see settle_stale)."""
        if run.extra is None:
            run.extra = {}
        run.extra["lease_until"] = time.time() + self.call_timeout + 30

    def start(self, run: Stored, key: Principal | None, handle: Handle,
              first: bytes = b"") -> AsyncIterator[bytes] | None:
        """Execute ``run`` (saved as queued) in a task of its own, its calls through ``handle`` (the pipeline of
        the gateway that started it: a reload lets it finish there); with ``first`` (the events before it
        ran), the run's events as a stream for the client that asked for one."""
        queue: asyncio.Queue[bytes | None] | None = None
        if first:
            queue = self.listeners[run.id] = asyncio.Queue()
            queue.put_nowait(first)
        task = asyncio.ensure_future(self._execute(run, key, handle))
        self.tasks[run.id] = task

        def done(_: asyncio.Task[None]) -> None:
            self.tasks.pop(run.id, None)
            q = self.listeners.pop(run.id, None)
            if q is not None:
                q.put_nowait(None)

        task.add_done_callback(done)
        return None if queue is None else self._drain(run.id, queue)

    async def _drain(self, run_id: str, queue: asyncio.Queue[bytes | None]) -> AsyncIterator[bytes]:
        try:
            while (piece := await queue.get()) is not None:
                yield piece
            yield DONE
        finally:
            if self.listeners.get(run_id) is queue:
                del self.listeners[run_id]

    def _emit(self, run_id: str) -> Emit:
        def emit(data: bytes) -> None:
            q = self.listeners.get(run_id)
            if q is not None and data:
                q.put_nowait(data)

        return emit

    async def _execute(self, run: Stored, key: Principal | None, handle: Handle) -> None:
        emit = self._emit(run.id)
        d = run.data
        extra = run.extra if run.extra is not None else {}
        run.extra = extra
        d.update(status="in_progress", started_at=d.get("started_at") or now())
        self.lease(run)
        emit(event("thread.run.in_progress", d))
        writer = RunEvents(self.store, run, emit)
        try:
            await self.store.save(run)
            if "context" not in extra:
                extra["context"] = await self._context(run)
            spent = spent_beyond(d)
            if spent is not None:  # an earlier step of the run used what its limits allow
                d.update(status="incomplete", incomplete_details={"reason": spent})
                await self._finish(run, writer.finished(None), emit)
                return
            usage = await self._call(run, key, handle, writer)
            objs = writer.finished(usage)
            if usage is not None:
                d["usage"] = run_usage(d.get("usage"), usage.prompt_tokens, usage.completion_tokens)
            if writer.failure is not None:
                raise GatewayError(writer.failure, status=502, code="upstream_error")
            if writer.calls:
                calls = [writer.calls[i] for i in sorted(writer.calls)]
                d.update(status="requires_action", expires_at=now() + TOOL_WAIT, required_action={
                    "type": "submit_tool_outputs", "submit_tool_outputs": {"tool_calls": [
                        {"id": c["id"], "type": "function", "function": {"name": c["function"]["name"],
                                                                         "arguments": c["function"]["arguments"]}}
                        for c in calls]}})
                assert writer.tool_step is not None
                extra["pending_step"] = writer.tool_step.id
                text = writer.message.data["content"][0]["text"]["value"] if writer.message is not None else None
                extra.setdefault("turns", []).append({"role": "assistant", "content": text, "tool_calls": [
                    {"id": c["id"], "type": "function", "function": {"name": c["function"]["name"],
                                                                     "arguments": c["function"]["arguments"]}}
                    for c in calls]})
            elif writer.finish_reason == "length":
                d.update(status="incomplete", incomplete_details={"reason": "max_completion_tokens"})
            else:
                d.update(status="completed", completed_at=now())
            await self._finish(run, objs, emit)
        except asyncio.CancelledError:
            if self.closing:
                d.update(status="failed", failed_at=now(), last_error={
                    "code": "server_error", "message": "the gateway stopped before the run finished; create a new run"})
            else:
                d.update(status="cancelled", cancelled_at=now(), required_action=None)
            await asyncio.shield(self._finish(run, writer.finished(None), emit))
        except GatewayError as e:
            code = "rate_limit_exceeded" if e.status == 429 else "server_error"
            d.update(status="failed", failed_at=now(), last_error={"code": code, "message": e.message})
            await self._finish(run, writer.finished(None), emit)
        except Exception as e:  # a bug must not leave the run hanging
            log.exception("run %s failed", run.id)
            d.update(status="failed", failed_at=now(), last_error={"code": "server_error",
                                                                  "message": f"internal error ({type(e).__name__})"})
            await self._finish(run, [], emit)

    async def _finish(self, run: Stored, objs: list[Stored], emit: Emit) -> None:
        d = run.data
        if d["status"] in ("completed", "incomplete", "requires_action"):
            # a cancel may have come through another worker meanwhile: it wins
            stored = await self.store.get("run", run.id, run.owner)
            if stored is not None and stored.data["status"] == "cancelling":
                d.update(status="cancelled", cancelled_at=now(), required_action=None)
        (run.extra or {}).pop("lease_until", None)
        try:
            await self.store.save(run, *objs)
        except Exception:
            log.exception("could not store run %s", run.id)
        emit(event(f"thread.run.{d['status']}", d))

    async def _context(self, run: Stored) -> list[dict[str, Any]]:
        """The thread's messages as chat messages (``truncation_strategy`` applied), after the instructions."""
        d = run.data
        messages = [o.data for o in await self.store.children("message", run.owner, d["thread_id"])]
        strategy = d.get("truncation_strategy") or {}
        if strategy.get("type") == "last_messages" and isinstance(strategy.get("last_messages"), int):
            messages = messages[-strategy["last_messages"]:] if strategy["last_messages"] > 0 else []
        out = [chat_message(m) for m in messages]
        instructions = "\n\n".join(s for s in (d.get("instructions"), (run.extra or {}).get("additional_instructions"))
                                   if s)
        if instructions:
            out.insert(0, {"role": "system", "content": instructions})
        return out

    async def _call(self, run: Stored, key: Principal | None, handle: Handle, writer: RunEvents) -> Usage | None:
        d, extra = run.data, run.extra or {}
        body: dict[str, Any] = {"model": d["model"], "messages": [*extra["context"], *extra.get("turns", ())],
                                "stream": True, "stream_options": {"include_usage": True}}
        functions = [{"type": "function", "function": t["function"]} for t in d.get("tools") or ()]
        if functions:
            body["tools"] = functions
            if d.get("tool_choice") not in (None, "auto"):
                body["tool_choice"] = d["tool_choice"]
            if d.get("parallel_tool_calls") is False:
                body["parallel_tool_calls"] = False
        if isinstance(d.get("response_format"), dict) and d["response_format"].get("type") != "text":
            body["response_format"] = d["response_format"]
        for name in ("temperature", "top_p"):
            if d.get(name) is not None:
                body[name] = d[name]
        if d.get("max_completion_tokens"):  # over the whole run: what its earlier steps left
            used = (d.get("usage") or {}).get("completion_tokens") or 0
            body["max_completion_tokens"] = max(1, d["max_completion_tokens"] - used)
        if d.get("reasoning_effort"):
            body["reasoning_effort"] = d["reasoning_effort"]
        call = Call(id="run_" + run.id[-12:] + "_" + os.urandom(4).hex(), route=Route.CHAT, model=d["model"],
                    body=body, stream=True, key=key, wants_usage=True,
                    deadline=time.monotonic() + self.call_timeout)
        # the thread shortened to fit the model's window (truncation_strategy auto, OpenAI's default) and the
        # run's max_prompt_tokens: the oldest messages go, through the gateway's condensation (``Gateway.fit``)
        if (d.get("truncation_strategy") or {}).get("type", "auto") == "auto":
            call.truncation = "auto"
        if isinstance(d.get("max_prompt_tokens"), int):
            call.max_prompt_tokens = d["max_prompt_tokens"]
        reply = await handle(call)
        error: BaseException | None = None
        try:
            if reply.stream is None:
                writer.chunk(whole_as_chunk(chat_completion(reply)))
            else:
                async for _ in translate_stream(reply.stream, writer, lambda: reply.usage):
                    pass
        except BaseException as e:
            error = e
            raise
        finally:
            reply.finish(error)
        return reply.usage

    async def close(self) -> None:
        """Stop the runs still executing: each is stored as failed, with a last_error that says why."""
        self.closing = True
        for task in list(self.tasks.values()):
            task.cancel()
        if self.tasks:
            await asyncio.wait(list(self.tasks.values()), timeout=5)


def spent_beyond(d: dict[str, Any]) -> str | None:
    """The limit (``max_prompt_tokens``, ``max_completion_tokens``) a run's earlier steps used up, over the whole
    run as OpenAI counts them: the run then ends ``incomplete`` for that reason instead of taking another step."""
    usage = d.get("usage") or {}
    for limit, used in (("max_prompt_tokens", "prompt_tokens"), ("max_completion_tokens", "completion_tokens")):
        cap = d.get(limit)
        if isinstance(cap, int) and cap > 0 and (usage.get(used) or 0) >= cap:
            return limit
    return None
