"""failoverd's transitions: each Acquire or Release of the core carried out by the executor,
one at a time and never during a reload, and the outcome told back to the core."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
from collections import Counter
from typing import TYPE_CHECKING

from ipfailover import mail
from ipfailover.core.monitor import Acquire, AcquireOutcome, Monitor, Release, Trigger
from ipfailover.failover import executor as transition
from ipfailover.shell import netif
from ipfailover.shell import runtime as daemon
from ipfailover.shell.clock import Clock

log = logging.getLogger("ipfailover.failoverd")


class TransitionsMixin:
    """Failoverd's transitions (a part of :class:`Failoverd`)."""

    if TYPE_CHECKING:
        loop: asyncio.AbstractEventLoop
        core: Monitor
        clock: Clock
        events: daemon.EventLog
        assignments: list[netif.Assignment]
        executor: transition.TransitionExecutor
        history: collections.deque[transition.TransitionRecord]
        counts: Counter[str]
        _changing: asyncio.Lock
        _work: asyncio.Task[None] | None

        def _flush(self) -> None: ...

        def _situation(self) -> mail.Situation: ...

    def _start_work(self, ev: Acquire | Release) -> None:
        if self._work is not None and not self._work.done():
            raise RuntimeError("the monitor asked for overlapping transitions")  # a core bug
        self._work = self.loop.create_task(self._transition(ev))

    async def _transition(self, ev: Acquire | Release) -> None:
        """Carry out one transition through the executor and tell the core how it went.

        Test gates a takeover and a release when the primary returns, never a release for
        shutdown. Test saying no to a takeover is acquire_done(ok=False): the core waits in
        DECLINED until the primary is heard again. To a release, release_done(ok=False): the
        core keeps holding and tries again after another hold-down.
        """
        async with self._changing:
            await self._carry_out(ev)

    async def _carry_out(self, ev: Acquire | Release) -> None:
        situation = self._situation()
        acquire = isinstance(ev, Acquire)
        if isinstance(ev, Acquire):
            situation = dataclasses.replace(situation, probe=ev.probe, answering=ev.answering)
        try:
            if acquire:
                rec = await self.executor.acquire(ev.reason.value, situation)
            else:
                gate = ev.reason is not Trigger.SHUTDOWN
                rec = await self.executor.release(ev.reason.value, situation, gate=gate)
            self.history.append(rec)
            self.counts[f"transition:{rec.action}:{rec.outcome}"] += 1
            self.counts["script-runs"] += len(rec.scripts)
            self.counts["script-failures"] += len(rec.script_problems)
            ok = rec.ok
            failed = rec.outcome is transition.Outcome.FAILED
        except Exception as e:  # a bug must not leave the core waiting forever
            log.exception("transition failed")
            self.events("transition-error", logging.ERROR, error=repr(e))
            # What is on the interfaces now decides whether we hold: never a duplicate address
            # that nobody tracks.
            ok = await _any_present(self.assignments) if acquire else False
            failed = True
        # Done: the core may ask for the next transition from within *_done (a stop that came
        # during a takeover, a zero failback delay); that must not look like an overlap.
        self._work = None
        if acquire:
            # A takeover that failed (netlink) is tried again with a growing back-off while
            # the primary stays silent (the core's AcquireRetry); one that Test said no to
            # waits for the primary.
            outcome = (
                AcquireOutcome.DONE
                if ok
                else AcquireOutcome.FAILED
                if failed
                else AcquireOutcome.DECLINED
            )
            self.core.acquire_done(self.clock.monotonic(), outcome)
        else:
            self.core.release_done(self.clock.monotonic(), ok=ok)
        self._flush()


async def _any_present(assignments: list[netif.Assignment]) -> bool:
    try:
        return any(await netif.present_all(assignments))
    except netif.NetifError:
        return False
