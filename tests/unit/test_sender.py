"""heartbeatd's core on a plain float clock."""

from __future__ import annotations

import random

import pytest

from ipfailover.core import wire
from ipfailover.core.sender import Announce, AnnounceDeferred, Sender, SenderConfig

KEY = bytes(range(32))
TARGETS = (("203.0.113.255", 1694), ("198.51.100.255", 1694))
LISTENER = ("203.0.113.20", 1694)


def make(interval: float = 1.0) -> Sender:
    cfg = SenderConfig(node="primary", key=KEY, interval=interval, targets=TARGETS)
    return Sender(cfg, rng=random.Random(0).randbytes, now=0.0)


def drain(s: Sender) -> list[object]:
    out = []
    while (ev := s.next_event()) is not None:
        out.append(ev)
    return out


def challenge(
    to: Sender, seq: int, nonce: bytes, *, boot: bytes = b"S" * 8, holding: bool = False
) -> bytes:
    """A CHALLENGE from the secondary to ``to``, echoing its boot and latest sequence number."""
    msg = wire.Message(
        type=wire.MsgType.CHALLENGE,
        sender="secondary",
        boot_id=boot,
        seq=seq,
        interval=1.0,
        nonce=nonce,
        echo_boot=to.boot_id,
        echo_seq=to.seq,
        holding=holding,
    )
    return wire.encode(msg, KEY)


def sent(s: Sender) -> list[tuple[wire.Message, wire.Addr]]:
    return [(wire.decode(d, KEY), a) for d, a in s.datagrams_to_send()]


def test_beats_every_interval_to_every_target_with_rising_seq() -> None:
    s = make(0.05)
    times = []
    for _ in range(5):
        t = s.get_timer()
        assert t is not None
        s.handle_timer(t)
        times.append(t)
    out = sent(s)
    assert times == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])
    assert [a for _, a in out] == list(TARGETS) * 5
    assert [m.seq for m, _ in out] == list(range(1, 11))
    assert all(m.type is wire.MsgType.HEARTBEAT and m.interval == 0.05 for m, _ in out)


def test_after_a_stall_the_cadence_restarts_without_a_burst() -> None:
    s = make(1.0)
    s.handle_timer(0.0)
    s.datagrams_to_send()
    s.handle_timer(10.5)  # the process was stopped for ten seconds
    assert len(s.datagrams_to_send()) == len(TARGETS)
    assert s.get_timer() == pytest.approx(11.5)


def test_challenge_is_echoed_and_a_new_listener_is_answered_at_once() -> None:
    s = make()
    s.receive_datagram(challenge(s, 1, b"n1" * 4), LISTENER, 0.1)
    ((msg, addr),) = sent(s)
    assert addr == LISTENER and msg.echoes == (b"n1" * 4,)
    s.receive_datagram(challenge(s, 2, b"n2" * 4), LISTENER, 0.2)
    assert sent(s) == []  # known listener: echoed in the next regular beat
    s.handle_timer(1.0)
    assert all(m.echoes == (b"n2" * 4,) for m, _ in sent(s))


def test_replayed_challenge_cannot_roll_the_nonce_back() -> None:
    s = make()
    old = challenge(s, 1, b"o" * 8)
    s.receive_datagram(old, LISTENER, 0.1)
    s.receive_datagram(challenge(s, 2, b"n" * 8), LISTENER, 0.2)
    s.datagrams_to_send()
    s.receive_datagram(old, LISTENER, 0.3)
    assert s.counters["rejected.replay"] == 1
    s.handle_timer(1.0)
    assert all(m.echoes == (b"n" * 8,) for m, _ in sent(s))


def test_same_challenge_over_two_networks_is_not_a_replay() -> None:
    s = make()
    data = challenge(s, 1, b"n" * 8)
    s.receive_datagram(data, LISTENER, 0.1)
    s.receive_datagram(data, ("198.51.100.20", 1694), 0.1)
    assert s.counters["rejected.replay"] == 0 and s.counters["challenge-copies"] == 1


def test_listeners_expire() -> None:
    s = make()
    s.receive_datagram(challenge(s, 1, b"n" * 8), LISTENER, 0.1)
    s.handle_timer(10.0)
    assert all(m.echoes == () for m, _ in sent(s)[1:])
    assert s.listeners == []


def test_leaving_goes_to_every_target_and_beats_stop() -> None:
    s = make()
    s.receive_datagram(challenge(s, 1, b"n" * 8), LISTENER, 0.1)
    s.datagrams_to_send()
    s.leave(0.5)
    out = sent(s)
    assert {a for _, a in out} == set(TARGETS) and len(out) == 4
    assert all(m.type is wire.MsgType.LEAVING and m.echoes == (b"n" * 8,) for m, _ in out)
    assert s.get_timer() is None


def test_startup_announce_waits_for_a_listener_or_a_deadline() -> None:
    s = make()
    s.handle_timer(0.0)
    assert drain(s) == []
    s.handle_timer(3.9)
    assert drain(s) == []
    s.handle_timer(4.0)  # nobody answered within 3 intervals + 1 s: nobody holds them
    assert [e.reason for e in drain(s) if isinstance(e, Announce)] == ["start"]
    free = make()
    free.handle_timer(0.0)
    free.receive_datagram(challenge(free, 1, b"n" * 8), LISTENER, 0.1)  # answers: not holding
    assert [e.reason for e in drain(free) if isinstance(e, Announce)] == ["start"]
    held = make()
    held.handle_timer(0.0)
    held.receive_datagram(challenge(held, 1, b"n" * 8, holding=True), LISTENER, 0.1)
    (ev,) = drain(held)
    assert isinstance(ev, AnnounceDeferred) and ev.listener == "secondary"


def released(s: Sender, echo_seq: int, release_id: bytes = b"r" * 8) -> bytes:
    msg = wire.Message(
        type=wire.MsgType.RELEASED,
        sender="secondary",
        boot_id=b"S" * 8,
        seq=9,
        interval=1.0,
        nonce=release_id,
        echo_boot=s.boot_id,
        echo_seq=echo_seq,
    )
    return wire.encode(msg, KEY)


def test_released_triggers_one_announcement() -> None:
    s = make()
    s.handle_timer(0.0)
    s.handle_timer(0.5)
    drain(s)
    s.receive_datagram(released(s, s.seq), LISTENER, 1.0)
    s.receive_datagram(released(s, s.seq), LISTENER, 1.1)  # the second copy
    (ev,) = drain(s)
    assert isinstance(ev, Announce) and ev.reason == "released" and ev.listener == "secondary"


def test_released_from_another_boot_or_too_old_is_dropped() -> None:
    s = make()
    s.handle_timer(0.0)
    other = make()
    other.boot_id = b"X" * 8
    s.receive_datagram(released(other, 1), LISTENER, 0.2)
    for t in range(1, 100):
        s.handle_timer(float(t))
    s.receive_datagram(released(s, 1, b"q" * 8), LISTENER, 100.0)
    assert s.counters["rejected.stale"] == 2
    assert not any(isinstance(e, Announce) and e.reason == "released" for e in drain(s))


def test_garbage_is_counted_never_raised() -> None:
    s = make()
    for data in (b"", b"heartbeat", bytes(100), challenge(s, 1, b"n" * 8)[:-1] + b"\0"):
        s.receive_datagram(data, LISTENER, 0.1)
    assert s.counters["rejected.malformed"] + s.counters["rejected.bad-auth"] == 4


def test_reconfigure_keeps_boot_and_sequence() -> None:
    s = make(1.0)
    s.handle_timer(0.0)
    boot, seq = s.boot_id, s.seq
    s.reconfigure(SenderConfig(node="primary", key=KEY, interval=0.1, targets=TARGETS[:1]), 0.2)
    deadline = s.get_timer()
    assert deadline == pytest.approx(0.3)
    s.handle_timer(deadline)
    out = sent(s)
    assert s.boot_id == boot and out[-1][0].seq == seq + 1 and out[-1][1] == TARGETS[0]
    assert out[-1][0].interval == 0.1


def test_cable_back_announces_unless_a_listener_holds() -> None:
    s = make()
    s.handle_timer(0.0)
    s.receive_datagram(challenge(s, 1, b"n" * 8), LISTENER, 0.1)
    drain(s)
    s.link_up(10.0)
    s.receive_datagram(challenge(s, 2, b"m" * 8), LISTENER, 10.1)
    (ev,) = drain(s)
    assert isinstance(ev, Announce) and ev.reason == "carrier"
    s.link_up(20.0)
    s.receive_datagram(challenge(s, 3, b"o" * 8, holding=True), LISTENER, 20.1)
    deferred = [e for e in drain(s) if isinstance(e, AnnounceDeferred)]
    assert [(e.reason, e.listener) for e in deferred] == [("carrier", "secondary")]


def test_released_clears_the_holding_flag() -> None:
    s = make()
    s.handle_timer(0.0)
    s.receive_datagram(challenge(s, 1, b"n" * 8, holding=True), LISTENER, 0.1)
    drain(s)
    s.receive_datagram(released(s, s.seq), LISTENER, 1.0)
    s.link_up(1.1)
    s.handle_timer(5.1)  # no further challenge: the RELEASED already said it let go
    assert [e.reason for e in drain(s) if isinstance(e, Announce)] == ["released", "carrier"]


def test_cable_back_beats_at_once() -> None:
    s = make()
    s.handle_timer(0.0)
    s.datagrams_to_send()
    s.link_up(0.3)
    assert s.get_timer() == 0.3
    s.handle_timer(0.3)
    assert len(s.datagrams_to_send()) == len(TARGETS)


def test_replayed_challenge_after_the_entry_expired_is_refused() -> None:
    s = make()
    s.handle_timer(0.0)
    old = challenge(s, 1, b"o" * 8, holding=True)
    for t in range(1, 40):  # 40 s of heartbeats: the capture's echo is now too old
        s.handle_timer(float(t))
    s.datagrams_to_send()
    s.receive_datagram(old, LISTENER, 40.0)
    assert s.counters["rejected.stale"] == 1 and s.listeners == []


def test_holding_flag_turning_off_announces_when_released_was_lost() -> None:
    s = make()
    s.handle_timer(0.0)
    s.receive_datagram(challenge(s, 1, b"n" * 8, holding=True), LISTENER, 0.1)
    drain(s)
    s.receive_datagram(challenge(s, 2, b"m" * 8, holding=False), LISTENER, 1.1)
    assert [(e.reason, e.listener) for e in drain(s) if isinstance(e, Announce)] == [
        ("released", "secondary")
    ]


def test_a_listener_that_holds_our_address_is_answered_at_once_but_not_by_unicast() -> None:
    """No unicast to it (an ARP request from the shared address would pull clients back before
    the hand-back), but a beat to every target at once, not at the next interval: a returning
    primary's hold-down starts one round trip after the holder's challenge. The regular beats
    keep their schedule."""
    s = make()
    s.handle_timer(0.0)
    s.datagrams_to_send()
    s.receive_datagram(challenge(s, 1, b"n" * 8, holding=True), LISTENER, 0.1)
    out = sent(s)
    assert [a for _, a in out] == list(TARGETS)
    assert all(m.echoes == (b"n" * 8,) for m, _ in out)
    assert s.get_timer() == pytest.approx(1.0)
    s.receive_datagram(challenge(s, 2, b"m" * 8, holding=True), LISTENER, 0.5)
    assert [m.echoes for m, _ in sent(s)] == [(b"m" * 8,)] * len(TARGETS)
    s.receive_datagram(challenge(s, 2, b"m" * 8, holding=True), LISTENER, 0.5)  # its copy
    assert sent(s) == []


# The state machine --------------------------------------------------------------------------


def test_states_follow_the_one_table() -> None:
    from ipfailover.core.sender import TRANSITIONS, State

    s = make()
    assert s.state is State.AWAITING  # the start-up announcement waits for a listener
    s.receive_datagram(challenge(s, 1, b"n" * 8), LISTENER, 0.1)
    assert s.state is State.BEATING
    s.link_up(1.0)
    assert s.state is State.AWAITING
    s.tickle(1.1)
    assert s.state is State.AWAITING
    s.leave(2.0)
    assert s.state is State.LEFT and s.stopped
    assert {new for (_, _), new in TRANSITIONS.items()} == set(State)


def test_tickle_and_a_second_leave_after_leaving_raise() -> None:
    """Before, tickle() after leave() still emitted an announcement and a second leave()
    passed silently: both are a bug in the shell, and now say so."""
    from ipfailover.core.sender import LocalProtocolError

    s = make()
    s.leave(1.0)
    drain(s)
    s.datagrams_to_send()
    with pytest.raises(LocalProtocolError):
        s.tickle(1.1)
    with pytest.raises(LocalProtocolError):
        s.leave(1.2)
    assert drain(s) == [] and s.datagrams_to_send() == []
    s.link_up(1.3)  # a carrier event racing the stop: nothing to do, not a bug
    assert s.get_timer() is None


def test_after_leaving_datagrams_announce_nothing() -> None:
    s = make()
    s.receive_datagram(challenge(s, 1, b"n" * 8, holding=True), LISTENER, 0.1)
    s.leave(1.0)
    drain(s)
    s.datagrams_to_send()
    s.receive_datagram(released(s, s.seq), LISTENER, 1.1)
    s.receive_datagram(challenge(s, 2, b"m" * 8), LISTENER, 1.2)
    assert drain(s) == [] and s.datagrams_to_send() == []
    assert s.counters["after-leaving"] == 2
