"""The hand-back made before it is broken (issue 10): the secondary asks the verified primary to
announce its addresses (HANDBACK), the primary announces and confirms (ANNOUNCED), and only then
does the secondary delete them; a lost request or answer falls back to today's order after a
bound. Also: the primary's return costs one challenge round trip before the hold-down starts."""

from __future__ import annotations

import random

import pytest
from sim import KEY, PRIMARY, SECONDARY, Hand, Sim

from ipfailover.core import wire
from ipfailover.core.monitor import (
    RELEASED_COPIES,
    AcquireOutcome,
    Monitor,
    MonitorConfig,
    Reclaim,
    Release,
    State,
    Trigger,
    handback_wait,
)
from ipfailover.core.sender import Announce, Sender, SenderConfig
from ipfailover.core.sender_types import CONFIRM_COPIES

TARGETS = (("203.0.113.255", 1694), ("198.51.100.255", 1694))


def states(sim: Sim) -> list[tuple[float, State, State, Trigger]]:
    return [(e.at, e.old, e.new, e.trigger) for e in sim.rec.states]


def outage_and_return(sim: Sim, *, out: float = 10.0) -> float:
    """Both networks out at 5 s for ``out`` seconds: a takeover, then the primary is back."""
    sim.run_until(5.5)
    sim.up = {"pub": False, "priv": False}
    sim.run_until(5.5 + out)
    assert len(sim.rec.acquires) == 1
    sim.up = {"pub": True, "priv": True}
    return sim.now


def first_delivery_after(sim: Sim, t: float) -> float:
    return min(d for net in sim.rec.delivered.values() for d in net if d > t)


# The order ----------------------------------------------------------------------------------


def test_the_primary_announces_before_the_secondary_deletes() -> None:
    sim = Sim(failback=3.0)
    back = outage_and_return(sim)
    sim.run_until(back + 10)
    ((t_rel, reason),) = sim.rec.releases
    assert reason is Trigger.PEER_HEARD
    handback = [t for t, r in sim.rec.announces if r == "handback"]
    assert len(handback) == 1 and handback[0] < t_rel
    moves = [(old, new, trig) for _, old, new, trig in states(sim) if old is State.HANDBACK]
    assert moves == [(State.HANDBACK, State.RELEASING, Trigger.ANNOUNCED)]
    entered = next(at for at, _, new, _ in states(sim) if new is State.HANDBACK)
    # one round trip and the primary's first announcement round, not the fallback's bound
    assert t_rel - entered == pytest.approx(2 * sim.latency + sim.announce_delay)
    # RELEASED still goes, and the primary announces again (any client that asked in between)
    assert any(r == "released" and t > t_rel for t, r in sim.rec.announces)
    assert sim.monitor is not None and sim.monitor.state is State.STANDBY


def test_a_lost_confirmation_falls_back_to_release_first_after_the_bound() -> None:
    sim = Sim(failback=3.0)
    sim.confirm_handback = False  # the primary cannot announce (or every ANNOUNCED is lost)
    back = outage_and_return(sim)
    sim.run_until(back + 10)
    ((t_rel, _),) = sim.rec.releases
    entered = next(at for at, _, new, _ in states(sim) if new is State.HANDBACK)
    assert t_rel == pytest.approx(entered + handback_wait(1.0))
    assert (State.HANDBACK, State.RELEASING, Trigger.HANDBACK_TIMEOUT) in [
        (o, n, t) for _, o, n, t in states(sim)
    ]
    assert any(r == "released" and t > t_rel for t, r in sim.rec.announces)


def test_a_lost_request_falls_back_too() -> None:
    """Every HANDBACK lost: the secondary releases after the bound, and RELEASED announces."""
    sim = Sim(failback=3.0)
    back = outage_and_return(sim)
    sim.run_until(back + 3.5)
    assert sim.monitor is not None and sim.monitor.state is State.HOLDDOWN
    until = sim.monitor.holddown_until
    assert until is not None
    sim.run_until(until - 0.0001)
    sim.up = {"pub": False, "priv": False}  # the request goes nowhere
    sim.run_until(until + 0.001)
    assert sim.monitor.state is State.HANDBACK
    sim.up = {"pub": True, "priv": True}
    sim.run_until(until + 2)
    ((t_rel, _),) = sim.rec.releases
    assert t_rel == pytest.approx(until + handback_wait(1.0), abs=0.002)
    assert not any(r == "handback" for _, r in sim.rec.announces)


def test_every_handback_and_confirmation_is_counted() -> None:
    """Two outages, two hand-backs: each HANDBACK request and each ANNOUNCED that ended one
    counts once; the other copies of the confirmation (CONFIRM_COPIES to each network) arrive
    after it and count as late."""
    sim = Sim(failback=3.0)
    for start in (5.5, 25.5):
        sim.run_until(start)
        sim.up = {"pub": False, "priv": False}
        sim.run_until(start + 10)
        sim.up = {"pub": True, "priv": True}
        sim.run_until(start + 19)
    assert [r for _, r in sim.rec.releases] == [Trigger.PEER_HEARD] * 2
    assert sim.monitor is not None
    c = sim.monitor.counters
    assert c["handback-sent"] == 2
    assert c["announced"] == c["transitions.announced"] == 2
    assert c["announced-late"] == 2 * (len(sim.up) * CONFIRM_COPIES - 1)


def test_handback_wait_is_one_period_within_bounds() -> None:
    assert handback_wait(1.0) == 0.25
    assert handback_wait(0.1) == 0.1
    assert handback_wait(0.01) == 0.05


# The return ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("out", "phase"), [(10.0, 0.0), (3.0, 0.1)], ids=["stale-echo", "echo-from-before-takeover"]
)
def test_a_returning_cable_starts_the_holddown_within_a_round_trip(
    out: float, phase: float
) -> None:
    """The first heartbeat after the return echoes no nonce, or one issued before the takeover
    (evidence that cannot bring the primary back): the secondary challenges at once, and
    heartbeatd answers a holder at once (a beat to every target). Before, the hold-down began
    up to an interval later, with the next beat or the next round."""
    sim = Sim(failback=3.0, start_secondary_at=phase)  # its rounds at x.1: see the second case
    back = outage_and_return(sim, out=out)
    sim.run_until(back + 3)
    first = first_delivery_after(sim, back)
    start = next(at for at, _, new, _ in states(sim) if new is State.HOLDDOWN)
    assert start <= first + 2 * sim.latency + 1e-9


def test_a_restarted_primary_starts_the_holddown_within_a_round_trip() -> None:
    sim = Sim(failback=3.0)
    sim.run_until(5.5)
    sim.kill_primary()
    sim.run_until(12.3)
    assert sim.monitor is not None and sim.monitor.state is State.ACTIVE
    sim.revive_primary()
    sim.run_until(15)
    first = first_delivery_after(sim, 12.3)
    start = next(at for at, _, new, _ in states(sim) if new is State.HOLDDOWN)
    assert start <= first + 2 * sim.latency + 1e-9


def taken_over() -> tuple[Monitor, Hand, list[bytes]]:
    """A standby monitor driven by hand: the primary is verified at 0.1 and answers the round
    at 1.0, then falls silent; the secondary takes over at 5.0 (``since``), just after its round
    at 5.0. Returns the nonces of the rounds at 0, 1, ..., 5 (index = issue time)."""
    cfg = MonitorConfig(
        node="secondary", key=KEY, period=1.0, deadtime=3.0, failback_delay=3.0, networks=("pub",)
    )
    m = Monitor(cfg, rng=random.Random(1).randbytes, now=0.0)
    hand = Hand(m)
    m.handle_timer(0.0)
    hand.beat((), 0.05)  # a new primary: challenged at once
    nonces = [hand.nonce()]
    hand.beat((nonces[0],), 0.1)
    for k in range(1, 6):
        if k == 5:
            assert m.state is State.PROBING and m._probe_out is not None
            m.probe_done(4.5, m._probe_out, {})
            assert m.state is State.ACQUIRING
        m.handle_timer(float(k))
        nonces.append(hand.nonce())
        if k == 1:
            hand.beat((nonces[1],), 1.1)  # alive until 4.1: silent after that
        if k == 4:
            m.handle_timer(4.2)
    m.acquire_done(5.0, AcquireOutcome.DONE)
    assert m.state is State.ACTIVE and m.since == 5.0
    assert m.datagrams_to_send() == []
    drain(m)
    return m, hand, nonces


def challenges(m: Monitor) -> list[tuple[bytes, wire.Addr]]:
    out = [(wire.decode(d, KEY), a) for d, a in m.datagrams_to_send()]
    assert all(msg.type is wire.MsgType.CHALLENGE for msg, _ in out)
    return [(msg.nonce, a) for msg, a in out]


@pytest.mark.parametrize("echoed", [3, 4], ids=["two-rounds-old", "at-the-takeover"])
def test_a_primary_echoing_a_nonce_from_before_the_takeover_is_challenged_at_once(
    echoed: int,
) -> None:
    """Its heartbeat proves life only up to the takeover (evidence 3.0, or exactly 5.0, the
    takeover's time): not enough to start the hold-down (that takes life after the takeover),
    so the secondary challenges it at once, both copies, with the latest nonce, and its answer
    starts the hold-down one round trip later instead of at the next round (6.0)."""
    m, hand, nonces = taken_over()
    hand.beat((nonces[echoed],), 5.3)
    assert m.state is State.ACTIVE
    assert challenges(m) == [(nonces[5], PRIMARY["pub"])] * 2
    hand.beat((nonces[5],), 5.31)
    assert m.state is State.HOLDDOWN
    assert m.since == 5.31


def test_a_primary_echoing_the_latest_nonce_is_not_challenged_again() -> None:
    """One that has our round's nonce already needs no extra challenge: the hold-down starts,
    and nothing is sent until the next round."""
    m, hand, nonces = taken_over()
    hand.beat((nonces[5],), 5.3)
    assert m.state is State.HOLDDOWN
    assert m.datagrams_to_send() == []
    assert m.get_timer() == 6.0


# Abandoned hand-backs -----------------------------------------------------------------------


def holding_monitor(failback: float = 10.0) -> tuple[Monitor, Hand]:
    """A monitor holding the addresses, driven by hand: heard at 0.1, then at every round."""
    cfg = MonitorConfig(
        node="secondary",
        key=KEY,
        period=1.0,
        deadtime=3.0,
        failback_delay=failback,
        networks=("pub",),
    )
    m = Monitor(cfg, rng=random.Random(1).randbytes, now=0.0, holding=True)
    return m, Hand(m)


def drain(m: Monitor) -> list[object]:
    out = []
    while (ev := m.next_event()) is not None:
        out.append(ev)
    return out


def into_handback(m: Monitor, hand: Hand, last_beat: int) -> list[tuple[bytes, wire.Addr]]:
    """Heard at 0.1 and each round up to ``last_beat``; returns the HANDBACK datagrams."""
    m.handle_timer(0.0)
    hand.beat((), 0.05)  # stale: answered at once with a challenge
    hand.beat((hand.nonce(),), 0.1)
    for k in range(1, last_beat + 1):
        m.handle_timer(float(k))
        hand.beat((hand.nonce(),), k + 0.1)
    assert m.state is State.HOLDDOWN
    assert m.holddown_until == pytest.approx(10.1)
    m.handle_timer(10.1)
    assert m.state is State.HANDBACK
    out = m.datagrams_to_send()
    return [(d, a) for d, a in out if wire.decode(d, KEY).type is wire.MsgType.HANDBACK]


def test_a_primary_silent_after_the_request_is_reclaimed_not_released() -> None:
    """It may have announced before it fell silent: the secondary keeps the addresses and
    announces them again."""
    m, hand = holding_monitor()
    requests = into_handback(m, hand, last_beat=7)  # heard last at 7.1: alive until 10.2
    assert [a for _, a in requests] == [PRIMARY["pub"]] * 2
    drain(m)
    m.handle_timer(10.21)
    assert m.state is State.ACTIVE
    evs = drain(m)
    assert [e for e in evs if isinstance(e, Reclaim)] == [Reclaim(at=10.21)]
    assert not any(isinstance(e, Release) for e in evs)


def announced(
    m: Monitor, handback_id: bytes, *, boot: bytes = b"p" * 8, to: bytes | None = None, seq: int
) -> bytes:
    msg = wire.Message(
        type=wire.MsgType.ANNOUNCED,
        sender="primary",
        boot_id=boot,
        seq=seq,
        interval=1.0,
        nonce=handback_id,
        echo_boot=m.boot_id if to is None else to,
        echo_seq=1,
    )
    return wire.encode(msg, KEY)


def test_only_the_verified_primary_answering_this_handback_releases() -> None:
    m, hand = holding_monitor()
    ((data, _), *_) = into_handback(m, hand, last_beat=9)
    request = wire.decode(data, KEY)
    assert request.echo_boot == b"p" * 8  # bound to the verified primary's boot
    bad = [
        announced(m, b"x" * 8, seq=100),  # another hand-back
        announced(m, request.nonce, boot=b"q" * 8, seq=100),  # another boot
        announced(m, request.nonce, to=b"z" * 8, seq=100),  # to another listener boot
        announced(m, request.nonce, seq=5),  # a sequence number the primary used long ago
    ]

    def rejected() -> dict[str, int]:
        return {k: v for k, v in m.counters.items() if k.startswith("rejected.")}

    before = rejected()
    drain(m)
    for dg in bad:
        m.receive_datagram(dg, PRIMARY["pub"], "pub", 10.12)
        assert m.state is State.HANDBACK
    # each is logged (`dropped reason=... detail=...`) and counted by reason (status shows them)
    dropped = [(e.reason, e.detail) for e in drain(m) if isinstance(e, wire.Dropped)]
    assert dropped == [
        (wire.Reason.STALE, "ANNOUNCED answers no hand-back"),
        (wire.Reason.STALE, "ANNOUNCED not from the verified primary to this boot"),
        (wire.Reason.STALE, "ANNOUNCED not from the verified primary to this boot"),
        (wire.Reason.REPLAY, "seq 5 seen or too old"),
    ]
    after = rejected()
    assert after["rejected.stale"] - before.get("rejected.stale", 0) == 3
    assert after["rejected.replay"] - before.get("rejected.replay", 0) == 1
    assert m.counters["announced"] == 0
    m.receive_datagram(announced(m, request.nonce, seq=101), PRIMARY["pub"], "pub", 10.13)
    assert m.state is State.RELEASING
    assert m.counters["announced"] == 1
    for seq in (102, 103):
        m.receive_datagram(announced(m, request.nonce, seq=seq), PRIMARY["pub"], "pub", 10.13)
    assert m.counters["announced-late"] == 2  # its copies: counted, nothing else
    assert m.counters["announced"] == 1
    assert rejected() == after


# heartbeatd's side ----------------------------------------------------------------------------


def sender() -> Sender:
    cfg = SenderConfig(node="primary", key=KEY, interval=1.0, targets=TARGETS)
    s = Sender(cfg, rng=random.Random(0).randbytes, now=0.0)
    s.handle_timer(0.0)
    s.datagrams_to_send()
    return s


def to_sender(s: Sender, kind: wire.MsgType, seq: int, nonce: bytes, **kw: object) -> bytes:
    msg = wire.Message(
        type=kind,
        sender="secondary",
        boot_id=b"S" * 8,
        seq=seq,
        interval=1.0,
        nonce=nonce,
        echo_boot=s.boot_id,
        echo_seq=s.seq,
        **kw,  # type: ignore[arg-type]
    )
    return wire.encode(msg, KEY)


def events(s: Sender) -> list[object]:
    out = []
    while (ev := s.next_event()) is not None:
        out.append(ev)
    return out


def test_heartbeatd_announces_then_confirms_once() -> None:
    s = sender()
    s.receive_datagram(
        to_sender(s, wire.MsgType.CHALLENGE, 1, b"n" * 8, holding=True), SECONDARY["pub"], 0.1
    )
    s.datagrams_to_send()
    request = to_sender(s, wire.MsgType.HANDBACK, 2, b"h" * 8)
    s.receive_datagram(request, SECONDARY["pub"], 0.2)
    s.receive_datagram(request, SECONDARY["priv"], 0.2)  # its copy over the other network
    (ev,) = [e for e in events(s) if isinstance(e, Announce)]
    assert ev.reason == "handback" and ev.handback == b"h" * 8 and ev.listener == "secondary"
    assert s.datagrams_to_send() == []  # no confirmation before the announcement is out
    s.handback_announced(0.21, b"h" * 8)
    out = [(wire.decode(d, KEY), a) for d, a in s.datagrams_to_send()]
    assert {a for _, a in out} == {SECONDARY["pub"], SECONDARY["priv"]}
    for msg, _ in out:
        assert msg.type is wire.MsgType.ANNOUNCED and msg.nonce == b"h" * 8
        assert msg.echo_boot == b"S" * 8 and msg.echo_seq == 2
    s.handback_announced(0.22, b"h" * 8)  # once only
    assert s.datagrams_to_send() == []


def test_heartbeatd_refuses_handbacks_it_must_not_act_on() -> None:
    s = sender()
    # from a listener that does not hold our addresses
    s.receive_datagram(to_sender(s, wire.MsgType.CHALLENGE, 1, b"n" * 8), SECONDARY["pub"], 0.1)
    s.receive_datagram(to_sender(s, wire.MsgType.HANDBACK, 2, b"a" * 8), SECONDARY["pub"], 0.2)
    # it holds now; a HANDBACK older than its latest challenge (a replay) is refused
    s.receive_datagram(
        to_sender(s, wire.MsgType.CHALLENGE, 4, b"m" * 8, holding=True), SECONDARY["pub"], 0.3
    )
    s.receive_datagram(to_sender(s, wire.MsgType.HANDBACK, 3, b"b" * 8), SECONDARY["pub"], 0.4)
    # one echoing another boot of ours
    msg = wire.Message(
        type=wire.MsgType.HANDBACK,
        sender="secondary",
        boot_id=b"S" * 8,
        seq=5,
        interval=1.0,
        nonce=b"c" * 8,
        echo_boot=b"o" * 8,
        echo_seq=s.seq,
    )
    s.receive_datagram(wire.encode(msg, KEY), SECONDARY["pub"], 0.5)
    assert not any(isinstance(e, Announce) and e.reason == "handback" for e in events(s))
    assert s.counters["rejected.unexpected"] == 1
    assert s.counters["rejected.replay"] == 1
    assert s.counters["rejected.stale"] == 1


def test_heartbeatd_does_not_confirm_what_it_could_not_announce() -> None:
    s = sender()
    s.receive_datagram(
        to_sender(s, wire.MsgType.CHALLENGE, 1, b"n" * 8, holding=True), SECONDARY["pub"], 0.1
    )
    s.receive_datagram(to_sender(s, wire.MsgType.HANDBACK, 2, b"h" * 8), SECONDARY["pub"], 0.2)
    s.datagrams_to_send()
    s.handback_announced(0.3, b"h" * 8, ok=False)
    assert s.datagrams_to_send() == []


def test_handback_and_announced_round_trip_on_the_wire() -> None:
    for kind in (wire.MsgType.HANDBACK, wire.MsgType.ANNOUNCED):
        msg = wire.Message(
            type=kind,
            sender="n",
            boot_id=b"b" * 8,
            seq=7,
            interval=0.5,
            nonce=b"i" * 8,
            echo_boot=b"e" * 8,
            echo_seq=3,
        )
        assert wire.decode(wire.encode(msg, KEY), KEY) == msg


def test_two_heartbeats_answering_one_challenge_are_one_round_of_the_holddown() -> None:
    """heartbeatd answers a holder's challenge at once and echoes it again in its next regular
    beat: one round, not two. Counted twice, five rounds heard of ten made a hold-down steady
    (and a flapping primary got its addresses back while it still flapped)."""
    m, hand = holding_monitor(failback=10.0)
    m.handle_timer(0.0)
    hand.beat((), 0.05)  # stale: answered at once with a challenge
    n = hand.nonce()
    hand.beat((n,), 0.1)  # the hold-down starts: until 10.1
    hand.beat((n,), 0.7)
    for k in range(1, 10):
        m.handle_timer(float(k))
        n = hand.nonce()
        if k % 2 == 0:  # every other round answered, twice
            hand.beat((n,), k + 0.1)
            hand.beat((n,), k + 0.7)
    m.handle_timer(10.1)
    assert m.state is State.HOLDDOWN  # five rounds of ten: not steady, it starts over
    assert m.counters["holddown-restarts"] == 1


@pytest.mark.parametrize(
    ("heard", "steady"),
    [((11, 13, 15, 17, 18, 19), True), ((11, 13, 15, 17, 19), False)],
    ids=["seven-of-ten", "six-of-ten"],
)
def test_a_holddown_that_starts_over_counts_its_rounds_afresh(
    heard: tuple[int, ...], steady: bool
) -> None:
    """A hold-down that starts over (the primary was heard in too few rounds) counts its rounds
    from none, and from the last heartbeat it heard, not from the instant it starts over: the
    primary's next answer, just after, is the new hold-down's first round. Seven of its ten
    rounds make it steady (the hand-back), six start it over again."""
    m, hand = holding_monitor(failback=10.0)
    m.handle_timer(0.0)
    hand.beat((), 0.05)  # stale: answered at once with a challenge
    hand.beat((hand.nonce(),), 0.1)  # the hold-down starts: until 10.1
    for k in range(1, 11):
        m.handle_timer(float(k))
        n = hand.nonce()
        if k in (1, 3, 5, 7, 8):  # six rounds of ten, counting the first: not steady
            hand.beat((n,), k + 0.1)
    m.handle_timer(10.1)
    assert m.state is State.HOLDDOWN
    assert m.counters["holddown-restarts"] == 1
    assert m.holddown_until == pytest.approx(20.1)
    hand.beat((n,), 10.15)  # its regular beat echoes round 10's nonce: the first round
    for k in range(11, 21):
        m.handle_timer(float(k))
        n = hand.nonce()
        if k in heard:
            hand.beat((n,), k + 0.1)
    m.handle_timer(20.1)
    if steady:
        assert m.state is State.HANDBACK
        assert m.counters["holddown-restarts"] == 1
    else:
        assert m.state is State.HOLDDOWN
        assert m.counters["holddown-restarts"] == 2
        assert m.holddown_until == pytest.approx(30.1)


@pytest.mark.parametrize(
    ("every", "steady"), [(1, True), (3, False)], ids=["every-round", "every-third-round"]
)
def test_a_holddown_counts_challenge_rounds_not_seconds(every: int, steady: bool) -> None:
    """At a period of 0.5 s a 5 s hold-down is ten rounds: a primary heard in every third of
    them (four of ten, alive all along) is not steady and the hold-down starts over; one heard
    in every round gets its addresses back."""
    cfg = MonitorConfig(
        node="secondary", key=KEY, period=0.5, deadtime=1.5, failback_delay=5.0, networks=("pub",)
    )
    m = Monitor(cfg, rng=random.Random(1).randbytes, now=0.0, holding=True)
    hand = Hand(m)
    m.handle_timer(0.0)
    hand.beat((), 0.05)  # stale: answered at once with a challenge
    hand.beat((hand.nonce(),), 0.1)  # the hold-down starts: until 5.1
    for k in range(1, 11):
        m.handle_timer(k * 0.5)
        n = hand.nonce()
        if k % every == 0:
            hand.beat((n,), k * 0.5 + 0.05)
    assert m.holddown_until == pytest.approx(5.1)
    m.handle_timer(5.1)
    assert m.state is (State.HANDBACK if steady else State.HOLDDOWN)
    assert m.counters["holddown-restarts"] == (0 if steady else 1)


@pytest.mark.parametrize("verified", [True, False], ids=["verified", "never-verified"])
def test_released_at_shutdown_goes_to_the_verified_primary_only(verified: bool) -> None:
    """Stopping while holding: RELEASED_COPIES at once to the verified primary, and counted.
    A secondary that started holding and never verified a primary has no one to tell: it sends
    nothing, and counts nothing as sent."""
    m, hand = holding_monitor()
    m.handle_timer(0.0)
    if verified:
        hand.beat((), 0.05)
        hand.beat((hand.nonce(),), 0.1)
        assert m.state is State.HOLDDOWN
    m.datagrams_to_send()
    m.shutdown(0.5)
    m.release_done(0.6, ok=True)
    assert m.state is State.STOPPED
    out = [(wire.decode(d, KEY).type, a) for d, a in m.datagrams_to_send()]
    copies = RELEASED_COPIES if verified else 0
    assert out == [(wire.MsgType.RELEASED, PRIMARY["pub"])] * copies
    assert m.counters["released-sent"] == copies
