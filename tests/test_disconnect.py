"""Watching for a client that leaves while its call is in flight: what is watched, when, and what a watch does."""

from __future__ import annotations

import asyncio
from typing import Any

from relaygate.server.disconnect import TICK, DisconnectWatch, Watchers


class Cycle:
    """What a request's ``receive`` does in uvicorn: wait for an event set by new data or a lost connection."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.disconnected = False
        self.receives = 0

    async def receive(self) -> dict[str, Any]:
        self.receives += 1
        if not self.disconnected:
            await self.event.wait()
            self.event.clear()
        return {"type": "http.disconnect"} if self.disconnected else {"type": "http.request", "body": b""}

    def lose(self) -> None:
        self.disconnected = True
        self.event.set()


class Call:
    def __init__(self) -> None:
        self.watched = 0

    def watch(self) -> None:
        self.watched += 1


def watched() -> tuple[Cycle, asyncio.Task[Any], DisconnectWatch]:
    """A request cycle and a watch of it on behalf of the current task."""
    cycle = Cycle()
    task = asyncio.current_task()
    assert task is not None
    return cycle, task, DisconnectWatch(cycle.receive, task)


def test_only_calls_that_outlast_a_tick_are_watched() -> None:
    async def run() -> None:
        watchers = Watchers()

        def came(call: Call) -> None:  # what a request does once its body is read
            watchers.waiting[call] = watchers.tick
            if watchers.timer is None:
                watchers.start()

        fast, slow = Call(), Call()
        came(fast)
        came(slow)
        del watchers.waiting[fast]  # answered at once: never watched
        await asyncio.sleep(TICK * 1.5)
        assert slow.watched == 0  # it may have come just before that tick
        await asyncio.sleep(TICK)
        assert (fast.watched, slow.watched) == (0, 1)
        assert watchers.timer is None  # nothing waits: no timer runs
        later = Call()
        came(later)  # a new call starts it again
        await asyncio.sleep(TICK * 2.5)
        assert later.watched == 1 and not watchers.waiting

    asyncio.run(run())


def test_a_watch_cancels_the_task_when_the_client_leaves() -> None:
    async def run() -> None:
        cycle, task, watch = watched()
        cycle.event.set()  # a late empty body message: not a disconnect
        await asyncio.sleep(0)
        assert not watch.gone and cycle.receives == 2
        cycle.lose()
        try:
            await asyncio.sleep(1)
        except asyncio.CancelledError:
            assert watch.gone
            task.uncancel()
        else:
            raise AssertionError("the task was not cancelled")

    asyncio.run(run())


def test_a_closed_watch_never_cancels() -> None:
    async def run() -> None:
        cycle, _, watch = watched()
        cycle.lose()  # its callback is queued already…
        watch.close()  # …and the answer went out before it ran
        await asyncio.sleep(0.05)
        assert not watch.gone and not cycle.event._waiters  # none left behind

    asyncio.run(run())
