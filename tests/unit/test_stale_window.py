"""A datagram that fails the freshness check changes nothing a fresh heartbeat relies on: not the
anti-replay window either. Found by the fuzz harness (issue 8, case 11): a heartbeat signed with
the key, echoing no fresh nonce and numbered far ahead was dropped as stale, but its number was
already recorded, so the primary's real heartbeats were refused as too old and the secondary
took over a live primary."""

from __future__ import annotations

import random

from sim import KEY, PRIMARY

from ipfailover.core import auth, wire
from ipfailover.core.monitor import Monitor, MonitorConfig, State


def beat(seq: int, echoes: tuple[bytes, ...] = ()) -> bytes:
    msg = wire.Message(
        type=wire.MsgType.HEARTBEAT, sender="primary", boot_id=b"p" * 8, seq=seq, interval=1.0,
        echoes=echoes,
    )  # fmt: skip
    return wire.encode(msg, KEY)


def test_a_stale_heartbeat_far_ahead_does_not_lock_out_the_primary() -> None:
    cfg = MonitorConfig(
        node="secondary", key=KEY, period=1.0, deadtime=3.0, failback_delay=3.0, networks=("pub",)
    )
    m = Monitor(cfg, rng=random.Random(5).randbytes, now=0.0)
    m.receive_datagram(beat(1), PRIMARY["pub"], "pub", 0.1)  # stale: answered with a challenge
    (data, _), *_ = m.datagrams_to_send()
    nonce = wire.decode(data, KEY).nonce
    m.receive_datagram(beat(10**6), PRIMARY["pub"], "pub", 0.2)  # stale, far ahead
    assert m.counters["rejected.stale"] == 2
    for i, at in enumerate((0.3, 1.3, 2.3, 3.3, 4.3, 5.3)):
        m.handle_timer(at - 0.05)
        fresh = [wire.decode(d, KEY).nonce for d, _ in m.datagrams_to_send()] or [nonce]
        m.receive_datagram(beat(2 + i, (fresh[-1],)), PRIMARY["pub"], "pub", at)
        nonce = fresh[-1]
    assert m.counters["rejected.replay"] == 0
    assert m.counters["heartbeats.pub"] == 6
    assert m.state is State.STANDBY


def test_the_window_can_be_asked_without_recording() -> None:
    w = auth.ReplayWindow(size=8)
    assert not w.seen(5)
    assert w.accept(5) and w.seen(5) and not w.seen(4) and not w.seen(6)
    assert w.accept(20) and w.seen(12) and not w.seen(13) and w.seen(20)
