"""The monitor's datagrams and what it reports about the ones it gets, field by field: the
challenges' sequence numbers and holding flag, the RELEASED echo, datagrams of the wrong type or
with our own name, name collisions, the peer-interval warning, and a primary's restart.

Like test_monitor_outputs.py, these pin exact values the scenario tests let vary, so the mutation
run (docs/development.md) can tell a changed field from the original. Public API only.
"""

from __future__ import annotations

import random

import pytest
from sim import KEY, Sim

from ipfailover.core import auth, wire
from ipfailover.core.monitor import (
    CHALLENGE_COPIES,
    Heard,
    Monitor,
    MonitorConfig,
    PeerWarning,
    State,
)

A0 = ("203.0.113.100", 40000)
A1 = ("203.0.113.101", 40000)


def monitor(deadtime: float = 3.0, holding: bool = False, peer_name: str | None = None) -> Monitor:
    cfg = MonitorConfig(
        node="s",
        key=KEY,
        period=1.0,
        deadtime=deadtime,
        failback_delay=3.0,
        networks=("pub",),
        peer_name=peer_name,
    )
    return Monitor(cfg, rng=random.Random(0).randbytes, now=0.0, holding=holding)


def send(
    m: Monitor,
    boot: bytes,
    seq: int,
    at: float,
    echoes: tuple[bytes, ...] = (),
    sender: str = "primary",
    kind: wire.MsgType = wire.MsgType.HEARTBEAT,
    interval: float = 1.0,
    source: wire.Addr = A0,
) -> bytes:
    extra: dict[str, object] = {"echoes": echoes}
    if kind in (wire.MsgType.CHALLENGE, wire.MsgType.RELEASED):
        extra = {"nonce": b"n" * 8, "echo_boot": b"e" * 8, "echo_seq": 1}
    msg = wire.Message(
        type=kind,
        sender=sender,
        boot_id=boot,
        seq=seq,
        interval=interval,
        **extra,  # type: ignore[arg-type]
    )
    data = wire.encode(msg, KEY)
    m.receive_datagram(data, source, "pub", at)
    return data


def out(m: Monitor) -> list[wire.Message]:
    return [wire.decode(d, KEY) for d, _ in m.datagrams_to_send()]


def events(m: Monitor) -> list[object]:
    got = []
    while (ev := m.next_event()) is not None:
        got.append(ev)
    return got


def verify(m: Monitor, boot: bytes, at: float, seq: int = 1, **kw: object) -> bytes:
    """A stale beat (answered with a challenge), then one echoing it; returns that nonce."""
    m.handle_timer(at)
    out(m)
    send(m, boot, seq, at, **kw)  # type: ignore[arg-type]
    (challenge,) = out(m)
    send(m, boot, seq + 1, at + 0.01, (challenge.nonce,), **kw)  # type: ignore[arg-type]
    return challenge.nonce


def test_challenges_count_up_by_one_and_say_whether_we_hold() -> None:
    m = monitor()
    verify(m, b"p" * 8, 0.1)
    seqs = []
    for t in (1.1, 2.1, 3.1):  # the rounds: a period after the one at 0.1
        m.handle_timer(t)
        sent = out(m)
        seqs += [msg.seq for msg in sent]
        assert all(msg.holding is False for msg in sent)
    firsts = seqs[::CHALLENGE_COPIES]
    assert firsts == list(range(firsts[0], firsts[0] + len(firsts)))
    held = monitor(holding=True)
    verify(held, b"p" * 8, 0.1)
    held.handle_timer(1.1)
    assert [msg.holding for msg in out(held)] == [True] * CHALLENGE_COPIES


def test_released_echoes_the_primarys_boot_and_highest_sequence() -> None:
    m = monitor()
    m.handle_timer(0.0)
    out(m)
    p = b"p" * 8
    send(m, p, 1, 0.1)
    (challenge,) = out(m)
    send(m, p, 2, 0.2, (challenge.nonce,))  # verified, then it dies
    for t in range(1, 4):
        m.handle_timer(float(t))
    m.handle_timer(3.31)
    (probe,) = [e for e in events(m) if type(e).__name__ == "Probe"]
    m.probe_done(3.32, probe.id, {})  # type: ignore[attr-defined]
    m.acquire_done(3.4, ok=True)
    m.handle_timer(4.0)
    nonce = out(m)[-1].nonce
    for seq, t in enumerate((4.1, 4.6, 5.1, 5.6, 6.1, 6.6, 7.1, 7.6), start=7):
        send(m, p, seq, t, (nonce,))
        m.handle_timer(t)
        nonces = [msg.nonce for msg in out(m)]
        nonce = nonces[-1] if nonces else nonce
    assert m.state is State.RELEASING
    m.release_done(7.7, ok=True)
    released = [msg for msg in out(m) if msg.type is wire.MsgType.RELEASED]
    assert [(r.echo_boot, r.echo_seq) for r in released] == [(p, 14)]


def test_datagrams_a_listener_sends_are_refused_by_type() -> None:
    m = monitor()
    for i, kind in enumerate((wire.MsgType.CHALLENGE, wire.MsgType.RELEASED)):
        send(m, b"p" * 8, i + 1, 0.1, kind=kind)
    dropped = [e for e in events(m) if isinstance(e, wire.Dropped)]
    assert [(d.reason, d.detail) for d in dropped] == [
        (wire.Reason.UNEXPECTED, "CHALLENGE to failoverd"),
        (wire.Reason.UNEXPECTED, "RELEASED to failoverd"),
    ]


def test_a_replay_is_reported_with_its_sequence_number() -> None:
    m = monitor()
    m.handle_timer(0.0)
    send(m, b"p" * 8, 4, 0.1)  # stale: challenged
    (challenge,) = out(m)
    send(m, b"p" * 8, 5, 0.2, (challenge.nonce,))
    send(m, b"p" * 8, 5, 0.3, (challenge.nonce,))
    (replay,) = [
        e for e in events(m) if isinstance(e, wire.Dropped) and e.reason is wire.Reason.REPLAY
    ]
    assert replay.detail == "seq 5 seen or too old"


def test_our_name_from_unknown_boots_is_held_eight_at_most_then_refused() -> None:
    m = monitor()
    for seq in range(1, 11):  # one unknown boot with our name: held until the shell answers
        send(m, b"o" * 8, seq, 0.1, sender="s")
    assert m.counters["own-name-held"] == 10
    assert m.footprint()["held"] == 8
    for i in range(8):  # more unknown boots than the shell is asked about at once
        send(m, bytes([i]) * 8, 1, 0.2, sender="s")
    dropped = [e for e in events(m) if isinstance(e, wire.Dropped)]
    assert [(d.reason, d.detail) for d in dropped] == [
        (wire.Reason.UNEXPECTED, "our name, an unknown boot id")
    ]


def test_a_clone_with_our_name_is_reported_once_and_counted_each_time() -> None:
    m = monitor()
    m.handle_timer(0.0)
    clone = b"c" * 8
    send(m, clone, 1, 0.1, sender="s")
    m.set_local_boots(frozenset(), 0.1)  # not one of ours
    (challenge,) = out(m)
    send(m, clone, 2, 0.2, (challenge.nonce,), sender="s")
    send(m, clone, 3, 0.3, (challenge.nonce,), sender="s")
    collisions = [e for e in events(m) if isinstance(e, auth.NameCollision)]
    assert collisions == [auth.NameCollision(name="s", boot=clone, addr=A0, network="pub", at=0.2)]
    assert m.counters["name-collision"] == 2


def test_a_peer_interval_of_half_the_dead_time_is_warned_about_once_per_boot() -> None:
    m = monitor(deadtime=3.0)
    nonce = verify(m, b"p" * 8, 0.1, interval=1.5)  # 2 x 1.5 = the dead time: warned
    send(m, b"p" * 8, 3, 0.2, (nonce,), interval=1.5)  # the same boot again: not again
    warnings = [e for e in events(m) if isinstance(e, PeerWarning)]
    assert warnings == [
        PeerWarning(
            text="peer interval 1.5s is at least half our dead time 3s: expect false takeovers; "
            "raise FAILOVER_DEADTIME",
            at=0.11,
        )
    ]
    quiet = monitor(deadtime=3.0)
    verify(quiet, b"p" * 8, 0.1, interval=1.0)  # 2 x 1.0 < 3: fine
    assert [e for e in events(quiet) if isinstance(e, PeerWarning)] == []


def test_a_restarted_primary_is_challenged_and_its_old_boot_forgotten() -> None:
    m = monitor()
    verify(m, b"a" * 8, 0.1)
    verify(m, b"b" * 8, 1.0)  # heartbeatd restarted: a new boot id
    assert m.footprint() == {
        "sources": 1,
        "windows": 1,
        "boots": 1,
        "retired": 1,
        "nonces": 1,
        "held": 0,
        "events": len(events(m)),
    }
    m.handle_timer(2.0)
    assert [msg.echo_boot for msg in out(m)] == [b"b" * 8] * CHALLENGE_COPIES


def test_a_restarted_primarys_earlier_fresh_datagrams_of_its_new_boot_are_replays() -> None:
    m = monitor()
    m.handle_timer(0.0)
    out(m)
    first = send(m, b"b" * 8, 1, 0.1)  # stale: challenged
    (challenge,) = out(m)
    fresh = send(m, b"b" * 8, 2, 0.2, (challenge.nonce,))
    assert m.peer_boot == b"b" * 8
    m.receive_datagram(first, A0, "pub", 0.3)  # the stale one again: stale, never recorded
    assert m.counters["rejected.stale"] == 2 and m.counters["rejected.replay"] == 0
    m.receive_datagram(fresh, A0, "pub", 0.4)  # the fresh one again: a replay
    assert m.counters["rejected.replay"] == 1 and m.peer_boot == b"b" * 8


def test_an_unverified_boot_heard_again_is_not_challenged_out_of_turn() -> None:
    m = monitor()
    m.handle_timer(0.0)
    send(m, b"u" * 8, 1, 0.1)
    assert len(out(m)) == 1
    send(m, b"u" * 8, 2, 1.5)  # a period later, before its turn in the rounds
    assert out(m) == []
    assert m.footprint()["boots"] == 1


def test_a_boot_heard_from_two_addresses_is_challenged_at_each_in_turn() -> None:
    m = monitor()
    m.handle_timer(0.0)
    send(m, b"u" * 8, 1, 0.1, source=A0)  # challenged at once, at A0
    send(m, b"u" * 8, 2, 0.2, source=A1)
    to = [(0.1, dest) for _, dest in m.datagrams_to_send()]
    for t in range(1, 12):
        m.handle_timer(float(t))
        to += [(float(t), dest) for _, dest in m.datagrams_to_send()]
    assert to == [(0.1, A0), (2.0, A1), (10.0, A0)]


def test_each_verified_heartbeat_is_reported_with_what_it_proved() -> None:
    m = monitor()
    nonce = verify(m, b"p" * 8, 0.1)
    send(m, b"p" * 8, 3, 0.5, (nonce,), interval=0.8)
    heard = [e for e in events(m) if isinstance(e, Heard)]
    assert heard == [
        Heard(network="pub", sender="primary", seq=2, evidence=0.11, alive_until=3.11, at=0.11),
        Heard(network="pub", sender="primary", seq=3, evidence=0.5, alive_until=3.5, at=0.5),
    ]
    assert m.counters["heartbeats.pub"] == 2 and m.peer_interval == 0.8
    assert m.counters["name-collision"] == 0  # the primary's own name is no collision


def test_the_drops_say_why() -> None:
    m = monitor(peer_name="primary")
    send(m, b"o" * 8, 1, 0.1, sender="other")
    send(m, b"p" * 8, 1, 0.2)  # the primary, stale: challenged
    dropped = [(e.reason, e.detail) for e in events(m) if isinstance(e, wire.Dropped)]
    assert dropped == [
        (wire.Reason.UNKNOWN_PEER, "sender 'other'"),
        (wire.Reason.STALE, "echoes no fresh challenge of ours"),
    ]
    (challenge,) = out(m)
    send(m, b"p" * 8, 2, 0.25, (challenge.nonce,))
    assert m.ever_verified  # FAILOVER_PEER_NAME's sender is verified
    verify(m, b"q" * 8, 1.5)  # it restarted
    send(m, b"p" * 8, 9, 1.6, (challenge.nonce,))
    (earlier,) = [(e.reason, e.detail) for e in events(m) if isinstance(e, wire.Dropped)][-1:]
    assert earlier == (wire.Reason.REPLAY, "from an earlier boot")


def test_the_copies_of_leaving_are_counted_not_acted_on_again() -> None:
    m = monitor()
    nonce = verify(m, b"p" * 8, 0.1)
    for seq in (3, 4, 5):  # heartbeatd sends LEAVING more than once
        send(m, b"p" * 8, seq, 0.5, (nonce,), kind=wire.MsgType.LEAVING)
    assert (m.counters["leaving"], m.counters["after-leaving"]) == (1, 2)
    assert m.state is State.ACQUIRING
    m.acquire_done(0.6, ok=True)
    nonce = verify(m, b"q" * 8, 1.5)  # restarted, it is back: then it leaves again
    send(m, b"q" * 8, 3, 1.6, (nonce,), kind=wire.MsgType.LEAVING)
    assert (m.counters["leaving"], m.counters["after-leaving"]) == (2, 2)


def test_the_primary_is_challenged_on_every_network_it_was_verified_on() -> None:
    m = monitor()
    nonce = verify(m, b"p" * 8, 0.1)
    m.receive_datagram(
        wire.encode(
            wire.Message(
                type=wire.MsgType.HEARTBEAT,
                sender="primary",
                boot_id=b"p" * 8,
                seq=3,
                interval=1.0,
                echoes=(nonce,),
            ),
            KEY,
        ),
        A1,
        "priv",
        0.2,
    )
    m.handle_timer(1.1)
    assert (
        sorted(dest for _, dest in m.datagrams_to_send())
        == [A0] * CHALLENGE_COPIES + [A1] * CHALLENGE_COPIES
    )


def test_the_verified_primary_heard_from_elsewhere_right_after_verification() -> None:
    m = monitor()
    verify(m, b"p" * 8, 0.1)
    send(m, b"p" * 8, 3, 0.2, source=A1)  # its boot from another address: not the pinned one
    for i in range(15):  # the seventeenth source forces an eviction
        send(m, bytes([i]) * 8, 1, 0.3, source=(f"198.51.100.{i}", 1))
    assert m.footprint()["sources"] == 16


def test_loss_counts_against_the_interval_the_primary_announces() -> None:
    sim = Sim(interval=1.0)
    sim.run_until(61)
    assert sim.monitor is not None
    # failoverd passes its own interval as the fallback; the announced 1 s is what counts
    assert sim.monitor.detector.loss("pub", 0.5, sim.now) == pytest.approx(0.0, abs=0.02)
