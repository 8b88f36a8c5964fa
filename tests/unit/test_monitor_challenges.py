"""Whom the monitor challenges, when, and what it remembers: the exact schedule of challenges to
a boot that never answers (the back-off), the limits on out-of-turn challenges, the copies of the
verified primary's round challenge, and the bounds of every table remote input can grow.

The injection and fuzz tests check these properties over long random runs; these pin the exact
numbers in seconds, so the mutation run (docs/development.md) can afford them for every mutant.
"""

from __future__ import annotations

import random

from sim import KEY

from ipfailover.core import wire
from ipfailover.core.monitor import CHALLENGE_COPIES, Monitor, MonitorConfig, State


def monitor(period: float = 1.0) -> Monitor:
    cfg = MonitorConfig(
        node="s",
        key=KEY,
        period=period,
        deadtime=3 * period,
        failback_delay=3 * period,
        networks=("pub",),
    )
    return Monitor(cfg, rng=random.Random(0).randbytes, now=0.0)


def addr(i: int) -> wire.Addr:
    return (f"203.0.113.{100 + i}", 40000)


def beat(
    m: Monitor,
    boot: bytes,
    at: float,
    source: wire.Addr,
    seq: int = 1,
    echoes: tuple[bytes, ...] = (),
    network: str = "pub",
) -> None:
    msg = wire.Message(
        type=wire.MsgType.HEARTBEAT,
        sender="primary",
        boot_id=boot,
        seq=seq,
        interval=m.cfg.period,
        echoes=echoes,
    )
    m.receive_datagram(wire.encode(msg, KEY), source, network, at)


def challenged(m: Monitor) -> list[tuple[bytes, wire.Addr]]:
    """(boot challenged, to where) of each challenge sent since the last call."""
    out = []
    for data, dest in m.datagrams_to_send():
        msg = wire.decode(data, KEY)
        if msg.type is wire.MsgType.CHALLENGE:
            out.append((msg.echo_boot, dest))
    return out


def boot(i: int) -> bytes:
    return i.to_bytes(8, "big")


def test_a_boot_that_never_answers_is_challenged_ever_less_often() -> None:
    """Every period at first, then after 2, 4 and at most 8 periods (BACKOFF_MAX)."""
    p = 2.0
    m = monitor(period=p)
    m.handle_timer(0.0)
    beat(m, b"u" * 8, 0.2, addr(0))  # an unverified boot: challenged at once
    times = [0.2] if challenged(m) else []
    for k in range(1, 31):
        m.handle_timer(k * p)
        times += [k * p for _ in challenged(m)]
    # strikes: whole periods unanswered, less the first two; the wait doubles with each
    assert times == [0.2, 2 * p, 10 * p, 18 * p, 26 * p]


def test_a_boot_that_answers_is_challenged_every_period() -> None:
    m = monitor()
    m.handle_timer(0.0)
    beat(m, b"p" * 8, 0.1, addr(0))
    ((_, _),) = challenged(m)
    m.handle_timer(1.0)
    assert challenged(m) == []  # not due yet: a period after the challenge at 0.1
    m.handle_timer(2.0)
    assert challenged(m) == [(b"p" * 8, addr(0))]
    m.handle_timer(3.0)
    assert challenged(m) == []  # unanswered two periods: the wait doubles


def test_out_of_turn_challenges_are_limited_per_address_and_period() -> None:
    m = monitor()
    m.handle_timer(0.0)
    m.handle_timer(5.0)
    for i in range(6):  # six new boots from one address within a period
        beat(m, boot(i), 5.0 + i / 100, addr(0))
    assert [b for b, _ in challenged(m)] == [boot(i) for i in range(4)]  # PER_SOURCE
    assert m.counters["challenges-withheld"] == 2
    beat(m, boot(6), 5.5, addr(1))  # another address has a budget of its own
    assert challenged(m) == [(boot(6), addr(1))]
    beat(m, boot(7), 6.0, addr(0))  # a whole period later: the first address's budget is back
    assert challenged(m) == [(boot(7), addr(0))]
    m.handle_timer(6.0)
    # the round: the two withheld boots (never challenged) come first, the one heard last first
    assert [b for b, _ in challenged(m)][:2] == [boot(5), boot(4)]


def test_the_verified_primary_that_lost_our_nonce_is_challenged_at_most_once_a_period() -> None:
    m = monitor()
    m.handle_timer(0.0)
    p = b"p" * 8
    beat(m, p, 0.1, addr(0), seq=1)
    (challenge,) = [wire.decode(d, KEY) for d, _ in m.datagrams_to_send()]
    beat(m, p, 0.2, addr(0), seq=2, echoes=(challenge.nonce,))
    assert m.ever_verified and m.peer_boot == p
    m.handle_timer(5.0)  # (the rounds' own challenges are not counted below)
    challenged(m)
    times = []
    for seq, t in enumerate((7.0, 7.5, 8.0), start=3):  # stale beats: our nonce was lost
        beat(m, p, t, addr(0), seq=seq)
        times += [t for _ in challenged(m)]
    # at 7.0 and 8.0 (a period apart), each with the verified primary's copies; not at 7.5
    assert times == [7.0] * CHALLENGE_COPIES + [8.0] * CHALLENGE_COPIES


def test_a_stale_heartbeat_before_the_first_round_is_still_challenged() -> None:
    m = monitor()
    beat(m, b"u" * 8, 0.1, addr(0))  # no timer yet: no nonce was issued
    assert challenged(m) == [(b"u" * 8, addr(0))]


def test_only_the_verified_primarys_round_challenge_is_copied() -> None:
    m = monitor()
    m.handle_timer(0.0)
    p, u = b"p" * 8, b"u" * 8
    beat(m, p, 0.1, addr(0), seq=1)
    (challenge,) = [wire.decode(d, KEY) for d, _ in m.datagrams_to_send()]
    beat(m, p, 0.2, addr(0), seq=2, echoes=(challenge.nonce,))
    beat(m, u, 0.3, addr(1))  # an unverified boot from elsewhere
    challenged(m)
    m.handle_timer(2.0)
    got = challenged(m)
    assert got.count((p, addr(0))) == CHALLENGE_COPIES
    assert got.count((u, addr(1))) == 1


def test_every_table_remote_input_grows_is_bounded_exactly() -> None:
    m = monitor()
    m.handle_timer(0.0)
    for i in range(300):  # 300 boots from 20 addresses, none verified
        beat(m, boot(i), 0.1 + i / 1000, addr(i % 20))
    assert m.footprint() == {
        "sources": 16,  # MAX_SOURCES on the one network
        "windows": 8,  # MAX_BOOTS anti-replay windows
        "boots": 256,  # MAX_BOOT_STATES challenge schedules
        "retired": 0,
        "nonces": 1,
        "held": 0,
        "events": 300,  # each dropped as stale, until the shell drains them
    }


def test_the_verified_primary_survives_a_flood_of_other_boots() -> None:
    m = monitor()
    m.handle_timer(0.0)
    p = b"p" * 8
    beat(m, p, 0.1, addr(0), seq=1)
    (challenge,) = [wire.decode(d, KEY) for d, _ in m.datagrams_to_send()]
    beat(m, p, 0.2, addr(0), seq=2, echoes=(challenge.nonce,))
    for i in range(300):
        beat(m, boot(i), 0.3 + i / 1000, addr(0))  # replays of old boots, from its address
    size = m.footprint()
    assert (size["sources"], size["windows"], size["boots"]) == (16, 9, 256)  # 8 + its own
    m.datagrams_to_send()
    m.handle_timer(1.0)
    to_p = [
        msg for msg in (wire.decode(d, KEY) for d, _ in m.datagrams_to_send()) if msg.echo_boot == p
    ]
    assert len(to_p) == CHALLENGE_COPIES  # still challenged every round, by name and seq
    beat(m, p, 1.1, addr(0), seq=3, echoes=(to_p[0].nonce,))
    assert m.detector.last_evidence() == 1.1 and m.state is State.STANDBY


def test_a_boot_that_left_challenges_unanswered_longest_is_forgotten_first() -> None:
    m = monitor()
    m.handle_timer(0.0)
    k = b"k" * 8
    beat(m, k, 0.1, addr(0))  # challenged at 0.1, never answers
    for t in range(1, 11):
        m.handle_timer(float(t))
    challenged(m)
    for i in range(15):  # fifteen more boots, each from its own address: sixteen sources
        beat(m, boot(i), 10.0, addr(1 + i))
    beat(m, k, 10.45, addr(0), seq=2)  # still sending, never answering: heard last of all
    beat(m, boot(15), 10.5, addr(16))  # the seventeenth: one must go
    challenged(m)
    seen: set[bytes] = set()
    for t in range(11, 30):
        m.handle_timer(float(t))
        seen |= {b for b, _ in challenged(m)}
    assert k not in seen  # the one with most strikes went
    assert {boot(i) for i in range(16)} <= seen


def test_among_equals_the_boot_heard_least_recently_is_forgotten_first() -> None:
    m = monitor()
    m.handle_timer(0.0)
    for i in range(16):
        beat(m, boot(i), 1.0 + i / 100, addr(i))  # all challenged at once, no strikes yet
    beat(m, boot(0), 1.5, addr(0), seq=2)  # the first is heard again
    beat(m, boot(16), 1.6, addr(16))  # one must go: the least recently heard, boot 1
    challenged(m)
    seen: set[bytes] = set()
    for t in range(2, 12):
        m.handle_timer(float(t))
        seen |= {b for b, _ in challenged(m)}
    assert boot(1) not in seen
    assert {boot(0), *(boot(i) for i in range(2, 17))} <= seen


def test_a_boot_never_challenged_is_kept_before_one_already_tried() -> None:
    m = monitor()
    m.handle_timer(0.0)
    for i in range(4):
        beat(m, boot(i), 1.0, addr(0))
    beat(m, boot(4), 1.04, addr(0))  # the fifth from one address is withheld: never tried
    for i in range(4):
        beat(m, boot(i), 1.1, addr(0), seq=2)  # heard again
    for i in range(5, 16):
        beat(m, boot(i), 1.1, addr(i))
    beat(m, boot(16), 1.2, addr(16))  # one must go: a tried one, though boot 4 is the oldest
    challenged(m)
    m.handle_timer(1.5)
    assert (boot(4), addr(0)) in challenged(m)  # the withheld boot is still there


def test_a_source_whose_boot_schedule_was_forgotten_is_not_held_against_it() -> None:
    """A source outlives its boot's schedule (the schedules are a global table, the sources one
    per network): it then counts as a boot without strikes, never tried."""
    m = monitor()
    beat(m, b"s" * 8, 0.1, addr(0), network="priv")  # the only source on priv
    for i in range(256):  # 256 boots on pub push its schedule out (the least recently heard)
        beat(m, boot(i), 0.2 + i / 1000, addr(i % 20))
    assert m.footprint()["boots"] == 256
    news = [boot(1000 + i) for i in range(16)]
    for i, b in enumerate(news):  # sixteen new boots on priv, challenged at once
        beat(m, b, 3.0, addr(100 + i), network="priv")
    # the seventeenth source on priv: the old one (no strikes, never tried) stays; the first
    # of the new ones, tried and heard least recently, goes
    challenged(m)
    m.handle_timer(4.0)
    got = {b for b, _ in challenged(m)}
    assert news[0] not in got and set(news[1:15]) <= got


def test_the_verified_primary_heard_from_another_address_does_not_upset_an_eviction() -> None:
    m = monitor()
    m.handle_timer(0.0)
    p = b"p" * 8
    beat(m, p, 0.1, addr(0), seq=1)
    (challenge,) = [wire.decode(d, KEY) for d, _ in m.datagrams_to_send()]
    beat(m, p, 0.2, addr(0), seq=2, echoes=(challenge.nonce,))
    beat(m, p, 0.3, addr(1), seq=3)  # its boot, from elsewhere (a replay): not the pinned one
    beat(m, p, 1.2, addr(0), seq=4)  # our nonce lost: challenged again at once
    for i in range(15):
        beat(m, boot(i), 1.3, addr(2 + i))  # the seventeenth source forces an eviction
    assert m.footprint()["sources"] == 16 and m.peer_boot == p


def verify(m: Monitor, b: bytes, at: float, source: wire.Addr, seq: int) -> bytes:
    """Boot ``b`` answers a challenge at ``at``, after a round: a stale beat, then one echoing
    the challenge. Returns the challenge's nonce."""
    m.handle_timer(at)
    m.datagrams_to_send()
    beat(m, b, at, source, seq=seq)
    (challenge,) = [wire.decode(d, KEY) for d, _ in m.datagrams_to_send()]
    beat(m, b, at + 0.01, source, seq=seq + 1, echoes=(challenge.nonce,))
    assert m.peer_boot == b
    return challenge.nonce


def test_a_restarted_primarys_earlier_boots_are_refused_and_remembered_up_to_16() -> None:
    m = monitor()
    m.handle_timer(0.0)
    boots = [boot(1000 + i) for i in range(20)]
    for i, b in enumerate(boots):  # the primary restarts twenty times, a second apart
        verify(m, b, 1.0 + i, addr(0), seq=1)
    assert m.footprint()["retired"] == 16  # MAX_RETIRED: the oldest three went
    before = m.counters["rejected.replay"]
    beat(m, boots[-2], 21.5, addr(0), seq=9)  # the boot before this one: history
    assert m.counters["rejected.replay"] == before + 1
    beat(m, boots[0], 21.6, addr(0), seq=9)  # forgotten: judged like any unknown boot
    assert m.counters["rejected.replay"] == before + 1


def test_a_leaving_boot_is_remembered_with_the_retired_ones() -> None:
    m = monitor()
    m.handle_timer(0.0)
    verify(m, boot(1), 0.5, addr(0), seq=1)
    nonce = verify(m, boot(2), 1.0, addr(0), seq=1)
    leaving = wire.Message(
        type=wire.MsgType.LEAVING,
        sender="primary",
        boot_id=boot(2),
        seq=3,
        interval=1.0,
        echoes=(nonce,),
    )
    m.receive_datagram(wire.encode(leaving, KEY), addr(0), "pub", 1.5)
    assert m.footprint()["retired"] == 2  # boot 1 retired, boot 2 left


def test_a_fresh_datagram_seen_before_is_a_replay_and_a_stale_one_is_never_recorded() -> None:
    m = monitor()
    m.handle_timer(0.0)
    verify(m, b"p" * 8, 0.1, addr(0), seq=1)
    beat(m, b"p" * 8, 0.2, addr(0), seq=2)  # the verified boot's seq 2 again
    beat(m, b"u" * 8, 0.3, addr(1), seq=1)
    beat(m, b"u" * 8, 0.4, addr(1), seq=1)  # an unverified boot's, twice: stale, never recorded
    assert m.counters["rejected.replay"] == 1
    # a stale datagram leaves the window alone: numbered far ahead, it locks nobody out
    beat(m, b"p" * 8, 0.5, addr(0), seq=10**6)
    assert m.challenger.window("primary", b"p" * 8).highest == 2


def test_the_oldest_anti_replay_window_of_an_unverified_boot_goes_first() -> None:
    m = monitor()
    m.handle_timer(0.0)
    for i in range(9):  # nine boots: eight windows are kept, the oldest went first
        beat(m, boot(i), 1.0 + i / 10, addr(i))
    assert [b for _, b in m.challenger.windows] == [boot(i) for i in range(1, 9)]
    beat(m, boot(0), 2.1, addr(0))  # heard again: its window comes back as the newest
    assert [b for _, b in m.challenger.windows] == [boot(i) for i in range(2, 9)] + [boot(0)]
    assert m.counters["rejected.replay"] == 0  # stale datagrams are never recorded


def test_a_heartbeat_proves_life_only_while_its_evidence_is_within_the_dead_time() -> None:
    for arrival, counted in ((3.99, True), (4.0, False)):
        m = monitor()
        beat(m, b"p" * 8, 0.0, addr(0), seq=1)  # no round yet: the challenge's nonce is new
        (challenge,) = [wire.decode(d, KEY) for d, _ in m.datagrams_to_send()]
        # the shell's timer is late: no round since, so that nonce is still ours; it proves
        # life at 0.0 + a period at best, which the dead time outlives until 4.0 exactly
        beat(m, b"p" * 8, arrival, addr(0), seq=2, echoes=(challenge.nonce,))
        assert m.ever_verified is counted, arrival
        assert m.counters["rejected.stale"] == (1 if counted else 2), arrival  # 1: the first


def test_old_nonces_are_forgotten_after_the_dead_time_and_a_period() -> None:
    m = monitor()
    for t in range(11):
        m.handle_timer(float(t))
    assert m.footprint()["nonces"] == 4  # issued at 7, 8, 9, 10: older ones prove nothing


def test_a_round_without_budget_withholds_and_keeps_its_schedule() -> None:
    m = monitor()
    m.handle_timer(0.0)
    for i in range(140):  # 140 new boots at once, each from its own address
        beat(m, boot(i), 0.99, (f"198.51.100.{i % 250}", 1000 + i))
    assert m.counters["challenges-withheld"] == 12  # the bucket holds 128
    m.datagrams_to_send()
    m.handle_timer(1.0)  # the round finds the bucket (nearly) empty
    assert m.counters["challenges-withheld"] == 13
    assert m.get_timer() == 2.0  # the next round is still due a period on


def test_the_verified_primary_silent_for_long_is_not_evicted_for_strikes() -> None:
    """The detector judges the verified primary: its unanswered challenges are no strikes."""
    m = monitor()
    m.handle_timer(0.0)
    p = b"p" * 8
    beat(m, p, 0.1, addr(0), seq=1)
    (challenge,) = [wire.decode(d, KEY) for d, _ in m.datagrams_to_send()]
    beat(m, p, 0.2, addr(0), seq=2, echoes=(challenge.nonce,))
    news = [boot(i) for i in range(15)]
    for t in range(1, 10):
        m.handle_timer(float(t))  # it dies: the rounds go unanswered
    for i, b in enumerate(news[:14]):
        beat(m, b, 9.0, addr(2 + i))  # fourteen new boots, challenged at once
    beat(m, p, 9.5, addr(1), seq=3)  # its boot from another address, heard last
    beat(m, news[14], 9.6, addr(16))  # the seventeenth source: one must go
    m.datagrams_to_send()
    m.handle_timer(10.0)
    got = {b for b, _ in challenged(m)}
    # the new boot heard least recently went, not the primary's other source
    assert news[0] not in got and set(news[1:14]) <= got


def test_the_round_picks_each_boots_source_challenged_least_recently() -> None:
    m = monitor()
    m.handle_timer(0.0)
    u = b"u" * 8
    a, b, c = addr(0), addr(1), addr(2)
    beat(m, u, 0.1, a, seq=1)  # challenged at once, at a
    beat(m, u, 0.2, b, seq=2)
    beat(m, u, 0.3, c, seq=3)
    to = [(0.1, dest) for _, dest in m.datagrams_to_send()]
    for t in range(1, 20):
        m.handle_timer(float(t))
        to += [(float(t), dest) for _, dest in m.datagrams_to_send()]
    # never challenged first (the one heard last first), then the longest ago
    assert to == [(0.1, a), (2.0, c), (10.0, b), (18.0, a)]


def test_a_verified_primary_with_two_addresses_does_not_stop_the_round() -> None:
    m = monitor()
    m.handle_timer(0.0)
    p = b"p" * 8
    beat(m, p, 0.1, addr(0), seq=1)
    (challenge,) = [wire.decode(d, KEY) for d, _ in m.datagrams_to_send()]
    beat(m, p, 0.2, addr(0), seq=2, echoes=(challenge.nonce,))
    beat(m, p, 0.3, addr(1), seq=3)  # its boot from another address
    beat(m, b"u" * 8, 0.4, addr(2))  # then another boot
    challenged(m)
    m.handle_timer(2.0)
    assert (b"u" * 8, addr(2)) in challenged(m)


def test_boots_heard_at_the_same_instant_are_all_challenged_in_the_round() -> None:
    m = monitor()
    m.handle_timer(0.0)
    m.handle_timer(5.0)
    for i in range(5):  # five new boots in one burst on each network: one is withheld on each
        beat(m, boot(i), 5.0, addr(0))
        beat(m, boot(10 + i), 5.0, addr(1), network="priv")
    challenged(m)
    m.handle_timer(6.0)  # the two withheld ones are equal in every way but their network
    assert {boot(4), boot(14)} <= {b for b, _ in challenged(m)}


def test_the_challenge_budget_refills_at_its_rate_per_period() -> None:
    m = monitor(period=0.5)  # CHALLENGE_RATE per period: 128 a second
    m.handle_timer(0.0)
    for i in range(128):
        beat(m, boot(i), 0.1, (f"198.51.100.{i % 250}", 2000 + i))
    assert m.counters["challenges-withheld"] == 0
    for i in range(40):  # half a second later the budget holds 64 again
        beat(m, boot(500 + i), 0.6, (f"192.0.2.{i}", 3000 + i))
    assert m.counters["challenges-withheld"] == 0


def test_a_heartbeat_with_our_name_and_our_own_boot_id_is_ours() -> None:
    m = monitor()
    msg = wire.Message(
        type=wire.MsgType.HEARTBEAT, sender="s", boot_id=m.boot_id, seq=1, interval=1.0
    )
    m.receive_datagram(wire.encode(msg, KEY), addr(0), "pub", 0.1)
    assert m.counters["own"] == 1 and not m.wants_local_boots


def test_challenges_count_from_one() -> None:
    m = monitor()
    beat(m, b"u" * 8, 0.1, addr(0))
    ((data, _),) = m.datagrams_to_send()
    assert wire.decode(data, KEY).seq == 1
