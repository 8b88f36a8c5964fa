"""The detector's fixes from issue 8, on the sans-I/O cores (no namespaces, seconds to run).

* case 1: random loss of every heartbeat-protocol datagram on both networks must not make
  false takeovers where an ideal detector (silence for three rounds on both networks) would not;
* case 3: a primary whose cables flap (0.5 s out, 0.5 s in) must not get its addresses back
  until it is steady.
"""

from __future__ import annotations

import random

import losssim

from ipfailover.core import wire


def lab_cuts(seed: int, count: int) -> list[tuple[float, float]]:
    """``count`` cuts of 0.5 s (plus up to 30 ms) every 1.02 s from a seeded start, as the lab
    makes them (its flap thread takes a few ms to take the cables down and up)."""
    rng = random.Random(seed)
    start = 5.0 + rng.random()
    return [(start + i * 1.02, start + i * 1.02 + 0.5 + rng.uniform(0, 0.03)) for i in range(count)]


def test_no_false_takeover_at_20_percent_loss() -> None:
    # 12,000 rounds at interval 0.1 s. Three lost rounds on both networks (what an ideal
    # detector needs) happen about 0.06 times per 1,000 rounds at 20 %; the old detector made
    # a takeover of two lost rounds about half of the time, and lost challenges added more.
    takeovers = sum(len(losssim.run(loss=0.2, rounds=4000, seed=s).acquires) for s in range(3))
    assert takeovers == 0


def test_at_most_one_false_takeover_per_1000_rounds_at_30_percent_loss() -> None:
    rounds = 4000
    takeovers = sum(len(losssim.run(loss=0.3, rounds=rounds, seed=s).acquires) for s in range(3))
    assert takeovers <= 3 * rounds / 1000


def test_each_round_challenges_every_address_redundantly() -> None:
    """A lost challenge makes the primary echo the previous round's nonce, whose evidence is up
    to an interval older; each round's challenge therefore goes out CHALLENGE_COPIES times."""
    from ipfailover.core.monitor import CHALLENGE_COPIES, Monitor, MonitorConfig

    cfg = MonitorConfig(
        node="s", key=losssim.KEY, period=1.0, deadtime=3.0, failback_delay=3.0, networks=("pub",)
    )
    m = Monitor(cfg, rng=lambda n: b"\x01" * n, now=0.0)
    hb = wire.Message(
        type=wire.MsgType.HEARTBEAT, sender="p", boot_id=b"p" * 8, seq=1, interval=1.0, echoes=()
    )
    m.receive_datagram(wire.encode(hb, losssim.KEY), ("203.0.113.10", 40000), "pub", 0.1)
    (challenge, _), *_ = m.datagrams_to_send()  # the immediate challenge to a stale heartbeat
    verified = wire.Message(
        type=wire.MsgType.HEARTBEAT,
        sender="p",
        boot_id=b"p" * 8,
        seq=2,
        interval=1.0,
        echoes=(wire.decode(challenge, losssim.KEY).nonce,),
    )
    m.receive_datagram(wire.encode(verified, losssim.KEY), ("203.0.113.10", 40000), "pub", 0.2)
    assert m.peer_boot == b"p" * 8  # verified: its round challenges are the ones copied
    m.handle_timer(1.0)
    sent = [wire.decode(d, losssim.KEY) for d, _ in m.datagrams_to_send()]
    assert CHALLENGE_COPIES >= 2
    assert len(sent) == CHALLENGE_COPIES
    assert len({(msg.seq, msg.nonce) for msg in sent}) == 1  # copies: heartbeatd counts one


def _flapping(
    start: float, end: float, out: float = 0.5, back: float = 0.5
) -> list[tuple[float, float]]:
    return [(start + i * (out + back), start + i * (out + back) + out)
            for i in range(int((end - start) / (out + back)))]  # fmt: skip


def test_flapping_primary_keeps_the_addresses_until_it_settles() -> None:
    """Issue 8 case 3 at interval 0.2 s: the cables flap for 20 s. The secondary may take over
    once and must hand back once, after the flapping ends and a whole steady hold-down."""
    interval, failback = 0.2, 3.0
    for seed in range(6):
        out = losssim.run(
            interval=interval,
            failback=failback,
            rounds=int(40 / interval),
            seed=seed,
            primary_cuts=_flapping(5.0, 25.0),
        )
        assert len(out.acquires) == 1, (seed, out)
        assert len(out.releases) == 1, (seed, out)
        assert out.releases[0] >= 24.5  # when the last cut ends: never during the flapping


def test_a_primary_back_for_good_is_handed_back_after_the_holddown() -> None:
    """The steadiness rule must not delay an ordinary failback: cables out 3 s, then back."""
    out = losssim.run(interval=0.2, failback=3.0, rounds=100, seed=1, primary_cuts=[(5.0, 8.0)])
    assert len(out.acquires) == 1 and len(out.releases) == 1
    assert 8.0 + 3.0 <= out.releases[0] <= 8.0 + 3.0 + 1.0


def test_the_heartbeat_due_at_the_deadline_may_arrive_a_little_late() -> None:
    """Two rounds lost; the third heartbeat, due exactly when the dead time runs out, arrives
    5 ms late: still no takeover. The old detector took over at the deadline."""
    from ipfailover.core.monitor import Monitor, MonitorConfig, Probe, State

    cfg = MonitorConfig(
        node="s", key=losssim.KEY, period=1.0, deadtime=3.0, failback_delay=3.0, networks=("pub",)
    )
    m = Monitor(cfg, rng=random.Random(1).randbytes, now=0.0)
    src = ("203.0.113.10", 40000)
    seq = iter(range(1, 100))

    echoed: list[bytes] = []  # the latest nonce that reached the primary

    def beat(at: float) -> None:
        echoed.extend(wire.decode(d, losssim.KEY).nonce for d, _ in m.datagrams_to_send())
        hb = wire.Message(
            type=wire.MsgType.HEARTBEAT,
            sender="p",
            boot_id=b"p" * 8,
            seq=next(seq),
            interval=1.0,
            echoes=tuple(echoed[-1:]),
        )
        m.receive_datagram(wire.encode(hb, losssim.KEY), src, "pub", at)

    beat(0.1)  # stale: answered with a challenge at once
    beat(0.2)  # verified: evidence 0.2
    for t in (1.0, 2.0, 3.0):  # rounds 1 and 2 lost (the challenges still go out)
        m.handle_timer(t)
    m.handle_timer(3.2)
    assert m.state is State.STANDBY
    beat(3.205)  # the third heartbeat, 5 ms late
    m.handle_timer(3.3)
    assert m.state is State.STANDBY
    m.handle_timer(6.4)  # then silence: taken over by dead time + allowance after 3.205
    assert m.state is State.PROBING
    (probe,) = [e for e in iter(m.next_event, None) if isinstance(e, Probe)]
    m.probe_done(6.42, probe.id, {})
    assert m.state is State.ACQUIRING


def test_a_flapping_primary_is_taken_over_at_its_first_cut() -> None:
    """Issue 8 case 3: every 0.5 s cut costs the clients half a second of the primary's address
    until the secondary takes over. The heartbeat right after a cut echoes the last nonce the
    primary got before it; crediting it with life up to an interval later (life while its cables
    were out) kept the secondary waiting, for up to 14 cuts with some phases. A primary silent
    from before the cut until a fresh round trip after it is taken over during the first cut or
    right after it (the dead time is 0.6 s, so a 0.5 s cut alone cannot decide it).

    This test tells the silence alone (heartbeatd does not report the cut): it holds when the
    carrier comes back in one piece. The next test has the cables come back as in the lab."""
    interval = 0.2
    for seed in range(12):
        rng = random.Random(seed)
        start = 5.0 + rng.random()
        cuts = [(start + i, start + i + 0.5 + rng.uniform(0, 0.03)) for i in range(12)]
        out = losssim.run(
            interval=interval, failback=3.0, rounds=int(25 / interval), seed=seed,
            primary_cuts=cuts, cut_signal=False,
        )  # fmt: skip
        assert out.acquires, seed
        assert out.acquires[0] < cuts[1][0], (seed, out.acquires[0] - start)


def test_a_primary_that_tells_its_cut_is_taken_over_as_its_cable_returns() -> None:
    """In the lab the two cables come back a few milliseconds apart and the second one's
    heartbeat already carries a fresh nonce: the silence is within milliseconds of the dead time,
    and the silence alone took over only at the second to ninth cut for 5 seeds of 12 here (3 of
    6 full lab runs, 106-156 lost probes against keepalived's 64-71). A primary cut off on
    every network says so when its carrier returns (the cut-off flag), and the secondary takes
    over within a round trip of the flagged heartbeat that echoes a fresh challenge."""
    interval = 0.2
    for seed in range(12):
        cuts = lab_cuts(seed, 12)
        out = losssim.run(
            interval=interval, failback=3.0, rounds=int(25 / interval), seed=seed,
            primary_cuts=cuts, relink=0.012,
        )  # fmt: skip
        assert len(out.acquires) == 1, (seed, out)
        assert out.acquires[0] < cuts[0][1] + 2 * interval, (seed, out.acquires[0] - cuts[0][1])


def test_an_echo_two_rounds_old_proves_life_only_at_its_issue() -> None:
    """The credit up to issue + interval covers one round in flight; once two newer rounds went
    out unanswered, a heartbeat echoing the old nonce proves life only when it was issued."""
    from ipfailover.core.monitor import Heard, Monitor, MonitorConfig

    cfg = MonitorConfig(
        node="s", key=losssim.KEY, period=1.0, deadtime=3.0, failback_delay=3.0, networks=("pub",)
    )
    m = Monitor(cfg, rng=random.Random(1).randbytes, now=0.0)
    m.handle_timer(0.0)  # round 0: nonce issued at 0.0, sent to nobody yet
    src = ("203.0.113.10", 40000)
    seq = iter(range(1, 100))
    echoed: list[bytes] = []

    def beat(at: float) -> float:
        hb = wire.Message(
            type=wire.MsgType.HEARTBEAT, sender="p", boot_id=b"p" * 8, seq=next(seq),
            interval=1.0, echoes=tuple(echoed[-1:]),
        )  # fmt: skip
        m.receive_datagram(wire.encode(hb, losssim.KEY), src, "pub", at)
        (heard,) = [e for e in iter(m.next_event, None) if isinstance(e, Heard)] or [None]
        return -1.0 if heard is None else heard.evidence

    assert beat(0.1) == -1.0  # stale: answered with a challenge carrying round 0's nonce
    echoed.extend(wire.decode(d, losssim.KEY).nonce for d, _ in m.datagrams_to_send())
    assert beat(0.2) == 0.2
    m.handle_timer(1.0)  # round 1 lost
    m.datagrams_to_send()
    assert beat(1.5) == 1.0  # one round in flight: credited up to issue + interval
    m.handle_timer(2.0)  # round 2 lost too
    m.datagrams_to_send()
    assert beat(2.5) == 0.0  # two rounds missed: alive when round 0 was issued, no later


def test_a_flapping_primary_is_not_handed_back_while_it_flaps() -> None:
    """Issue 8 case 3 as the lab makes it: the two cables come back 12 ms apart, each carrier
    making heartbeatd beat at once. The first of those heartbeats echoes a nonce from before
    the cut; credited with life up to an interval later, it counted as one more round heard in
    the hold-down, and a flapping primary sometimes passed for steady and got its addresses
    back in the middle of the flapping (4 owner changes instead of 2; seeds 3 and 9 here)."""
    for seed in range(12):
        cuts = lab_cuts(seed, 40)
        out = losssim.run(
            interval=0.2, failback=3.0, rounds=int(60 / 0.2), seed=seed, primary_cuts=cuts,
            relink=0.012,
        )  # fmt: skip
        assert len(out.acquires) == 1, (seed, out)
        assert all(t > cuts[-1][1] for t in out.releases), (seed, out)
