"""Policy in the core (issue 9): the takeover retry back-off, a trigger cascade that must
settle, and event kinds and reasons as enums whose values are the log's words."""

from __future__ import annotations

import random

import pytest
from sim import KEY, Sim

from ipfailover.core.monitor import (
    MAX_CASCADE,
    RETRY_MAX,
    AcquireOutcome,
    AcquireRetry,
    LocalProtocolError,
    Monitor,
    MonitorConfig,
    NetworkEvent,
    NetworkKind,
    ProbeResult,
    State,
    Trigger,
)
from ipfailover.core.sender import AnnounceReason


def events(m: Monitor) -> list[object]:
    out = []
    while (ev := m.next_event()) is not None:
        out.append(ev)
    return out


def acquiring(now: float = 3.0) -> Monitor:
    """A monitor whose primary was never heard: it takes over after the dead time."""
    cfg = MonitorConfig(
        node="s", key=KEY, period=1.0, deadtime=3.0, failback_delay=1.0, networks=("pub",)
    )
    m = Monitor(cfg, rng=random.Random(0).randbytes, now=0.0)
    m.handle_timer(now)
    assert m.state is State.PROBING and m._probe_out is not None
    m.probe_done(now, m._probe_out, {})
    assert m.state is State.ACQUIRING
    return m


def retry_until_acquiring(m: Monitor, now: float) -> float:
    """Time passes until the retry's probe; it finds nothing: acquiring again."""
    for _ in range(100):
        deadline = m.get_timer()
        assert deadline is not None
        now = max(now, deadline)
        m.handle_timer(now)
        if m.state is State.PROBING:
            assert m._probe_out is not None
            m.probe_done(now, m._probe_out, {})
            assert m.state is State.ACQUIRING
            return now
    raise AssertionError("never retried")


def test_failed_takeovers_back_off_in_the_core() -> None:
    """Doubling from the dead time, at most RETRY_MAX; before, failoverd's shell did this and
    the core only took ``retry_after``."""
    m = acquiring()
    now, waits = 3.0, []
    for _ in range(7):
        m.acquire_done(now, AcquireOutcome.FAILED)
        (retry,) = [e for e in events(m) if isinstance(e, AcquireRetry)]
        assert retry.at == now  # logged as acquire-retry when the takeover failed
        waits.append(retry.after)
        assert m.state is State.DECLINED
        t = retry_until_acquiring(m, now)
        assert t == pytest.approx(now + retry.after)
        now = t
    assert waits == [3.0, 6.0, 12.0, 24.0, 48.0, RETRY_MAX, RETRY_MAX]
    m.acquire_done(now, AcquireOutcome.DONE)  # success starts the count over
    assert m.state is State.ACTIVE


def test_a_veto_is_not_retried() -> None:
    m = acquiring()
    m.acquire_done(3.0, AcquireOutcome.FAILED)
    now = retry_until_acquiring(m, 3.0)
    events(m)
    m.acquire_done(now, AcquireOutcome.DECLINED)
    assert not any(isinstance(e, AcquireRetry) for e in events(m))
    m.handle_timer(now + 1000)
    assert m.state is State.DECLINED  # waits for the primary


def test_the_old_form_still_works() -> None:
    m = acquiring()
    m.acquire_done(3.0, ok=False, retry_after=0.5)
    assert [e.after for e in events(m) if isinstance(e, AcquireRetry)] == [0.5]
    m = acquiring()
    m.acquire_done(3.0, ok=True)
    assert m.state is State.ACTIVE
    with pytest.raises(LocalProtocolError, match=r"^no transition from ACTIVE on ACQUIRED$"):
        m.acquire_done(3.1, AcquireOutcome.DONE)  # nothing is being acquired


def test_acquire_done_without_an_outcome_says_so() -> None:
    """A shell bug (neither an outcome nor ``ok``) is named as such, not as a transition."""
    m = acquiring()
    with pytest.raises(LocalProtocolError, match=r"^acquire_done needs an outcome$"):
        m.acquire_done(3.1)
    assert m.state is State.ACQUIRING


class Flapping(Monitor):
    """A broken table: it never settles (heard and silent at once)."""

    def _due_trigger(self, now: float) -> Trigger | None:
        if self.state is State.ACTIVE:
            return Trigger.PEER_HEARD
        if self.state is State.HOLDDOWN:
            return Trigger.PEER_SILENT
        return super()._due_trigger(now)


def test_a_cascade_that_does_not_settle_raises() -> None:
    """Before, the cascade stopped silently after four triggers, in whatever state it had
    reached."""
    cfg = MonitorConfig(
        node="s", key=KEY, period=1.0, deadtime=3.0, failback_delay=1.0, networks=("pub",)
    )
    m = Flapping(cfg, rng=random.Random(0).randbytes, now=0.0, holding=True)
    with pytest.raises(LocalProtocolError) as err:
        m.handle_timer(0.0)
    assert MAX_CASCADE == 4
    # the error names the state and the chain of triggers, for the bug report
    assert str(err.value) == (
        "triggers do not settle in ACTIVE: peer-heard peer-silent peer-heard peer-silent peer-heard"
    )


def test_kinds_and_reasons_are_enums_with_the_log_words() -> None:
    sim = Sim(failback=1.0)
    sim.run_until(5)
    sim.up["pub"] = False
    sim.run_until(10)
    sim.up["pub"] = True
    sim.run_until(12)
    kinds = [k for _, k, _ in sim.rec.network_events]
    assert all(isinstance(k, NetworkKind) for k in kinds)
    assert {str(k) for k in kinds} == {"verified", "anomaly", "recovered"}
    assert all(isinstance(r, AnnounceReason) for _, r in sim.rec.announces)
    assert [str(r) for _, r in sim.rec.announces] == ["start"]
    assert [str(p) for p in ProbeResult] == ["", "answered", "silent", "failed"]
    assert f"{NetworkEvent(kind=NetworkKind.ANOMALY, network='pub', at=0.0).kind}" == "anomaly"


class Failing(Sim):
    """Takeovers end as ``outcomes`` says, in turn (then DONE)."""

    def __init__(self, outcomes: list[AcquireOutcome], **kw: float) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.outcomes = outcomes

    def _dispatch(self, kind: str, payload: object) -> None:
        if kind == "acquire-done" and self.outcomes:
            assert self.monitor is not None
            self._busy = False
            self.monitor.acquire_done(self.now, self.outcomes.pop(0))
            self._flush_monitor()
            return
        super()._dispatch(kind, payload)


def test_a_takeover_that_succeeds_starts_the_back_off_over() -> None:
    failed, done = AcquireOutcome.FAILED, AcquireOutcome.DONE
    sim = Failing([failed, done, failed], failback=1.0)
    sim.run_until(5.5)
    sim.up = {"pub": False, "priv": False}
    sim.run_until(20)  # taken on the retry
    sim.up = {"pub": True, "priv": True}
    sim.run_until(30)  # handed back
    sim.up = {"pub": False, "priv": False}
    sim.run_until(45)
    times = [t for t, _ in sim.rec.acquires]
    reasons = [r for _, r in sim.rec.acquires]
    assert reasons == [Trigger.PEER_SILENT, Trigger.RETRY] * 2
    first, second = times[1] - times[0], times[3] - times[2]
    assert first == pytest.approx(second)  # not twice: the success in between reset the count
    assert first == pytest.approx(sim.transition + 3.0 + sim.probe_wait)
