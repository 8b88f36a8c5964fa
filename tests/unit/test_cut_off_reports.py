"""The flagged heartbeats of one cut are one report (docs/protocol.md, "cut off"): failoverd acts
on the first, counts the others within CUT_FLAG_BEATS of the primary's intervals as repeats, and
acts again on a flagged heartbeat that many intervals later (a new cut). Counters `cut-off`,
`cut-off-repeats` and `cut-off-not-taken` count each."""

from __future__ import annotations

import random

import pytest
from sim import KEY, PRIMARY

from ipfailover.core import wire
from ipfailover.core.monitor import (
    AcquireOutcome,
    Monitor,
    MonitorConfig,
    State,
    StateChanged,
    Trigger,
)

INTERVAL = 0.5  # the primary's: CUT_FLAG_BEATS of them are 2.0 s


def flagged_monitor(take_answering: bool) -> tuple[Monitor, list[float]]:
    """A standby monitor (period 1 s, dead time 3 s) whose primary beats every 0.5 s; it hears
    a stale heartbeat at 0.1, challenges it, and then flagged heartbeats echoing that challenge
    at the times returned (within its dead time). Nothing else happens in between."""
    cfg = MonitorConfig(
        node="secondary", key=KEY, period=1.0, deadtime=3.0, failback_delay=3.0,
        networks=("pub",), take_answering=take_answering,
    )  # fmt: skip
    m = Monitor(cfg, rng=random.Random(5).randbytes, now=0.0)

    def send(seq: int, at: float, echoes: tuple[bytes, ...] = (), cut_off: bool = True) -> None:
        msg = wire.Message(
            type=wire.MsgType.HEARTBEAT, sender="primary", boot_id=b"p" * 8, seq=seq,
            interval=INTERVAL, echoes=echoes, cut_off=cut_off,
        )  # fmt: skip
        m.receive_datagram(wire.encode(msg, KEY), PRIMARY["pub"], "pub", at)

    send(1, 0.1, cut_off=False)  # stale: challenged at once
    (data, _), *_ = m.datagrams_to_send()
    nonce = wire.decode(data, KEY).nonce
    # the first report; two repeats (1.0 and 1.75 s after it); 2.0 s after it, a new report;
    # then a repeat of that one
    times = [0.25, 1.25, 2.0, 2.25, 3.25]
    for seq, at in enumerate(times, start=2):
        send(seq, at, (nonce,))
        if at == 0.25 and take_answering:
            assert m.state is State.ACQUIRING  # taken over at once, no probe
            m.acquire_done(0.3, AcquireOutcome.DONE)
    return m, times


def test_the_flagged_heartbeats_of_one_cut_are_one_report() -> None:
    m, _ = flagged_monitor(take_answering=True)
    assert m.counters["cut-off"] == 2
    assert m.counters["cut-off-repeats"] == 3
    cut = [
        (e.old, e.new, e.at)
        for e in iter(m.next_event, None)
        if isinstance(e, StateChanged) and e.trigger is Trigger.PEER_CUT_OFF
    ]
    # the first took over; the second, CUT_FLAG_BEATS intervals later, started the hold-down
    # (begun by the heartbeat at 1.25) over; the repeats changed nothing
    assert cut == [(State.STANDBY, State.ACQUIRING, 0.25), (State.HOLDDOWN, State.HOLDDOWN, 2.25)]
    assert m.holddown_until == pytest.approx(2.25 + 3.0)


def test_with_take_answering_no_every_report_is_counted_and_nothing_taken() -> None:
    m, _ = flagged_monitor(take_answering=False)
    assert m.state is State.STANDBY
    assert m.counters["cut-off"] == m.counters["cut-off-not-taken"] == 2
    assert m.counters["cut-off-repeats"] == 3
