"""failoverd's shell, :class:`Failoverd`: what it is built from (``create``), the core's inputs
(timer, datagrams, signals) and its outputs (datagrams to send, events to act on), and the status.
Its transitions, reload, evidence and mail are in the sibling modules it inherits them from."""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import logging
import os
from collections import Counter
from collections.abc import Coroutine
from typing import Any

from ipfailover import mail
from ipfailover.core import auth, config, episodes
from ipfailover.core.monitor import (
    Acquire,
    AcquireRetry,
    AddressAnswers,
    AddressConflict,
    Defend,
    Heard,
    Monitor,
    NetworkEvent,
    PeerWarning,
    Probe,
    Reclaim,
    Release,
    State,
    StateChanged,
)
from ipfailover.core.wire import Dropped
from ipfailover.failover import executor as transition
from ipfailover.failover.status import failoverd_snapshot
from ipfailover.failoverd.checks import monitor_config
from ipfailover.failoverd.evidence import BLOCKED_WHY, EvidenceMixin
from ipfailover.failoverd.reload import ReloadMixin
from ipfailover.failoverd.transitions import TransitionsMixin
from ipfailover.shell import control, linkwatch, netif
from ipfailover.shell import runtime as daemon
from ipfailover.shell import scripts as hooks
from ipfailover.shell import sysctl as hostconf
from ipfailover.shell.clock import Clock, LoopClock
from ipfailover.shell.snapshot import FailoverdSnapshot

log = logging.getLogger("ipfailover.failoverd")
MAIL_STOP_GRACE = 2.0  # seconds a stopping failoverd gives a delivery under way to finish
HISTORY = 50  # transitions kept in memory (for the status command)
# states in which we watch for conflicts
WATCHED = frozenset({State.ACTIVE, State.HOLDDOWN, State.HANDBACK})


class Failoverd(ReloadMixin, TransitionsMixin, EvidenceMixin):
    """failoverd's shell. What it uses from outside is handed in (:meth:`create` builds the real
    ones): the event log, the mail outbox, the script folder, the executor, the address backend,
    the clock, and the lock and accept_local settings it keeps up to date on a reload."""

    def __init__(
        self,
        cfg: config.Config,
        key: bytes,
        loop: asyncio.AbstractEventLoop,
        assignments: list[netif.Assignment],
        networks: tuple[str, ...],
        holding: bool,
        *,
        events: daemon.EventLog,
        outbox: mail.Outbox,
        scripts: hooks.ScriptFolder,
        executor: transition.TransitionExecutor,
        backend: transition.AddressBackend,
        clock: Clock | None = None,
        lock: transition.ManagerLock | None = None,
        accept_local: hostconf.AcceptLocal | None = None,
    ) -> None:
        self.cfg = cfg
        self.loop = loop
        self.clock: Clock = clock or LoopClock(loop)
        self.assignments = assignments
        self._ours = frozenset(a.address for a in assignments)  # for the claims of other MACs
        self._by_text = {str(a.address): a for a in assignments}  # Defend names an address
        self._plain = tuple(transition.plain(a) for a in assignments)  # for every mail
        self._claims: list[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, str]] = []
        self.events = events
        self.udp = self._endpoint(cfg, assignments)
        self._bind_networks(networks)
        self._after_batch = daemon.AfterBatch(loop, self._flush)
        self.core = Monitor(
            monitor_config(cfg, key, networks),
            rng=os.urandom,
            now=self.clock.monotonic(),
            holding=holding,
        )
        self.control = control.ControlServer(cfg.run_dir, "failoverd", self.snapshot)
        self.service = daemon.Service(loop, healthy=lambda: self.timer.served())
        self.counts: Counter[str] = Counter()
        self.lock = lock
        self.accept_local = accept_local
        self._changing = asyncio.Lock()  # transitions and reloads take turns
        self.timer = daemon.Timer(loop, self._on_timer)
        self.stopped = asyncio.Event()
        self._last_sender: str | None = None  # the sender of the latest verified heartbeat
        self.history: collections.deque[transition.TransitionRecord] = collections.deque(
            maxlen=HISTORY
        )
        self._work: asyncio.Task[None] | None = None
        self.outbox = outbox
        self.scripts = scripts
        self.executor = executor
        self.backend = backend
        self._heard: dict[str, float] = {}  # network -> loop time the primary was last heard
        self.notices = episodes.NetworkNotices(settle=episodes.settle_time(cfg.effective_deadtime))
        self.notices_timer = daemon.Timer(loop, self._on_notices_timer)
        self._tasks: set[asyncio.Task[None]] = set()
        self._watches: list[linkwatch.LinkWatch] = []  # while holding: other MACs claiming ours
        # conflicts gathered for one mail per MAC (CONFLICT_MAIL_GATHER), and its timer
        self._conflict_mail: dict[str, list[str]] = {}
        self.conflict_timer = daemon.Timer(loop, self._send_conflict_mail)
        self._blocked_why = ""  # while BLOCKED: why, in words (BLOCKED_WHY)

    @classmethod
    def create(
        cls,
        cfg: config.Config,
        key: bytes,
        loop: asyncio.AbstractEventLoop,
        assignments: list[netif.Assignment],
        networks: tuple[str, ...],
        holding: bool,
        *,
        executor: transition.TransitionExecutor | None = None,
        backend: transition.AddressBackend | None = None,
        clock: Clock | None = None,
        lock: transition.ManagerLock | None = None,
        accept_local: hostconf.AcceptLocal | None = None,
    ) -> Failoverd:
        """failoverd with the real outbox, scripts, netlink backend and executor (any of the
        last two may be handed in instead)."""
        events = daemon.EventLog(log)
        node = daemon.node_name(cfg)
        settings = mail.MailSettings.from_config(cfg)
        outbox = mail.Outbox(settings, mail.delivery_for(settings), events, node=node)
        scripts = hooks.ScriptFolder.for_config(cfg)
        backend = backend or transition.NetlinkBackend()
        if executor is None:
            executor = transition.Executor(
                node=node,
                addresses=assignments,
                scripts=scripts,
                backend=backend,
                announcing=transition.Announcing(cfg.garp_count, cfg.garp_interval),
                notifier=outbox,
                events=events,
            )
        return cls(
            cfg,
            key,
            loop,
            assignments,
            networks,
            holding,
            events=events,
            outbox=outbox,
            scripts=scripts,
            executor=executor,
            backend=backend,
            clock=clock,
            lock=lock,
            accept_local=accept_local,
        )

    @classmethod
    def _endpoint(
        cls, cfg: config.Config, assignments: list[netif.Assignment]
    ) -> daemon.UdpEndpoint:
        udp = daemon.UdpEndpoint(cfg.port, broadcast=True, per_device=True)
        udp.redirects = cls._endpoint_redirects(assignments)
        return udp

    def _bind_networks(self, networks: tuple[str, ...]) -> None:
        """A receive queue of its own for each watched network (see daemon.UdpEndpoint)."""
        for problem in self.udp.bind_devices(networks):
            self.events("socket-per-network-failed", logging.WARNING, error=problem)

    @staticmethod
    def _endpoint_redirects(assignments: list[netif.Assignment]) -> dict[str, tuple[Any, ...]]:
        """Reach the primary even while its address is ours (see netif.unicast_substitute)."""
        out = {}
        for a in assignments:
            sub = netif.unicast_substitute(a)
            if sub is not None:
                out[str(a.address)] = sub
        return out

    @property
    def node(self) -> str:
        return self.core.cfg.node

    # Status ------------------------------------------------------------------------------------

    def snapshot(self) -> FailoverdSnapshot:
        """The status this daemon reports (docs/status.md)."""
        return failoverd_snapshot(
            cfg=self.cfg,
            core=self.core,
            notices=self.notices,
            history=self.history,
            assignments=self.assignments,
            blocked_why=self._blocked_why,
            mail_pending=self.outbox.pending(),
            counts=self.counts,
            clock=self.clock,
        )

    def start(self) -> None:
        self.outbox.start()
        # before we send anything: this host's heartbeatd must know our datagrams for ours
        control.write_boot(self.cfg.run_dir, "failoverd", self.core.boot_id)
        self.udp.start(self.loop, self._on_datagram)
        daemon.install_signals(self.loop, stop=self._on_stop, reload=self._on_hup)
        self.events(
            "start",
            role="failoverd",
            node=self.core.cfg.node,
            peer=self.cfg.peer_ip,
            networks=" ".join(self.core.cfg.networks),
            addresses=self._addresses(),
            deadtime=self.core.cfg.deadtime,
            state=self.core.state.value,
            scripts=self.scripts.path,
        )
        self._flush()

    async def close(self) -> None:
        """After the core stopped: let mail under way go out (briefly), close the sockets.

        An episode summary not yet due is not sent (docs/scripts.md)."""
        self.notices_timer.arm(None)
        self._watch(False)
        self._send_conflict_mail()  # gathered, not yet mailed: mail them now
        await self.executor.flush_mail()
        await self.outbox.stop(MAIL_STOP_GRACE)
        self.udp.close()
        control.remove_boot(self.cfg.run_dir, "failoverd", self.core.boot_id)

    def _addresses(self) -> str:
        return " ".join(str(a) for a in self.assignments)

    # Inputs ------------------------------------------------------------------------------------

    def _on_timer(self) -> None:
        self.core.handle_timer(self.clock.monotonic())
        self._flush()

    def _on_datagram(self, dg: daemon.Datagram) -> None:
        self.core.receive_datagram(dg.data, dg.addr, dg.ifname, self.clock.monotonic())
        daemon.answer_local_boots(self.core, self.cfg.run_dir, self.clock.monotonic())
        self._after_batch.request()  # one flush for the whole batch

    def _on_stop(self) -> None:
        self.service.stopping()
        self.events("stopping", state=self.core.state.value)
        self.core.shutdown(self.clock.monotonic())
        self._flush()

    def _on_hup(self) -> None:
        self._spawn(self.reload())

    def _status_line(self) -> str:
        return f"{self.core.state.value}; watching {self.core.peer_name or self.cfg.peer_ip}"

    # Outputs -----------------------------------------------------------------------------------

    def _flush(self) -> None:
        try:
            self._note_heard()
            for data, addr in self.core.datagrams_to_send():
                self.udp.sendto(data, addr)
            while (ev := self.core.next_event()) is not None:
                self._handle(ev)
        finally:
            self.timer.arm(self.core.get_timer())  # whatever happened, keep driving the core
            self._watch(self.core.state in WATCHED)
        if self.core.state is State.STOPPED:
            self.stopped.set()

    def _handle(self, ev: object) -> None:
        now = self.clock.monotonic()
        if isinstance(ev, Acquire | Release):
            self._start_work(ev)
        elif isinstance(ev, StateChanged):
            self.events(
                "state",
                old=ev.old.value,
                new=ev.new.value,
                trigger=ev.trigger.value,
                level=logging.DEBUG if ev.new is State.ACQUIRING else logging.INFO,
            )
            if ev.new is State.HOLDDOWN:
                self.events(
                    "holddown-start", peer=self.core.peer_name, delay=self.cfg.failback_delay
                )
            if ev.new is State.BLOCKED:
                self._blocked_why = BLOCKED_WHY.get(ev.trigger, "")
            elif ev.old is State.BLOCKED:
                self._blocked_why = ""
                self.events("takeover-unblocked", trigger=ev.trigger.value, state=ev.new.value)
        elif isinstance(ev, NetworkEvent):
            name = "peer-verified" if ev.kind == "verified" else ev.kind
            level = logging.WARNING if ev.kind == "anomaly" else logging.INFO
            # Until FAILOVER_PEER_IP's network pins the peer's name, the heartbeat that verified
            # this network names it (the Heard event just before this one).
            peer = self.core.peer_name or self._last_sender
            self.events(name, level, network=ev.network, peer=peer)
            if ev.kind in ("anomaly", "recovered"):
                self._network_mail(self.notices.event(ev.kind, ev.network, now))
        elif isinstance(ev, Heard):
            self._last_sender = ev.sender
            if log.isEnabledFor(logging.DEBUG):
                self.events(
                    "heartbeat",
                    logging.DEBUG,
                    network=ev.network,
                    peer=ev.sender,
                    seq=ev.seq,
                    evidence_age=now - ev.evidence,
                    alive_for=ev.alive_until - now,
                    state=self.core.state.value,
                )
        elif isinstance(ev, PeerWarning):
            self.events("warning", logging.WARNING, text=ev.text)
        elif isinstance(ev, Probe):
            self._spawn(self._probe(ev))
        elif isinstance(ev, AddressAnswers):
            self._address_answers(ev)
        elif isinstance(ev, AddressConflict):
            self._address_conflict(ev)
        elif isinstance(ev, Defend):
            self._defend(ev)
        elif isinstance(ev, AcquireRetry):
            self.events("acquire-retry", logging.WARNING, after=ev.after)
        elif isinstance(ev, Reclaim):
            # a hand-back was abandoned after the primary may have announced: ours again
            self.events("reclaim", logging.WARNING, addresses=self._addresses())
            for a in self.assignments:
                self._spawn(self._announce_once(a))
        elif isinstance(ev, auth.NameCollision):
            daemon.log_collision(self.events, ev)
            notice = mail.collision_notice(ev, self._situation(), self.clock.time())
            self._spawn(self._notify(notice))
        elif isinstance(ev, Dropped):
            self.events.dropped(ev, now)

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
