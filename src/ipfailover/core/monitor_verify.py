"""failoverd's core, intake: which authentic datagrams come from the primary, and which prove it
alive.

The :class:`Verifier` a :class:`ipfailover.core.monitor.Monitor` owns screens each authentic
datagram (:meth:`Verifier.screen`): our own host's (known by boot id, not by name), datagrams
held until the shell names this host's boot ids, senders that are not the primary, boots that
said LEAVING or that the primary had before its current one. It then verifies a heartbeat
(:meth:`Verifier.verify`) through the :class:`ipfailover.core.monitor_challenge.Challenger`'s
replay windows and nonces, and learns from a verified one: the primary's name (pinned by
FAILOVER_PEER_IP), its boot, a name collision, an interval too long for our dead time. What the
verified heartbeat means for the takeover is the monitor's to decide.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Callable

from ipfailover.core import auth, wire
from ipfailover.core.monitor_challenge import Challenger, _PeerNet, _Source, bounded_add
from ipfailover.core.monitor_types import (
    MAX_HELD,
    MAX_RETIRED,
    Addr,
    MonitorConfig,
    Outbox,
    PeerWarning,
)

Held = tuple[wire.Message, Addr, str]  # a datagram, where it came from, its network
Proof = Callable[[wire.Message, float], float | None]  # when a heartbeat proves life


class Verifier:
    """Who the primary is, and which of what it sends is fresh."""

    def __init__(self, cfg: MonitorConfig, boot_id: bytes, now: float, ch: Challenger) -> None:
        self.cfg = cfg  # the monitor's, replaced on reconfigure
        self.challenger = ch
        self.identity = auth.Identity(cfg.node, boot_id, now)
        self.collision: auth.Collision | None = None
        self.held: list[Held] = []
        self.peer_name = cfg.peer_name  # None: learn it (see _peer_matches)
        self.ever_verified = False  # a heartbeat of the primary was verified since start-up
        self.left_boots: OrderedDict[bytes, None] = OrderedDict()  # boots that said LEAVING
        self.warned_boots: OrderedDict[bytes, None] = OrderedDict()

    def reconfigure(self, cfg: MonitorConfig) -> None:
        self.cfg = cfg
        self.identity.node = cfg.node
        if cfg.peer_name is not None:
            self.peer_name = cfg.peer_name

    def set_local(self, boots: frozenset[bytes]) -> list[Held]:
        """This host's boot ids are known: the datagrams held until then, to be received now."""
        self.identity.set_local(boots)
        held, self.held = self.held, []
        return held

    def screen(self, msg: wire.Message, addr: Addr, network: str, now: float, box: Outbox) -> bool:
        """True if ``msg`` comes from the primary and is to be verified (or, an ANNOUNCED,
        checked); False if it is ignored (and counted). Raises what is to be dropped."""
        if msg.type not in (wire.MsgType.HEARTBEAT, wire.MsgType.LEAVING, wire.MsgType.ANNOUNCED):
            raise wire.RemoteProtocolError(wire.Reason.UNEXPECTED, f"{msg.type.name} to failoverd")
        # Our own datagrams are known by boot id, not by name: a clone may share the name.
        who = self.identity.classify(msg.sender, msg.boot_id, now)
        if who == auth.Identity.OWN:
            box.counters["own"] += 1  # peering: our own host's heartbeatd, looped back
            return False
        if who == auth.Identity.ASK:
            box.counters["own-name-held"] += 1
            if len(self.held) < MAX_HELD:
                self.held.append((msg, addr, network))  # until the shell knows our boot ids
            return False
        if who == auth.Identity.UNDECIDED:
            raise wire.RemoteProtocolError(wire.Reason.UNEXPECTED, "our name, an unknown boot id")
        if not self._peer_matches(msg.sender):
            raise wire.RemoteProtocolError(wire.Reason.UNKNOWN_PEER, f"sender {msg.sender!r}")
        if msg.boot_id in self.left_boots:
            box.counters["after-leaving"] += 1  # the other copies of LEAVING, or stragglers
            return False
        if msg.boot_id in self.challenger.retired:
            # the primary has since restarted: what its earlier boot sent is history
            raise wire.RemoteProtocolError(wire.Reason.REPLAY, "from an earlier boot")
        return True

    def verify(
        self, msg: wire.Message, addr: Addr, network: str, now: float, box: Outbox, proof: Proof
    ) -> tuple[_PeerNet, _Source, float]:
        """A screened heartbeat (or LEAVING): its network's entry, its source's and its evidence
        time, as ``proof`` (the monitor's ``_evidence``) gives it. Raises REPLAY for a duplicate,
        STALE if it echoes no fresh nonce of ours."""
        ch = self.challenger
        window = ch.window(msg.sender, msg.boot_id)
        if window.seen(msg.seq):
            raise wire.RemoteProtocolError(wire.Reason.REPLAY, f"seq {msg.seq} seen or too old")
        peer = ch.peers.setdefault(network, _PeerNet())
        source = ch.source(peer, addr, msg, now)
        evidence = proof(msg, now)
        if evidence is None:
            # Nothing a fresh heartbeat relies on changes here: only this (address, boot)'s own
            # entry, and the budget for challenging unverified sources. Not the replay window:
            # a stale datagram with a sequence number far ahead (anyone with the key can make
            # one) would otherwise have the primary's real heartbeats refused as too old.
            ch.challenge_now(peer, addr, msg.boot_id, source, now, box)
            raise wire.RemoteProtocolError(wire.Reason.STALE, "echoes no fresh challenge of ours")
        window.accept(msg.seq)
        ch.boot(msg.boot_id, now).unanswered = None
        peer.verified = addr
        self.ever_verified = True
        if msg.sender == self.cfg.node:
            self._collided(msg, addr, network, now, box)
        self._pin_peer(msg.sender, addr)
        self._note_peer_boot(msg, now, box)
        return peer, source, evidence

    def _peer_matches(self, sender: str) -> bool:
        """The primary is FAILOVER_PEER_NAME if set; otherwise the name pinned by the first verified
        heartbeat from FAILOVER_PEER_IP; until then, any authenticated sender but ourselves."""
        return self.peer_name is None or sender == self.peer_name

    def _pin_peer(self, sender: str, addr: Addr) -> None:
        if self.peer_name is None and self.cfg.peer_ip is not None:
            try:
                source = ipaddress.ip_address(addr[0])
            except ValueError:
                return
            if source == self.cfg.peer_ip:
                self.peer_name = sender

    def _collided(
        self, msg: wire.Message, addr: Addr, network: str, now: float, box: Outbox
    ) -> None:
        """A fresh heartbeat with our own name from a boot that is not this host's: another
        machine uses our name. We still treat it as the primary (it is the one heartbeatd we
        hear); the shell makes it loud."""
        box.counters["name-collision"] += 1
        self.collision, event = auth.note_collision(
            self.collision, msg.sender, msg.boot_id, addr, network, now
        )
        if event is not None:
            box.events.append(event)

    def _note_peer_boot(self, msg: wire.Message, now: float, box: Outbox) -> None:
        self.challenger.note_peer_boot(msg)
        if msg.interval * 2 >= self.cfg.deadtime and msg.boot_id not in self.warned_boots:
            bounded_add(self.warned_boots, msg.boot_id, MAX_RETIRED)
            box.events.append(
                PeerWarning(
                    text=f"peer interval {msg.interval:g}s is at least half our dead time "
                    f"{self.cfg.deadtime:g}s: expect false takeovers; raise FAILOVER_DEADTIME",
                    at=now,
                )
            )

    def left(self, boot: bytes) -> None:
        """``boot`` said LEAVING: what it sends from now on is ignored."""
        bounded_add(self.left_boots, boot, MAX_RETIRED)
