"""The detector at its edges: exact boundaries of the loss window, interval changes that fall on
them, a detector started later than time 0, and what forget() leaves behind.

Each test here kills mutants that the scenario tests let live (docs/development.md, "Mutation
testing"): it pins a boundary or a value the scenarios only cross in the middle.
"""

from __future__ import annotations

import pytest

from ipfailover.core.detector import LOSS_WINDOW, Change, Detector


def beats(d: Detector, times: list[float], interval: float, network: str = "eth0") -> None:
    for t in times:
        d.heard(network, t, t, interval)


def test_loss_counts_from_start_up_when_the_detector_started_late() -> None:
    """Started at 1000 s, after 10 s the span is those 10 s, not the whole minute."""
    d = Detector(["eth0"], deadtime=3.0, now=1000.0)
    beats(d, [1000.0 + i for i in range(1, 6)], 1.0)  # 5 of the 10 expected
    assert d.loss("eth0", 1.0, 1010.0) == pytest.approx(0.5)


def test_loss_is_known_once_exactly_one_interval_has_passed() -> None:
    d = Detector(["eth0"], deadtime=3.0, now=0.0)
    assert d.loss("eth0", 1.0, 0.999) is None
    assert d.loss("eth0", 1.0, 1.0) == pytest.approx(1.0)  # nothing heard in that interval


def test_a_heartbeat_exactly_a_minute_old_has_left_the_window() -> None:
    d = Detector(["eth0"], deadtime=3.0, now=0.0)
    beats(d, [0.0, *[float(t) for t in range(2, 61)]], 1.0)  # 1.0 missing
    # the window is (0, 60]: the beat at 0.0 no longer counts, so one of 60 is missing
    assert d.loss("eth0", 1.0, LOSS_WINDOW) == pytest.approx(1 / 60)
    young = Detector(["eth0"], deadtime=3.0, now=0.0)
    beats(young, [0.0, *[float(t) for t in range(2, 31)]], 1.0)
    # half a minute after start-up the span is (0, 30]: a beat at 0.0 is outside it too
    assert young.loss("eth0", 1.0, 30.0) == pytest.approx(1 / 30)


def test_an_interval_announced_at_the_start_of_the_window_counts_for_all_of_it() -> None:
    d = Detector(["eth0"], deadtime=3.0, now=0.0)
    d.heard("eth0", 0.0, 0.0, 0.5)  # announces 0.5 s exactly at the window's start
    beats(d, [float(t) for t in range(1, 61)], 0.5)  # but beats every second
    # 120 promised (60 s at 0.5 s), 60 came; the caller's default of 1 s is not used
    assert d.loss("eth0", 1.0, LOSS_WINDOW) == pytest.approx(0.5)


def test_a_short_stretch_at_a_new_interval_counts_its_share_only() -> None:
    d = Detector(["eth0"], deadtime=3.0, now=0.0)
    beats(d, [float(t) for t in range(1, 60)], 1.0)  # 1..59 at 1 s: 59 of 59.5
    d.heard("eth0", 59.5, 59.5, 0.25)  # the interval changes half a second before the end
    # promised: 59.5 at 1 s, then 0.5 s at 0.25 s = 2; received 60
    assert d.loss("eth0", 1.0, 60.0) == pytest.approx(1 - 60 / 61.5)


def test_forget_clears_anomalies_so_no_recovery_is_reported_for_them() -> None:
    d = Detector(["a", "b"], deadtime=3.0, now=0.0)
    for t in (4.0, 5.0, 6.0, 7.0, 8.0):
        d.heard("a", t, t)
    d.heard("b", 4.0, 4.0)
    assert d.changes(8.0) == [(Change.ANOMALY, "b")]
    d.forget()  # the primary said it is leaving
    assert [v.in_anomaly for v in d.networks.values()] == [False, False]  # status shows these
    assert [v.last_heard for v in d.networks.values()] == [None, None]
    d.heard("a", 9.0, 9.0)
    d.heard("b", 9.0, 9.0)
    assert d.changes(9.0) == []  # "b" was not in anomaly any more: nothing to recover from


def test_a_network_first_heard_is_learned_with_its_name_and_count() -> None:
    d = Detector(["a"], deadtime=3.0, now=0.0)
    for t in (1.0, 2.0, 3.0):
        d.heard("b", t, t)
    view = d.networks["b"]
    assert (view.name, view.heartbeats, view.last_heard) == ("b", 3, 3.0)
    assert d.alive("b", 5.9) and not d.alive("b", 6.0)


def test_a_dead_time_must_be_positive() -> None:
    with pytest.raises(ValueError, match=r"^deadtime must be positive$"):
        Detector(["a"], deadtime=0.0, now=0.0)
    assert Detector(["a"], deadtime=0.1, now=0.0).networks["a"].name == "a"


def test_a_network_silent_from_the_start_is_an_anomaly_once_the_grace_is_over() -> None:
    d = Detector(["a", "b"], deadtime=3.0, now=0.0)
    d.heard("a", 4.5, 4.5)
    d.heard("a", 5.0, 5.0)
    # the first look, after the start-up grace: b was never heard, a is
    assert d.changes(5.0) == [(Change.ANOMALY, "b")]


def test_an_anomaly_needs_life_elsewhere_after_the_silence_and_the_allowance() -> None:
    d = Detector(["a", "b"], deadtime=3.0, now=0.0, allowance=0.5)
    for t in (1.0, 2.0, 3.0):
        d.heard("a", t, t)
    d.heard("b", 1.0, 1.0)  # b falls silent at 1 + 3 + 0.5 = 4.5
    d.heard("a", 4.2, 4.2)
    assert d.changes(4.6) == []  # a's latest is from before b fell silent
    d.heard("a", 4.5, 4.6)
    assert d.changes(4.6) == []  # exactly when it fell silent: still not after
    d.heard("a", 4.7, 4.7)
    assert d.changes(4.7) == [(Change.ANOMALY, "b")]
    d.heard("b", 5.0, 5.0)
    assert d.changes(5.0) == [(Change.RECOVERED, "b")]
    assert d.networks["b"].in_anomaly is False
    assert d.changes(5.1) == []


def test_after_silence_everywhere_the_others_get_a_dead_time_to_come_back() -> None:
    d = Detector(["a", "b"], deadtime=3.0, now=0.0)
    for t in (1.0, 2.0):
        d.heard("a", t, t)
        d.heard("b", t, t)
    assert d.changes(6.0) == []  # silent everywhere: the monitor's business
    d.heard("a", 10.0, 10.0)
    assert d.changes(10.0) == []  # back on a: b has until 13.0
    d.heard("a", 12.9, 12.9)
    assert d.changes(12.9) == []
    assert d.changes(13.0) == [(Change.ANOMALY, "b")]
