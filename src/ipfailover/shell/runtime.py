"""What both daemons' asyncio shells share: the core's timer, the service manager (READY,
the watchdog), signals, background imports, and the local boot ids.

Everything that touches the outside world lives in the shells; the cores (``sender``, ``monitor``)
never see a socket or a clock. The rest of the shell's common ground has modules of its own,
re-exported here under their old names: start-up checks and key loading (shell/startup.py), the
event log (shell/eventlog.py), the UDP endpoint (shell/udp.py), the status snapshot
(shell/snapshot.py).
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import logging
import signal
import sys
from collections.abc import Callable
from typing import Protocol

from ipfailover.shell import control, sdnotify
from ipfailover.shell.eventlog import (
    COLLISION_FIX,
    EventLog,
    WallClock,
    format_event,
    log_collision,
    setup_logging,
)
from ipfailover.shell.snapshot import collision_status, rejected_counts
from ipfailover.shell.startup import (
    CAP_NET_ADMIN,
    EXIT_CONFIG,
    SIGNALS_EPILOG,
    StartupError,
    base_parser,
    has_capability,
    load_key,
    load_role_config,
    node_name,
    private_dir_problems,
    run,
    run_dir_error,
    start_control,
    start_metrics,
    start_up,
    watched_networks,
)
from ipfailover.shell.udp import DRAIN_BATCH, RCVBUF, Datagram, UdpEndpoint

__all__ = [
    "CAP_NET_ADMIN",
    "COLLISION_FIX",
    "DRAIN_BATCH",
    "EXIT_CONFIG",
    "RCVBUF",
    "SIGNALS_EPILOG",
    "Datagram",
    "EventLog",
    "HasIdentity",
    "Service",
    "StartupError",
    "Timer",
    "UdpEndpoint",
    "WallClock",
    "answer_local_boots",
    "base_parser",
    "collision_status",
    "format_event",
    "has_capability",
    "install_signals",
    "load_key",
    "load_role_config",
    "log_collision",
    "node_name",
    "preload",
    "private_dir_problems",
    "rejected_counts",
    "run",
    "run_dir_error",
    "setup_logging",
    "start_control",
    "start_metrics",
    "start_up",
    "watched_networks",
]

log = logging.getLogger("ipfailover.daemon")


class HasIdentity(Protocol):
    @property
    def wants_local_boots(self) -> bool: ...

    def set_local_boots(self, boots: frozenset[bytes], now: float) -> None: ...


def answer_local_boots(core: HasIdentity, run_dir: str, now: float) -> None:
    """A datagram with our name and an unknown boot id came in: tell the core which boot ids
    are this host's (its own, and the other daemon's on a peering host). The core rate-limits
    how often it asks."""
    if core.wants_local_boots:
        core.set_local_boots(control.read_boots(run_dir), now)


class Service:
    """What the service manager hears (sd_notify): READY, RELOADING, STOPPING, and the watchdog,
    fed from the event loop itself so a wedged loop is restarted. Silent outside systemd."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, healthy: Callable[[], bool] = lambda: True
    ) -> None:
        self.loop = loop
        self.healthy = healthy
        interval = sdnotify.watchdog_interval()
        self._feed_every = None if interval is None else interval / 2
        self._feeding = False
        self._frozen = False

    def ready(self, status: str) -> None:
        if not self._frozen:
            # What start-up built (modules, config, sockets) lives as long as the daemon: out
            # of the cyclic collector's reach, so a full collection no longer walks it all
            # (tens of milliseconds each, every few seconds at a 0.1 s interval).
            gc.freeze()
            self._frozen = True
        sdnotify.notify(READY=1, STATUS=status)
        if self._feed_every is not None and not self._feeding:
            self._feeding = True  # one chain, however often we become ready again
            self._feed()

    def reloading(self) -> None:
        sdnotify.notify(RELOADING=1)

    def stopping(self) -> None:
        sdnotify.notify(STOPPING=1)

    def _feed(self) -> None:
        # Only while the core's timer is being served: a loop that runs but no longer drives
        # the core (a bug left its deadline unarmed or long overdue) gets restarted.
        if self.healthy():
            sdnotify.notify(WATCHDOG=1)
        else:
            log.error("event=watchdog-starved: the core's deadline is overdue; not feeding")
        assert self._feed_every is not None
        self.loop.call_later(self._feed_every, self._feed)


class Timer:
    """One re-armable absolute deadline on the event loop (the cores hand out deadlines)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
        self.loop = loop
        self.callback = callback
        self._handle: asyncio.TimerHandle | None = None
        self.deadline: float | None = None

    def arm(self, deadline: float | None) -> None:
        if deadline is not None and deadline == self.deadline and self._handle is not None:
            return  # already armed for it (a datagram flood re-arms on every datagram)
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self.deadline = deadline
        if deadline is not None:
            self._handle = self.loop.call_at(deadline, self._fire)

    def _fire(self) -> None:
        self._handle = None  # spent: arming the same deadline again schedules it again
        self.callback()

    def served(self, slack: float = 5.0) -> bool:
        """The armed deadline is not overdue by more than ``slack`` seconds."""
        return self.deadline is None or self.loop.time() < self.deadline + slack


class AfterBatch:
    """Call ``callback`` once after the batch of datagrams the socket readers are draining (at
    the next turn of the loop), however many of them asked: under a flood of junk, a flush per
    datagram (timer re-arms, bookkeeping) would cost more than the datagrams themselves, and
    the copies of one round arrive together on every network."""

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
        self.loop = loop
        self.callback = callback
        self._queued = False

    def request(self) -> None:
        if not self._queued:
            self._queued = True
            self.loop.call_soon(self._run)

    def _run(self) -> None:
        self._queued = False
        self.callback()


def install_signals(
    loop: asyncio.AbstractEventLoop, *, stop: Callable[[], None], reload: Callable[[], None]
) -> None:
    """SIGTERM and SIGINT stop the daemon gracefully; SIGHUP reloads it."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    loop.add_signal_handler(signal.SIGHUP, reload)


async def preload(*modules: str) -> None:
    """Import modules in a worker thread: what a daemon needs only after it is ready (pyroute2,
    0.1-0.4 s) is loaded while the event loop goes on beating (the import holds the GIL only
    in short slices)."""
    missing = [m for m in modules if m not in sys.modules]
    if missing:
        await asyncio.to_thread(lambda: [importlib.import_module(m) for m in missing])
