"""The shells' clock, injected (trio's MockClock idea): one protocol for every shell.

:class:`SystemClock` is the real one. A test hands a component a fake clock and then decides when
time passes, so it asserts what the component does at each moment without waiting for, or
measuring, real time. The mail outbox takes one (``Outbox.clock``), and so do the script runner
(``ScriptFolder(clock=...)``, ``run_program(clock=...)``), and the daemons read the ``now`` they
feed their cores through one (:class:`LoopClock` by default).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Protocol, TypeVar

T = TypeVar("T")


class Clock(Protocol):
    """Time as a shell sees it.

    ``time`` is wall-clock seconds since the epoch: what is written down (spool ids, delivery
    schedules that must survive a restart). ``monotonic`` is what durations and deadlines are
    measured in (the event loop's time; it never steps back). ``sleep`` is every wait.
    """

    def time(self) -> float: ...

    def monotonic(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock: ``time.time()``, ``time.monotonic()`` (what asyncio's loop reads), and the
    event loop's own sleep."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


SYSTEM_CLOCK = SystemClock()


class LoopClock(SystemClock):
    """The daemons' clock: ``monotonic`` is the event loop's own time, the time base of its
    timers (``loop.call_at``), so the deadlines a core hands out are scheduled on the clock that
    fed it ``now``."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def monotonic(self) -> float:
        return self.loop.time()


async def within(clock: Clock, aw: Awaitable[T], timeout: float) -> T:
    """``asyncio.wait_for`` on ``clock``: the result of ``aw``, or TimeoutError once ``timeout``
    seconds passed on the clock first (``aw`` is then cancelled, and awaited)."""
    work = asyncio.ensure_future(aw)
    timer = asyncio.ensure_future(clock.sleep(timeout))
    timed_out = False
    try:
        done, _ = await asyncio.wait((work, timer), return_when=asyncio.FIRST_COMPLETED)
        timed_out = work not in done
    finally:
        timer.cancel()
        if not work.done():
            work.cancel()
            await asyncio.wait((work,))
    if timed_out and work.cancelled():
        raise TimeoutError
    return work.result()
