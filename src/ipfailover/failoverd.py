"""failoverd: the secondary's daemon. Watches the primary; takes over its addresses when it dies.

The asyncio shell around :class:`ipfailover.monitor.Monitor`. It feeds the core the loop's clock,
each datagram with the interface it arrived on, and the outcome of each takeover or release, which
:class:`ipfailover.transition.Executor` carries out (Test gate, scripts, netlink, announcements,
mail). Mail is spooled and delivered in the background (:class:`ipfailover.mail.Outbox`).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import logging
import os
import socket
import sys
import time
from collections import Counter
from collections.abc import Coroutine
from typing import Any

from . import __version__, auth, check, config, control, daemon, hooks, mail, netif, transition
from .monitor import (
    Acquire,
    Heard,
    Monitor,
    MonitorConfig,
    NetworkEvent,
    PeerWarning,
    Release,
    State,
    StateChanged,
    Trigger,
)
from .wire import Dropped

log = logging.getLogger("ipfailover.failoverd")
MAIL_STOP_GRACE = 2.0  # seconds a stopping failoverd gives a delivery under way to finish
HISTORY = 50  # transitions kept in memory (for the status command)
RETRY_MAX = 60.0  # seconds: the longest wait before trying a failed takeover again


async def resolve_pairs(cfg: config.Config) -> list[netif.Assignment]:
    """Bind each FAILOVER_PEER_IP_PAIRS entry to its interface; a missing one stops start-up."""
    line = cfg.line_of("FAILOVER_PEER_IP_PAIRS") or 0
    where = f"{cfg.path}:{line}: FAILOVER_PEER_IP_PAIRS"
    missing = await netif.missing_interfaces(p.interface for p in cfg.peer_ip_pairs)
    if missing:
        raise daemon.StartupError(f"{where}: no such interface: {', '.join(sorted(set(missing)))}")
    return [await netif.resolve(p.interface, p.address, p.prefixlen) for p in cfg.peer_ip_pairs]


async def watched_networks(cfg: config.Config) -> tuple[str, ...]:
    """FAILOVER_NETWORKS, or the pairs' interfaces plus those on FAILOVER_PEER_IP's subnet."""
    if cfg.networks:
        missing = await netif.missing_interfaces(cfg.networks)
        if missing:
            line = cfg.line_of("FAILOVER_NETWORKS") or 0
            raise daemon.StartupError(
                f"{cfg.path}:{line}: FAILOVER_NETWORKS: no such interface: {', '.join(missing)}"
            )
        return cfg.networks
    names = {p.interface for p in cfg.peer_ip_pairs}
    if cfg.peer_ip is not None:
        try:
            on_subnet = await netif.addresses_on_subnets_of([cfg.peer_ip])
        except netif.NetifError as e:
            raise daemon.StartupError(f"{cfg.path}: {e}") from None
        names.update(a.ifname for a in on_subnet)
    return tuple(sorted(names))


class Failoverd:
    def __init__(
        self,
        cfg: config.Config,
        key: bytes,
        loop: asyncio.AbstractEventLoop,
        assignments: list[netif.Assignment],
        networks: tuple[str, ...],
        holding: bool,
    ) -> None:
        self.cfg = cfg
        self.loop = loop
        self.assignments = assignments
        self.events = daemon.EventLog(log)
        self.udp = self._endpoint(cfg, assignments)
        self.core = Monitor(
            _monitor_config(cfg, key, networks), rng=os.urandom, now=loop.time(), holding=holding
        )
        self.control = control.ControlServer(cfg.run_dir, "failoverd", self.snapshot)
        self.service = daemon.Service(loop, healthy=lambda: self.timer.served())
        self.counts: Counter[str] = Counter()
        self.lock: transition.ManagerLock | None = None
        self._changing = asyncio.Lock()  # transitions and reloads take turns
        self._failed_takeovers = 0
        self.timer = daemon.Timer(loop, self._on_timer)
        self.stopped = asyncio.Event()
        self.history: collections.deque[transition.TransitionRecord] = collections.deque(
            maxlen=HISTORY
        )
        self._work: asyncio.Task[None] | None = None
        settings = mail.MailSettings.from_config(cfg)
        self.outbox = mail.Outbox(
            settings, mail.delivery_for(settings), self.events, node=self.node
        )
        self.scripts = hooks.ScriptFolder.for_config(cfg)
        self.executor = transition.Executor(
            node=self.node,
            addresses=assignments,
            scripts=self.scripts,
            backend=transition.NetlinkBackend(),
            announcing=transition.Announcing(cfg.garp_count, cfg.garp_interval),
            notifier=self.outbox,
            events=self.events,
        )
        self._heard: dict[str, float] = {}  # network -> loop time the primary was last heard
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    def _endpoint(
        cls, cfg: config.Config, assignments: list[netif.Assignment]
    ) -> daemon.UdpEndpoint:
        udp = daemon.UdpEndpoint(cfg.port, broadcast=True)
        udp.redirects = cls._endpoint_redirects(assignments)
        return udp

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

    def snapshot(self) -> dict[str, Any]:
        """The status this daemon reports (docs/status.md)."""
        now, wall = self.loop.time(), daemon.WallClock(self.loop)
        det, core = self.core.detector, self.core
        peer_interval = core.peer_interval or self.cfg.interval
        takeovers = [r for r in self.history if r.action is transition.Action.ACQUIRE and r.ok]
        return {
            "schema": control.SCHEMA,
            "role": "failoverd",
            "node": self.node,
            "pid": os.getpid(),
            "version": __version__,
            "config": self.cfg.path,
            "state": core.state.value,
            "since": wall(core.since),
            "holding": core.holding,
            "peer": {
                "name": core.peer_name,
                "ip": None if self.cfg.peer_ip is None else str(self.cfg.peer_ip),
                "interval": core.peer_interval,
            },
            "deadtime": core.cfg.deadtime,
            "failback_delay": core.cfg.failback_delay,
            "holddown_until": wall(core.holddown_until),
            "networks": [
                {
                    "name": name,
                    "alive": det.alive(name, now),
                    "anomaly": view.in_anomaly,
                    "last_heard": wall(view.last_heard),
                    "heartbeats": view.heartbeats,
                    "loss_1m": det.loss(name, peer_interval, now),
                }
                for name, view in sorted(det.networks.items())
            ],
            "addresses": [{"address": str(a), "held": core.holding} for a in self.assignments],
            "transitions": [r.summary() for r in list(self.history)[-10:]],
            "last_takeover_seconds": takeovers[-1].duration if takeovers else None,
            "mail": {"pending": self.outbox.pending()},
            "rejected": daemon.rejected_counts(core.counters),
            "name_collision": daemon.collision_status(core.collision, wall, now),
            "counts": {
                "transitions": self._transition_counts(),
                "script_runs": self.counts["script-runs"],
                "script_failures": self.counts["script-failures"],
            },
        }

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
        """After the core stopped: let mail under way go out (briefly), close the sockets."""
        await self.outbox.stop(MAIL_STOP_GRACE)
        self.udp.close()
        control.remove_boot(self.cfg.run_dir, "failoverd", self.core.boot_id)

    def _addresses(self) -> str:
        return " ".join(str(a) for a in self.assignments)

    # Inputs ------------------------------------------------------------------------------------

    def _on_timer(self) -> None:
        self.core.handle_timer(self.loop.time())
        self._flush()

    def _on_datagram(self, dg: daemon.Datagram) -> None:
        self.core.receive_datagram(dg.data, dg.addr, dg.ifname, self.loop.time())
        daemon.answer_local_boots(self.core, self.cfg.run_dir, self.loop.time())
        self._flush()

    def _on_stop(self) -> None:
        self.service.stopping()
        self.events("stopping", state=self.core.state.value)
        self.core.shutdown(self.loop.time())
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
        networks = await watched_networks(cfg)
        for ifname in sorted({*networks, *(a.ifname for a in assignments)}):
            netif.accept_local(ifname)
        if cfg.port != self.cfg.port:
            udp = self._endpoint(cfg, assignments)  # may fail: then nothing has changed yet
            self.udp.close()
            self.udp = udp
            self.udp.start(self.loop, self._on_datagram)
        else:
            self.udp.redirects = self._endpoint_redirects(assignments)
        removed = [a for a in self.assignments if a not in assignments]
        added = [a for a in assignments if a not in self.assignments]
        if self.core.holding:
            for a in removed:
                await _quietly(self.events, netif.delete(a), "reload-delete-error", a)
            for a in added:
                if await _quietly(self.events, netif.add(a), "reload-add-error", a):
                    self._spawn(self._announce(a, cfg))
        self.cfg, self.assignments = cfg, assignments
        self.executor.addresses = tuple(assignments)
        self.executor.announcing = transition.Announcing(cfg.garp_count, cfg.garp_interval)
        self.scripts = hooks.ScriptFolder.for_config(cfg)
        self.executor.scripts = self.scripts
        if self.lock is not None:
            self.lock.update(assignments)
        self.core.reconfigure(_monitor_config(cfg, key, networks), self.loop.time())
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
        await netif.announce(a, cfg.garp_count, cfg.garp_interval)

    def _transition_counts(self) -> dict[str, dict[str, int]]:
        """{action: {outcome: count}} since start-up."""
        out: dict[str, dict[str, int]] = {}
        for key, n in self.counts.items():
            kind, _, rest = key.partition(":")
            if kind == "transition":
                action, _, outcome = rest.partition(":")
                out.setdefault(action, {})[outcome] = n
        return out

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
        if self.core.state is State.STOPPED:
            self.stopped.set()

    def _handle(self, ev: object) -> None:
        now = self.loop.time()
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
        elif isinstance(ev, NetworkEvent):
            name = "peer-verified" if ev.kind == "verified" else ev.kind
            level = logging.WARNING if ev.kind == "anomaly" else logging.INFO
            self.events(name, level, network=ev.network, peer=self.core.peer_name)
            if ev.kind in ("anomaly", "recovered"):
                notice = mail.network_notice(ev.kind, ev.network, self._situation(), time.time())
                self._spawn(self._notify(notice))
        elif isinstance(ev, Heard):
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
        elif isinstance(ev, auth.NameCollision):
            daemon.log_collision(self.events, ev)
            notice = mail.collision_notice(ev, self._situation(), time.time())
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
            # the primary stays silent; one that Test said no to waits for the primary.
            self._failed_takeovers = self._failed_takeovers + 1 if failed and not ok else 0
            retry = None
            if self._failed_takeovers:
                retry = min(RETRY_MAX, self.core.cfg.deadtime * 2 ** (self._failed_takeovers - 1))
                self.events("acquire-retry", logging.WARNING, after=retry)
            self.core.acquire_done(self.loop.time(), ok=ok, retry_after=retry)
        else:
            self.core.release_done(self.loop.time(), ok=ok)
        self._flush()

    # Mail ----------------------------------------------------------------------------------------

    def _note_heard(self) -> None:
        """Keep our own copy of when each network last heard the primary, for the mail.

        The detector forgets on LEAVING; the mail about that takeover should still say when.
        """
        for name, view in self.core.detector.networks.items():
            if view.last_heard is not None:
                self._heard[name] = max(view.last_heard, self._heard.get(name, view.last_heard))

    def _situation(self) -> mail.Situation:
        """Who, about whom, which addresses, and when each network last heard the primary."""
        now_loop, now_wall = self.loop.time(), time.time()
        self._note_heard()
        heard = tuple(
            (name, now_wall - (now_loop - self._heard[name]) if name in self._heard else None)
            for name in sorted(self.core.detector.networks)
        )
        return mail.Situation(
            node=self.node,
            host=socket.gethostname(),
            peer=self.core.peer_name or str(self.cfg.peer_ip),
            addresses=tuple(transition.plain(a) for a in self.assignments),
            heard=heard,
        )

    async def _notify(self, notice: mail.Notice) -> None:
        try:
            await self.outbox.submit(notice)
        except OSError as e:
            self.events("mail-spool-error", logging.ERROR, error=e, subject=notice.subject)

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def _any_present(assignments: list[netif.Assignment]) -> bool:
    for a in assignments:
        try:
            if await netif.present(a):
                return True
        except netif.NetifError:
            continue
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
    """What ``ipfailover check`` would warn about (mask/subnet, unsafe scripts), in the log."""
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
    assignments = await resolve_pairs(cfg)
    networks = await watched_networks(cfg)
    try:
        for ifname in sorted({*networks, *(a.ifname for a in assignments)}):
            netif.accept_local(ifname)
    except netif.NetifError as e:
        raise daemon.StartupError(f"{cfg.path}: {e}") from None
    lock = take_lock(cfg, assignments)
    present = [a for a in assignments if await netif.present(a)]
    loop = asyncio.get_running_loop()
    fd = Failoverd(cfg, key, loop, assignments, networks, holding=bool(present))
    fd.lock = lock
    # Everything that can still fail comes before the first address change.
    await fd.control.start()
    daemon.start_metrics(cfg, "FAILOVER_METRICS", loop, fd.snapshot)
    if present:
        # Restarted while holding (even after SIGKILL): adopt, no release-and-reacquire blip.
        for a in assignments:
            if a not in present:
                await _quietly(fd.events, netif.add(a), "adopt-add-error", a)
        fd.events("adopt", addresses=" ".join(str(a) for a in present))
    fd.start()
    await log_check_warnings(cfg, fd.events)
    fd.service.ready(fd._status_line())
    await fd.stopped.wait()
    await fd.control.close()
    await fd.close()
    lock.close()
    return 0


def take_lock(cfg: config.Config, assignments: list[netif.Assignment]) -> transition.ManagerLock:
    """Claim our addresses in FAILOVER_RUN_DIR (``ipfailover process`` keeps off them)."""
    where = f"{cfg.path}:{cfg.line_of('FAILOVER_RUN_DIR') or 0}: FAILOVER_RUN_DIR"
    try:
        return transition.ManagerLock.take(cfg.run_dir, assignments)
    except transition.LockHeld as e:
        raise daemon.StartupError(
            f"{where}: {e.path} is held by pid {e.pid}: another failoverd, or an "
            "`ipfailover process` run, manages these addresses"
        ) from None
    except OSError as e:
        raise daemon.StartupError(f"{where}: cannot create {cfg.run_dir}: {e.strerror}") from None


def main(argv: list[str] | None = None) -> int:
    return daemon.run(amain(argv))


if __name__ == "__main__":
    sys.exit(main())
