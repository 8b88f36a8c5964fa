"""Issue 8, case 11: 10^5 random and mutated datagrams into both cores (bench/fuzz.py: 10^6).

:mod:`ipfailover.lab.fuzz` drives a real sender and monitor as a pair, with the primary dying and
coming back, cut off on both networks and back (its heartbeats then carry the cut-off flag), and
handing back make-before-break (its shell confirms the announcement, late, or not at all), and
feeds each core random bytes, bit flips, truncations, extensions and field-wise changes re-signed
with the key. It checks around every input that nothing escapes but the documented drop, that
nothing unauthentic changes anything, that nothing authentic but not fresh changes what a fresh
heartbeat relies on, and that the tables stay within their caps.
"""

from __future__ import annotations

from typing import Any

import pytest

from ipfailover.core import monitor, sender, wire
from ipfailover.core.monitor_handback import Handback
from ipfailover.core.monitor_table import State
from ipfailover.core.sender_types import Announce, AnnounceReason, _Handback
from ipfailover.lab import fuzz as labfuzz

MONITOR_STATES = {"standby", "probing", "acquiring", "active", "holddown", "handback", "releasing"}


def test_a_hundred_thousand_fuzzed_datagrams_change_nothing_they_must_not() -> None:
    report = labfuzz.run(100_000, seed=8)
    assert report.total == 100_000
    # every kind of input reached both cores
    for core in ("monitor", "sender"):
        for kind in ("random", "bitflip", "truncate", "extend", "resign"):
            assert report.inputs[f"{core}.{kind}"] > 1000
        for outcome in ("malformed", "bad-auth", "replay", "stale", "accepted"):
            assert report.outcomes[f"{core}.{outcome}"] > 0, outcome
    # the schedule put each core in each of its states while fed (the monitor in every state a
    # takeover, a cut and a hand-back pass through; it never blocks, declines or stops here)
    for state in MONITOR_STATES:
        assert report.states[state] > 500, state
    assert report.sender_states["awaiting"] > 500
    assert report.sender_states["beating"] > 500
    # and the rare datagrams were captured and fuzzed: the hand-back's both ways, RELEASED, and
    # heartbeats that carry the cut-off flag
    for captured in ("monitor.announced", "monitor.heartbeat+cut-off", "sender.handback"):
        assert report.captured[captured] > 1000, captured
    assert report.captured["sender.released"] > 1000
    # the pair did what the schedule says: hand-backs confirmed in time, late, failed and
    # unanswered, ended by ANNOUNCED and by the timeout; cuts reported, and acted on in standby
    # (takeover), holddown (it starts over) and handback (the addresses are kept)
    sched = report.schedule
    for how in ("confirmed", "confirmed-late", "announce-failed", "unanswered"):
        assert sched[f"handback-{how}"] > 0, how
    for move in (
        "handback.announced",
        "handback.handback-timeout",
        "handback.peer-cut-off",
        "holddown.peer-cut-off",
        "standby.peer-cut-off",
        "probing.no-answer",
    ):
        assert sched[f"monitor.{move}"] > 0, move
    assert sched["sender.cuts-reported"] > 0


def _handback_acting_on_replays(
    self: sender.Sender, msg: wire.Message, addr: Any, now: float
) -> None:
    """Sender._handback without its replay checks: every HANDBACK of a holding listener that
    echoes a recent beat starts a hand-back, copies and replays alike."""
    if not self._echoes_recent_beat(msg):
        raise wire.RemoteProtocolError(wire.Reason.STALE, "HANDBACK echoes no recent beat")
    key = (msg.sender, msg.boot_id)
    entry = self.roster.entries.get(key)
    if entry is None or not entry.holding:
        raise wire.RemoteProtocolError(wire.Reason.UNEXPECTED, "not holding")
    self._handbacks[msg.nonce] = _Handback(listener=key, seq=msg.seq, addrs=[addr])
    reason = AnnounceReason.HANDBACK
    self._events.append(Announce(reason=reason, at=now, listener=msg.sender, handback=msg.nonce))


_receive = monitor.Monitor._receive


def _cut_off_before_checks(
    self: monitor.Monitor, msg: wire.Message, addr: Any, network: str, now: float
) -> None:
    """Monitor._receive acting on the cut-off flag before the heartbeat is verified."""
    if msg.cut_off:
        self._cut_off(now, msg.interval, msg.cut)
    _receive(self, msg, addr, network, now)


BREAKAGES = {
    # a monitor that counts a heartbeat echoing no live nonce of ours (evidence = arrival)
    "monitor-trusts-stale": (monitor.Monitor, "_evidence", lambda self, msg, now: now),
    # a sender that takes any CHALLENGE or RELEASED, whatever it echoes
    "sender-trusts-any-echo": (sender.Sender, "_echoes_recent_beat", lambda self, msg: True),
    # a sender that acts on a replayed (or copied) HANDBACK as on a new one
    "sender-handback-replays": (sender.Sender, "_handback", _handback_acting_on_replays),
    # a monitor that takes over on a flagged heartbeat before it checked that it is fresh
    "monitor-cut-off-unverified": (monitor.Monitor, "_receive", _cut_off_before_checks),
    # a monitor that ends a hand-back on any ANNOUNCED, whoever's, for whichever hand-back
    "monitor-any-announced": (
        Handback,
        "announced",
        lambda self, msg, state, box: state is State.HANDBACK,
    ),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_the_harness_catches_a_core_that_trusts_what_it_must_not(
    breakage: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checks have teeth: each broken core is caught within 20,000 inputs."""
    cls, name, broken = BREAKAGES[breakage]
    monkeypatch.setattr(cls, name, broken)
    with pytest.raises(labfuzz.FuzzFailure, match="non-fresh input changed"):
        labfuzz.run(20_000, seed=8)
