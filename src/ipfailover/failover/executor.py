"""The one executor of a takeover or a release, used by failoverd and by ``ipfailover process``.

A takeover runs, in this order, with nothing overlapping:

1. ``Test`` (the gate): absent or exit 0 goes ahead; anything else (non-zero, timeout, refused)
   declines the takeover, and only mail is sent;
2. ``PreAcq*`` scripts, one after the other; all have finished before any address changes;
3. the netlink change (add each address);
4. the first round of announcements (gratuitous ARP / unsolicited NA) for every address taken;
   the rest of ``FAILOVER_GARP_COUNT`` goes on in the background, ``FAILOVER_GARP_INTERVAL`` apart.
   With the netlink backend, 3 and 4 go chunk by chunk (shell/netbatch.py): each chunk of
   addresses is announced as soon as the kernel has added it, while the next is being added;
5. ``PostAcq*`` scripts;
6. the mail, queued to the spool (delivery never holds a transition up).

A release is the same with ``PreRel*``, delete, ``PostRel*`` and no announcements; ``Test`` gates
it too, except when the daemon is shutting down. A failing script is reported but does not stop
the others; only ``Test`` gates. The result is a :class:`TransitionRecord` with a timeline of step
durations and every script's result, for the log, the mail and the status command.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine, Sequence

from ipfailover import mail
from ipfailover.failover.backends import (
    AddressBackend,
    Announcing,
    BatchBackend,
    NetlinkBackend,
    Notifier,
    TransitionExecutor,
)
from ipfailover.failover.lock import LOCK_NAME, LockHeld, ManagerLock, manager, overlap
from ipfailover.failover.notices import (
    MAIL_OUTPUT_CHARS,
    scripts_text,
    timeline_text,
    transition_notice,
    transition_subject,
)
from ipfailover.failover.record import (
    Action,
    Outcome,
    Step,
    TransitionRecord,
    plain,
    script_env,
)
from ipfailover.shell import announce as announcing
from ipfailover.shell import netif
from ipfailover.shell import runtime as daemon
from ipfailover.shell import scripts as hooks
from ipfailover.shell.announce import Announcer
from ipfailover.shell.scripts import Phase, ScriptResult, Status

__all__ = [  # the record, the mail text and the lock moved out; their old names stay
    "LOCK_NAME",
    "MAIL_OUTPUT_CHARS",
    "Action",
    "AddressBackend",
    "Announcing",
    "BatchBackend",
    "Executor",
    "LockHeld",
    "ManagerLock",
    "NetlinkBackend",
    "Notifier",
    "Outcome",
    "Step",
    "TransitionExecutor",
    "TransitionRecord",
    "manager",
    "overlap",
    "plain",
    "script_env",
    "scripts_text",
    "timeline_text",
    "transition_notice",
    "transition_subject",
]

log = logging.getLogger("ipfailover.transition")

SPOOL_TIMEOUT = 5.0  # seconds a transition waits for its mail to be spooled (a hung disk)
OUTPUT_LOG_LINES = 40  # lines of a script's output copied to the log (the mail has more)


_OUTCOME_LEVEL = {
    Outcome.DONE: logging.INFO,
    Outcome.PARTIAL: logging.WARNING,
    Outcome.DECLINED: logging.WARNING,
    Outcome.FAILED: logging.ERROR,
}


class Executor:
    """Carries out transitions one at a time (an asyncio.Lock serializes them)."""

    def __init__(
        self,
        *,
        node: str,
        addresses: Sequence[netif.Assignment],
        scripts: hooks.HookRunner,
        backend: AddressBackend,
        announcing: Announcing,
        notifier: Notifier | None,
        events: daemon.EventLog | None = None,
        spool_timeout: float = SPOOL_TIMEOUT,
    ) -> None:
        self.node = node
        self._addresses: tuple[netif.Assignment, ...] = ()
        self._texts: tuple[str, str] = ("", "")
        self._plain: tuple[str, ...] = ()
        self.addresses = tuple(addresses)
        self.scripts = scripts
        self.backend = backend
        self.announcing = announcing
        self.notifier = notifier
        self.events = events or daemon.EventLog(log)
        self.spool_timeout = spool_timeout
        self._lock = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()
        self._mailing: set[asyncio.Task[None]] = set()  # mail being spooled after a transition
        self._last_release_problem: tuple[str, str] | None = None
        self._announcer: Announcer | None = None  # of the takeover under way
        self._announced: set[netif.Assignment] = set()  # its first round, chunk by chunk
        self._first_sent = 0

    # Public -------------------------------------------------------------------------------------

    @property
    def addresses(self) -> tuple[netif.Assignment, ...]:
        return self._addresses

    @addresses.setter
    def addresses(self, addresses: Sequence[netif.Assignment]) -> None:
        """The addresses to take over; their texts for the log and the records are made once
        here, not at every transition (a thousand addresses: milliseconds each time)."""
        self._addresses = tuple(addresses)
        self._plain = tuple(plain(a) for a in self._addresses)
        self._texts = (" ".join(str(a) for a in self._addresses), " ".join(self._plain))

    def reconfigure(
        self,
        addresses: Sequence[netif.Assignment],
        scripts: hooks.HookRunner,
        announcing: Announcing,
    ) -> None:
        """After a reload: the addresses, scripts and announcements of the new configuration."""
        self.addresses = tuple(addresses)
        self.announcing = announcing
        self.scripts = scripts

    async def acquire(
        self, reason: str, situation: mail.Situation, *, gate: bool = True
    ) -> TransitionRecord:
        """Take the addresses over (Test gate unless ``gate`` is False)."""
        async with self._lock:
            rec = self._begin(Action.ACQUIRE, reason, situation)
            if not gate or await self._gate(rec, situation):
                await self._phase(rec, Phase.PRE_ACQ, situation)
                held = await self._add_all(rec)
                if held:
                    await self._announce_first(rec, held)
                    await self._phase(rec, Phase.POST_ACQ, situation)
            return await self._finish(rec, situation)

    async def release(
        self, reason: str, situation: mail.Situation, *, gate: bool
    ) -> TransitionRecord:
        """Hand the addresses back; ``gate`` is False for a release because we are stopping."""
        async with self._lock:
            self._stop_announcing()
            rec = self._begin(Action.RELEASE, reason, situation)
            if not gate or await self._gate(rec, situation):
                await self._phase(rec, Phase.PRE_REL, situation)
                if await self._delete_all(rec):
                    await self._phase(rec, Phase.POST_REL, situation)
            return await self._finish(rec, situation)

    async def prepare(self) -> None:
        """Encode the netlink requests of the current addresses in a worker thread (about
        70 us each with pyroute2), so that a takeover of many addresses does not."""
        if isinstance(self.backend, NetlinkBackend):
            await asyncio.to_thread(self.backend.prepare, self.addresses)

    async def drain(self) -> None:
        """Wait for the background announcements and mail spooling (a one-shot command must not
        cut them short)."""
        while self._background or self._mailing:
            await asyncio.gather(*self._background, *self._mailing, return_exceptions=True)

    async def flush_mail(self) -> None:
        """Wait until the transitions' mail is spooled (each waits at most ``spool_timeout``)."""
        while self._mailing:
            await asyncio.gather(*self._mailing, return_exceptions=True)

    # Steps ----------------------------------------------------------------------------------------

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _begin(self, action: Action, reason: str, situation: mail.Situation) -> TransitionRecord:
        rec = TransitionRecord(action, reason, self._plain, self._now(), time.time())
        self.events(
            f"{action}-start",
            reason=reason,
            peer=situation.peer,
            addresses=self._texts[0],
            folder=self.scripts.path,
        )
        return rec

    def _step(self, rec: TransitionRecord, name: str, began: float, detail: str = "") -> None:
        now = self._now()
        rec.steps.append(Step(name, began - rec.started, now - began, detail))

    async def _gate(self, rec: TransitionRecord, situation: mail.Situation) -> bool:
        began = self._now()
        tests = self.scripts.scripts(Phase.TEST)
        if not tests:
            self._step(rec, "Test", began, "absent: go ahead")
            return True
        result = await self._run(rec, tests[0], situation)
        go = result.ok
        self._step(rec, "Test", began, f"{result.detail}: {'go ahead' if go else 'no'}")
        if not go:
            rec.outcome = Outcome.DECLINED
            verdict = "Test was refused" if result.status is Status.REFUSED else "Test said no"
            rec.why = f"{verdict} ({result.detail})"
            self.events("test-said-no", logging.WARNING, action=rec.action, detail=result.detail)
        return go

    async def _phase(self, rec: TransitionRecord, phase: Phase, situation: mail.Situation) -> None:
        began = self._now()
        found = self.scripts.scripts(phase)
        results = [await self._run(rec, s, situation) for s in found]
        bad = sum(1 for r in results if not r.ok)
        detail = f"{len(results)} script(s)" + (f", {bad} not ok" if bad else "")
        self._step(rec, phase.value, began, detail if found else "no scripts")

    async def _run(
        self, rec: TransitionRecord, script: hooks.Script, situation: mail.Situation
    ) -> ScriptResult:
        env = script_env(
            action=rec.action,
            reason=rec.reason,
            phase=script.phase,
            node=self.node,
            situation=situation,
            addresses=self.addresses,
            folder=self.scripts.path,
        )
        self.events("script-start", logging.DEBUG, script=script.name, phase=script.phase)
        result = await self.scripts.run(script, env)
        rec.scripts.append(result)
        self._log_script(result)
        return result

    def _log_script(self, r: ScriptResult) -> None:
        level = {
            Status.OK: logging.INFO,
            Status.FAILED: logging.WARNING,
            Status.TIMEOUT: logging.WARNING,
        }.get(r.status, logging.ERROR)
        event = "script-done" if r.ok else f"script-{r.status}"
        self.events(
            event, level, script=r.name, phase=r.phase, duration=r.duration, detail=r.detail
        )
        lines = r.output.splitlines()
        for line in lines[:OUTPUT_LOG_LINES]:
            self.events("script-output", level, script=r.name, text=line)
        if len(lines) > OUTPUT_LOG_LINES:
            more = len(lines) - OUTPUT_LOG_LINES
            self.events("script-output", level, script=r.name, text=f"[{more} more lines]")

    async def _changes(self, add: bool) -> list[bool | netif.NetifError]:
        """Add (or delete) every address: in one batch if the backend can, else one by one.
        A batch takeover announces each chunk of addresses as soon as it is added."""
        if isinstance(self.backend, BatchBackend):
            if not add:
                return await self.backend.delete_all(self.addresses)
            announcer = self._announcer = self.backend.announcer(self.addresses)
            self._announced = set()
            self._first_sent = 0
            count = self.announcing.count

            async def announce(chunk: list[netif.Assignment]) -> None:
                if count:
                    self._first_sent += await announcer.send(chunk, 1, count)
                    self._announced.update(chunk)

            return await self.backend.add_all(self.addresses, announce)
        change = self.backend.add if add else self.backend.delete
        out: list[bool | netif.NetifError] = []
        for a in self.addresses:
            try:
                out.append(await change(a))
            except netif.NetifError as e:
                out.append(e)
        return out

    async def _add_all(self, rec: TransitionRecord) -> list[netif.Assignment]:
        began = self._now()
        held = []
        for a, r in zip(self.addresses, await self._changes(add=True), strict=True):
            if isinstance(r, netif.NetifError):
                rec.errors.append(str(r))
                self.events("acquire-error", logging.ERROR, address=a, error=r)
            else:
                held.append(a)
        rec.changed_at = self._now() - rec.started
        self._step(rec, "add-addresses", began, f"{len(held)}/{len(self.addresses)} added")
        if not held:
            rec.outcome, rec.why = Outcome.FAILED, "no address could be added"
        else:
            rec.outcome = Outcome.DONE if len(held) == len(self.addresses) else Outcome.PARTIAL
        return held

    async def _delete_all(self, rec: TransitionRecord) -> bool:
        began = self._now()
        for a, r in zip(self.addresses, await self._changes(add=False), strict=True):
            if isinstance(r, netif.NetifError):
                rec.errors.append(str(r))
                self.events("release-error", logging.ERROR, address=a, error=r)
        rec.changed_at = self._now() - rec.started
        failed, total = len(rec.errors), len(self.addresses)
        self._step(rec, "delete-addresses", began, f"{total - failed}/{total} deleted")
        if failed:
            rec.outcome, rec.why = Outcome.FAILED, f"{failed} address(es) could not be deleted"
        else:
            rec.outcome = Outcome.DONE
        return not failed

    async def _announce_first(self, rec: TransitionRecord, held: list[netif.Assignment]) -> None:
        """Send the first announcement for every address now; the rest in the background."""
        began = self._now()
        count = self.announcing.count
        if isinstance(self.backend, BatchBackend):
            # one packet socket for every address, paced (see shell/announce.py); most were
            # announced chunk by chunk as they were added, the rest (adopted ones) now
            announcer = self._announcer or self.backend.announcer(held)
            rest = [a for a in held if a not in self._announced]
            sent = self._first_sent + await announcer.send(rest, 1, count)
            announcer.assignments = tuple(held)
            self._step(rec, "announce", began, f"first of {count} sent for {sent}/{len(held)}")
            self.events("announced", round=1, of=count, sent=f"{sent}/{len(held)}")
            if count > 1:
                self._background_task(self._announce_rounds(announcer))
            return
        results = await asyncio.gather(
            *(self.backend.announce(a, 1, 0.0) for a in held), return_exceptions=True
        )
        sent = sum(r for r in results if isinstance(r, int))
        for a, r in zip(held, results, strict=True):
            if isinstance(r, BaseException):
                self.events("announce-error", logging.ERROR, address=a, error=r)
        self._step(rec, "announce", began, f"first of {count} sent for {sent}/{len(held)}")
        self.events("announced", round=1, of=count, sent=f"{sent}/{len(held)}")
        if count > 1:
            for a in held:
                self._background_task(self._announce_rest(a))

    def _background_task(self, coro: Coroutine[object, object, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _announce_rounds(self, announcer: announcing.Announcer) -> None:
        count, interval = self.announcing.count, self.announcing.interval
        try:
            await asyncio.sleep(interval)
            await announcer.rounds(count, interval, first=2)
        except Exception as e:  # a bug in the sender must not go unseen
            self.events("announce-error", logging.ERROR, error=e)

    async def _announce_rest(self, a: netif.Assignment) -> None:
        count, interval = self.announcing.count, self.announcing.interval
        await asyncio.sleep(interval)
        try:
            await self.backend.announce(a, count - 1, interval)
        except Exception as e:  # a bug in the sender must not go unseen
            self.events("announce-error", logging.ERROR, address=a, error=e)

    def _stop_announcing(self) -> None:
        """A release stops the announcements that are still going on for the takeover."""
        for task in list(self._background):
            task.cancel()

    async def _finish(self, rec: TransitionRecord, situation: mail.Situation) -> TransitionRecord:
        rec.duration = self._now() - rec.started
        problems = rec.script_problems
        self.events(
            f"{rec.action}-{'done' if rec.ok else rec.outcome}",
            _OUTCOME_LEVEL[rec.outcome],
            reason=rec.reason,
            outcome=rec.outcome,
            duration=rec.duration,
            changed_at=rec.changed_at,
            scripts=len(rec.scripts),
            script_problems=len(problems) or None,
            why=rec.why or None,
        )
        await self._mail(rec, situation)
        return rec

    async def _mail(self, rec: TransitionRecord, situation: mail.Situation) -> None:
        """Queue the mail; a release refused again in the same way is not mailed again."""
        if self.notifier is None:
            return
        if rec.action is Action.RELEASE:
            problem = None if rec.ok else (str(rec.outcome), rec.why)
            repeat = problem is not None and problem == self._last_release_problem
            self._last_release_problem = problem
            if repeat:
                self.events("mail-suppressed", action=rec.action, why=rec.why)
                return
        else:
            self._last_release_problem = None
        notice = transition_notice(rec, situation, time.time())
        # Spooled in the background: a slow or full disk never holds the transition's end (nor
        # the next transition) up. Tasks start in the order they are created, so the outbox
        # numbers the notices in the order of the transitions.
        task = asyncio.get_running_loop().create_task(self._spool(notice))
        self._mailing.add(task)
        task.add_done_callback(self._mailing.discard)
        await asyncio.sleep(0)  # its first step now: the notice is numbered and its write begun

    async def _spool(self, notice: mail.Notice) -> None:
        assert self.notifier is not None
        try:
            await asyncio.wait_for(self.notifier.submit(notice), self.spool_timeout)
        except (OSError, TimeoutError) as e:  # a full, read-only or hung spool: say so, go on
            hung = isinstance(e, TimeoutError)  # (a subclass of OSError)
            error = f"not written in {self.spool_timeout:g} s" if hung else str(e)
            self.events("mail-spool-error", logging.ERROR, error=error, subject=notice.subject)
