"""Noticing a client that leaves while its call is in flight: after its request body was read and before the
answer goes out, nothing reads the ASGI ``receive`` channel, so without this the upstream would work on for
nobody (uvicorn's ``send`` drops the answer silently). A streamed answer watches on its own while it streams.

A call is watched only once it lasted a tick: most calls a gateway answers fast never pay for a watch (two
dict operations each), and one timer per server, not one per call, arms the watches of the calls that last.
A watch steps one ``receive()`` coroutine by hand from the done-callbacks of the futures it awaits, as a Task
would, without a Task's scheduling and the extra step to cancel it (callgrind, per watched call: ~18k
instructions; a watcher task: ~38k).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

TICK = 0.1  # seconds; a client leaving a call that lasts is noticed within two ticks


class DisconnectWatch:
    """Cancels ``task`` when ``receive`` says the client disconnected; ``close`` stops watching."""

    __slots__ = ("_receive", "_coro", "_task", "gone")

    def __init__(self, receive: Callable[[], Awaitable[dict[str, Any]]], task: asyncio.Task[Any]) -> None:
        self._receive = receive
        self._task = task
        self.gone = False
        self._coro: Any = receive()
        self._step(None)

    def _step(self, waited: Any) -> None:
        coro = self._coro
        if coro is None:  # closed while this callback was already queued
            return
        try:
            if waited is not None and waited.cancelled():  # the server is shutting down
                self.close()
                return
            waiting = coro.send(None)
        except StopIteration as done:
            if done.value.get("type") == "http.disconnect":
                self._coro = None
                self.gone = True
                self._task.cancel()
            else:  # a late empty body message: wait on
                self._coro = self._receive()
                self._step(None)
            return
        except BaseException:  # receive() itself failed: stop watching (sending the answer will tell)
            self._coro = None
            return
        if waiting is None:  # a bare yield asks for the next loop turn
            asyncio.get_running_loop().call_soon(self._step, None)
        else:
            waiting._asyncio_future_blocking = False
            waiting.add_done_callback(self._step)

    def close(self) -> None:
        coro, self._coro = self._coro, None
        if coro is not None:
            coro.close()


class Watched(Protocol):
    def watch(self) -> None: ...


class Watchers:
    """The calls in flight of one server that are not watched yet; at each tick, those that were already
    there at the previous tick start being watched."""

    __slots__ = ("_young", "_old", "_timer")

    def __init__(self) -> None:
        self._young: dict[Watched, None] = {}  # came since the last tick
        self._old: dict[Watched, None] = {}  # were there at the last tick
        self._timer: asyncio.TimerHandle | None = None

    def add(self, call: Watched) -> None:
        self._young[call] = None
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(TICK, self._tick)

    def discard(self, call: Watched) -> None:
        if self._young.pop(call, self) is self:
            self._old.pop(call, None)

    def _tick(self) -> None:
        lasting, self._old, self._young = self._old, self._young, {}
        self._timer = asyncio.get_running_loop().call_later(TICK, self._tick) if self._old else None
        for call in lasting:
            call.watch()
