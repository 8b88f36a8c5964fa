"""heartbeatd: the primary's daemon. Sends authenticated heartbeats to FAILOVER_BCAST_IPS.

The asyncio shell around :class:`ipfailover.core.sender.Sender`: it feeds the core the loop's clock
and the datagrams that arrive, sends what the core says, and re-announces this node's addresses when
the core asks (at start-up, on SIGHUP, and when a secondary reports it has released them).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys
from typing import TYPE_CHECKING, Any

from ipfailover import __version__
from ipfailover.core import auth, config
from ipfailover.core.sender import Announce, AnnounceDeferred, Sender, SenderConfig
from ipfailover.core.wire import Dropped
from ipfailover.shell import control
from ipfailover.shell import runtime as daemon
from ipfailover.shell.clock import Clock, LoopClock
from ipfailover.shell.snapshot import HeartbeatdSnapshot

if TYPE_CHECKING:
    from ipfailover.shell import netif

log = logging.getLogger("ipfailover.heartbeatd")
#: Imported after READY, in a worker thread (daemon.preload): sending heartbeats needs none of
#: them, and pyroute2 alone is most of the start-up time.
NET_MODULES = ("ipfailover.shell.netif", "ipfailover.shell.announce", "ipfailover.shell.linkwatch")
SEND_FAILURE_EVERY = 10.0  # seconds between send-failed lines for one target
HELD_RECHECK = 60.0  # seconds: the held targets are looked up at least this often


async def announced_addresses(cfg: config.Config) -> list[netif.Assignment]:
    """This node's own addresses to re-announce: every global address, IPv4 and IPv6, on each
    interface one of whose subnets contains a heartbeat target (the public and private networks
    of Apple's setup)."""
    await daemon.preload(*NET_MODULES)
    from ipfailover.shell import netif

    return await netif.addresses_on_subnets_of(cfg.bcast_ips)


def _families(cfg: config.Config) -> list[int]:
    return sorted({socket.AF_INET6 if ip.version == 6 else socket.AF_INET for ip in cfg.bcast_ips})


def _sender_config(cfg: config.Config, key: bytes) -> SenderConfig:
    return SenderConfig(
        node=daemon.node_name(cfg),
        key=key,
        interval=cfg.interval,
        targets=tuple((str(ip), cfg.port) for ip in cfg.bcast_ips),
    )


class Heartbeatd:
    """heartbeatd's shell; ``clock`` is what it reads the core's ``now`` from (by default the
    event loop's time, the base of its timers)."""

    def __init__(
        self,
        cfg: config.Config,
        key: bytes,
        loop: asyncio.AbstractEventLoop,
        *,
        clock: Clock | None = None,
    ) -> None:
        self.cfg = cfg
        self.loop = loop
        self.clock: Clock = clock or LoopClock(loop)
        self.events = daemon.EventLog(log)
        self.udp = daemon.UdpEndpoint(0, broadcast=True, families=_families(cfg))
        self.core = Sender(_sender_config(cfg, key), rng=os.urandom, now=self.clock.monotonic())
        self.timer = daemon.Timer(loop, self._on_timer)
        self.stopped = asyncio.Event()
        self.control = control.ControlServer(cfg.run_dir, "heartbeatd", self.snapshot)
        self.service = daemon.Service(loop, healthy=lambda: self.timer.served())
        self._tasks: set[asyncio.Task[None]] = set()
        self._send_failures: dict[str, tuple[float | None, int]] = {}  # target -> (logged, since)
        self._unsure: dict[asyncio.Task[None], str] = {}  # announcements a holder cancels
        self._after_batch = daemon.AfterBatch(loop, self._batch_done)
        self._addresses_changed = asyncio.Event()
        self._no_carrier: set[str] = set()  # interfaces of ours whose carrier went
        self._own: list[netif.Assignment] | None = None  # the last dump, until a change
        self._own_lock = asyncio.Lock()  # set by watch_links: look the targets up

    def snapshot(self) -> HeartbeatdSnapshot:
        """The status this daemon reports (docs/status.md)."""
        wall = daemon.WallClock.of(self.clock)
        now = self.clock.monotonic()
        return {
            "schema": control.SCHEMA,
            "role": "heartbeatd",
            "node": self.core.cfg.node,
            "pid": os.getpid(),
            "version": __version__,
            "config": self.cfg.path,
            "interval": self.core.cfg.interval,
            "targets": [f"{h}:{p}" for h, p in self.core.cfg.targets],
            "sent": self.core.counters["sent"],
            "seq": self.core.seq,
            "send_errors": self.udp.send_errors,
            "listeners": [
                {"name": name, "holding": holding, "last_challenge": wall(updated)}
                for name, holding, updated in self.core.listener_state()
            ],
            "rejected": daemon.rejected_counts(self.core.counters),
            "name_collision": daemon.collision_status(self.core.collision, wall, now),
        }

    def start(self) -> None:
        # before we send anything: this host's failoverd must know our heartbeats for ours
        control.write_boot(self.cfg.run_dir, "heartbeatd", self.core.boot_id)
        self.udp.start(self.loop, self._on_datagram)
        daemon.install_signals(self.loop, stop=self._on_stop, reload=self._on_hup)
        self.events(
            "start",
            role="heartbeatd",
            node=self.core.cfg.node,
            targets=" ".join(f"{h}:{p}" for h, p in self.core.cfg.targets),
            interval=self.cfg.interval,
        )
        self._flush()

    async def watch_links(self) -> None:
        """Re-announce when a cable comes back on an interface that carries our heartbeats, tell
        the core when every one of them lost its carrier (a cut), and have the held targets
        looked up again when addresses change (watch_held_targets).
        Event-driven (kernel notifications, nothing polled). Supervised: if the notifications
        fail (an overrun), subscribe again, and look the targets up again meanwhile."""
        await daemon.preload(*NET_MODULES)
        from ipfailover.shell import linkwatch

        while not self.stopped.is_set():
            # a (re)subscription reports only changes from now on: forget the carriers we saw
            # go, or a cable that came back unseen would make a later loss of another look like
            # a cut of every network (a takeover the primary did not need)
            self._no_carrier.clear()
            try:
                async for kind, ifname in linkwatch.link_events():
                    if kind == "addresses":
                        self._own = None
                        self._addresses_changed.set()
                    else:
                        self._carrier(kind, ifname, {a.ifname for a in await self.own_addresses()})
            except Exception as e:  # logged, and the watch starts over
                self.events("link-watch-error", logging.WARNING, error=repr(e))
                self._own = None
                self._addresses_changed.set()  # a change may have been missed
                await asyncio.sleep(1.0)

    def _carrier(self, kind: str, ifname: str, ours: set[str]) -> None:
        """A carrier change on ``ifname``; ``ours``: the interfaces that carry our heartbeats.
        When the last of them loses its carrier we are cut off (the core then flags the
        heartbeats after the return, and the secondary takes over at once)."""
        if ifname not in ours:
            return
        now = self.clock.monotonic()
        if kind == "carrier-down":
            self._no_carrier.add(ifname)
            if ours <= self._no_carrier:
                self.events("cut-off", interfaces=" ".join(sorted(ours)))
                self.core.link_down(now)
            return
        self._no_carrier.discard(ifname)
        self.events("link-up", interface=ifname)
        self.core.link_up(now)
        self._flush()

    async def watch_held_targets(self) -> None:
        """Peering with unicast targets: while this host holds a target's address (its own
        failoverd took the peer's address over), a datagram to it would be delivered here and
        never leave the host, and the returning peer would hear nothing on that network. Send
        it to the link instead, as failoverd does for its challenges (netif.unicast_substitute:
        the subnet's broadcast, or all-nodes). Looked up at start-up and again whenever the
        kernel reports an address change (watch_links), at the latest every HELD_RECHECK
        seconds; never polled per interval."""
        failed = ""  # the last error logged, so that a lasting one is logged once
        await daemon.preload(*NET_MODULES)
        from ipfailover.shell import netif

        while not self.stopped.is_set():
            self._addresses_changed.clear()
            try:
                targets = set(self.cfg.bcast_ips)
                held = await self.own_addresses()
                redirects: dict[str, tuple[Any, ...]] = {}
                for a in held:
                    sub = netif.unicast_substitute(a) if a.address in targets else None
                    if sub is not None:
                        redirects[str(a.address)] = sub
                old = self.udp.redirects
                for target in sorted(redirects.keys() - old.keys()):
                    self.events("target-held", target=target, via=redirects[target][0])
                for target in sorted(old.keys() - redirects.keys()):
                    self.events("target-released", target=target)
                self.udp.redirects = redirects
            except Exception as e:  # logged once; the targets are sent to as configured meanwhile
                if repr(e) != failed:
                    self.events("target-watch-error", logging.WARNING, error=repr(e))
                failed = repr(e)
                self._addresses_changed.set()  # try again after a second
                await asyncio.sleep(1.0)
            else:
                failed = ""
            try:
                await asyncio.wait_for(self._addresses_changed.wait(), HELD_RECHECK)
            except TimeoutError:
                self._own = None  # the safety re-check dumps again

    def _on_timer(self) -> None:
        self.core.handle_timer(self.clock.monotonic())
        self._flush()

    def _on_datagram(self, dg: daemon.Datagram) -> None:
        self.core.receive_datagram(dg.data, dg.addr, self.clock.monotonic())
        daemon.answer_local_boots(self.core, self.cfg.run_dir, self.clock.monotonic())
        self._after_batch.request()  # one flush for the batch (every network's copies)

    def _batch_done(self) -> None:
        self._flush()
        if self._unsure:
            self._cancel_if_held()

    def _cancel_if_held(self) -> None:
        """A start-up or carrier announcement still repeating when a listener says it has taken
        our addresses (its takeover crossed our cable's return) stops: its later rounds would
        pull clients back from the holder before the hand-back (the RELEASED announces then)."""
        holders = [name for name, holding, _ in self.core.listener_state() if holding]
        if not holders:
            return
        for task, reason in list(self._unsure.items()):
            task.cancel()
            self.events("announce-cancelled", reason=reason, holder=holders[0])
        self._unsure.clear()

    def _on_hup(self) -> None:
        if self.core.stopped:
            return  # stopping: the core takes no more announcements
        self.service.reloading()
        self.reload()
        self.core.tickle(self.clock.monotonic(), "sighup")
        self._flush()
        self.service.ready(f"sending every {self.cfg.interval:g} s")

    def reload(self) -> None:
        """Re-read the config; a bad one is logged and the old one kept. Never stops beating."""
        try:
            cfg = daemon.load_role_config(self.cfg.path, "heartbeatd")
            key = daemon.load_key(cfg)
            new = None
            if _families(cfg) != _families(self.cfg):
                new = daemon.UdpEndpoint(0, broadcast=True, families=_families(cfg))
        except (daemon.StartupError, OSError) as e:
            self.events("reload-failed", logging.ERROR, errors=str(e).replace("\n", "; "))
            return
        if new is not None:
            new.redirects = self.udp.redirects
            self.udp.close()
            self.udp = new
            self.udp.start(self.loop, self._on_datagram)
        self.core.reconfigure(_sender_config(cfg, key), self.clock.monotonic())
        self.cfg = cfg
        self._own = None  # the targets may have changed
        self.events(
            "reload-done",
            targets=" ".join(f"{h}:{p}" for h, p in self.core.cfg.targets),
            interval=cfg.interval,
        )

    def _on_stop(self) -> None:
        if self.core.stopped:
            return  # a second SIGTERM: LEAVING went out already
        self.service.stopping()
        self.core.leave(self.clock.monotonic())
        self.events("leaving", node=self.core.cfg.node)
        self._flush()
        self.stopped.set()

    def _flush(self) -> None:
        try:
            verbose = log.isEnabledFor(logging.DEBUG)
            for data, addr in self.core.datagrams_to_send():
                sent = self.udp.sendto(data, addr)
                if not sent:
                    self._send_failed(addr)
                if verbose:
                    self.events(
                        "sent",
                        logging.DEBUG,
                        to=f"{addr[0]}:{addr[1]}",
                        bytes=len(data),
                        ok=sent,
                    )
            while (ev := self.core.next_event()) is not None:
                if isinstance(ev, Announce):
                    task = self.loop.create_task(self._announce(ev))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                    if ev.reason in ("start", "carrier"):
                        self._unsure[task] = ev.reason
                        task.add_done_callback(lambda t: self._unsure.pop(t, None))
                elif isinstance(ev, AnnounceDeferred):
                    self.events("announce-deferred", reason=ev.reason, holder=ev.listener)
                elif isinstance(ev, Dropped):
                    self.events.dropped(ev, self.clock.monotonic())
                elif isinstance(ev, auth.NameCollision):
                    daemon.log_collision(self.events, ev)
        finally:
            self.timer.arm(self.core.get_timer())  # whatever happened, keep beating

    def _send_failed(self, addr: tuple[str, int]) -> None:
        """Log a failed send at WARNING: the first at once, then one line per target every
        SEND_FAILURE_EVERY seconds with how many failed since (the counter keeps them all)."""
        now = self.clock.monotonic()
        target = f"{addr[0]}:{addr[1]}"
        last, hidden = self._send_failures.get(target, (None, 0))
        if last is not None and now - last < SEND_FAILURE_EVERY:
            self._send_failures[target] = (last, hidden + 1)
            return
        self._send_failures[target] = (now, 0)
        self.events(
            "send-failed",
            logging.WARNING,
            to=target,
            error=self.udp.last_send_error or None,
            suppressed=hidden or None,
        )

    async def own_addresses(self) -> list[netif.Assignment]:
        """announced_addresses, dumped once and kept until the kernel reports an address change
        (watch_links): the start-up announcement and the held-target lookup share one dump,
        which with a thousand addresses is most of their cost."""
        async with self._own_lock:
            if self._own is None:
                self._own = await announced_addresses(self.cfg)
            return self._own

    async def _announce(self, ev: Announce) -> None:
        await daemon.preload(*NET_MODULES)
        from ipfailover.shell import announce, netif

        try:
            addrs = await self.own_addresses()
        except netif.NetifError as e:
            self.events("announce-error", logging.ERROR, reason=ev.reason, error=e)
            if ev.handback:  # unconfirmed: the secondary releases first after its bound
                self.core.handback_announced(self.clock.monotonic(), ev.handback, ok=False)
            return
        self.events(
            "announce",
            reason=ev.reason,
            listener=ev.listener or None,
            addresses=" ".join(str(a) for a in addrs),
        )
        # one packet socket for them all, paced: the heartbeats keep their schedule meanwhile
        count, interval = self.cfg.garp_count, self.cfg.garp_interval
        if ev.handback and count > 0:
            # Make before break: the first round out, then confirm, so that the secondary
            # deletes the addresses only once clients have been told where they are.
            await announce.announce_all(addrs, 1, 0.0)
            self.core.handback_announced(self.clock.monotonic(), ev.handback)
            self._flush()
            if count == 1:
                return
            await asyncio.sleep(interval)
            count -= 1
        await announce.announce_all(addrs, count, interval)


def build_parser() -> argparse.ArgumentParser:
    return daemon.base_parser(
        "heartbeatd",
        __doc__.splitlines()[0],
        stop="send LEAVING, so the secondary takes over at once",
        hup=";\n                   then re-announce this node's addresses (Apple's tickle)",
        verbose="log every datagram sent (DEBUG lines)",
    )


async def amain(argv: list[str] | None) -> int:
    cfg, key = daemon.start_up(build_parser(), argv, "heartbeatd")
    hb = Heartbeatd(cfg, key, asyncio.get_running_loop())
    await daemon.start_control(cfg, hb.control)
    daemon.start_metrics(cfg, "FAILOVER_HEARTBEAT_METRICS", hb.loop, hb.snapshot)
    hb.start()
    links = asyncio.create_task(hb.watch_links())
    held = asyncio.create_task(hb.watch_held_targets())
    hb.service.ready(f"sending every {cfg.interval:g} s")
    await hb.stopped.wait()
    links.cancel()
    held.cancel()
    await asyncio.sleep(0)  # let the LEAVING datagrams go out
    await hb.control.close()
    hb.udp.close()
    control.remove_boot(cfg.run_dir, "heartbeatd", hb.core.boot_id)
    return 0


def main(argv: list[str] | None = None) -> int:
    return daemon.run(amain(argv))


if __name__ == "__main__":
    sys.exit(main())
