"""Issue 8, case 11: 10^5 random and mutated datagrams into both cores (bench/fuzz.py: 10^6).

:mod:`ipfailover.lab.fuzz` drives a real sender and monitor as a pair, with the primary dying
and coming back, and feeds each core random bytes, bit flips, truncations, extensions and
field-wise changes re-signed with the key. It checks around every input that nothing escapes
but the documented drop, that nothing unauthentic changes anything, that nothing authentic but
not fresh changes what a fresh heartbeat relies on, and that the tables stay within their caps.
"""

from __future__ import annotations

import pytest

from ipfailover.core import monitor, sender
from ipfailover.lab import fuzz as labfuzz


def test_a_hundred_thousand_fuzzed_datagrams_change_nothing_they_must_not() -> None:
    report = labfuzz.run(100_000, seed=8)
    assert report.total == 100_000
    # every kind of input reached both cores, and the cores were seen in every steady state
    for core in ("monitor", "sender"):
        for kind in ("random", "bitflip", "truncate", "extend", "resign"):
            assert report.inputs[f"{core}.{kind}"] > 1000
        for outcome in ("malformed", "bad-auth", "replay", "stale", "accepted"):
            assert report.outcomes[f"{core}.{outcome}"] > 0, outcome
    assert {"standby", "active", "holddown"} <= set(report.states)


BREAKAGES = {
    # a monitor that counts a heartbeat echoing no live nonce of ours (evidence = arrival)
    "monitor-trusts-stale": (monitor.Monitor, "_evidence", lambda self, msg, now: now),
    # a sender that takes any CHALLENGE or RELEASED, whatever it echoes
    "sender-trusts-any-echo": (sender.Sender, "_echoes_recent_beat", lambda self, msg: True),
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
