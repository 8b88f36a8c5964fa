"""The outbox: spool each notice, deliver it in the background with backoff, in order.

The mail layer: :mod:`~ipfailover.mail.notice` (what to say), :mod:`~ipfailover.mail.message`
(the RFC 5322 message), :mod:`~ipfailover.mail.spool` (the files),
:mod:`~ipfailover.mail.delivery` (SMTP or the notify program) and this module, which ties them
together:

* a :class:`Notice` (subject, body, Apple's direction and addresses) becomes an RFC 5322 message
  addressed to ``FAILOVER_EMAIL_RECIPIENT`` and is written to the spool (``FAILOVER_SPOOL_DIR``) as
  one JSON file, atomically (write, fsync, rename, fsync the folder). Nothing else happens on the
  caller's path: a takeover never waits for a mail server;
* an :class:`Outbox` task delivers what is due, oldest first, over SMTP (``FAILOVER_SMTP_*``) or
  through ``FAILOVER_NOTIFY_PROGRAM`` (called with Apple's arguments ``up|down ip...`` and the
  message on stdin; exit 0 means delivered). A failure reschedules the item with exponential
  backoff (1 s doubling to 5 min); the schedule is kept in the item's file, so it survives
  restarts. Each delivery holds an flock on the item, so two processes never send it twice.
  A spool the task cannot list, read or write (EACCES, ENOSPC, EIO) is logged and retried with
  the same backoff; the task itself never stops before the daemon does;
* mail goes out **in order**: while the server is unreachable, the oldest waiting message
  holds the others back, so when the server returns they leave oldest first. A new notice
  retries the oldest at once. Only a message the server itself refused (a 5xx answer to its
  recipients or data) stops holding the others back, and a notice whose spool write takes
  longer than WRITE_PATIENCE (a hung disk) stops holding back those after it;
* a notice the spool cannot take (a full disk, say) is **kept in memory** and delivered from
  there, in its place in the order, and written to the spool at stop if it can be by then.

SMTP runs stdlib ``smtplib`` in a daemon thread with a socket timeout, and the spool's file
operations run in daemon threads too: a hung server or disk can delay nothing but the mail, and
cannot keep the daemon from exiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TypeVar

from ipfailover.mail.delivery import Delivery, DeliveryError, in_daemon_thread
from ipfailover.mail.message import MailSettings, make_item
from ipfailover.mail.notice import Notice
from ipfailover.mail.spool import Spool, SpoolItem
from ipfailover.shell import runtime as daemon
from ipfailover.shell.clock import Clock, SystemClock, within

T = TypeVar("T")

BACKOFF_FIRST = 1.0  # seconds before the first retry
BACKOFF_MAX = 300.0  # the retry interval doubles up to this
RESCAN = 60.0  # the outbox looks at the spool at least this often (items other processes add)
MEMORY_MAX = 1000  # notices kept in memory while the spool cannot take them; then the oldest go
WRITE_PATIENCE = 5.0  # seconds a slow spool write of a new notice holds later ones back


@dataclass(frozen=True)
class Backoff:
    """Retry delays: ``first`` seconds, doubling per failed attempt, at most ``limit``."""

    first: float = BACKOFF_FIRST
    limit: float = BACKOFF_MAX

    def delay(self, attempts: int) -> float:
        return float(min(self.limit, self.first * 2 ** min(max(attempts - 1, 0), 30)))


@dataclass
class Outbox:
    """Spools notices and delivers them in the background; see the module docstring.

    ``submit`` only writes the spool file. ``start`` runs the delivery task; ``deliver_due``
    is one pass over what is due (the ``process`` command uses it once, without the task).

    The delivery task never dies of an error: a spool it cannot list, read or write (EACCES,
    ENOSPC, EIO) or anything unexpected is logged (``mail-spool-error``, ``mail-outbox-error``)
    and retried with the same backoff as a failed delivery. Every spool operation runs in a
    daemon thread, off the event loop; ``pending`` is a count kept up to date by ``submit`` and
    the delivery passes, so status snapshots read no disk.
    """

    settings: MailSettings
    delivery: Delivery
    events: daemon.EventLog
    node: str
    backoff: Backoff = field(default_factory=Backoff)
    clock: Clock = field(default_factory=SystemClock)
    spool: Spool = field(init=False)
    _wake: asyncio.Event = field(init=False, default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = field(init=False, default=None)
    _stopping: bool = field(init=False, default=False)
    _count: int = field(init=False, default=0)  # messages waiting, as last counted
    _reported: int = field(init=False, default=-1)  # the count last logged as mail-pending
    _holds: dict[str, tuple[int, float]] = field(init=False, default_factory=dict)
    # ^ item id -> (spool faults in a row, clock time before which it is not tried again)
    _sent: set[str] = field(init=False, default_factory=set)  # delivered, but the file stayed
    _faults: int = field(init=False, default=0)  # passes in a row that could not list the spool
    _pass_faulted: bool = field(init=False, default=False)
    _memory: dict[str, SpoolItem] = field(init=False, default_factory=dict)
    # ^ notices the spool could not take, by id: delivered from here, in their place in the order
    _refused: set[str] = field(init=False, default_factory=set)  # the server refused them (5xx)
    _probe: bool = field(init=False, default=False)  # a new notice: retry the oldest at once
    _writing: dict[str, float] = field(init=False, default_factory=dict)
    # ^ id -> clock time its spool write began: later notices wait for it (WRITE_PATIENCE)
    _last_id: str = field(init=False, default="")  # ids grow with each notice: that is the order

    def __post_init__(self) -> None:
        self.spool = Spool(self.settings.spool_dir)
        with contextlib.suppress(OSError):  # the delivery task logs an unreadable spool
            self._count = len(self.spool.ids())  # once, at construction

    def pending(self) -> int:
        """How many messages are waiting in the spool (for logs and the status command).

        The count kept by ``submit`` and the delivery passes: no disk access, since status and
        metrics snapshots call this on the event loop.
        """
        return self._count

    async def submit(self, notice: Notice) -> SpoolItem:
        """Queue ``notice`` for delivery: an atomic spool write, then wake the delivery task.

        If the spool cannot take it (ENOSPC, EACCES, EIO) it is kept in memory and delivered
        from there (``mail-spool-error`` says so). The write goes on if the caller is cancelled
        (a transition waits a bounded time for it), and then settles in the background: the
        notice ends up on disk or in memory, never in neither, nor in both.
        """
        now = self.clock.time()
        item_id = self.spool.new_id(now)
        while item_id <= self._last_id:  # the clock stepped back, or two in one tick
            now = max(now, int(self._last_id[:20]) / 1e9) + 1e-6
            item_id = self.spool.new_id(now)
        self._last_id = item_id
        item = make_item(notice, self.settings, self.node, item_id, now)
        await asyncio.shield(asyncio.get_running_loop().create_task(self._queue(item)))
        return item

    async def _queue(self, item: SpoolItem) -> None:
        self._writing[item.id] = self.clock.time()
        try:
            await self._off_loop(lambda: self.spool.write(item))
        except OSError as e:
            self._keep(item, e)
        finally:
            self._writing.pop(item.id, None)
        self.events("mail-queued", id=item.id, mail_event=item.event, subject=item.subject)
        self._count += 1
        self._note_pending()
        self._probe = True
        self._wake.set()

    def _keep(self, item: SpoolItem, error: OSError) -> None:
        """Keep in memory an item the spool could not take (bounded: the oldest go first)."""
        self._memory[item.id] = item
        self.events(
            "mail-spool-error",
            logging.ERROR,
            id=item.id,
            subject=item.subject,
            error=_describe(error),
            kept="in memory",
        )
        while len(self._memory) > MEMORY_MAX:
            lost = self._memory.pop(min(self._memory))
            self._count = max(0, self._count - 1)
            self.events("mail-lost", logging.ERROR, id=lost.id, subject=lost.subject)

    def start(self) -> None:
        self._note_pending()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self, grace: float) -> None:
        """Let a delivery pass that is under way finish (at most ``grace`` s), then stop.

        Never raises: whatever ended the task is logged, and the spool keeps what is left.
        """
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            try:
                await within(self.clock, asyncio.shield(self._task), grace)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._task
            except Exception as e:  # the task died; _run should make this impossible
                self._fault(e)
        await self.spool_memory(grace)
        self._note_pending(force=True)

    async def spool_memory(self, grace: float) -> None:
        """At stop: write what is kept in memory to the spool, if it can take it now."""
        for name, item in sorted(self._memory.items()):
            try:
                await within(
                    self.clock, self._off_loop(functools.partial(self.spool.write, item)), grace
                )
            except (OSError, TimeoutError) as e:
                self.events("mail-lost", logging.ERROR, id=name, subject=item.subject, error=e)
                continue
            del self._memory[name]

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                next_due = await self.deliver_due()
            except Exception as e:  # a bug: log it and back off rather than stop mailing
                self._fault(e)
                self._faults += 1
                next_due = None
            if self._stopping:
                return
            with contextlib.suppress(TimeoutError):
                await within(self.clock, self._wake.wait(), self._pause(next_due))

    def _pause(self, next_due: float | None) -> float:
        """Seconds until the next pass: the backoff after a spool fault, else until an item is due
        (at least ``backoff.first``: an item another process is delivering stays due meanwhile)."""
        if self._faults:
            return self.backoff.delay(self._faults)
        if next_due is None:
            return RESCAN
        return min(RESCAN, max(self.backoff.first, next_due - self.clock.time()))

    async def deliver_due(self) -> float | None:
        """Deliver every due item, oldest first; return when the next one is due (None: none).

        A failure ends the pass (the server is likely down for all of them); a success makes
        every other item due at once (the server is back). An item the spool fails on is held
        back with the backoff and the pass goes on. Never raises an Exception.
        """
        self._pass_faulted = False
        recovered, probe, self._probe = False, self._probe, False
        listed = await self._listing()
        for name in sorted({*listed, *self._memory, *self._writing}):
            if name in self._writing:  # not on disk yet: later ones wait, unless it hangs
                if self.clock.time() - self._writing[name] < WRITE_PATIENCE:
                    break
                continue
            if name in self._memory:
                result = await self._attempt(self._memory[name], recovered or probe)
            else:
                result = await self._one(name, recovered or probe)
            if result is False or result is WAIT:
                break  # the server is down, or the oldest is not due: the rest wait for it
            probe = probe and result is None
            recovered = recovered or result is True
        next_due = await self._survey()
        self._faults = self._faults + 1 if self._pass_faulted else 0
        self._note_pending()
        return next_due

    async def _listing(self) -> list[str]:
        try:
            return await self._off_loop(self.spool.ids)
        except Exception as e:  # EACCES on the folder, say: back off and look again
            self._pass_faulted = True
            self._fault(e)
            return []

    async def _one(self, name: str, recovered: bool) -> bool | _Wait | None:
        """Deliver item ``name`` if it is due: True sent, False failed (end the pass), WAIT not
        due (the later ones wait for it), None not tried (held back after a spool fault, gone,
        or another process has it)."""
        if name in self._sent:
            await self._discard(name)  # sent earlier; only the file's removal failed
            return None
        hold = self._holds.get(name)
        if hold is not None and hold[1] > self.clock.time():
            return None
        try:
            claim = await self._off_loop(lambda: self.spool.claim(name))
            if claim is None:
                return None
            fd, item = claim
            try:
                return await self._attempt(item, recovered)
            finally:
                os.close(fd)
        except Exception as e:  # EACCES or EIO on this item, or a bug: hold it back, go on
            self._hold(name, e)
            return None

    async def _attempt(self, item: SpoolItem, recovered: bool) -> bool | _Wait | None:
        if not recovered and item.next_attempt > self.clock.time():
            # not due: it holds the later ones back, unless the server refused it (5xx)
            return None if item.id in self._refused else WAIT
        try:
            await self.delivery.deliver(item)
        except Exception as e:  # DeliveryError, or anything else the delivery threw
            refused = isinstance(e, DeliveryError) and e.refused
            if refused:
                self._refused.add(item.id)
            else:
                self._refused.discard(item.id)
            await self._defer(item, str(e) if isinstance(e, DeliveryError) else _describe(e))
            return None if refused else False
        self.events(
            "mail-sent",
            id=item.id,
            via=self.delivery.via,
            mail_event=item.event,
            attempts=item.attempts + 1,
            recipients=" ".join(item.recipients),
        )
        self._holds.pop(item.id, None)
        self._refused.discard(item.id)
        if self._memory.pop(item.id, None) is not None:
            self._count = max(0, self._count - 1)
        else:
            await self._discard(item.id)
        return True

    async def _defer(self, item: SpoolItem, error: str) -> None:
        attempts = item.attempts + 1
        delay = self.backoff.delay(attempts)
        self.events(
            "mail-deferred",
            logging.WARNING,
            id=item.id,
            via=self.delivery.via,
            attempt=attempts,
            retry_in=delay,
            error=error,
        )
        later = replace(
            item, attempts=attempts, next_attempt=self.clock.time() + delay, last_error=error
        )
        if item.id in self._memory:
            self._memory[item.id] = later
            return
        try:
            await self._off_loop(lambda: self.spool.write(later))
        except OSError as e:  # ENOSPC, EIO: the file keeps its old schedule; hold it back here
            self._hold(item.id, e)
            return
        self._holds.pop(item.id, None)

    async def _discard(self, name: str) -> None:
        """Remove a delivered item's file; if that fails, remember never to send it again."""
        try:
            await self._off_loop(lambda: self.spool.remove(name))
        except OSError as e:
            self._sent.add(name)
            self._fault(e, id=name)
            return
        self._sent.discard(name)
        self._count = max(0, self._count - 1)

    async def _survey(self) -> float | None:
        """Count what is waiting and find when the next item is due (None: nothing is)."""
        sent, holds = frozenset(self._sent), dict(self._holds)

        def look() -> tuple[set[str], float | None]:
            names = {n for n in self.spool.ids() if n not in sent}
            due = []
            for name in names:
                held = holds.get(name, (0, 0.0))[1]
                try:
                    item = self.spool.read(name)
                except OSError:  # unreadable: due when its hold ends, if it has one yet
                    due += [held] if name in holds else []
                    continue
                if item is not None:
                    due.append(max(item.next_attempt, held))
            return names, min(due, default=None)

        try:
            names, next_due = await self._off_loop(look)
        except Exception as e:
            self._pass_faulted = True
            self._fault(e)
            return None
        self._count = len(names) + len(self._memory.keys() - names)
        self._holds = {n: h for n, h in self._holds.items() if n in names}
        self._refused &= names | self._memory.keys()
        kept = [i.next_attempt for i in self._memory.values()]
        return min([*kept, *([] if next_due is None else [next_due])], default=None)

    def _hold(self, name: str, error: Exception) -> None:
        """Keep item ``name`` back after a spool fault, with the backoff of a failed delivery."""
        faults = self._holds.get(name, (0, 0.0))[0] + 1
        delay = self.backoff.delay(faults)
        self._holds[name] = (faults, self.clock.time() + delay)
        self._fault(error, id=name, retry_in=delay)

    def _fault(self, error: Exception, **fields: object) -> None:
        event = "mail-spool-error" if isinstance(error, OSError) else "mail-outbox-error"
        self.events(event, logging.ERROR, **fields, error=_describe(error))

    @staticmethod
    async def _off_loop(fn: Callable[[], T]) -> T:
        """Spool I/O (listing, flock, fsync) in a daemon thread: a slow or hung disk never
        stalls the event loop, nor keeps the process from exiting."""
        return await in_daemon_thread(fn, "ipfailover-spool")

    def _note_pending(self, force: bool = False) -> None:
        if force or self._count != self._reported:
            self._reported = self._count
            self.events("mail-pending", count=self._count, spool=self.spool.path)


class _Wait:
    """The oldest waiting message is not due yet: the later ones wait for it."""


WAIT = _Wait()


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"
