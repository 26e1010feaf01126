"""Noticing a client that leaves while its call is in flight: after its request body was read and before the
answer goes out, nothing reads the ASGI ``receive`` channel, so without this the upstream would work on for
nobody (uvicorn's ``send`` drops the answer silently). A streamed answer watches on its own while it streams.

A call is watched only once it lasted a tick: most calls a gateway answers fast never pay for a watch (a dict
store and a pop each), and one timer per server, not one per call, arms the watches of the calls that last.
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
    """The calls in flight of one server that are not watched yet, each with the tick it came in: at each tick,
    those that came before the previous one start being watched. A call adds itself to ``waiting`` and takes
    itself out (one dict store, one pop: on every call, so not even a method call)."""

    __slots__ = ("waiting", "tick", "timer")

    def __init__(self) -> None:
        self.waiting: dict[Watched, int] = {}
        self.tick = 0
        self.timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """Start ticking (a call came while no timer ran); the timer stops when no call waits."""
        self.timer = asyncio.get_running_loop().call_later(TICK, self._tick)

    def _tick(self) -> None:
        self.tick += 1
        before = self.tick - 1
        lasting = [call for call, came in self.waiting.items() if came < before]
        for call in lasting:
            del self.waiting[call]
        self.timer = asyncio.get_running_loop().call_later(TICK, self._tick) if self.waiting else None
        for call in lasting:
            call.watch()
