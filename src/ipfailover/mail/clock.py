"""The mail layer's clock, injected: the outbox reads the time and waits through it.

:class:`SystemClock` is the real one. A test hands the outbox a fake clock (the trio MockClock
idea) and then decides when time passes, so it asserts what the outbox does at each moment
without waiting for, or measuring, real time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Protocol, TypeVar

T = TypeVar("T")


class Clock(Protocol):
    """The outbox's time (trio's MockClock idea): a test hands in a fake one and waits for nothing.

    ``time`` is wall-clock seconds (spool ids, delivery schedules, holds); ``sleep`` is every wait
    the outbox makes (the pause between delivery passes, the grace at stop).
    """

    def time(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock: ``time.time()``, and the event loop's own sleep."""

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


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
