"""failoverd: the secondary's daemon. Watches the primary; takes over its addresses when it dies.

The asyncio shell around :class:`ipfailover.monitor.Monitor`. It feeds the core the loop's clock,
each datagram with the interface it arrived on, and the outcome of each takeover or release it
carried out through netlink (:mod:`ipfailover.netif`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import signal
import socket
import sys
from dataclasses import dataclass, field

from . import config, daemon, netif
from .monitor import (
    Acquire,
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
STOP_TIMEOUT = 30.0  # seconds a shutdown waits for the release before giving up


@dataclass
class Transition:
    """One takeover or release as it happened: for logs, status and mail."""

    action: str  # "acquire" or "release"
    reason: str
    started: float
    steps: list[tuple[str, float]] = field(default_factory=list)  # (step, seconds)
    ok: bool = True
    finished: float | None = None

    def step(self, name: str, began: float, now: float) -> None:
        self.steps.append((name, now - began))


async def resolve_pairs(cfg: config.Config) -> list[netif.Assignment]:
    """Bind each FAILOVER_PEER_IP_PAIRS entry to its interface; a missing one stops start-up."""
    line = cfg.line_of("FAILOVER_PEER_IP_PAIRS") or 0
    where = f"{cfg.path}:{line}: FAILOVER_PEER_IP_PAIRS"
    missing = await netif.missing_interfaces(p.interface for p in cfg.peer_ip_pairs)
    if missing:
        raise daemon.StartupError(f"{where}: no such interface: {', '.join(sorted(set(missing)))}")
    return [await netif.resolve(p.interface, p.address, p.prefixlen) for p in cfg.peer_ip_pairs]


async def watched_networks(cfg: config.Config) -> tuple[str, ...]:
    """FAILOVER_NETWORKS, or the pairs' interfaces plus the one on FAILOVER_PEER_IP's subnet."""
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
        for _, ifname in socket.if_nameindex():
            for a in await netif.interface_addresses(ifname):
                net = ipaddress.ip_network(f"{a.address}/{a.prefixlen}", strict=False)
                if cfg.peer_ip in net and a.address != cfg.peer_ip:
                    names.add(ifname)
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
        self.udp = daemon.UdpEndpoint(cfg.port)
        self.core = Monitor(
            MonitorConfig(
                node=daemon.node_name(cfg),
                key=key,
                period=cfg.interval,
                deadtime=cfg.effective_deadtime,
                failback_delay=cfg.failback_delay,
                networks=networks,
                peer_ip=cfg.peer_ip,
                peer_name=cfg.peer_name,
            ),
            rng=os.urandom,
            now=loop.time(),
            holding=holding,
        )
        self.timer = daemon.Timer(loop, self._on_timer)
        self.stopped = asyncio.Event()
        self.history: list[Transition] = []
        self._work: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.udp.start(self.loop, self._on_datagram)
        daemon.install_signals(
            self.loop, {signal.SIGTERM: self._on_stop, signal.SIGINT: self._on_stop}
        )
        self.events(
            "start",
            role="failoverd",
            node=self.core.cfg.node,
            peer=self.cfg.peer_ip,
            networks=" ".join(self.core.cfg.networks),
            addresses=self._addresses(),
            deadtime=self.core.cfg.deadtime,
            state=self.core.state.value,
        )
        self._flush()

    def _addresses(self) -> str:
        return " ".join(str(a) for a in self.assignments)

    # Inputs ------------------------------------------------------------------------------------

    def _on_timer(self) -> None:
        self.core.handle_timer(self.loop.time())
        self._flush()

    def _on_datagram(self, dg: daemon.Datagram) -> None:
        self.core.receive_datagram(dg.data, dg.addr, dg.ifname, self.loop.time())
        self._flush()

    def _on_stop(self) -> None:
        self.events("stopping", state=self.core.state.value)
        self.core.shutdown(self.loop.time())
        self._flush()

    # Outputs -----------------------------------------------------------------------------------

    def _flush(self) -> None:
        for data, addr in self.core.datagrams_to_send():
            self.udp.sendto(data, addr)
        while (ev := self.core.next_event()) is not None:
            self._handle(ev)
        self.timer.arm(self.core.get_timer())
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
        elif isinstance(ev, PeerWarning):
            self.events("warning", logging.WARNING, text=ev.text)
        elif isinstance(ev, Dropped):
            self.events.dropped(ev, now)

    def _start_work(self, ev: Acquire | Release) -> None:
        if self._work is not None and not self._work.done():
            raise RuntimeError("the monitor asked for overlapping transitions")  # a core bug
        coro = self._acquire(ev.reason) if isinstance(ev, Acquire) else self._release(ev.reason)
        self._work = self.loop.create_task(coro)

    async def _acquire(self, reason: Trigger) -> None:
        t = Transition("acquire", reason.value, self.loop.time())
        self.history.append(t)
        self.events(
            "acquire-start",
            reason=reason.value,
            peer=self.core.peer_name,
            addresses=self._addresses(),
        )
        began = self.loop.time()
        added = 0
        for a in self.assignments:
            try:
                await netif.add(a)
                added += 1
            except netif.NetifError as e:
                self.events("acquire-error", logging.ERROR, address=a, error=e)
        t.step("add-addresses", began, self.loop.time())
        t.ok = added > 0
        if t.ok:
            for a in self.assignments:
                self._spawn_announce(a)
        t.finished = self.loop.time()
        self.events(
            "acquire-done" if t.ok else "acquire-failed",
            logging.INFO if t.ok else logging.ERROR,
            reason=reason.value,
            duration=t.finished - t.started,
            added=f"{added}/{len(self.assignments)}",
        )
        self.core.acquire_done(self.loop.time(), ok=t.ok)
        self._flush()

    def _spawn_announce(self, a: netif.Assignment) -> None:
        task = self.loop.create_task(netif.announce(a, self.cfg.garp_count, self.cfg.garp_interval))
        task.add_done_callback(lambda _t: None)

    async def _release(self, reason: Trigger) -> None:
        t = Transition("release", reason.value, self.loop.time())
        self.history.append(t)
        self.events(
            "release-start",
            reason=reason.value,
            peer=self.core.peer_name,
            addresses=self._addresses(),
        )
        began = self.loop.time()
        failed = 0
        for a in self.assignments:
            try:
                await netif.delete(a)
            except netif.NetifError as e:
                failed += 1
                self.events("release-error", logging.ERROR, address=a, error=e)
        t.step("delete-addresses", began, self.loop.time())
        t.ok = failed == 0
        t.finished = self.loop.time()
        self.events(
            "release-done" if t.ok else "release-failed",
            logging.INFO if t.ok else logging.ERROR,
            reason=reason.value,
            duration=t.finished - t.started,
        )
        self.core.release_done(self.loop.time(), ok=t.ok)
        self._flush()


async def amain(argv: list[str] | None) -> int:
    args = daemon.base_parser("failoverd", __doc__.splitlines()[0]).parse_args(argv)
    daemon.setup_logging(args.verbose)
    cfg = daemon.load_role_config(args.config, "failoverd")
    key = daemon.load_key(cfg)
    assignments = await resolve_pairs(cfg)
    networks = await watched_networks(cfg)
    present = [a for a in assignments if await netif.present(a)]
    loop = asyncio.get_running_loop()
    fd = Failoverd(cfg, key, loop, assignments, networks, holding=bool(present))
    if present:
        # Restarted while holding (even after SIGKILL): adopt, no release-and-reacquire blip.
        for a in assignments:
            if a not in present:
                await netif.add(a)
        fd.events("adopt", addresses=" ".join(str(a) for a in present))
    fd.start()
    await fd.stopped.wait()
    fd.udp.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    return daemon.run(amain(argv))


if __name__ == "__main__":
    sys.exit(main())
