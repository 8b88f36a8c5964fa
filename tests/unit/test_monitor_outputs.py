"""The monitor's outputs exactly: the events, counters, conflicts and RELEASED copies the shell and
status show, and what a reload changes.

The scenario tests check decisions (who holds, when); these pin the values that go with them, as
the shell, ``ipfailover status`` and the metrics read them. Each kills mutants the scenarios let
live (docs/development.md, "Mutation testing"). Everything goes through the public API.
"""

from __future__ import annotations

import random

import pytest
from sim import KEY, PRIMARY, Sim, in_holddown

from ipfailover.core import wire
from ipfailover.core.monitor import (
    AddressAnswers,
    AddressConflict,
    Defend,
    LocalProtocolError,
    Monitor,
    MonitorConfig,
    NetworkEvent,
    Probe,
    Release,
    State,
    StateChanged,
    Trigger,
)

ADDR = PRIMARY["pub"]
MAC = "02:00:00:00:00:99"
OTHER_MAC = "02:00:00:00:00:98"


def monitor(**kw: object) -> Monitor:
    fields: dict[str, object] = {
        "node": "s",
        "key": KEY,
        "period": 1.0,
        "deadtime": 3.0,
        "failback_delay": 3.0,
        "networks": ("pub",),
    }
    fields.update(kw)
    return Monitor(MonitorConfig(**fields), rng=random.Random(0).randbytes, now=0.0)  # type: ignore[arg-type]


def events(m: Monitor) -> list[object]:
    out = []
    while (ev := m.next_event()) is not None:
        out.append(ev)
    return out


def sent(m: Monitor) -> list[wire.Message]:
    return [wire.decode(data, KEY) for data, _ in m.datagrams_to_send()]


class Peer:
    """One primary boot on ``pub``: heartbeats that echo what the test says."""

    def __init__(self, m: Monitor, boot: bytes = b"p" * 8, sender: str = "primary") -> None:
        self.m, self.boot, self.sender, self.seq = m, boot, sender, 0

    def beat(
        self, at: float, echoes: tuple[bytes, ...] = (), kind: wire.MsgType | None = None
    ) -> None:
        self.seq += 1
        msg = wire.Message(
            type=kind or wire.MsgType.HEARTBEAT,
            sender=self.sender,
            boot_id=self.boot,
            seq=self.seq,
            interval=self.m.cfg.period,
            echoes=echoes,
        )
        self.m.receive_datagram(wire.encode(msg, KEY), ADDR, "pub", at)

    def verify(self, at: float) -> None:
        """A stale beat, answered with a challenge, then a beat echoing it."""
        self.beat(at)
        (challenge, *_) = [c for c in sent(self.m) if c.type is wire.MsgType.CHALLENGE]
        self.beat(at + 0.01, (challenge.nonce,))

    def fresh(self, at: float) -> None:
        """A beat echoing the newest challenge the monitor sent (it must have sent one)."""
        nonces = [c.nonce for c in sent(self.m) if c.type is wire.MsgType.CHALLENGE]
        self.beat(at, (nonces[-1],))


def silent_takeover(m: Monitor, at: float) -> int:
    """Let the timer run out at ``at`` (the primary silent); returns the probe's id."""
    m.handle_timer(at)
    assert m.state is State.PROBING
    (probe,) = [e for e in events(m) if isinstance(e, Probe)]
    return probe.id


def active(m: Monitor) -> None:
    """Take over for silence at 3.0 (nothing ever heard) and report it done."""
    m.handle_timer(0.0)
    probe = silent_takeover(m, 3.0)
    m.probe_done(3.0, probe, {})
    m.acquire_done(3.1, ok=True)
    assert m.state is State.ACTIVE
    events(m)


# The probe's outcome, as status and the scripts see it ------------------------------------------


def test_each_probe_is_counted_and_stamped_and_gets_the_next_id() -> None:
    m = monitor()
    m.handle_timer(0.0)
    first = silent_takeover(m, 3.0)
    m.probe_done(3.05, first, {"203.0.113.10": [MAC]})  # never verified: BLOCKED
    assert m.state is State.BLOCKED
    assert (m.probe_result, m.probe_at, m.answering) == (
        "answered",
        3.05,
        (("203.0.113.10", (MAC,)),),
    )
    m.handle_timer(4.05)  # re-probe
    (second,) = [e.id for e in events(m) if isinstance(e, Probe)]
    m.probe_done(4.1, second, {"203.0.113.10": [MAC]})
    m.handle_timer(5.1)
    (third,) = [e.id for e in events(m) if isinstance(e, Probe)]
    assert [first, second, third] == [1, 2, 3]
    m.probe_done(5.2, third, {})
    assert m.counters["probes.answered"] == 2 and m.counters["probes.silent"] == 1
    assert (m.state, m.probe_result, m.answering) == (State.ACQUIRING, "silent", ())


def test_a_blocked_probe_reports_a_new_mac_once_with_what_it_knows() -> None:
    m = monitor()
    m.handle_timer(0.0)
    probe = silent_takeover(m, 3.0)
    m.probe_done(3.05, probe, {"203.0.113.10": [MAC]})
    told = [e for e in events(m) if isinstance(e, AddressAnswers)]
    answers = (("203.0.113.10", (MAC,)),)
    assert told == [AddressAnswers(answering=answers, verified_before=False, taking=False, at=3.05)]
    m.handle_timer(4.05)
    (probe,) = [e.id for e in events(m) if isinstance(e, Probe)]
    m.probe_done(4.1, probe, {"203.0.113.10": [MAC, OTHER_MAC]})  # a new MAC answers too
    both = (("203.0.113.10", (OTHER_MAC, MAC)),)
    told = [e for e in events(m) if isinstance(e, AddressAnswers)]
    assert told == [AddressAnswers(answering=both, verified_before=False, taking=False, at=4.1)]
    assert m.answering == both and m.state is State.BLOCKED


def test_a_reload_that_allows_taking_answers_reports_the_takeover_exactly() -> None:
    m = monitor(take_answering=False)
    peer = Peer(m)
    m.handle_timer(0.0)
    peer.verify(0.1)  # verified, then silent
    m.handle_timer(1.0)
    m.handle_timer(2.0)
    probe = silent_takeover(m, 3.21)
    m.probe_done(3.25, probe, {"203.0.113.10": [MAC]})
    assert m.state is State.BLOCKED  # FAILOVER_TAKE_ANSWERING=no
    events(m)
    m.reconfigure(MonitorConfig(**{**m.cfg.__dict__, "take_answering": True}), 3.3)
    m.handle_timer(4.25)
    (probe,) = [e.id for e in events(m) if isinstance(e, Probe)]
    m.probe_done(4.3, probe, {"203.0.113.10": [MAC]})
    answers = (("203.0.113.10", (MAC,)),)
    told = [e for e in events(m) if isinstance(e, AddressAnswers)]
    assert told == [AddressAnswers(answering=answers, verified_before=True, taking=True, at=4.3)]
    assert m.state is State.ACQUIRING and m.answering == answers


# Transitions ----------------------------------------------------------------------------------


def test_transitions_are_counted_and_stamped() -> None:
    m = monitor()
    active(m)
    assert m.counters["transitions.peer-silent"] == 1
    assert m.counters["transitions.no-answer"] == 1
    assert m.counters["transitions.acquired"] == 1
    m.shutdown(4.0)
    assert events(m) == [
        StateChanged(old=State.ACTIVE, new=State.STOPPING, trigger=Trigger.SHUTDOWN, at=4.0),
        Release(reason=Trigger.SHUTDOWN, at=4.0),
    ]


def test_each_transition_is_counted_every_time() -> None:
    sim = Sim()
    for dies, returns in ((5, 15), (30, 40)):
        sim.run_until(dies)
        sim.kill_primary()
        sim.run_until(returns)
        sim.revive_primary()
    sim.run_until(50)
    assert sim.monitor is not None
    assert [sim.monitor.counters[f"transitions.{t}"] for t in ("peer-silent", "released")] == [2, 2]


def test_an_illegal_transition_names_the_state_and_the_trigger() -> None:
    m = monitor()
    with pytest.raises(LocalProtocolError, match="STANDBY on RELEASED"):
        m.release_done(1.0, ok=True)


def test_a_failed_release_keeps_the_addresses() -> None:
    sim = Sim(failback=3.0, transition=2.0)  # slow transitions: the release is caught under way
    sim.run_until(5)
    sim.kill_primary()
    sim.run_until(15)
    sim.revive_primary()
    m = sim.monitor
    assert m is not None
    for _ in range(100):
        sim.run_until(sim.now + 0.1)
        if m.state is State.RELEASING:
            break
    assert m.state is State.RELEASING
    m.release_done(sim.now, ok=False)
    assert m.state is State.ACTIVE and m.holding


def test_a_shutdown_pending_on_a_takeover_is_stamped_when_it_fires() -> None:
    m = monitor()
    m.handle_timer(0.0)
    m.probe_done(3.0, silent_takeover(m, 3.0), {})
    m.shutdown(3.05)
    m.acquire_done(3.2, ok=True)
    changes = [e for e in events(m) if isinstance(e, StateChanged)]
    assert changes[-2:] == [
        StateChanged(old=State.ACQUIRING, new=State.ACTIVE, trigger=Trigger.ACQUIRED, at=3.2),
        StateChanged(old=State.ACTIVE, new=State.STOPPING, trigger=Trigger.SHUTDOWN, at=3.2),
    ]
    assert m.since == 3.2


def test_a_shutdown_from_standby_is_stamped_and_sends_no_released() -> None:
    m = monitor()
    peer = Peer(m)
    m.handle_timer(0.0)
    peer.verify(0.1)
    sent(m)
    m.shutdown(0.5)
    assert events(m)[-1] == StateChanged(
        old=State.STANDBY, new=State.STOPPED, trigger=Trigger.SHUTDOWN, at=0.5
    )
    assert sent(m) == []  # nothing was held: the primary has nothing to re-announce


def test_a_failed_release_at_shutdown_sends_no_released() -> None:
    m = monitor()
    peer = Peer(m)
    m.handle_timer(0.0)
    peer.verify(0.1)
    m.handle_timer(1.0)
    m.handle_timer(2.0)
    m.probe_done(3.3, silent_takeover(m, 3.21), {})
    m.acquire_done(3.4, ok=True)
    m.shutdown(3.5)
    sent(m)
    m.release_done(3.6, ok=False)
    assert m.state is State.STOPPED
    assert [c.type for c in sent(m)] == []  # still ours: no RELEASED


# RELEASED after a hand-back -------------------------------------------------------------------


def test_released_goes_out_three_times_one_period_apart_after_a_hand_back() -> None:
    sim = Sim(interval=0.5, deadtime=1.5, failback=1.5)
    sim.run_until(3.0)
    sim.kill_primary()
    sim.run_until(8.0)
    sim.revive_primary()
    released: list[float] = []
    m = sim.monitor
    assert m is not None
    original = m.datagrams_to_send

    def spy() -> list[tuple[bytes, wire.Addr]]:
        out = original()
        for data, _ in out:
            if wire.decode(data, KEY).type is wire.MsgType.RELEASED:
                released.append(sim.now)
        return out

    m.datagrams_to_send = spy  # type: ignore[method-assign]
    sim.run_until(20.0)
    (t, _), *_ = sim.rec.releases
    done = t + sim.transition
    # one per network each time; the copies come with the challenge rounds' timer
    assert sorted(set(released)) == pytest.approx([done, done + 0.5, done + 1.0])
    assert m.counters["released-sent"] == 3


def test_a_probe_cancelled_by_a_heartbeat_sends_no_released() -> None:
    m = monitor()
    peer = Peer(m)
    m.handle_timer(0.0)
    peer.verify(0.1)
    m.handle_timer(1.0)
    late = [c.nonce for c in sent(m)][-1]
    m.handle_timer(2.0)
    sent(m)
    silent_takeover(m, 3.21)
    peer.beat(3.22, (late,))  # proves life at 2.0: back to STANDBY
    assert m.state is State.STANDBY
    assert [c.type for c in sent(m) if c.type is wire.MsgType.RELEASED] == []


# Conflicts while holding ------------------------------------------------------------------------


def test_a_conflict_episode_is_recorded_exactly() -> None:
    m = monitor()
    active(m)
    m.address_claimed(4.0, "203.0.113.10", MAC)
    m.address_claimed(5.0, "203.0.113.10", MAC)
    m.address_claimed(6.0, "203.0.113.10", OTHER_MAC)
    assert events(m) == [
        AddressConflict(address="203.0.113.10", mac=MAC, state=State.ACTIVE, at=4.0),
        Defend(address="203.0.113.10", at=4.0),
        AddressConflict(address="203.0.113.10", mac=OTHER_MAC, state=State.ACTIVE, at=6.0),
    ]
    (c,) = m.conflicts(36.0)  # exactly CONFLICT_QUIET after the last frame: still going on
    assert (c.address, c.since, c.last, c.macs, c.frames) == (
        "203.0.113.10",
        4.0,
        6.0,
        [MAC, OTHER_MAC],
        3,
    )
    assert (c.defended_at, c.defences) == (4.0, 1)
    assert m.counters["claims.active"] == 3
    assert m.conflicts(36.01) == []


def test_a_conflict_episode_ends_after_exactly_the_quiet_time() -> None:
    m = monitor()
    active(m)
    m.address_claimed(4.0, "203.0.113.10", MAC)
    m.address_claimed(34.0, "203.0.113.10", MAC)  # 30 s later: the same episode
    assert [e for e in events(m) if isinstance(e, AddressConflict)] == [
        AddressConflict(address="203.0.113.10", mac=MAC, state=State.ACTIVE, at=4.0)
    ]
    (c,) = m.conflicts(34.0)
    assert (c.since, c.frames) == (4.0, 2)


def test_each_macs_first_claim_is_reported_up_to_the_limit() -> None:
    m = monitor()
    active(m)
    macs = [f"02:00:00:00:01:{i:02x}" for i in range(6)]
    for i, mac in enumerate(macs):
        m.address_claimed(4.0 + i, "203.0.113.10", mac)
    reported = [e.mac for e in events(m) if isinstance(e, AddressConflict)]
    assert reported == macs[:4]  # MAX_CONFLICT_MACS
    (c,) = m.conflicts(10.0)
    assert c.macs == macs[:4] and c.frames == 6


def test_at_most_64_conflict_episodes_the_oldest_go() -> None:
    m = monitor()
    active(m)
    for i in range(65):
        m.address_claimed(4.0 + i / 100, f"198.51.100.{i}", MAC)
    addresses = [c.address for c in m.conflicts(5.0)]
    assert len(addresses) == 64 and addresses[0] == "198.51.100.1"
    assert addresses[-1] == "198.51.100.64"


def test_claims_outside_active_are_counted_by_state() -> None:
    m = monitor()
    m.address_claimed(0.5, "203.0.113.10", MAC)
    m.address_claimed(0.6, "203.0.113.10", MAC)
    assert m.counters["claims.ignored"] == 2
    sim = in_holddown()
    assert sim.monitor is not None
    sim.monitor.address_claimed(sim.now, "203.0.113.10", MAC)
    sim.monitor.address_claimed(sim.now, "203.0.113.10", MAC)
    assert sim.monitor.counters["claims.holddown"] == 2


def test_an_episode_survives_the_holddown_it_is_not_cleared_while_holding() -> None:
    sim = Sim(failback=10.0)
    sim.run_until(5)
    sim.kill_primary()
    sim.run_until(10)
    m = sim.monitor
    assert m is not None and m.state is State.ACTIVE
    m.address_claimed(10.0, "203.0.113.10", MAC)
    sim.revive_primary()
    sim.run_until(13)
    assert m.state is State.HOLDDOWN
    sim.kill_primary()
    sim.run_until(20)
    assert m.state is State.ACTIVE
    sim._flush_monitor()
    m.address_claimed(sim.now, "203.0.113.10", MAC)
    assert [e for e in events(m) if isinstance(e, AddressConflict)] == []  # the same episode
    (c,) = m.conflicts(sim.now)
    assert c.since == 10.0


# Reloads --------------------------------------------------------------------------------------


def test_a_reload_applies_the_peer_name() -> None:
    m = monitor()
    peer = Peer(m)
    m.handle_timer(0.0)
    peer.verify(0.1)
    m.reconfigure(MonitorConfig(**{**m.cfg.__dict__, "peer_name": "other"}), 0.5)
    assert m.peer_name == "other"
    m.handle_timer(1.0)
    peer.fresh(1.1)
    assert m.counters["rejected.unknown-peer"] == 1


def test_a_reload_without_a_peer_name_keeps_the_learned_one() -> None:
    import ipaddress

    m = monitor(peer_ip=ipaddress.ip_address(ADDR[0]))
    Peer(m).verify(0.1)
    assert m.peer_name == "primary"  # learned from FAILOVER_PEER_IP
    m.reconfigure(m.cfg, 0.5)
    assert m.peer_name == "primary"
    Peer(m, boot=b"q" * 8, sender="impostor").beat(0.6)
    assert m.counters["rejected.unknown-peer"] == 1


def test_the_peer_name_is_learned_only_from_the_peer_ip() -> None:
    import ipaddress

    m = monitor(peer_ip=ipaddress.ip_address("203.0.113.99"))
    Peer(m).verify(0.1)
    assert m.peer_name is None  # verified, but from another address


def test_a_reload_applies_our_node_name_to_looped_back_datagrams() -> None:
    m = monitor()
    m.reconfigure(MonitorConfig(**{**m.cfg.__dict__, "node": "s2"}), 0.1)
    Peer(m, boot=b"o" * 8, sender="s2").beat(0.2)
    assert m.wants_local_boots  # our new name from an unknown boot: the shell is asked


def test_a_reload_adds_networks_that_start_silent() -> None:
    m = monitor()
    m.reconfigure(MonitorConfig(**{**m.cfg.__dict__, "networks": ("pub", "priv")}), 0.1)
    assert m.detector.networks["priv"].name == "priv"
    assert not m.detector.alive("priv", 0.2)
    m.handle_timer(3.0)  # silent on both: the takeover starts as usual
    assert m.state is State.PROBING


def test_a_reload_applies_the_arrival_allowance_of_the_new_interval() -> None:
    m = monitor()
    peer = Peer(m)
    m.handle_timer(0.0)
    m.reconfigure(MonitorConfig(**{**m.cfg.__dict__, "period": 0.5, "deadtime": 2.0}), 0.05)
    assert m.get_timer() == pytest.approx(0.55)  # the next round a new period on, not at 1.0
    peer.verify(0.1)  # evidence 0.11
    for t in (0.55, 1.05, 1.55, 2.05):
        m.handle_timer(t)
    m.handle_timer(2.159)
    assert m.state is State.STANDBY  # alive until 0.11 + 2.0 + a tenth of 0.5
    m.handle_timer(2.16)
    assert m.state is State.PROBING


def test_a_reload_during_the_holddown_moves_its_end() -> None:
    sim = in_holddown()
    m = sim.monitor
    assert m is not None and m.holddown_until == pytest.approx(m.since + 10.0)
    m.reconfigure(MonitorConfig(**{**m.cfg.__dict__, "failback_delay": 20.0}), sim.now)
    assert m.holddown_until == pytest.approx(m.since + 20.0)


# Looped-back and held datagrams ----------------------------------------------------------------


def test_datagrams_held_for_the_boot_ids_are_judged_where_they_came_from() -> None:
    m = monitor()
    m.handle_timer(0.0)
    Peer(m, boot=b"c" * 8, sender="s").beat(0.5)  # our name, a boot the shell has not told us
    assert m.wants_local_boots
    m.set_local_boots(frozenset(), 0.6)  # not ours: a clone on the network
    assert m.get_timer() is not None
    dropped = [e for e in events(m) if isinstance(e, wire.Dropped)]
    assert [(d.reason, d.addr, d.network, d.at) for d in dropped] == [
        (wire.Reason.STALE, ADDR, "pub", 0.6)
    ]


# The hold-down's count of rounds ------------------------------------------------------------------


def holddown_run(beats: list[float]) -> Monitor:
    """Holding since 0 (adopted at start-up); the primary comes back with a beat arriving at
    10.9 that echoes the challenge of 9.0 (it proves life at 10.0), then beats at ``beats``,
    each echoing the newest round's challenge. Timers every second until 21."""
    cfg = monitor(failback_delay=10.0).cfg
    m2 = Monitor(cfg, rng=random.Random(0).randbytes, now=0.0, holding=True)
    peer = Peer(m2)
    m2.handle_timer(9.0)
    peer.beat(9.0)
    (old,) = [c.nonce for c in sent(m2)]
    m2.handle_timer(10.0)
    peer.beat(10.9, (old,))
    assert m2.state is State.HOLDDOWN and m2.holddown_until == pytest.approx(20.9)
    nonce = [c.nonce for c in sent(m2)][-1]
    t = 11.0
    for at in [*beats, 21.0]:
        while t <= at:
            m2.handle_timer(t)
            nonces = [c.nonce for c in sent(m2)]
            nonce = nonces[-1] if nonces else nonce
            t += 1.0
        if at < 21.0:
            peer.beat(at, (nonce,))
    m2.handle_timer(20.9)
    return m2


def test_a_holddown_heard_in_exactly_seven_rounds_of_ten_hands_back() -> None:
    """The first round counts from the evidence of the beat that started the hold-down (10.0),
    not its arrival (10.9): the beat of 11.2 is a new round. Seven of ten rounds heard is
    exactly STEADY_SHARE: steady, so the hold-down ends in the hand-back."""
    m = holddown_run([11.2, 12.7, 14.2, 15.7, 17.2, 18.7])
    assert m.state is State.HANDBACK
    assert m.counters["holddown-restarts"] == 0


def test_a_beat_exactly_half_a_period_after_the_last_round_is_a_new_round() -> None:
    # 12.0 = 11.5 + half a period, echoing the newer challenge of 12.0: a round of its own (a
    # beat that echoes the same challenge again is never one); 18.4 echoes 18.0's challenge
    # again and keeps it alive, no new round. Seven rounds of ten: steady.
    m = holddown_run([11.5, 12.0, 13.5, 15.0, 16.5, 18.0, 18.4])
    assert m.state is State.HANDBACK


def test_a_holddown_heard_in_six_rounds_of_ten_starts_over() -> None:
    # the beats 0.4 s after a round are the same round (less than half a period later)
    m = holddown_run([12.7, 13.1, 14.2, 14.6, 15.7, 16.1, 17.2, 17.6, 18.7, 19.1])
    assert m.state is State.HOLDDOWN and m.counters["holddown-restarts"] == 1


def test_life_proven_at_the_instant_of_adoption_does_not_start_a_holddown() -> None:
    m = Monitor(monitor().cfg, rng=random.Random(0).randbytes, now=5.0, holding=True)
    peer = Peer(m)
    peer.beat(5.0)
    (challenge,) = [c.nonce for c in sent(m)]
    peer.beat(5.0, (challenge,))  # proves life at 5.0: not after we adopted the addresses
    assert m.state is State.ACTIVE and m.ever_verified
    # nor is the network reported verified: that evidence would not bring the primary back
    assert [e for e in events(m) if isinstance(e, NetworkEvent)] == []


def test_each_network_is_reported_verified_once_per_return_of_the_primary() -> None:
    sim = Sim(failback=3.0)
    sim.run_until(5)
    sim.kill_primary()
    sim.run_until(15)
    sim.revive_primary()
    sim.run_until(40)  # handed back at about 22; heard on, steadily, since
    assert len(sim.rec.releases) == 1
    verified = [(round(t), net) for t, kind, net in sim.rec.network_events if kind == "verified"]
    # at start-up (priv with the first round's challenge), then when the primary came back
    # while we held its addresses (challenged at once on its first, stale-echo heartbeat, so
    # within one round trip of its return at 15); not after
    assert verified == [(0, "pub"), (1, "priv"), (15, "pub"), (15, "priv")]


def test_an_undecodable_datagram_is_reported_with_where_and_when_it_came() -> None:
    m = monitor()
    m.receive_datagram(b"not a heartbeat", ADDR, "pub", 0.5)
    m.receive_datagram(b"not a heartbeat", ADDR, "pub", 0.6)
    dropped = [e for e in events(m) if isinstance(e, wire.Dropped)]
    assert [(d.reason, d.addr, d.network, d.at) for d in dropped] == [
        (wire.Reason.MALFORMED, ADDR, "pub", 0.5),
        (wire.Reason.MALFORMED, ADDR, "pub", 0.6),
    ]
    assert m.counters["rejected.malformed"] == 2


# Timers -------------------------------------------------------------------------------------------


def test_the_holddown_ends_on_its_own_timer_not_at_the_next_round() -> None:
    sim = Sim(failback=10.3)
    sim.run_until(5)
    sim.kill_primary()
    sim.run_until(15)
    sim.revive_primary()
    sim.run_until(17)
    m = sim.monitor
    assert m is not None and m.holddown_until is not None
    end = m.holddown_until
    sim.run_until(end + 3)
    ((t, _),) = [(s.at, s.trigger) for s in sim.rec.states if s.new is State.HANDBACK]
    # between heartbeats (they arrive at x.001) and rounds (at whole seconds): the hold-down
    # began with the answer to the challenge sent at once (15.003), and ends 10.3 s later
    assert t == pytest.approx(end) and round(end % 1, 3) == 0.303
    assert len(sim.rec.releases) == 1  # and the hand-back then released


def test_a_failed_takeover_wakes_the_shell_for_its_retry() -> None:
    m = monitor()
    m.handle_timer(0.0)
    m.probe_done(3.0, silent_takeover(m, 3.0), {})
    m.acquire_done(3.1, ok=False, retry_after=0.45)
    assert m.state is State.DECLINED
    assert m.get_timer() == pytest.approx(3.55)  # before the next round (4.0)


def test_a_stale_retry_does_not_wake_the_shell_once_the_primary_is_back() -> None:
    m = monitor()
    peer = Peer(m)
    m.handle_timer(0.0)
    m.probe_done(3.0, silent_takeover(m, 3.0), {})
    m.acquire_done(3.1, ok=False, retry_after=5.0)  # a retry at 8.1
    m.handle_timer(4.0)
    peer.verify(4.1)  # the primary is back: DECLINED -> STANDBY
    assert m.state is State.STANDBY
    timer = m.get_timer()
    assert timer is not None and timer <= 5.0  # the next round, not the retry
    for t in (5.0, 6.0, 7.0, 8.0):
        m.handle_timer(t)
        peer.fresh(t + 0.01)
    assert m.get_timer() == pytest.approx(9.0)  # the next round; the old retry (8.1) is gone


def test_an_anomaly_is_stamped() -> None:
    sim = Sim()
    sim.run_until(5)
    sim.up["pub"] = False
    sim.run_until(15)
    ((t, _, net),) = [e for e in sim.rec.network_events if e[1] == "anomaly"]
    # silent on pub since 8.1 (heard at 5.0, plus the dead time and the allowance); priv's
    # next heartbeat, at 9.0, is heard after that: the anomaly
    assert net == "pub" and t == pytest.approx(9.001)


def test_a_new_monitor_shows_nothing_probed_nothing_heard() -> None:
    m = Monitor(monitor().cfg, rng=random.Random(0).randbytes, now=5.0)
    assert (m.since, m.probe_result, m.probe_at, m.answering) == (5.0, "", None, ())
    assert (m.peer_interval, m.ever_verified, m.collision) == (None, False, None)


def test_every_restart_of_the_holddown_is_counted() -> None:
    m = holddown_run([12.7, 13.1, 14.2, 14.6, 15.7, 16.1, 17.2, 17.6, 18.7, 19.1])
    assert m.counters["holddown-restarts"] == 1 and m.holddown_until == 31.0
    peer = Peer(m)
    peer.seq = 100
    for t in (22.0, 24.0, 26.0, 28.0, 30.0):  # every two seconds: five rounds of ten
        m.handle_timer(t)
        (nonce, *_) = [c.nonce for c in sent(m)]
        peer.beat(t + 0.01, (nonce,))
    m.handle_timer(31.0)
    assert m.state is State.HOLDDOWN and m.counters["holddown-restarts"] == 2
