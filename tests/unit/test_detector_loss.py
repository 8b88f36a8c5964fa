"""`loss 1m` counts each stretch of the last minute against the interval in force then
(issue 11: after a reload from 1 s to 0.5 s with nothing lost it read 52.5 %)."""

from __future__ import annotations

import pytest

from ipfailover.core.detector import Detector


def beat(d: Detector, start: float, end: float, every: float) -> float:
    """Heartbeats every ``every`` seconds from ``start`` (inclusive) to ``end`` (exclusive)."""
    t = start
    while t < end - 1e-9:
        d.heard("eth0", t, t, every)
        t += every
    return t


def test_an_interval_change_is_not_loss() -> None:
    d = Detector(["eth0"], deadtime=3.0, now=0.0)
    t = beat(d, 1.0, 90.0, 1.0)  # a minute and a half at 1 s
    t = beat(d, t, t + 12.0, 0.5)  # then 12 s at 0.5 s
    loss = d.loss("eth0", 0.5, t)
    assert loss is not None and loss < 0.03, loss
    t = beat(d, t, t + 60.0, 0.5)  # the old interval has left the window
    assert d.loss("eth0", 0.5, t) == pytest.approx(0.0, abs=0.01)


def test_real_loss_after_a_change_still_shows() -> None:
    d = Detector(["eth0"], deadtime=3.0, now=0.0)
    t = beat(d, 1.0, 61.0, 1.0)
    end = t + 30.0
    while t < end:  # at 0.5 s, every other heartbeat lost
        d.heard("eth0", t, t, 0.5)
        t += 1.0
    loss = d.loss("eth0", 0.5, t)
    # 30 s at 1 s (30 expected, 30 received) + 30 s at 0.5 s (60 expected, 30 received)
    assert loss == pytest.approx(30 / 90, abs=0.02)


def test_without_announced_intervals_the_argument_counts() -> None:
    d = Detector(["eth0"], deadtime=3.0, now=0.0)
    for i in range(1, 61):
        d.heard("eth0", float(i), float(i))
    assert d.loss("eth0", 2.0, 60.5) == 0.0
    assert d.loss("eth0", 0.5, 60.5) == pytest.approx(0.5, abs=0.02)
