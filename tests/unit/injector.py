"""An off-path packet injector against the cores (issue 7 section 3), on top of :mod:`sim`.

The attacker holds captures of earlier primary boots (authentic heartbeats, signed with the
pair's key) and replays them spoofed from the primary's address and port on every network: a
background stream at a random phase, plus one replay right after every real heartbeat. Captures
of the live run (``Sim.captured``) become old boots too once the primary restarts.
"""

from __future__ import annotations

import random

from sim import BCAST, KEY, NETS, PRIMARY, Sim, net_of

from ipfailover.core.sender import Sender, SenderConfig


def old_boots(
    count: int, beats: int, *, seed: int, interval: float = 1.0
) -> list[list[tuple[bytes, str]]]:
    """``count`` captured primary boots of ``beats`` heartbeats each: [(datagram, network)]."""
    rand = random.Random(seed)
    cfg = SenderConfig(node="primary", key=KEY, interval=interval, targets=tuple(BCAST.values()))
    boots = []
    for _ in range(count):
        sender = Sender(cfg, rng=rand.randbytes, now=0.0)
        capture: list[tuple[bytes, str]] = []
        for i in range(beats):
            sender.handle_timer(i * interval)
            capture += [(data, net_of(dest)) for data, dest in sender.datagrams_to_send()]
        boots.append(capture)
    return boots


class InjectedSim(Sim):
    """The simulation with the attacker of issue 7 section 3 on the wire."""

    def __init__(
        self,
        *,
        boots: int = 9,
        beats: int = 400,
        background: float = 0.25,  # seconds between background replays (per network)
        follow: bool = True,  # a replay right after every real heartbeat
        **kw: object,
    ) -> None:
        seed = int(kw.get("seed", 0))  # type: ignore[call-overload]
        super().__init__(**kw)  # type: ignore[arg-type]
        self.attack_rand = random.Random(seed ^ 0x5EED)
        self.boots = old_boots(boots, beats, seed=seed ^ 0xB007)
        self._cursor = [0] * len(self.boots)
        self._next_boot = 0
        self.follow = follow
        self.background = background
        self.replays = 0
        self.attacking = True
        if background > 0:
            self._push(self.attack_rand.uniform(0, background), "inject", None)

    def _pick(self, net: str) -> bytes | None:
        """The next unreplayed datagram for ``net`` from the next old boot, round-robin."""
        for _ in range(len(self.boots)):
            b = self._next_boot
            self._next_boot = (b + 1) % len(self.boots)
            capture = self.boots[b]
            while self._cursor[b] < len(capture):
                data, where = capture[self._cursor[b]]
                self._cursor[b] += 1
                if where == net:
                    return data
        return None

    def _inject(self, net: str, at: float) -> None:
        data = self._pick(net)
        if data is not None and self.attacking:
            self.replays += 1
            self.replay(data, net, at)

    def _dispatch(self, kind: str, payload: object) -> None:
        if kind == "inject":
            for net in NETS:
                self._inject(net, self.now)
            self._push(self.now + self.background, "inject", None)
            return
        super()._dispatch(kind, payload)

    def _flush_sender(self) -> None:
        out = self.sender.datagrams_to_send()
        for data, dest in out:
            net = net_of(dest)
            self.captured.append((data, net))
            if self.up[net]:
                at = self.now + self.latency + self.skew.get(net, 0.0)
                self.rec.delivered[net].append(at)
                self._push(at, "to-secondary", (data, PRIMARY[net], net))
                if self.follow:
                    self._inject(net, at + 1e-5)  # right behind the real one
        # the events and the timer, as Sim does (its datagrams are already drained)
        super()._flush_sender()

    def revive_primary(self) -> None:
        """heartbeatd restarts: what was captured of the old boot joins the attacker's stock."""
        if not self.primary_alive:
            self.boots.append(list(self.captured))
            self._cursor.append(0)
            self.captured = []
        super().revive_primary()
