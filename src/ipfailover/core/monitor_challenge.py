"""failoverd's core, freshness: who the primary's boots are, and what proves one alive.

The :class:`Challenger` a :class:`ipfailover.core.monitor.Monitor` owns keeps the nonces it
issued, the replay window of each boot of the primary, the (address, boot) sources heartbeats
came from on each network and the challenge schedule of each boot, and sends the challenges: the
round every period (:meth:`Challenger.challenge`) and the out-of-turn ones
(:meth:`Challenger.challenge_now`). When a heartbeat echoing one of these nonces proves the
primary alive is the monitor's ``_evidence`` (see its docstring and ``docs/protocol.md``). Every
table is bounded, and nothing a stale heartbeat can reach evicts what the verified primary relies
on.

It keeps no reference to the monitor's queues: each call that sends or counts gets an
:class:`Outbox` (the monitor's datagram and event queues, counters, random source and holding
flag), so that what it keeps is only what it verifies with.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from ipfailover.core import auth, wire
from ipfailover.core.monitor_types import (
    BACKOFF_MAX,
    CHALLENGE_BURST,
    CHALLENGE_COPIES,
    CHALLENGE_RATE,
    MAX_BOOT_STATES,
    MAX_BOOTS,
    MAX_RETIRED,
    MAX_SOURCES,
    PER_SOURCE,
    Addr,
    MonitorConfig,
    Outbox,
)


@dataclass
class _Source:
    """One (address, boot id) that authentic heartbeats came from on one network."""

    seq: int  # the highest sequence number seen: echoed in our challenges, never rolled back
    heard: float  # when the last one arrived
    challenged: float | None = None  # when we last sent a challenge here
    immediate: float | None = None  # when we last challenged it out of turn


@dataclass
class _Boot:
    """The challenge schedule of one boot id of the primary (a nonce reaches every network: the
    primary echoes it in every heartbeat, so one challenge on any network is enough)."""

    heard: float
    challenged: float | None = None  # when we last challenged it (on any network)
    unanswered: float | None = None  # since when our challenges to it went unanswered

    def strikes(self, now: float, period: float) -> int:
        """Periods its challenges went unanswered, less the first two (a round trip)."""
        if self.unanswered is None:
            return 0
        return max(0, int((now - self.unanswered) / period) - 1)

    def due(self, now: float, period: float) -> bool:
        """Time to challenge it again: every period, backing off while it does not answer."""
        if self.challenged is None:
            return True
        wait = period * (1 << min(self.strikes(now, period), BACKOFF_MAX))
        return now >= self.challenged + wait - 1e-9


@dataclass
class _PeerNet:
    """Where the primary can be reached on one network.

    ``sources`` holds every (address, boot id) authentic heartbeats came from, so that a replayed
    heartbeat of an old boot cannot overwrite what a live boot needs: each is challenged with its
    own sequence number, on its own schedule. The verified primary's entry is never evicted.
    """

    verified: Addr | None = None
    sources: dict[tuple[Addr, bytes], _Source] = field(default_factory=dict)


class Challenger:
    """The primary's boots, their replay windows and challenge schedules, and our nonces."""

    def __init__(self, cfg: MonitorConfig, boot_id: bytes, now: float) -> None:
        self.cfg = cfg  # the monitor's, replaced on reconfigure
        self.boot_id = boot_id  # ours
        self.seq = 0  # our datagrams' sequence number (challenges, HANDBACK, RELEASED)
        self.peer_boot: bytes | None = None  # the verified primary's boot id
        self.peer_seq = 0  # and the highest sequence number it sent
        self.peers: dict[str, _PeerNet] = {}
        self.windows: OrderedDict[tuple[str, bytes], auth.ReplayWindow] = OrderedDict()
        self.peer_window: tuple[bytes, auth.ReplayWindow] | None = None  # the verified boot's
        self.nonces: dict[bytes, float] = {}  # nonce -> issue time
        self.retired: OrderedDict[bytes, None] = OrderedDict()  # the primary's earlier boots
        self.boots: OrderedDict[bytes, _Boot] = OrderedDict()  # challenge schedules
        self.bucket = auth.TokenBucket(
            CHALLENGE_RATE / cfg.period, CHALLENGE_BURST, now
        )  # challenges to sources not (yet) verified

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def window(self, sender: str, boot: bytes) -> auth.ReplayWindow:
        if self.peer_window is not None and self.peer_window[0] == boot:
            return self.peer_window[1]  # pinned: no other boot can evict it
        key = (sender, boot)
        window = self.windows.get(key)
        if window is None:
            window = self.windows[key] = auth.ReplayWindow()
            if len(self.windows) > MAX_BOOTS:
                self.windows.popitem(last=False)
        self.windows.move_to_end(key)
        return window

    def pinned(self, peer: _PeerNet) -> tuple[Addr, bytes] | None:
        if peer.verified is None or self.peer_boot is None:
            return None
        return (peer.verified, self.peer_boot)

    def boot(self, boot: bytes, now: float) -> _Boot:
        """The schedule of ``boot``, made if new; the least recently heard go first, never the
        verified primary's."""
        state = self.boots.get(boot)
        if state is None:
            state = self.boots[boot] = _Boot(heard=now)
            if len(self.boots) > MAX_BOOT_STATES:
                victim = next(b for b in self.boots if b != self.peer_boot)
                del self.boots[victim]
        else:
            state.heard = max(state.heard, now)
        self.boots.move_to_end(boot)
        return state

    def source(self, peer: _PeerNet, addr: Addr, msg: wire.Message, now: float) -> _Source:
        """The entry of (``addr``, its boot id), made if new. The table stays bounded, and an
        eviction never takes the verified primary's entry: it takes an entry of the boot that has
        left challenges unanswered longest, else one already challenged, else the one heard
        least recently (its boot's schedule survives it)."""
        self.boot(msg.boot_id, now)
        key = (addr, msg.boot_id)
        source = peer.sources.get(key)
        if source is not None:
            source.seq = max(source.seq, msg.seq)  # a replay must not roll it back
            source.heard = max(source.heard, now)
            return source
        source = peer.sources[key] = _Source(seq=msg.seq, heard=now)
        if len(peer.sources) > MAX_SOURCES:
            pinned = self.pinned(peer)
            period = self.cfg.period

            def badness(k: tuple[Addr, bytes]) -> tuple[int, bool, float]:
                state = self.boots.get(k[1])
                strikes = 0 if state is None else state.strikes(now, period)
                tried = state is not None and state.challenged is not None
                return (strikes, tried, -peer.sources[k].heard)

            victim = max((k for k in peer.sources if k not in (pinned, key)), key=badness)
            del peer.sources[victim]
        return source

    def challenge_now(
        self, peer: _PeerNet, addr: Addr, boot: bytes, source: _Source, now: float, box: Outbox
    ) -> None:
        """The primary at ``addr`` lacks a fresh nonce of ours (it just started, or a link just
        came back): send one at once rather than at the next round. At most once a period for
        each (address, boot); for any but the verified primary, only for a boot never challenged
        (a new primary process), at most PER_SOURCE a period to one address, and within the
        overall budget."""
        period = self.cfg.period
        if source.immediate is not None and now - source.immediate < period:
            return
        state = self.boot(boot, now)
        if (addr, boot) == self.pinned(peer):
            # the verified primary lost our nonce (a link came back): as before, at once
            source.immediate = now
            self._send_challenge(self._current_nonce(now, box), addr, boot, source, now, box)
            state.unanswered = None
            return
        if state.challenged is not None:
            return  # seen before: the round challenges it again when due, the best first
        recent = sum(
            1
            for (a, _), s in peer.sources.items()
            if a == addr and s.immediate is not None and now - s.immediate < period
        )
        if recent >= PER_SOURCE or not self.bucket.take(now):
            box.counters["challenges-withheld"] += 1
            return
        source.immediate = now
        self._send_challenge(self._current_nonce(now, box), addr, boot, source, now, box)

    def _send_challenge(
        self, nonce: bytes, addr: Addr, boot: bytes, source: _Source, now: float, box: Outbox
    ) -> None:
        source.challenged = now
        state = self.boot(boot, now)
        state.challenged = now
        if state.unanswered is None:
            state.unanswered = now  # until a heartbeat of this boot echoes a fresh nonce
        data = self._encode_challenge(nonce, (boot, source.seq), box.holding)
        # The verified primary's round challenge goes out twice, back to back: a lost challenge
        # leaves it echoing the previous round's nonce, whose evidence is up to a period older.
        copies = CHALLENGE_COPIES if boot == self.peer_boot else 1
        box.out += [(data, addr)] * copies

    def note_peer_boot(self, msg: wire.Message) -> None:
        """A verified heartbeat: its boot is the primary's from now on."""
        if msg.boot_id != self.peer_boot:
            if self.peer_boot is not None:
                # The primary restarted: its earlier boot is history from now on (replays of it
                # are refused outright), and the new boot's replay window is the pinned one.
                bounded_add(self.retired, self.peer_boot, MAX_RETIRED)
                for peer in self.peers.values():
                    for key in [k for k in peer.sources if k[1] == self.peer_boot]:
                        del peer.sources[key]
                self.boots.pop(self.peer_boot, None)
            window = self.windows.pop((msg.sender, msg.boot_id), None)
            self.peer_window = (msg.boot_id, window or auth.ReplayWindow())
            if window is None:
                self.peer_window[1].accept(msg.seq)
            self.peer_boot, self.peer_seq = msg.boot_id, msg.seq
        self.peer_seq = max(self.peer_seq, msg.seq)

    def _current_nonce(self, now: float, box: Outbox) -> bytes:
        if not self.nonces:
            self._issue_nonce(now, box)
        return max(self.nonces, key=self.nonces.__getitem__)

    def _issue_nonce(self, now: float, box: Outbox) -> bytes:
        horizon = now - self.cfg.deadtime - self.cfg.period
        self.nonces = {n: t for n, t in self.nonces.items() if t > horizon}
        nonce = box.rng(wire.NONCE_SIZE)
        self.nonces[nonce] = now
        return nonce

    def challenge(self, now: float, box: Outbox) -> None:
        """The round: the verified primary on each network, always. Then each other boot that is
        due, on one of its sources (the one challenged least recently, so a network that loses
        them does not keep them all), within the budget: boots never challenged first, then
        those that answered best, the ones heard last first."""
        nonce = self._issue_nonce(now, box)
        period = self.cfg.period
        pick: dict[bytes, tuple[float, float, _PeerNet, tuple[Addr, bytes]]] = {}
        for peer in self.peers.values():
            pinned = self.pinned(peer)
            for key, source in peer.sources.items():
                if key == pinned:
                    self._send_challenge(nonce, key[0], key[1], source, now, box)
                    if key[1] in self.boots:  # verified: the detector judges it
                        self.boots[key[1]].unanswered = None
                    continue
                if key[1] == self.peer_boot:
                    continue  # its pinned source is challenged already
                rank = (source.challenged or -1.0, -source.heard)
                if key[1] not in pick or rank < pick[key[1]][:2]:
                    pick[key[1]] = (*rank, peer, key)
        due = []
        for boot, (_, _, peer, key) in pick.items():
            state = self.boots.get(boot)
            if state is not None and state.due(now, period):
                order = (state.challenged is not None, state.strikes(now, period), -state.heard)
                due.append((order, peer, key))
        due.sort(key=lambda x: x[0])
        for _, peer, key in due:
            if not self.bucket.take(now):
                box.counters["challenges-withheld"] += 1
                break
            self._send_challenge(nonce, key[0], key[1], peer.sources[key], now, box)

    def to_primary(self, kind: wire.MsgType, nonce: bytes, copies: int, box: Outbox) -> bool:
        """``kind`` (HANDBACK, RELEASED) to the verified primary, on every network where we
        verified it, ``copies`` times back to back; False if no primary was verified yet."""
        if self.peer_boot is None:
            return False
        msg = wire.Message(
            type=kind,
            sender=self.cfg.node,
            boot_id=self.boot_id,
            seq=self.next_seq(),
            interval=self.cfg.period,
            nonce=nonce,
            echo_boot=self.peer_boot,
            echo_seq=self.peer_seq,
        )
        data = wire.encode(msg, self.cfg.key)
        for peer in self.peers.values():
            if peer.verified:
                box.out += [(data, peer.verified)] * copies
        return True

    def _encode_challenge(self, nonce: bytes, echo: tuple[bytes, int], holding: bool) -> bytes:
        msg = wire.Message(
            type=wire.MsgType.CHALLENGE,
            sender=self.cfg.node,
            boot_id=self.boot_id,
            seq=self.next_seq(),
            interval=self.cfg.period,
            nonce=nonce,
            echo_boot=echo[0],
            echo_seq=echo[1],
            holding=holding,
        )
        return wire.encode(msg, self.cfg.key)


def bounded_add(items: OrderedDict[bytes, None], item: bytes, limit: int) -> None:
    items[item] = None
    items.move_to_end(item)
    while len(items) > limit:
        items.popitem(last=False)
