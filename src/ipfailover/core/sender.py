"""heartbeatd's core (sans-I/O): when to send which heartbeat, and what to do with replies.

Every interval it sends a HEARTBEAT to each target (broadcast or unicast). Each heartbeat echoes
the latest nonce of every listener (a failoverd that sent us a CHALLENGE), which is what lets the
listener tell a live heartbeat from a replayed one (see :mod:`ipfailover.core.monitor`). A
listener that holds our addresses is answered at once with a beat to every target (never a unicast
to it, see :meth:`Sender._challenged`), so that a returning primary is verified within a round trip.

The hand-back is made before it is broken: a listener that holds our addresses and wants to give
them back sends HANDBACK; we ask the shell to announce them (:class:`Announce` with ``handback``),
and once the shell has sent the first round (:meth:`Sender.handback_announced`) we confirm with
ANNOUNCED; only then does the listener delete them. On RELEASED from a listener that held our
addresses we announce them again (Apple's "tickle"), and so we do on SIGHUP, shortly after start-up
and when a cable comes back -- unless a listener's challenge says it still holds them, in which
case its hand-back triggers the announcement. On a graceful stop it sends LEAVING.

A primary that lost carrier on every network that carries its heartbeats (:meth:`Sender.link_down`)
for at least :func:`~ipfailover.core.sender_types.cut_min` says so when the carrier comes back: its
next CUT_FLAG_BEATS rounds of heartbeats carry the cut-off flag, and a listener takes the
addresses over at once (a cable that flaps for about the dead time would otherwise cost the
clients every cut until the silence happened to outlast it). Its carrier announcement then
waits for that listener's challenge saying it holds them (and is deferred), or for the flag's
window to pass.

Its states are in :data:`TRANSITIONS`, as the monitor's are: ``awaiting`` (beating; an
announcement waits to hear whether a listener holds our addresses), ``beating`` and ``left``
(LEAVING sent: nothing more is sent or announced). A move the table does not have raises
:class:`LocalProtocolError` (a bug in the shell: ``tickle`` or ``leave`` after ``leave``).
Datagrams that arrive after ``leave`` are counted and ignored: they are the peer's, not a bug.
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict

from ipfailover.core import auth, wire

# The table, the events, the configuration and the tunables were split out of this module (issue
# 9); every name it had stays importable from here.
from ipfailover.core.sender_handback import HandbackReplies
from ipfailover.core.sender_listeners import Roster
from ipfailover.core.sender_table import *  # noqa: F403
from ipfailover.core.sender_table import TRANSITIONS, State, Trigger
from ipfailover.core.sender_types import *  # noqa: F403
from ipfailover.core.sender_types import (
    ANNOUNCE_WAIT_BEATS,
    CUT_FLAG_BEATS,
    ECHO_HORIZON,
    LEAVING_COPIES,
    MAX_HELD,
    REPLY_RATE,
    Addr,
    Announce,
    AnnounceDeferred,
    AnnounceReason,
    Event,
    RandomBytes,
    SenderConfig,
    _Handback,
    _Listener,
    cut_min,
)

LocalProtocolError = wire.LocalProtocolError


class Sender(HandbackReplies):
    """The heartbeat sender of one heartbeatd (its answers to HANDBACK are in
    :mod:`ipfailover.core.sender_handback`)."""

    def __init__(self, cfg: SenderConfig, *, rng: RandomBytes, now: float) -> None:
        if not cfg.targets:
            raise ValueError("no heartbeat targets")
        self.cfg = cfg
        self.boot_id = rng(wire.BOOT_ID_SIZE)
        self.seq = 0
        self.counters: Counter[str] = Counter()
        self.state = State.AWAITING
        self._next_beat = now
        self.roster = Roster()  # the listeners (failoverds that challenge us)
        self.identity = auth.Identity(cfg.node, self.boot_id, now)
        self.collision: auth.Collision | None = None
        self._held: list[tuple[wire.Message, Addr]] = []
        self._replies = auth.TokenBucket(REPLY_RATE / cfg.interval, 2 * REPLY_RATE, now)
        self._release_ids: OrderedDict[bytes, None] = OrderedDict()
        self._handbacks: OrderedDict[bytes, _Handback] = OrderedDict()
        self._out: list[tuple[bytes, Addr]] = []
        self._events: list[Event] = []
        # (since, deadline, why) of an announcement waiting to hear whether a listener holds our
        # addresses: the first challenge after `since` decides, or the deadline does
        self._pending_announce: tuple[float, float, AnnounceReason] | None = None
        self._cut_since: float | None = None  # carrier lost on every network since then
        self._cut_flag_until = -math.inf  # heartbeats before this carry the cut-off flag
        self._cuts = 0  # cuts told since start-up: the last one's number marks its heartbeats
        self._await_listeners(now, AnnounceReason.START)

    @property
    def stopped(self) -> bool:
        """LEAVING was sent (state ``left``)."""
        return self.state is State.LEFT

    # Inputs ------------------------------------------------------------------------------------

    def handle_timer(self, now: float) -> None:
        pending = self._pending_announce
        if self.state is State.AWAITING and pending is not None and now >= pending[1]:
            self._fire(Trigger.ANNOUNCE_DUE, now)
        if self.stopped or now < self._next_beat:
            return
        self.roster.expire(now, self.seq, self._horizon())
        for target in self.cfg.targets:
            self._out.append((self._beat(wire.MsgType.HEARTBEAT, now), target))
        # Keep the cadence; after a stall (suspend, overload) restart it instead of bursting.
        self._next_beat += self.cfg.interval
        if self._next_beat <= now:
            self._next_beat = now + self.cfg.interval

    def receive_datagram(self, data: bytes, addr: Addr, now: float) -> None:
        try:
            msg = wire.decode(data, self.cfg.key)
            if self.stopped:
                self.counters["after-leaving"] += 1  # we left: nothing to answer or announce
                return
            self._receive(msg, addr, now)
        except wire.RemoteProtocolError as err:
            self._dropped(err, addr, now)

    def set_local_boots(self, boots: frozenset[bytes], now: float) -> None:
        """The boot ids of the daemons on this host (see :class:`ipfailover.core.auth.Identity`);
        call it when :attr:`wants_local_boots` says so."""
        self.identity.set_local(boots)
        held, self._held = self._held, []
        for msg, addr in held:
            try:
                self._receive(msg, addr, now)
            except wire.RemoteProtocolError as err:
                self._dropped(err, addr, now)

    @property
    def wants_local_boots(self) -> bool:
        return self.identity.wants_local

    def footprint(self) -> dict[str, int]:
        """Entries in each structure that remote input can grow (all bounded; for tests)."""
        return {
            "listeners": len(self.roster.entries),
            "retired": len(self.roster.retired),
            "release_ids": len(self._release_ids),
            "handbacks": len(self._handbacks),
            "held": len(self._held),
        }

    def _dropped(self, err: wire.RemoteProtocolError, addr: Addr, now: float) -> None:
        self.counters[f"rejected.{err.reason.value}"] += 1
        self._events.append(
            wire.Dropped(reason=err.reason, detail=err.detail, addr=addr, network="", at=now)
        )

    def leave(self, now: float) -> None:
        """Graceful stop: tell every target we are leaving; no heartbeat follows. Once only."""
        self._fire(Trigger.LEAVE, now)

    def reconfigure(self, cfg: SenderConfig, now: float) -> None:
        """Apply a reloaded configuration: new targets, interval or key from the next beat on.
        The boot id, sequence numbers and listeners' nonces carry over, so nothing restarts."""
        if not cfg.targets:
            raise ValueError("no heartbeat targets")
        self.cfg = cfg
        self.identity.node = cfg.node
        self._next_beat = min(self._next_beat, now + cfg.interval)

    def link_down(self, now: float) -> None:
        """Every cable that carries our heartbeats lost its carrier: nobody hears us. Once one
        comes back (:meth:`link_up`), our heartbeats say we were cut off."""
        if self._cut_since is None and not self.stopped:
            self._cut_since = now

    def link_up(self, now: float) -> None:
        """A cable came back: announce our addresses shortly, unless a listener then says it
        still holds them (its hand-back will trigger the announcement instead). After a cut
        (:meth:`link_down`) of at least :func:`cut_min`, the next heartbeats carry the cut-off
        flag, and the announcement waits for the flag's window, as a listener takes over."""
        cut, self._cut_since = self._cut_since, None
        if cut is not None and now - cut >= cut_min(self.cfg.interval) and not self.stopped:
            # the beat now and the next CUT_FLAG_BEATS - 1 (half an interval of slack each way)
            self._cut_flag_until = now + (CUT_FLAG_BEATS - 0.5) * self.cfg.interval
            self._cuts += 1
            self.counters["cuts-reported"] += 1
        self._fire(Trigger.LINK_UP, now)

    @property
    def cut_off_until(self) -> float | None:
        """While our heartbeats carry the cut-off flag: until when."""
        return self._cut_flag_until if self._cut_flag_until > -math.inf else None

    def tickle(self, now: float, reason: str = AnnounceReason.SIGHUP) -> None:
        """Announce our addresses now (SIGHUP: Apple's tickle). Not after :meth:`leave`."""
        self._fire(Trigger.TICKLE, now, reason)

    # Outputs -----------------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        if self.stopped:
            return None
        if self._pending_announce is not None:
            return min(self._next_beat, self._pending_announce[1])
        return self._next_beat

    def datagrams_to_send(self) -> list[tuple[bytes, Addr]]:
        out, self._out = self._out, []
        return out

    def next_event(self) -> Event | None:
        return self._events.pop(0) if self._events else None

    @property
    def _listeners(self) -> OrderedDict[tuple[str, bytes], _Listener]:
        return self.roster.entries  # under the name the lab's fuzz harness reads it by

    @property
    def listeners(self) -> list[str]:
        return sorted({name for name, _ in self.roster.entries})

    def listener_state(self) -> list[tuple[str, bool, float]]:
        """(name, holds our addresses, when it last challenged us) of each listener boot."""
        return [(name, e.holding, e.updated) for (name, _), e in self.roster.entries.items()]

    # Internals ---------------------------------------------------------------------------------

    def _fire(self, trigger: Trigger, now: float, reason: str = "") -> None:
        new = TRANSITIONS.get((self.state, trigger))
        if new is None:
            raise LocalProtocolError(
                f"sender: no transition from {self.state.name} on {trigger.name}"
            )
        old, self.state = self.state, new
        self.counters[f"transitions.{trigger.value}"] += 1
        if trigger is Trigger.LEAVE:
            self._pending_announce = None
            self.roster.expire(now, self.seq, self._horizon())
            for target in self.cfg.targets:
                for _ in range(LEAVING_COPIES):
                    self._out.append((self._beat(wire.MsgType.LEAVING, now), target))
        elif trigger is Trigger.TICKLE:
            self._events.append(Announce(reason=AnnounceReason(reason), at=now))
        elif trigger is Trigger.LINK_UP and new is State.AWAITING:
            self._await_listeners(now, AnnounceReason.CARRIER)
            self._next_beat = min(self._next_beat, now)  # beat now: listeners answer at once
        elif old is State.AWAITING and new is State.BEATING:
            self._decide_announce(now)

    def _await_listeners(self, now: float, reason: AnnounceReason) -> None:
        """Wait to hear whether a listener holds our addresses: the first challenge from
        ``since`` on decides (a listener's that says it holds them decides at once), or the
        deadline does. After a cut, ``since`` is the end of the cut-off flag's window: a
        listener that has not yet taken over is about to."""
        since = max(now, self._cut_flag_until)
        wait = ANNOUNCE_WAIT_BEATS * self.cfg.interval + 1.0
        deadline = max(now + wait, since + self.cfg.interval)
        self._pending_announce = (since, deadline, reason)

    def _decide_announce(self, now: float) -> None:
        """Announce, unless a listener says it still holds our addresses."""
        assert self._pending_announce is not None
        reason = self._pending_announce[2]
        self._pending_announce = None
        holders = self.roster.holders()
        if holders:
            self._events.append(AnnounceDeferred(listener=holders[0], reason=reason, at=now))
        else:
            self._events.append(Announce(reason=reason, at=now))

    def _beat(self, kind: wire.MsgType, now: float) -> bytes:
        self.seq += 1
        echoes = self.roster.echoes()
        cut_off = kind is wire.MsgType.HEARTBEAT and now < self._cut_flag_until
        cut = self._cuts % wire.CUT_NUMBERS if cut_off else 0
        msg = wire.Message(
            type=kind,
            sender=self.cfg.node,
            boot_id=self.boot_id,
            seq=self.seq,
            interval=self.cfg.interval,
            echoes=echoes,
            cut_off=cut_off,
            cut=cut,
        )
        self.counters["sent"] += 1
        if cut_off:
            self.counters["cut-off-beats"] += 1
        return wire.encode(msg, self.cfg.key)

    def _receive(self, msg: wire.Message, addr: Addr, now: float) -> None:
        # Our own host's failoverd (peering) is known by its boot id, not by name: a clone of
        # this machine may share the name, and its challenges must be answered.
        who = self.identity.classify(msg.sender, msg.boot_id, now)
        if who == auth.Identity.OWN:
            self.counters["own"] += 1
            return
        if who == auth.Identity.ASK:
            self.counters["own-name-held"] += 1
            if len(self._held) < MAX_HELD:
                self._held.append((msg, addr))  # until the shell knows our boot ids
            return
        if who == auth.Identity.UNDECIDED:
            raise wire.RemoteProtocolError(wire.Reason.UNEXPECTED, "our name, an unknown boot id")
        if msg.type is wire.MsgType.CHALLENGE:
            self._challenged(msg, addr, now)
        elif msg.type is wire.MsgType.RELEASED:
            self._released(msg, now)
        elif msg.type is wire.MsgType.HANDBACK:
            self._handback(msg, addr, now)
        else:
            raise wire.RemoteProtocolError(wire.Reason.UNEXPECTED, f"{msg.type.name} to heartbeatd")

    def _horizon(self) -> int:
        return len(self.cfg.targets) * math.ceil(ECHO_HORIZON / self.cfg.interval) + 16

    def _echoes_recent_beat(self, msg: wire.Message) -> bool:
        """A CHALLENGE or RELEASED must echo our boot id and a sequence number we sent in the
        last 30 s: a capture from before that is refused."""
        return msg.echo_boot == self.boot_id and 0 <= self.seq - msg.echo_seq <= self._horizon()

    def _challenged(self, msg: wire.Message, addr: Addr, now: float) -> None:
        if not self._echoes_recent_beat(msg):
            raise wire.RemoteProtocolError(wire.Reason.STALE, "CHALLENGE echoes no recent beat")
        key = (msg.sender, msg.boot_id)
        entry = self.roster.entries.get(key)
        expires = now + 3 * msg.interval + 1.0
        if entry is not None:
            if msg.seq == entry.seq and msg.nonce == entry.nonce:
                self.counters["challenge-copies"] += 1  # the same round, via another network
                return
            if msg.seq <= entry.seq:
                raise wire.RemoteProtocolError(wire.Reason.REPLAY, f"challenge seq {msg.seq}")
            entry.seq, entry.nonce, entry.updated, entry.expires = msg.seq, msg.nonce, now, expires
            entry.echo_seq = max(entry.echo_seq, msg.echo_seq)
            self._note_collision(msg, addr, now)
            if entry.holding and not msg.holding:
                # It let go, and its RELEASED was lost (that one clears the flag first).
                self._events.append(
                    Announce(reason=AnnounceReason.RELEASED, at=now, listener=msg.sender)
                )
            entry.holding = msg.holding
            self.roster.entries.move_to_end(key)
            self.counters["challenges"] += 1
            self._heard_listener(now, msg.holding)
            if msg.holding:
                self._answer_holder(now)
            return
        self.roster.add(msg, now, expires)
        self.counters["challenges"] += 1
        self._note_collision(msg, addr, now)
        self._heard_listener(now, msg.holding)
        if msg.holding:
            self._answer_holder(now)
        elif not self.stopped and self._replies.take(now):
            # A new listener (or a restarted one): answer at once so it verifies us without
            # waiting a whole interval. Only new entries get this, so a flood cannot amplify.
            self._out.append((self._beat(wire.MsgType.HEARTBEAT, now), addr))

    def _answer_holder(self, now: float) -> None:
        """A listener that holds our addresses challenged us: beat to every target now, besides
        the regular beats (whose schedule does not move). Never a unicast to it: that may need
        an ARP request, whose sender is the shared address, and every client that hears it
        would come back to us before the hand-back; a beat to the targets is what we send every
        interval anyway. Without this, a returning primary waited up to an interval for its
        next beat to echo the holder's challenge before the hold-down could start. It costs a
        beat per challenge only while a listener holds our addresses and hears us (the
        hold-down), within the same budget as the answers to new listeners."""
        if self.stopped or not self._replies.take(now):
            return
        self.counters["holder-answers"] += 1
        for target in self.cfg.targets:
            self._out.append((self._beat(wire.MsgType.HEARTBEAT, now), target))

    def _heard_listener(self, now: float, holding: bool) -> None:
        """A challenge after start-up or a cable's return tells us what we waited to know (after
        a cut, one that says the listener holds our addresses tells it at once)."""
        pending = self._pending_announce
        if self.state is State.AWAITING and pending is not None and (now >= pending[0] or holding):
            self._fire(Trigger.LISTENER_HEARD, now)

    def _note_collision(self, msg: wire.Message, addr: Addr, now: float) -> None:
        """A fresh challenge under our own name from a boot that is not this host's: another
        machine uses our name. It is still a listener (a clone's failoverd must be answered);
        the shell makes it loud."""
        if msg.sender != self.cfg.node:
            return
        self.counters["name-collision"] += 1
        self.collision, event = auth.note_collision(
            self.collision, msg.sender, msg.boot_id, addr, "", now
        )
        if event is not None:
            self._events.append(event)

    def _released(self, msg: wire.Message, now: float) -> None:
        if not self._echoes_recent_beat(msg):
            raise wire.RemoteProtocolError(wire.Reason.STALE, "RELEASED echoes no recent heartbeat")
        if msg.nonce in self._release_ids:
            self.counters["released-duplicate"] += 1
            return
        self._release_ids[msg.nonce] = None
        for (name, _), entry in self.roster.entries.items():
            if name == msg.sender:
                entry.holding = False  # until its next challenge says otherwise
        if len(self._release_ids) > 16:
            self._release_ids.popitem(last=False)
        self.counters["released"] += 1
        self._events.append(Announce(reason=AnnounceReason.RELEASED, at=now, listener=msg.sender))
