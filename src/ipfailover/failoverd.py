"""failoverd: the secondary's daemon. Watches the primary; takes over its addresses when it dies.

The asyncio shell around :class:`ipfailover.core.monitor.Monitor`. It feeds the core the loop's
clock, each datagram with the interface it arrived on, and the outcome of each takeover or release,
which :class:`ipfailover.failover.executor.Executor` carries out (Test gate, scripts, netlink,
announcements, mail). Mail is spooled and delivered in the background
(:class:`ipfailover.mail.outbox.Outbox`).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import ipaddress
import logging
import os
import socket
import sys
from collections import Counter
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from ipfailover import mail
from ipfailover.core import auth, config, episodes
from ipfailover.core.monitor import (
    DEFEND_INTERVAL,
    REPROBE_MIN,
    Acquire,
    AcquireOutcome,
    AcquireRetry,
    AddressAnswers,
    AddressConflict,
    Defend,
    Heard,
    Monitor,
    MonitorConfig,
    NetworkEvent,
    PeerWarning,
    Probe,
    Reclaim,
    Release,
    State,
    StateChanged,
    Trigger,
)
from ipfailover.core.wire import Dropped
from ipfailover.failover import executor as transition
from ipfailover.failover.status import failoverd_snapshot
from ipfailover.shell import control, linkwatch, netif
from ipfailover.shell import runtime as daemon
from ipfailover.shell import scripts as hooks
from ipfailover.shell import sysctl as hostconf
from ipfailover.shell.clock import Clock, LoopClock
from ipfailover.shell.snapshot import FailoverdSnapshot

log = logging.getLogger("ipfailover.failoverd")
MAIL_STOP_GRACE = 2.0  # seconds a stopping failoverd gives a delivery under way to finish
HISTORY = 50  # transitions kept in memory (for the status command)
#: Why failoverd holds back (state BLOCKED), by the trigger that blocked it (docs/safety.md).
BLOCKED_WHY = {
    Trigger.ANSWERS_NEVER_VERIFIED: "its address answers, but no heartbeat was ever verified: "
    "check the firewall, key, port and FAILOVER_PEER_IP",
    Trigger.ANSWERS_REFUSED: "its address still answers after its heartbeats stopped, and "
    "FAILOVER_TAKE_ANSWERING=no: taking over once it stops answering",
}
# states in which we watch for conflicts
WATCHED = frozenset({State.ACTIVE, State.HOLDDOWN, State.HANDBACK})


async def resolve_pairs(cfg: config.Config) -> list[netif.Assignment]:
    """Bind each FAILOVER_PEER_IP_PAIRS entry to its interface; a missing one stops start-up."""
    where = cfg.where("FAILOVER_PEER_IP_PAIRS")
    missing = await netif.missing_interfaces(p.interface for p in cfg.peer_ip_pairs)
    if missing:
        raise daemon.StartupError(f"{where}: no such interface: {', '.join(sorted(set(missing)))}")
    return await netif.resolve_all((p.interface, p.address, p.prefixlen) for p in cfg.peer_ip_pairs)


class Failoverd:
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
        self._flush_soon = False  # a flush is queued for the end of this batch of datagrams
        self.core = Monitor(
            _monitor_config(cfg, key, networks),
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
        # One flush for the whole batch the socket reader is draining: under a flood of
        # junk, per-datagram flushes (timer re-arms, bookkeeping) would cost more than the
        # datagrams themselves.
        if not self._flush_soon:
            self._flush_soon = True
            self.loop.call_soon(self._batch_done)

    def _batch_done(self) -> None:
        self._flush_soon = False
        self._flush()

    def _on_stop(self) -> None:
        self.service.stopping()
        self.events("stopping", state=self.core.state.value)
        self.core.shutdown(self.clock.monotonic())
        self._flush()

    def _on_hup(self) -> None:
        self._spawn(self.reload())

    async def reload(self) -> None:
        """Re-read the configuration; a bad one is logged and the old one kept.

        A good one is applied without leaving the current state: addresses that stay are not
        touched; while we hold, removed pairs are deleted and added ones added and announced.
        Reloads and transitions take turns (one lock), so a reload never lands in the middle
        of a takeover or a release, nor two reloads in each other.
        """
        self.service.reloading()
        try:
            async with self._changing:
                if self.core.state in (State.STOPPING, State.STOPPED):
                    self.events("reload-skipped", state=self.core.state.value)
                    return
                await self._reload()
        except Exception as e:  # a reload must never take the daemon down with it
            errors = str(e).replace("\n", "; ") or repr(e)
            self.events("reload-failed", logging.ERROR, errors=errors)
        finally:
            self.service.ready(self._status_line())

    async def _reload(self) -> None:
        cfg = daemon.load_role_config(self.cfg.path, "failoverd")
        key = daemon.load_key(cfg)
        assignments = await resolve_pairs(cfg)
        networks = await daemon.watched_networks(cfg)
        if self.accept_local is not None:
            self.accept_local.need(a.ifname for a in assignments)
        if cfg.port != self.cfg.port:
            udp = self._endpoint(cfg, assignments)  # may fail: then nothing has changed yet
            self.udp.close()
            self.udp = udp
            self.udp.start(self.loop, self._on_datagram)
        else:
            self.udp.redirects = self._endpoint_redirects(assignments)
        self._bind_networks(networks)
        removed = [a for a in self.assignments if a not in assignments]
        added = [a for a in assignments if a not in self.assignments]
        if self.core.holding:
            for a in removed:
                await _quietly(self.events, self.backend.delete(a), "reload-delete-error", a)
            for a in added:
                if await _quietly(self.events, self.backend.add(a), "reload-add-error", a):
                    self._spawn(self._announce(a, cfg))
        self.cfg, self.assignments = cfg, assignments
        self._ours = frozenset(a.address for a in assignments)
        self._by_text = {str(a.address): a for a in assignments}
        self._plain = tuple(transition.plain(a) for a in assignments)
        self.scripts = hooks.ScriptFolder.for_config(cfg)
        self.executor.reconfigure(
            assignments, self.scripts, transition.Announcing(cfg.garp_count, cfg.garp_interval)
        )
        self._spawn(self.executor.prepare())
        if self.lock is not None:
            self.lock.update(assignments)
        self.core.reconfigure(_monitor_config(cfg, key, networks), self.clock.monotonic())
        self.notices.settle = episodes.settle_time(self.core.cfg.deadtime)
        self.events(
            "reload-done",
            addresses=self._addresses(),
            added=" ".join(map(str, added)) or None,
            removed=" ".join(map(str, removed)) or None,
            deadtime=self.core.cfg.deadtime,
        )
        await log_check_warnings(cfg, self.events)
        self._flush()

    async def _announce(self, a: netif.Assignment, cfg: config.Config) -> None:
        await self.backend.announce(a, cfg.garp_count, cfg.garp_interval)

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

    # Mail ----------------------------------------------------------------------------------------

    def _on_notices_timer(self) -> None:
        self._network_mail(self.notices.handle_timer(self.clock.monotonic()))

    def _network_mail(self, summaries: list[episodes.Summary]) -> None:
        """Mail what the episode policy says (one mail per episode, not one per flap)."""
        wall = daemon.WallClock.of(self.clock)
        for summary in summaries:
            if summary.reason != "start":
                self.events(
                    "network-settled" if summary.reason == "settled" else "network-flapping",
                    logging.INFO if summary.kind == "recovered" else logging.WARNING,
                    network=summary.network,
                    peer=self.core.peer_name,
                    state="heard" if summary.kind == "recovered" else "silent",
                    losses=summary.anomalies,
                    returns=summary.recoveries,
                    since=mail.format_time(wall.offset + summary.started),
                )
            notice = mail.network_notice(
                summary.kind,
                summary.network,
                self._situation(),
                self.clock.time(),
                summary,
                wall=lambda t: t + wall.offset,
                settle=self.notices.settle,
            )
            self._spawn(self._notify(notice))
        self.notices_timer.arm(self.notices.get_timer())

    def _note_heard(self) -> None:
        """Keep our own copy of when each network last heard the primary, for the mail.

        The detector forgets on LEAVING; the mail about that takeover should still say when.
        """
        for name, view in self.core.detector.networks.items():
            if view.last_heard is not None:
                self._heard[name] = max(view.last_heard, self._heard.get(name, view.last_heard))

    def _situation(self) -> mail.Situation:
        """Who, about whom, which addresses, and when each network last heard the primary."""
        now_loop, now_wall = self.clock.monotonic(), self.clock.time()
        self._note_heard()
        heard = tuple(
            (name, now_wall - (now_loop - self._heard[name]) if name in self._heard else None)
            for name in sorted(self.core.detector.networks)
        )
        return mail.Situation(
            node=self.node,
            host=socket.gethostname(),
            peer=self.core.peer_name or str(self.cfg.peer_ip),
            addresses=self._plain,
            heard=heard,
            peer_verified=self.core.ever_verified,
        )

    # Evidence before a takeover, conflicts while holding (docs/safety.md) -------------------------

    async def _probe(self, ev: Probe) -> None:
        """Probe the link for the addresses to be taken; tell the core what answered."""
        wait = linkwatch.probe_wait(self.core.cfg.deadtime)
        try:
            answers, ok = await linkwatch.probe(self.assignments, wait)
        except Exception as e:  # a bug must not leave the core probing forever
            log.exception("probe failed")
            self.events("probe-error", logging.ERROR, error=repr(e))
            answers, ok = {}, False
        self.events(
            "probe",
            logging.DEBUG,
            answered=" ".join(f"{a}={','.join(m)}" for a, m in sorted(answers.items())) or None,
            ok=ok,
            wait=wait,
        )
        self.core.probe_done(self.clock.monotonic(), ev.id, answers, ok)
        self._flush()

    def _address_answers(self, ev: AddressAnswers) -> None:
        answering = _answering_text(ev.answering)
        if ev.taking:
            self.events(
                "address-answers",
                logging.WARNING,
                answering=answering,
                verified_before="yes",
                action="taking-over",
            )
            return  # the takeover's own mail says it
        why = (
            BLOCKED_WHY[Trigger.ANSWERS_NEVER_VERIFIED]
            if not ev.verified_before
            else BLOCKED_WHY[Trigger.ANSWERS_REFUSED]
        )
        self.events("takeover-blocked", logging.ERROR, answering=answering, why=why)
        self._spawn(self._notify(self._blocked_notice(ev, why)))

    def _blocked_notice(self, ev: AddressAnswers, why: str) -> mail.Notice:
        s = self._situation()
        ips = tuple(a for a, _ in ev.answering)
        subject = (
            f"[ipfailover] {s.node}: NOT taking over {' '.join(ips)} from {s.peer}: "
            "its address still answers"
        )
        body = (
            f"{s.peer} is silent (no verified heartbeat for the dead time), but its address "
            f"still answers on the link:\n\n{_answering_block(ev.answering)}\n\n"
            f"Nothing was taken over: {why}.\nfailoverd probes again every "
            f"{max(REPROBE_MIN, self.core.cfg.period):g} s and takes over once no address "
            f"answers.\n\n{mail.situation_text(s, self.clock.time())}\n"
        )
        return mail.Notice("blocked", "down", ips, subject, body)

    def _address_conflict(self, ev: AddressConflict) -> None:
        self.events(
            "address-conflict",
            logging.WARNING,
            address=ev.address,
            mac=ev.mac,
            state=ev.state.value,
            defending="yes" if ev.state is State.ACTIVE else "no",
        )
        s = self._situation()
        subject = f"[ipfailover] {s.node}: address conflict on {ev.address}: also at {ev.mac}"
        body = (
            f"While {s.node} holds {ev.address}, another machine claims it: {ev.mac} answers or "
            "announces it on the link.\nClients may split between the two until this is "
            f"resolved. {s.node} re-announces the address at most every {DEFEND_INTERVAL:g} s "
            f"while {s.peer} is silent, so that they converge on it.\nFind the machine with that "
            f"MAC (switch tables, `ip neigh`) and stop it answering for {ev.address} (is it "
            f"{s.peer}, hung but not dead?).\n\n{mail.situation_text(s, self.clock.time())}\n"
        )
        notice = mail.Notice("conflict", "down", (ev.address,), subject, body)
        self._spawn(self._notify(notice))

    def _defend(self, ev: Defend) -> None:
        a = self._by_text.get(ev.address)
        if a is not None:
            self.events("address-defended", logging.WARNING, address=a)
            self._spawn(self._announce_once(a))

    async def _announce_once(self, a: netif.Assignment) -> None:
        await self.backend.announce(a, 1, 0.0)

    def _watch(self, on: bool) -> None:
        """Watch the held addresses' interfaces for other MACs claiming them (or stop)."""
        if on and not self._watches:
            for ifname in sorted({a.ifname for a in self.assignments}):
                try:
                    self._watches.append(
                        linkwatch.LinkWatch(ifname, _own_macs(ifname), self._on_claim, self.loop)
                    )
                except OSError as e:
                    self.events("watch-error", logging.WARNING, interface=ifname, error=e)
        elif not on and self._watches:
            for watch in self._watches:
                watch.close()
            self._watches = []

    def _on_claim(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address, mac: str) -> None:
        # A returning primary announces a thousand addresses in a burst: a set lookup per
        # frame, and one flush for the batch the watch sockets are draining.
        if address in self._ours:
            self._claims.append((address, mac))
            if len(self._claims) == 1:
                self.loop.call_soon(self._claims_done)

    def _claims_done(self) -> None:
        claims, self._claims = self._claims, []
        now = self.clock.monotonic()
        for address, mac in claims:
            self.core.address_claimed(now, str(address), mac)
        self._flush()

    async def _notify(self, notice: mail.Notice) -> None:
        try:
            await self.outbox.submit(notice)
        except OSError as e:
            self.events("mail-spool-error", logging.ERROR, error=e, subject=notice.subject)

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _answering_text(answering: tuple[tuple[str, tuple[str, ...]], ...]) -> str:
    return " ".join(f"{a}={mac}" for a, macs in answering for mac in macs)


def _answering_block(answering: tuple[tuple[str, tuple[str, ...]], ...]) -> str:
    return "\n".join(f"  {a:<24} answers from {' '.join(macs)}" for a, macs in answering)


def _own_macs(ifname: str) -> list[bytes]:
    """This interface's MAC (frames from it are ours, not a conflict)."""
    try:
        text = (Path("/sys/class/net") / ifname / "address").read_text().strip()
        return [bytes.fromhex(text.replace(":", ""))]
    except (OSError, ValueError):
        return []


async def _any_present(assignments: list[netif.Assignment]) -> bool:
    try:
        return any(await netif.present_all(assignments))
    except netif.NetifError:
        return False


def _monitor_config(cfg: config.Config, key: bytes, networks: tuple[str, ...]) -> MonitorConfig:
    return MonitorConfig(
        node=daemon.node_name(cfg),
        key=key,
        period=cfg.interval,
        deadtime=cfg.effective_deadtime,
        failback_delay=cfg.failback_delay,
        networks=networks,
        peer_ip=cfg.peer_ip,
        peer_name=cfg.peer_name,
        take_answering=cfg.take_answering,
    )


async def _quietly(
    events: daemon.EventLog, change: Coroutine[object, object, bool], event: str, a: object
) -> bool:
    try:
        return await change
    except netif.NetifError as e:
        events(event, logging.ERROR, address=a, error=e)
        return False


async def log_check_warnings(cfg: config.Config, events: daemon.EventLog) -> None:
    """What ``ipfailover check`` would warn about (mask/subnet, unsafe scripts), in the log.
    Advice, not a condition of running: at start-up it is logged just after READY."""
    from ipfailover.tools import check

    for problem in [*await check.pair_problems(cfg), *check.script_problems(cfg)]:
        level = logging.ERROR if problem.fatal else logging.WARNING
        events("check-error" if problem.fatal else "check-warning", level, problem=problem.text)


def build_parser() -> argparse.ArgumentParser:
    return daemon.base_parser(
        "failoverd",
        __doc__.splitlines()[0],
        stop="release what it holds, running PreRel/PostRel, then exit",
        hup=";\n                   addresses that stay are not touched",
    )


async def amain(argv: list[str] | None) -> int:
    cfg, key = daemon.start_up(build_parser(), argv, "failoverd")
    if problem := mail.notify_program_problem(cfg):
        raise daemon.StartupError(problem)
    if not daemon.has_capability(daemon.CAP_NET_ADMIN):
        raise daemon.StartupError(
            f"failoverd: uid {os.geteuid()} lacks CAP_NET_ADMIN, which adding and deleting "
            "addresses needs: run it as root (the systemd unit does)"
        )
    assignments = await resolve_pairs(cfg)
    networks = await daemon.watched_networks(cfg)
    lock = take_lock(cfg, assignments)
    accept_local = hostconf.AcceptLocal(cfg.run_dir)
    try:
        return await _run(cfg, key, assignments, networks, lock, accept_local)
    finally:
        accept_local.restore()  # only where we turned it on; after the addresses are released
        lock.close()


async def _run(
    cfg: config.Config,
    key: bytes,
    assignments: list[netif.Assignment],
    networks: tuple[str, ...],
    lock: transition.ManagerLock,
    accept_local: hostconf.AcceptLocal,
) -> int:
    try:
        accept_local.need(a.ifname for a in assignments)
    except hostconf.HostConfError as e:
        raise daemon.StartupError(f"{cfg.path}: {e}") from None
    present = [
        a
        for a, there in zip(assignments, await netif.present_all(assignments), strict=True)
        if there
    ]
    loop = asyncio.get_running_loop()
    fd = Failoverd.create(
        cfg,
        key,
        loop,
        assignments,
        networks,
        holding=bool(present),
        lock=lock,
        accept_local=accept_local,
    )
    # Everything that can still fail comes before the first address change.
    await daemon.start_control(cfg, fd.control)
    daemon.start_metrics(cfg, "FAILOVER_METRICS", loop, fd.snapshot)
    if present:
        # Restarted while holding (even after SIGKILL): adopt, no release-and-reacquire blip.
        for a in assignments:
            if a not in present:
                await _quietly(fd.events, fd.backend.add(a), "adopt-add-error", a)
        fd.events("adopt", addresses=" ".join(str(a) for a in present))
    fd.start()
    fd.service.ready(fd._status_line())
    await log_check_warnings(cfg, fd.events)
    fd._spawn(fd.executor.prepare())
    await fd.stopped.wait()
    await fd.control.close()
    await fd.close()
    return 0


def take_lock(cfg: config.Config, assignments: list[netif.Assignment]) -> transition.ManagerLock:
    """Claim our addresses in FAILOVER_RUN_DIR (``ipfailover process`` keeps off them)."""
    where = cfg.where("FAILOVER_RUN_DIR")
    try:
        return transition.ManagerLock.take(cfg.run_dir, assignments)
    except transition.LockHeld as e:
        raise daemon.StartupError(
            f"{where}: {e.path} is held by pid {e.pid}: another failoverd, or an "
            "`ipfailover process` run, manages these addresses"
        ) from None
    except control.UnsafeDirectory as e:
        raise daemon.StartupError(f"{where}: {e}") from None
    except OSError as e:
        raise daemon.run_dir_error(cfg, e) from None


def main(argv: list[str] | None = None) -> int:
    return daemon.run(amain(argv))


if __name__ == "__main__":
    sys.exit(main())
