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
import contextlib
import enum
import fcntl
import ipaddress
import logging
import os
import time
from collections.abc import Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from ipfailover import mail
from ipfailover.shell import announce as announcing
from ipfailover.shell import control, netbatch, netif
from ipfailover.shell import runtime as daemon
from ipfailover.shell import scripts as hooks
from ipfailover.shell.announce import Announcer
from ipfailover.shell.scripts import Phase, ScriptResult, Status

log = logging.getLogger("ipfailover.transition")

LOCK_NAME = "failoverd.lock"  # in FAILOVER_RUN_DIR: failoverd's claim on its addresses
SPOOL_TIMEOUT = 5.0  # seconds a transition waits for its mail to be spooled (a hung disk)
OUTPUT_LOG_LINES = 40  # lines of a script's output copied to the log (the mail has more)
MAIL_OUTPUT_CHARS = 2000  # characters of a script's output quoted in the mail


class Action(enum.StrEnum):
    ACQUIRE = "acquire"
    RELEASE = "release"


class Outcome(enum.StrEnum):
    DONE = "done"  # every address changed
    PARTIAL = "partial"  # a takeover that added some addresses but not all
    DECLINED = "declined"  # Test said no: nothing changed
    FAILED = "failed"  # the address change failed (nothing added, or something not deleted)


def plain(a: netif.Assignment) -> str:
    """``interface:address/prefix``, IPv6 without brackets (easy to split in a shell script)."""
    return f"{a.ifname}:{a.address}/{a.prefixlen}"


@dataclass(frozen=True)
class Step:
    """One step of the timeline; times in seconds from the start of the transition."""

    name: str
    start: float
    duration: float
    detail: str = ""


@dataclass
class TransitionRecord:
    """One takeover or release as it happened."""

    action: Action
    reason: str  # peer-silent, peer-leaving, peer-heard, shutdown, manual
    addresses: tuple[str, ...]
    started: float  # loop time
    started_wall: float
    steps: list[Step] = field(default_factory=list)
    scripts: list[ScriptResult] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # netlink failures, one per address
    outcome: Outcome = Outcome.FAILED
    why: str = ""  # for DECLINED and FAILED: the reason in words
    changed_at: float | None = None  # seconds from the start when the addresses had changed
    duration: float = 0.0

    @property
    def ok(self) -> bool:
        """Whether the core should treat it as done (a partial takeover still holds some)."""
        if self.action is Action.ACQUIRE:
            return self.outcome in (Outcome.DONE, Outcome.PARTIAL)
        return self.outcome is Outcome.DONE

    @property
    def script_problems(self) -> list[ScriptResult]:
        """Scripts that failed, timed out, were refused or could not start.

        A Test that declined the transition is the outcome, not a problem of its own.
        """
        declined = self.outcome is Outcome.DECLINED
        return [s for s in self.scripts if not s.ok and not (declined and s.phase is Phase.TEST)]

    def summary(self) -> dict[str, object]:
        """A JSON-ready view for the status command (wall-clock start, seconds elsewhere)."""
        return {
            "started": self.started_wall,
            "action": str(self.action),
            "reason": self.reason,
            "outcome": str(self.outcome),
            "ok": self.ok,
            "vetoed": self.outcome is Outcome.DECLINED,
            "why": self.why,
            "duration": self.duration,
            "changed_at": self.changed_at,
            "steps": [
                {"step": st.name, "start": st.start, "duration": st.duration, "detail": st.detail}
                for st in self.steps
            ],
            "scripts": [
                {
                    "name": r.name,
                    "status": str(r.status),
                    "detail": r.detail,
                    "duration": r.duration,
                }
                for r in self.scripts
            ],
            "errors": list(self.errors),
        }


class AddressBackend(Protocol):
    """Adds, deletes and announces addresses (netlink in production, a fake in tests)."""

    async def add(self, a: netif.Assignment) -> bool: ...

    async def delete(self, a: netif.Assignment) -> bool: ...

    async def announce(self, a: netif.Assignment, count: int, interval: float) -> int: ...


@runtime_checkable
class BatchBackend(AddressBackend, Protocol):
    """A backend that changes and announces many addresses at once (one netlink socket, one
    packet socket): what a takeover of a thousand addresses needs to stay within 0.1 s."""

    async def add_all(
        self, addresses: Sequence[netif.Assignment], on_chunk: netbatch.OnChunk | None = None
    ) -> list[bool | netif.NetifError]: ...

    async def delete_all(
        self, addresses: Sequence[netif.Assignment]
    ) -> list[bool | netif.NetifError]: ...

    def announcer(self, addresses: Sequence[netif.Assignment]) -> announcing.Announcer: ...


class NetlinkBackend:
    """The real thing: :mod:`ipfailover.shell.netif` in the current network namespace, with
    the requests of the current addresses encoded once (:class:`netbatch.AddressBatch`)."""

    def __init__(self) -> None:
        self._batch: netbatch.AddressBatch | None = None

    def prepare(self, addresses: Sequence[netif.Assignment]) -> None:
        """Encode the requests for these addresses now, off the takeover's path."""
        self._batch_for(addresses).prepare()

    def _batch_for(self, addresses: Sequence[netif.Assignment]) -> netbatch.AddressBatch:
        if self._batch is None or self._batch.assignments != tuple(addresses):
            self._batch = netbatch.AddressBatch(addresses)
        return self._batch

    async def add(self, a: netif.Assignment) -> bool:
        return await netif.add(a)

    async def delete(self, a: netif.Assignment) -> bool:
        return await netif.delete(a)

    async def announce(self, a: netif.Assignment, count: int, interval: float) -> int:
        return await announcing.announce(a, count, interval)

    async def add_all(
        self, addresses: Sequence[netif.Assignment], on_chunk: netbatch.OnChunk | None = None
    ) -> list[bool | netif.NetifError]:
        return await self._batch_for(addresses).add(on_chunk)

    async def delete_all(
        self, addresses: Sequence[netif.Assignment]
    ) -> list[bool | netif.NetifError]:
        return await self._batch_for(addresses).delete()

    def announcer(self, addresses: Sequence[netif.Assignment]) -> announcing.Announcer:
        return announcing.Announcer(addresses)


class Notifier(Protocol):
    async def submit(self, notice: mail.Notice) -> object: ...


@dataclass(frozen=True)
class Announcing:
    """FAILOVER_GARP_COUNT announcements per address, FAILOVER_GARP_INTERVAL apart."""

    count: int
    interval: float


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


def script_env(
    *,
    action: Action,
    reason: str,
    phase: Phase,
    node: str,
    situation: mail.Situation,
    addresses: Iterable[netif.Assignment],
    folder: Path,
) -> dict[str, str]:
    """The whole environment of a transition script (nothing is inherited from the daemon)."""
    addresses = list(addresses)
    return {
        "PATH": hooks.SCRIPT_PATH,
        "IPFAILOVER_ACTION": str(action),
        "IPFAILOVER_REASON": reason,
        "IPFAILOVER_PHASE": str(phase),
        "IPFAILOVER_NODE": node,
        "IPFAILOVER_PEER": situation.peer,
        "IPFAILOVER_ADDRESSES": " ".join(plain(a) for a in addresses),
        "IPFAILOVER_IPS": " ".join(str(a.address) for a in addresses),
        "IPFAILOVER_SCRIPT_DIR": str(folder),
        # docs/safety.md: what the probe before a takeover found
        "IPFAILOVER_PROBE": situation.probe,
        "IPFAILOVER_ANSWERING": " ".join(
            f"{address}={mac}" for address, macs in situation.answering for mac in macs
        ),
        "IPFAILOVER_PEER_VERIFIED": {True: "yes", False: "no", None: ""}[situation.peer_verified],
    }


# --- mail text ------------------------------------------------------------------------------------


def _ips(rec: TransitionRecord) -> tuple[str, ...]:
    return tuple(a.split(":", 1)[1].rsplit("/", 1)[0] for a in rec.addresses)


def transition_subject(rec: TransitionRecord, s: mail.Situation) -> str:
    ips, peer = " ".join(_ips(rec)), s.peer
    retry = {"manual": "", "shutdown": "; gave up, exiting while still holding them"}.get(
        rec.reason, "; retrying after the hold-down"
    )
    acquire = {
        Outcome.DONE: f"took over {ips} from {peer} ({rec.reason})",
        Outcome.PARTIAL: f"took over only part of {ips} from {peer} ({rec.reason})",
        Outcome.DECLINED: f"did NOT take over {ips} from {peer}: {rec.why}",
        Outcome.FAILED: f"FAILED to take over {ips} from {peer}: {rec.why}; gave up",
    }
    release = {
        Outcome.DONE: f"released {ips} to {peer} ({rec.reason})",
        Outcome.DECLINED: f"keeps {ips}: {rec.why}{retry}",
        Outcome.FAILED: f"FAILED to release {ips}: {rec.why}{retry}",
    }
    table = acquire if rec.action is Action.ACQUIRE else release
    text = f"[ipfailover] {s.node} {table.get(rec.outcome, rec.outcome)}"
    problems = len(rec.script_problems)
    if problems:
        text += f" -- {problems} script(s) failed or refused"
    return text


def timeline_text(rec: TransitionRecord) -> str:
    """Steps and scripts in time order, each with its start offset and duration."""
    rows = [(round(st.start, 6), 0, f"{st.name}: {st.detail}", st.duration) for st in rec.steps]
    rows += [
        (round(r.started - rec.started, 6), 1, f"  {r.name}: {r.detail}", r.duration)
        for r in rec.scripts
    ]  # a step sorts before its own scripts, which start when it does
    lines = [f"  {start:+8.3f}  {dur:7.3f} s  {text}" for start, _, text, dur in sorted(rows)]
    lines.append(f"  {rec.duration:+8.3f}             {rec.outcome}")
    return "\n".join(lines)


def scripts_text(rec: TransitionRecord) -> str:
    if not rec.scripts:
        return "  (none ran)"
    width = max(len(r.name) for r in rec.scripts)
    out = []
    for r in rec.scripts:
        out.append(f"  {r.name:<{width}}  {r.status.upper():<8} {r.duration:7.3f} s  {r.detail}")
        text = r.output.strip()
        if len(text) > MAIL_OUTPUT_CHARS:
            text = text[:MAIL_OUTPUT_CHARS] + f"\n[{len(text) - MAIL_OUTPUT_CHARS} more characters]"
        out += [f"      | {line}" for line in text.splitlines()]
    return "\n".join(out)


def transition_notice(rec: TransitionRecord, s: mail.Situation, now: float) -> mail.Notice:
    """The mail about one transition: the situation, outcome, timeline and each script."""
    event = "takeover" if rec.action is Action.ACQUIRE else "release"
    if not rec.ok:
        event += f"-{rec.outcome}"
    changed = "" if rec.changed_at is None else f"; addresses changed at +{rec.changed_at:.3f} s"
    body = [
        transition_subject(rec, s).removeprefix("[ipfailover] "),
        "",
        mail.situation_text(s, now),
        "",
        f"Action:    {rec.action} ({rec.reason}), started {mail.format_time(rec.started_wall)}",
        f"Outcome:   {rec.outcome} in {rec.duration:.3f} s{changed}",
    ]
    if rec.why:
        body.append(f"Why:       {rec.why}")
    body += [f"Error:     {e}" for e in rec.errors]
    body += ["", "Timeline (seconds from the start, duration):", timeline_text(rec)]
    body += ["", "Scripts:", scripts_text(rec), ""]
    direction = "down" if rec.action is Action.ACQUIRE else "up"
    return mail.Notice(event, direction, _ips(rec), transition_subject(rec, s), "\n".join(body))


# --- failoverd's claim on its addresses ---------------------------------------------------------


class LockHeld(Exception):
    """Another process holds failoverd's lock (``pid`` and the addresses it manages)."""

    def __init__(self, path: Path, pid: int | None, addresses: list[str]) -> None:
        super().__init__(path, pid, addresses)
        self.path = path
        self.pid = pid
        self.addresses = addresses


class ManagerLock:
    """An flock on ``<FAILOVER_RUN_DIR>/failoverd.lock``, held for failoverd's lifetime.

    The file says which process manages which addresses, so ``ipfailover process`` can refuse to
    touch them. The kernel drops the lock when the process dies, however it dies, so a stale file
    never blocks anyone.
    """

    def __init__(self, fd: int, path: Path) -> None:
        self.fd = fd
        self.path = path

    @classmethod
    def take(cls, run_dir: str, addresses: Iterable[netif.Assignment]) -> ManagerLock:
        """Take the lock and write our pid and addresses; LockHeld if someone has it."""
        path = control.make_run_dir(run_dir) / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            content = os.read(fd, 65536).decode("utf-8", "replace")
            os.close(fd)
            raise LockHeld(path, *_parse_lock(content)) from None
        lock = cls(fd, path)
        lock.update(addresses)
        return lock

    def update(self, addresses: Iterable[netif.Assignment]) -> None:
        """Rewrite the addresses we manage (after a reload changed them)."""
        text = f"pid {os.getpid()}\n" + "".join(f"address {plain(a)}\n" for a in addresses)
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, text.encode(), 0)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


def _parse_lock(text: str) -> tuple[int | None, list[str]]:
    pid, addresses = None, []
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "pid" and value.isdigit():
            pid = int(value)
        elif key == "address":
            addresses.append(value)
    return pid, addresses


def manager(run_dir: str) -> LockHeld | None:
    """Who manages addresses here: a LockHeld describing the running failoverd, or None."""
    path = Path(run_dir) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return LockHeld(path, *_parse_lock(os.read(fd, 65536).decode("utf-8", "replace")))
        return None  # nobody holds it: the file is left over from a failoverd that stopped
    finally:
        os.close(fd)


def overlap(held: LockHeld, wanted: Iterable[netif.Assignment]) -> list[str]:
    """The addresses of ``wanted`` that the lock holder manages (compared by IP address)."""
    managed = set()
    for entry in held.addresses:
        with contextlib.suppress(ValueError):
            managed.add(ipaddress.ip_address(entry.split(":", 1)[1].rsplit("/", 1)[0]))
    return [str(a.address) for a in wanted if a.address in managed]
