"""failoverd's core (sans-I/O): verify heartbeats, detect failure, decide takeover and handback.

The shell feeds it datagrams (``receive_datagram(data, addr, network, now)``), timer expiries
(``handle_timer(now)`` at the deadline ``get_timer()`` returned) and the outcome of the actions it
asked for (``acquire_done``/``release_done``). It sends what ``datagrams_to_send()`` returns and
carries out what ``next_event()`` returns. Time is always passed in; randomness is injected.

Freshness (why a replayed capture never delays a takeover): every challenge period the monitor
sends the primary a CHALLENGE with a new random nonce on each network. heartbeatd echoes the nonces
it holds in every heartbeat. A heartbeat counts as heard only if it echoes one of our nonces, and
the time it proves the primary alive (its *evidence time*) is ``min(arrival, issue + period)``
(just ``issue`` once two newer rounds have gone out; see ``_evidence``):
a primary that stopped at time T cannot have echoed a nonce issued after T, so no replay can make
the detector believe in life later than ``T + period``. Captures from before a failoverd restart
echo nonces the new process never issued, so they count for nothing. Duplicates are refused by an
anti-replay window per sender boot. See ``docs/protocol.md``.

All state transitions are in :data:`TRANSITIONS` (:mod:`ipfailover.core.monitor_table`); an
illegal one raises :class:`LocalProtocolError`. The :class:`Monitor` decides; the parts it owns
keep the rest: :mod:`~ipfailover.core.monitor_challenge` (our nonces, the primary's boots, the
challenges), :mod:`~ipfailover.core.monitor_verify` (which datagrams are the primary's and
fresh), :mod:`~ipfailover.core.monitor_probe` (evidence before a takeover, ``docs/safety.md``)
and :mod:`~ipfailover.core.monitor_handback` (the hold-down, HANDBACK, RELEASED).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping

from ipfailover.core import wire
from ipfailover.core.detector import Detector, NetworkView
from ipfailover.core.errors import LocalProtocolError as LocalProtocolError
from ipfailover.core.monitor_challenge import Challenger
from ipfailover.core.monitor_handback import Handback
from ipfailover.core.monitor_handback import handback_wait as handback_wait
from ipfailover.core.monitor_probe import Probing

# The table, the events, the configuration and the tunables were split out of this module (issue
# 9); every name it had stays importable from here.
from ipfailover.core.monitor_table import *  # noqa: F403
from ipfailover.core.monitor_table import (
    BUSY,
    HOLDING,
    PROBE_VERDICTS,
    TRANSITIONS,
    State,
    Trigger,
)
from ipfailover.core.monitor_types import *  # noqa: F403
from ipfailover.core.monitor_types import (
    ARRIVAL_ALLOWANCE,
    CONFLICT_QUIET,
    MAX_CASCADE,
    RETRY_MAX,
    Acquire,
    AcquireOutcome,
    AcquireRetry,
    Addr,
    Conflict,
    Event,
    Heard,
    MonitorConfig,
    NetworkEvent,
    NetworkKind,
    Outbox,
    RandomBytes,
    Reclaim,
    Release,
    StateChanged,
)
from ipfailover.core.monitor_verify import Verifier
from ipfailover.core.monitor_view import MonitorView


class Monitor(MonitorView):
    """The failover state machine of one failoverd watching one primary (what it keeps is read
    through :class:`ipfailover.core.monitor_view.MonitorView`)."""

    def __init__(
        self, cfg: MonitorConfig, *, rng: RandomBytes, now: float, holding: bool = False
    ) -> None:
        self.cfg = cfg
        self._rng = rng
        self.boot_id = rng(wire.BOOT_ID_SIZE)
        # the primary's boots, their replay windows and challenge schedules, and our nonces
        self.challenger = Challenger(cfg, self.boot_id, now)
        # which datagrams come from the primary, and which prove it alive
        self.verifier = Verifier(cfg, self.boot_id, now, self.challenger)
        self.state = State.ACTIVE if holding else State.STANDBY
        self.since = now
        self.detector = Detector(
            cfg.networks, cfg.deadtime, now, allowance=ARRIVAL_ALLOWANCE * cfg.period
        )
        self.counters: Counter[str] = Counter()
        self.peer_interval: float | None = None
        self._now = now
        self._events: list[Event] = []
        self._out: list[tuple[bytes, Addr]] = []
        self._next_challenge = now
        self.handback = Handback(self.challenger)  # the hold-down, HANDBACK and RELEASED
        self._stop_pending = False
        self._retry_at: float | None = None
        self._failed_takeovers = 0  # in a row: the retry back-off doubles with each
        self.probing = Probing()  # evidence before a takeover (docs/safety.md)
        # when we first heard of the primary's last cut, and its number
        self._cut_episode: tuple[float, int] | None = None

    # Inputs ------------------------------------------------------------------------------------

    def receive_datagram(self, data: bytes, addr: Addr, network: str, now: float) -> None:
        """Handle one datagram that arrived on ``network`` (the receiving interface)."""
        self._now = max(self._now, now)
        try:
            msg = wire.decode(data, self.cfg.key)
        except wire.RemoteProtocolError as err:
            self._dropped(err, addr, network, now)
        else:
            self._receive_checked(msg, addr, network, now)
        self._evaluate(now)

    def set_local_boots(self, boots: frozenset[bytes], now: float) -> None:
        """The boot ids of the daemons on this host (their boot files in FAILOVER_RUN_DIR).

        Call it when :attr:`wants_local_boots` says so (a datagram with our name and an unknown
        boot id is held until then), and whenever the shell re-reads them.
        """
        self._now = max(self._now, now)
        for msg, addr, network in self.verifier.set_local(boots):
            self._receive_checked(msg, addr, network, now)
        self._evaluate(now)

    def handle_timer(self, now: float) -> None:
        """Call at (or after) the deadline :meth:`get_timer` gave."""
        self._now = max(self._now, now)
        if now >= self._next_challenge:
            self.challenger.challenge(now, self._outbox())
            self._next_challenge = now + self.cfg.period
        self.handback.resend_due(now, self._outbox())
        if self.state is State.BLOCKED and self.probing.reprobe_due(now):
            self.probing.start(now, self._outbox())
        self._evaluate(now)

    def acquire_done(
        self,
        now: float,
        outcome: AcquireOutcome | bool | None = None,
        retry_after: float | None = None,
        *,
        ok: bool | None = None,
    ) -> None:
        """The shell finished the takeover: :class:`AcquireOutcome`. A FAILED one is tried again
        while the primary stays silent, after the dead time, then twice that, and so on up to
        RETRY_MAX (:class:`AcquireRetry` says when); DONE or DECLINED starts the count over.

        The older form still works: ``ok=True`` is DONE; ``ok=False`` with ``retry_after`` is
        FAILED, retried after exactly that; ``ok=False`` without it is DECLINED."""
        outcome = AcquireOutcome.of(outcome, ok, retry_after)
        trigger = Trigger.ACQUIRED if outcome is AcquireOutcome.DONE else Trigger.ACQUIRE_DECLINED
        if (self.state, trigger) not in TRANSITIONS:
            raise LocalProtocolError(f"no transition from {self.state.name} on {trigger.name}")
        self._retry_at = None
        if outcome is AcquireOutcome.FAILED:
            self._failed_takeovers += 1
            after = retry_after
            if after is None:
                after = min(RETRY_MAX, self.cfg.deadtime * 2 ** (self._failed_takeovers - 1))
            self._retry_at = now + after
            self._events.append(AcquireRetry(after=after, at=now))
        else:
            self._failed_takeovers = 0
        self._fire(trigger, now)
        self._evaluate(now)

    def probe_done(
        self, now: float, probe_id: int, answers: Mapping[str, Iterable[str]], ok: bool = True
    ) -> None:
        """The shell finished probe ``probe_id``: ``answers`` maps each address that answered
        to the MAC addresses (other than ours) it answered from. ``ok`` False: it could not
        probe at all (counted as no answer, and reported as ``failed``)."""
        self._now = max(self._now, now)
        if probe_id != self._probe_out:
            self.counters["probe-late"] += 1  # the state moved on (the primary was heard)
            return
        box = self._outbox()
        trigger = self.probing.done(now, answers, ok, self.state, self.ever_verified, self.cfg, box)
        if trigger is not None:
            self._fire(trigger, now)
        self._evaluate(now)

    def address_claimed(self, now: float, address: str, mac: str) -> None:
        """While we hold ``address``, a frame from ``mac`` (not one of ours) claimed it: an ARP
        reply, request or announcement with it as the sender address, a Neighbour Advertisement
        for it, or a Neighbour Solicitation from it (the shell filters out frames of ours).

        Reported (:class:`AddressConflict`) once per episode and MAC. While ACTIVE the primary is
        not heard, so we defend (:class:`Defend`) at most once per DEFEND_INTERVAL: clients
        converge on us instead of flapping. In HOLDDOWN the primary is back and has its address
        again: expected, we hand it back soon; counted only. Outside those states, ignored.
        """
        self._now = max(self._now, now)
        self.probing.claimed(now, address, mac, self.state, self._outbox())

    def conflicts(self, now: float) -> list[Conflict]:
        """The conflict episodes still going on (a frame within CONFLICT_QUIET), oldest first."""
        if not self.holding:
            self.probing.conflicts.clear()
        return [c for c in self.probing.conflicts.values() if now - c.last <= CONFLICT_QUIET]

    def release_done(self, now: float, ok: bool) -> None:
        """The shell finished the release (``ok``), or refused or failed it."""
        self._fire(Trigger.RELEASED if ok else Trigger.RELEASE_DECLINED, now)
        self._evaluate(now)

    def shutdown(self, now: float) -> None:
        """Stop: release what we hold (after any transition in progress), then STOPPED."""
        if self.state in BUSY:
            self._stop_pending = True
        elif self.state is not State.STOPPED:
            self._fire(Trigger.SHUTDOWN, now)

    def reconfigure(self, cfg: MonitorConfig, now: float) -> None:
        """Apply a reloaded configuration without leaving the current state.

        What was heard stays heard; the new dead time and hold-down apply from now on. A changed
        key takes effect for the next datagram; nonces already issued stay valid.
        """
        self._now = max(self._now, now)
        self.cfg = self.challenger.cfg = cfg
        self.verifier.reconfigure(cfg)
        self.detector.deadtime = cfg.deadtime
        self.detector.allowance = ARRIVAL_ALLOWANCE * cfg.period
        for name in cfg.networks:
            self.detector.networks.setdefault(name, NetworkView(name))
        if self.state is State.HOLDDOWN and self.handback.holddown_until is not None:
            self.handback.holddown_until = self.since + cfg.failback_delay
        self._next_challenge = min(self._next_challenge, now + cfg.period)
        self._evaluate(now)

    # Outputs -----------------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """The absolute time at which :meth:`handle_timer` must next be called."""
        if self.state is State.STOPPED:
            return None
        times = [self._next_challenge, *self.handback.timers(self.state)]
        deadline = self.detector.next_deadline(self._now)
        if deadline is not None:
            times.append(deadline)
        if (
            self.state is State.DECLINED
            and self._retry_at is not None
            and self._retry_at > self._now
        ):
            # once due, the retry waits for silence on every network: the detector's deadline
            # above wakes us for that (a past deadline here would spin the shell's timer)
            times.append(self._retry_at)
        reprobe = self.probing.reprobe_at
        if self.state is State.BLOCKED and self._probe_out is None and reprobe is not None:
            times.append(reprobe)
        return min(times)

    def datagrams_to_send(self) -> list[tuple[bytes, Addr]]:
        out, self._out = self._out, []
        return out

    def next_event(self) -> Event | None:
        return self._events.pop(0) if self._events else None

    def _outbox(self) -> Outbox:
        return Outbox(self._out, self._events, self.counters, self._rng, self.holding)

    # Internals ---------------------------------------------------------------------------------

    def _dropped(self, err: wire.RemoteProtocolError, addr: Addr, network: str, now: float) -> None:
        self.counters[f"rejected.{err.reason.value}"] += 1
        self._events.append(
            wire.Dropped(reason=err.reason, detail=err.detail, addr=addr, network=network, at=now)
        )

    def _receive_checked(self, msg: wire.Message, addr: Addr, network: str, now: float) -> None:
        try:
            self._receive(msg, addr, network, now)
        except wire.RemoteProtocolError as err:
            self._dropped(err, addr, network, now)

    def _receive(self, msg: wire.Message, addr: Addr, network: str, now: float) -> None:
        if not self.verifier.screen(msg, addr, network, now, self._outbox()):
            return
        if msg.type is wire.MsgType.ANNOUNCED:
            if self.handback.announced(msg, self.state, self._outbox()):
                self._fire(Trigger.ANNOUNCED, now)
            return
        box = self._outbox()
        peer, source, evidence = self.verifier.verify(msg, addr, network, now, box, self._evidence)
        ch = self.challenger
        was_alive = network in self.detector.networks and self._counts_as_alive(network, now)
        self.detector.heard(network, evidence, now, msg.interval)
        if self.state in (State.ACTIVE, State.DECLINED) and evidence <= self.since:
            # The primary is back, but it echoes a nonce from before we took over (a cable came
            # back): it missed our latest challenges. Challenge it at once, not at the next
            # round, so that its return costs one round trip.
            ch.challenge_now(peer, addr, msg.boot_id, source, now, box)
        # (a heartbeat with evidence echoes a nonce we keep; none would count as no new round)
        issued = max((self._nonces[e] for e in msg.echoes if e in self._nonces), default=-math.inf)
        self.handback.heard(evidence, issued, self.cfg, self.state is State.HOLDDOWN)
        self._events.append(
            Heard(
                network=network,
                sender=msg.sender,
                seq=msg.seq,
                evidence=evidence,
                alive_until=evidence + self.cfg.deadtime,
                at=now,
            )
        )
        self.peer_interval = msg.interval
        self.counters[f"heartbeats.{network}"] += 1
        if not was_alive and self._counts_as_alive(network, now):
            self._events.append(NetworkEvent(kind=NetworkKind.VERIFIED, network=network, at=now))
        if msg.type is wire.MsgType.LEAVING:
            self.counters["leaving"] += 1
            self.verifier.left(msg.boot_id)
            self.detector.forget()
            if (self.state, Trigger.PEER_LEAVING) in TRANSITIONS:
                self._fire(Trigger.PEER_LEAVING, now)
        elif msg.cut_off:
            self._cut_off(now, msg.interval, msg.cut)

    def _cut_off(self, now: float, interval: float, cut: int) -> None:
        """A fresh, authentic heartbeat says the primary lost carrier on every network and got
        it back moments ago: take over now (a cable that flaps for about the dead time would
        otherwise cost the clients every cut until one outlasted it); while holding, the
        hold-down starts over. Not with FAILOVER_TAKE_ANSWERING=no: its address answers.

        The flagged heartbeats of one cut (CUT_FLAG_BEATS rounds, and the answers to our
        challenges among them) are one report: those with its number, within that many of the
        primary's intervals of the first one we heard, change nothing, so that a hold-down counts
        from the cable's return, not from the last flagged heartbeat. A cable that flaps faster
        than that (0.5 s out, 0.5 s in at interval 1 s) makes each cut a new number."""
        episode = self._cut_episode
        if (
            episode is not None
            and episode[1] == cut
            and now - episode[0] < wire.CUT_FLAG_BEATS * interval
        ):
            self.counters["cut-off-repeats"] += 1
            return
        self._cut_episode = (now, cut)
        self.counters["cut-off"] += 1
        if self.state not in HOLDING and not self.cfg.take_answering:
            self.counters["cut-off-not-taken"] += 1
        elif (self.state, Trigger.PEER_CUT_OFF) in TRANSITIONS:
            self._fire(Trigger.PEER_CUT_OFF, now)

    def _evidence(self, msg: wire.Message, now: float) -> float | None:
        """When this heartbeat proves the primary was alive, or None if it proves nothing.

        It echoes a nonce issued at ``issue``: the primary was alive after that. The credit up to
        ``issue + period`` is for the round in flight (it beat before our next nonce reached it).
        When two newer rounds have gone out since, it missed a whole round: nothing proves life
        after ``issue`` (the heartbeat of a primary whose cables just came back after 0.5 s
        out would otherwise be credited with life while they were out)."""
        issued = [self._nonces[e] for e in msg.echoes if e in self._nonces]
        if not issued:
            return None
        issue = max(issued)
        newer = sum(1 for t in self._nonces.values() if t > issue)
        evidence = min(now, issue + self.cfg.period) if newer < 2 else issue
        return evidence if evidence + self.cfg.deadtime > now else None

    def _fire(self, trigger: Trigger, now: float) -> None:
        new = TRANSITIONS.get((self.state, trigger))
        if new is None:
            raise LocalProtocolError(f"no transition from {self.state.name} on {trigger.name}")
        old, self.state, self.since = self.state, new, now
        self.counters[f"transitions.{trigger.value}"] += 1
        self._events.append(StateChanged(old=old, new=new, trigger=trigger, at=now))
        self._enter(old, new, trigger, now)

    def _enter(self, old: State, new: State, trigger: Trigger, now: float) -> None:
        if old in (State.PROBING, State.BLOCKED) and new is not State.BLOCKED:
            self.probing.out = None  # an answer still under way counts for nothing
        if new not in HOLDING:
            self.probing.conflicts.clear()  # an episode ends when we stop holding
        if new is State.PROBING:
            self.probing.reason = trigger
            self.probing.start(now, self._outbox())
        elif new is State.ACQUIRING and trigger in PROBE_VERDICTS:
            self._events.append(
                Acquire(
                    reason=self.probing.reason,
                    at=now,
                    probe=self.probing.result,
                    answering=self.probing.answering,
                )
            )
        elif new is State.ACQUIRING:
            self._events.append(Acquire(reason=trigger, at=now))
        elif new is State.BLOCKED:
            self.probing.block(now, self.cfg)
        elif new is State.HOLDDOWN:
            self.handback.start_holddown(now, self.cfg, self.detector.last_evidence())
        elif new is State.HANDBACK:
            self.handback.ask(now, self.cfg, self._outbox())
        elif new is State.ACTIVE and old is State.HANDBACK:
            self._events.append(Reclaim(at=now))
        elif new is State.RELEASING:
            self._events.append(Release(reason=Trigger.PEER_HEARD, at=now))
        elif new is State.STOPPING:
            self._events.append(Release(reason=Trigger.SHUTDOWN, at=now))
        elif new is State.STANDBY and old is State.RELEASING:
            self.handback.released(now, self.cfg, self._outbox())
        elif new is State.STOPPED and old is State.STOPPING and trigger is Trigger.RELEASED:
            self.handback.released_stopping(self._outbox())  # stopping while holding
        if self._stop_pending and new not in BUSY and new is not State.STOPPED:
            self._stop_pending = False
            self._fire(Trigger.SHUTDOWN, now)

    def _evaluate(self, now: float) -> None:
        """Fire whatever the detector's view implies now: a cascade that must settle within
        MAX_CASCADE triggers (one that does not is a bug in the table: it raises)."""
        for change, network in self.detector.changes(now):
            kind = NetworkKind(change.value)
            self._events.append(NetworkEvent(kind=kind, network=network, at=now))
        fired: list[Trigger] = []
        for _ in range(MAX_CASCADE + 1):
            trigger = self._due_trigger(now)
            if trigger is None:
                return
            if len(fired) == MAX_CASCADE:
                chain = " ".join(t.value for t in [*fired, trigger])
                raise LocalProtocolError(f"triggers do not settle in {self.state.name}: {chain}")
            fired.append(trigger)
            self._fire(trigger, now)

    def _counts_as_alive(self, network: str, now: float) -> bool:
        """Alive on ``network``, on evidence that would bring the primary back if we hold."""
        if not self.detector.alive(network, now):
            return False
        last = self.detector.networks[network].last_heard
        return self.state not in (State.ACTIVE, State.DECLINED) or (last or 0) > self.since

    def _heard_since(self, t: float, now: float) -> bool:
        """Alive, on evidence newer than ``t``: life proven before we decided the primary was
        gone (or before we adopted its addresses) does not bring it back."""
        last = self.detector.last_evidence()
        return last is not None and last > t and self.detector.any_alive(now)

    def _due_trigger(self, now: float) -> Trigger | None:
        det = self.detector
        if self.state is State.STANDBY and det.all_silent(now):
            return Trigger.PEER_SILENT
        if (
            self.state is State.DECLINED
            and self._retry_at is not None
            and now >= self._retry_at
            and det.all_silent(now)
        ):
            self._retry_at = None
            return Trigger.RETRY
        if self.state in (State.ACTIVE, State.DECLINED) and self._heard_since(self.since, now):
            return Trigger.PEER_HEARD
        if self.state in (State.PROBING, State.BLOCKED) and det.any_alive(now):
            # Nothing is taken yet: any evidence that the primary lived within the dead time
            # (even from before the probe began, arriving during it) cancels the takeover.
            return Trigger.PEER_HEARD
        if self.state is State.HOLDDOWN:
            if not det.any_alive(now):
                return Trigger.PEER_SILENT
            hb = self.handback
            if hb.holddown_until is not None and now >= hb.holddown_until:
                if hb.steady(self.cfg):
                    return Trigger.HOLDDOWN_EXPIRED
                # Not steady (a flapping cable): keep the addresses, and start over.
                self.counters["holddown-restarts"] += 1
                hb.start_holddown(now, self.cfg, det.last_evidence())
                hb.rounds_heard = 0
        if self.state is State.HANDBACK:
            if not det.any_alive(now):
                return Trigger.PEER_SILENT
            until = self.handback.handback_until
            if until is not None and now >= until:
                return Trigger.HANDBACK_TIMEOUT
        return None
