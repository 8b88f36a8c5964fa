"""The monitor's promises, checked against ground truth at every step of random schedules.

A schedule is a list of phases: for each, which networks carry traffic, whether the primary is
alive, dead, leaving or restarting, and whether an attacker replays old heartbeats. The
simulation (``sim.Sim``) records what was really sent and delivered; the checks here compare the
monitor's actions with that record after every step, not only at the end:

* **Safety**: it never takes over for silence while some network delivered, within the dead
  time, a heartbeat of a live primary that echoed a challenge of ours (one it had to count).
* **Liveness**: whenever the primary has really been silent on every network for the dead time
  plus one challenge period (the most a replay may add) and the probe's wait, it holds the
  addresses, every time, not only the first time. Two exceptions, both by design: a Test veto
  leaves it waiting for the primary, as Apple's did; and an address that still answers a probe
  is not taken from a primary that was never verified (docs/safety.md) -- once it stops
  answering, it is taken within one re-probe.
* **Steady hand-back**: it releases for the primary only after heartbeats arrived steadily over
  the whole hold-down.
* **One transition at a time.**

``test_broken_monitors_fail_the_properties`` runs the same checks against deliberately broken
monitors and requires each to be caught: a property that a broken monitor passes proves nothing.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sim import KEY, Hand, Sim

from ipfailover.core import wire
from ipfailover.core.monitor import (
    ARRIVAL_ALLOWANCE,
    HOLDING,
    Monitor,
    MonitorConfig,
    Probe,
    State,
    Trigger,
)

EPS = 1e-6


@dataclass
class Truth:
    """What really happened on the wire."""

    started: float = 0.0
    sent: dict[bytes, float] = field(default_factory=dict)  # heartbeat datagram -> when sent
    issued: dict[bytes, float] = field(default_factory=dict)  # our nonce -> when issued
    # (delivered, sent, echoed nonce issue time or None, network) of every heartbeat delivered
    delivered: list[tuple[float, float, float | None, str]] = field(default_factory=list)
    # (delivered, sent, echoed nonce issue time or None) of every LEAVING delivered
    leaving: list[tuple[float, float, float | None]] = field(default_factory=list)
    transitions: list[tuple[float, str]] = field(default_factory=list)
    answered_at: float | None = None  # the last step at which the primary's address answered


class OracleSim(Sim):
    """A :class:`Sim` that records ground truth, runs ``monitor_cls`` and can fail takeovers."""

    def __init__(
        self, monitor_cls: type[Monitor] = Monitor, fail_acquire: float | None = None, **kw: object
    ) -> None:
        self.monitor_cls = monitor_cls
        # every other takeover fails (netlink) and is retried after this many seconds
        self.fail_acquire = fail_acquire
        self._attempts = 0
        self.truth = Truth()
        self._captured_seen = 0
        super().__init__(**kw)  # type: ignore[arg-type]

    def _dispatch(self, kind: str, payload: object) -> None:
        t = self.now
        if kind == "start-secondary":
            self.monitor = self.monitor_cls(
                self.mcfg, rng=self.rand.randbytes, now=t, holding=self._holding
            )
            self.truth.started = t
            self._push(t, "monitor-timer", None)
            return
        if kind == "acquire-done":
            self._attempts += 1
        if (
            kind == "acquire-done"
            and self.fail_acquire is not None
            and not self.veto_acquire
            and self._attempts % 2
        ):
            assert self.monitor is not None
            self._busy = False
            self.rec.done.append((t, "acquire-failed"))
            self.monitor.acquire_done(t, ok=False, retry_after=self.fail_acquire)
            self._flush_monitor()
            return
        if kind == "to-secondary":
            data, _, net = payload  # type: ignore[misc]
            msg = wire.decode(data, KEY)
            issued = [self.truth.issued[n] for n in msg.echoes if n in self.truth.issued]
            sent, echoed = self.truth.sent[data], max(issued, default=None)
            if msg.type is wire.MsgType.HEARTBEAT:
                self.truth.delivered.append((t, sent, echoed, net))
            elif msg.type is wire.MsgType.LEAVING:
                self.truth.leaving.append((t, sent, echoed))
        elif kind == "to-primary":
            data, _ = payload  # type: ignore[misc]
            msg = wire.decode(data, KEY)
            if msg.type is wire.MsgType.CHALLENGE:
                # sent at t - latency on every network that was up; the first copy tells when
                self.truth.issued.setdefault(msg.nonce, t - self.latency)
        elif kind in ("acquire-done", "release-done"):
            self.truth.transitions.append((t, kind))
        super()._dispatch(kind, payload)
        if kind == "monitor-timer" and self.monitor is not None:
            # The deadline it gives after a timer is in the future: a past one would make the
            # shell's timer fire again at once, a busy loop.
            timer = self.monitor.get_timer()
            assert timer is None or timer > t, (t, timer, self.monitor.state)

    def _flush_sender(self) -> None:
        super()._flush_sender()
        for data, _ in self.captured[self._captured_seen :]:
            self.truth.sent.setdefault(data, self.now)
        self._captured_seen = len(self.captured)


@dataclass(frozen=True)
class Params:
    interval: float
    deadtime: float
    failback: float
    transition: float
    retry: float | None  # every other takeover fails and is retried after this, or None


def check_safety(sim: OracleSim, p: Params, upto: float) -> None:
    """No takeover for silence while a network had, within the dead time less one period,
    delivered a live primary's heartbeat that echoed a nonce we first sent at most one period
    before that heartbeat was sent. A nonce is at most a period old when first sent (a new one
    every period), so its evidence time is at least a period before the heartbeat's send time,
    and the monitor had to count it. (Unless the primary later said it is leaving: a LEAVING
    sent after that heartbeat, delivered by then and fresh by the protocol's rule -- the primary
    really did leave.)"""
    truth = sim.truth
    for t, reason in sim.rec.acquires:
        if reason not in (Trigger.PEER_SILENT, Trigger.RETRY) or t > upto:
            continue
        left = [
            sent
            for delivered, sent, issued in truth.leaving
            if delivered <= t
            and issued is not None
            and min(delivered, issued + p.interval) + p.deadtime > delivered
        ]
        for delivered, sent, issued, net in truth.delivered:
            if any(sent <= gone for gone in left):
                continue
            if delivered <= t and issued is not None and issued >= sent - p.interval - EPS:
                assert sent <= t - p.deadtime + p.interval + EPS, (
                    f"took over at {t:.4f} ({reason.value}) although {net} delivered at "
                    f"{delivered:.4f} a heartbeat sent at {sent:.4f} echoing a nonce issued at "
                    f"{issued:.4f}"
                )


def counted(
    datagrams: list[tuple[float, float, float | None]], p: Params
) -> list[tuple[float, float, float | None]]:
    """Those whose echo the monitor has to count: of a nonce issued at most a period before the
    datagram was sent."""
    return [d for d in datagrams if d[2] is not None and d[2] >= d[1] - p.interval - EPS]


def last_life(sim: OracleSim, upto: float) -> float:
    """When the primary was last seen alive by the network: the latest send time of any
    heartbeat delivered by ``upto`` (a replay carries the time it was first sent)."""
    sent = [s for d, s, _, _ in sim.truth.delivered if d <= upto]
    return max(sent, default=sim.truth.started)


def verified(sim: OracleSim, p: Params) -> bool:
    """Whether the monitor had to verify the primary by now: a heartbeat it had to count (see
    :func:`check_safety`) was delivered."""
    return bool(counted([d[:3] for d in sim.truth.delivered], p))


def check_liveness(sim: OracleSim, p: Params, slack: float) -> None:
    """Silent for the dead time plus one period (plus the probe, transition and retry
    allowances): the addresses are held (or being taken) now."""
    assert sim.monitor is not None
    if sim.monitor.state is State.DECLINED and sim.veto_acquire:
        return  # Test said no: it waits for the primary, as Apple's did
    if sim.answers_probe():
        sim.truth.answered_at = sim.now
    answered = sim.truth.answered_at
    retry = p.retry + p.transition + sim.probe_wait if p.retry else 0.0  # a retry probes again
    reprobe = max(1.0, p.interval) + sim.probe_wait + slack + retry
    if answered is not None and sim.now - answered < reprobe and not verified(sim, p):
        return  # its address answers and it was never verified: not taken (docs/safety.md)
    silent_since = max(last_life(sim, sim.now), sim.truth.started)
    bound = p.deadtime + p.interval + slack + retry
    if sim.now - silent_since >= bound:
        assert sim.monitor.state in HOLDING, (
            f"silent since {silent_since:.4f}, now {sim.now:.4f} (bound {bound:.4f}): "
            f"{sim.monitor.state.value}"
        )


def check_release(sim: OracleSim, p: Params) -> None:
    """Every release for the primary followed heartbeats delivered over the whole hold-down
    with no gap of a dead time (plus the detector's documented arrival allowance, a tenth of
    a period), starting at its beginning."""
    gap = p.deadtime + ARRIVAL_ALLOWANCE * p.interval
    for t, reason in sim.rec.releases:
        if reason is not Trigger.PEER_HEARD:
            continue
        start = t - p.failback
        fresh = sorted(
            d
            for d, s, _, _ in sim.truth.delivered
            if start - p.deadtime < d <= t and s > start - p.deadtime
        )
        points = [start, *[d for d in fresh if d >= start], t]
        for point in points:
            before = [d for d in fresh if d <= point + EPS]
            assert before and point - before[-1] < gap + EPS, (
                f"released at {t:.4f} after a hold-down from {start:.4f} with no heartbeat "
                f"within the dead time of {point:.4f}: {fresh}"
            )


def check_no_overlap(sim: OracleSim) -> None:
    assert not sim.rec.overlap, "a transition was asked for while another was in progress"


def run_schedule(
    schedule: list[tuple[float, bool, bool, str]],
    p: Params,
    *,
    seed: int,
    replay: bool,
    veto: bool = False,
    monitor_cls: type[Monitor] = Monitor,
) -> OracleSim:
    sim = OracleSim(
        monitor_cls=monitor_cls,
        fail_acquire=p.retry,
        interval=p.interval,
        deadtime=p.deadtime,
        failback=p.failback,
        transition=p.transition,
        seed=seed,
    )
    sim.veto_acquire = veto
    rnd = random.Random(seed)
    slack = 2 * sim.latency + p.transition + sim.probe_wait + EPS
    step = p.interval / 2
    for duration, pub, priv, life in schedule:
        end = sim.now + duration * p.interval * 4
        sim.up = {"pub": pub, "priv": priv}
        if life in ("alive", "restart"):
            if life == "restart" and sim.primary_alive:
                sim.kill_primary()
            sim.revive_primary()
        elif life == "dead":
            sim.kill_primary()
        elif sim.primary_alive:
            sim.stop_primary()
        if replay and sim.captured:
            # an attacker replays old captures, and holds back some of the newest ones
            for pool in (sim.captured, sim.captured[-8:]):
                for _ in range(4):
                    data, net = rnd.choice(pool)
                    sim.replay(data, net, at=rnd.uniform(sim.now, min(end, sim.now + p.deadtime)))
        for _ in range(10_000):  # bounded: a phase is at most 24 intervals, in half intervals
            if sim.now >= end:
                break
            sim.run_until(min(end, sim.now + step))
            check_no_overlap(sim)
            check_safety(sim, p, sim.now)
            check_liveness(sim, p, slack)
            check_release(sim, p)
    return sim


phase = st.tuples(
    st.floats(0.05, 6.0),  # length, in units of four intervals
    st.booleans(),  # pub carries traffic
    st.booleans(),  # priv carries traffic
    st.sampled_from(["alive", "alive", "alive", "dead", "dead", "leave", "restart"]),
)
params = st.builds(
    Params,
    interval=st.sampled_from([0.05, 0.2, 1.0]),
    deadtime=st.just(0.0),  # filled in from the multiplier below
    failback=st.just(0.0),
    transition=st.sampled_from([0.001, 0.05, 0.4]),
    retry=st.sampled_from([None, None, 0.5, 2.0]),
)


def _scaled(p: Params, dead_mult: float, failback_mult: float) -> Params:
    return Params(
        interval=p.interval,
        deadtime=p.interval * dead_mult,
        failback=p.interval * failback_mult,
        transition=p.transition * p.interval,
        retry=None if p.retry is None else p.retry * p.interval,
    )


# 200 random schedules; the mutation run's profile (tests/conftest.py) makes them 10 fixed ones
@settings(
    max_examples=2 * settings.default.max_examples,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    schedule=st.lists(phase, min_size=1, max_size=10),
    p=params,
    dead_mult=st.sampled_from([2.5, 3.0, 5.0]),
    failback_mult=st.sampled_from([0.0, 1.0, 3.0, 8.0]),
    seed=st.integers(0, 2**16),
    replay=st.booleans(),
    veto=st.sampled_from([False, False, False, True]),
)
def test_promises_hold_at_every_step(
    schedule: list[tuple[float, bool, bool, str]],
    p: Params,
    dead_mult: float,
    failback_mult: float,
    seed: int,
    replay: bool,
    veto: bool,
) -> None:
    run_schedule(
        schedule, _scaled(p, dead_mult, failback_mult), seed=seed, replay=replay, veto=veto
    )


def events(m: Monitor) -> list[object]:
    out = []
    while (ev := m.next_event()) is not None:
        out.append(ev)
    return out


def test_a_due_retry_waits_without_spinning() -> None:
    """Found by the property above: a failed takeover's retry fell due while a network still
    lived on evidence from before the takeover. The monitor kept returning the past retry time
    from get_timer(), so its shell's timer would fire again and again (a busy loop) until that
    evidence expired."""
    cfg = MonitorConfig(
        node="s", key=KEY, period=1.0, deadtime=3.0, failback_delay=3.0, networks=("pub",)
    )
    m = Monitor(cfg, rng=random.Random(0).randbytes, now=0.0)
    hand = Hand(m)
    beat, nonce = hand.beat, hand.nonce

    m.handle_timer(0.0)
    beat((), 0.1)  # stale: answered at once with a challenge
    beat((nonce(),), 0.2)
    m.handle_timer(1.0)
    late = nonce()  # the primary dies holding this nonce, issued at 1.0
    m.handle_timer(3.31)  # 0.2 + the dead time + the arrival allowance (a tenth of a period)
    assert m.state is State.PROBING
    (probe,) = [e for e in events(m) if isinstance(e, Probe)]
    m.probe_done(3.35, probe.id, {})  # nothing answers
    assert m.state is State.ACQUIRING
    m.acquire_done(3.4, ok=False, retry_after=0.4)  # failed: retry at 3.8
    beat((late,), 3.45)  # delayed: proves life at 2.0, before the takeover; alive until 5.1
    m.handle_timer(3.8)
    assert m.state is State.DECLINED
    timer = m.get_timer()
    assert timer is not None and timer > 3.8
    for _ in range(10):  # the next deadlines: challenge rounds, then the evidence's expiry
        m.handle_timer(timer)
        if m.state is not State.DECLINED:
            break
        timer = m.get_timer()
        assert timer is not None and timer > m.since
    # the retry, at once (it probes the link first, as every takeover for silence does)
    assert m.state is State.PROBING and timer == pytest.approx(5.1)


def test_life_proven_during_the_probe_cancels_the_takeover() -> None:
    """Found by the property above: a heartbeat that arrived while the link was being probed
    proved the primary alive at the very moment silence was declared. Its evidence was not
    "since" the probe began, so the probe went on to a takeover of a primary the detector
    itself called alive for another dead time."""
    cfg = MonitorConfig(
        node="s", key=KEY, period=1.0, deadtime=3.0, failback_delay=3.0, networks=("pub",)
    )
    m = Monitor(cfg, rng=random.Random(0).randbytes, now=0.0)
    hand = Hand(m)
    beat, nonce = hand.beat, hand.nonce

    m.handle_timer(0.0)
    beat((), 0.1)  # stale: answered at once with a challenge
    beat((nonce(),), 0.2)  # proves life at 0.2: alive until 3.2
    m.handle_timer(1.0)
    n1 = nonce()  # issued at 1.0, lost on its way: the primary never echoes it in time
    m.handle_timer(2.0)
    m.handle_timer(3.31)  # 0.2 + the dead time + the arrival allowance (a tenth of a period)
    assert m.state is State.PROBING
    (probe,) = [e for e in events(m) if isinstance(e, Probe)]
    beat((n1,), 3.31)  # late, but it proves life at min(3.31, 1.0 + 1.0) = 2.0: alive until 5.1
    assert m.detector.any_alive(3.31)
    m.probe_done(3.33, probe.id, {})
    assert m.state is State.STANDBY and not m.holding


def test_shutdown_in_any_state_ends_stopped_without_holding() -> None:
    """A stop at a random moment of a random outage, even mid-transition, ends STOPPED, and
    anything held was released (for shutdown) exactly once."""
    for seed in range(40):
        rnd = random.Random(seed)
        p = Params(interval=0.2, deadtime=0.6, failback=0.6, transition=0.1, retry=None)
        sim = run_schedule(
            [(1.0, True, True, "alive"), (rnd.uniform(0.5, 3), False, False, "dead")],
            p,
            seed=seed,
            replay=False,
        )
        if rnd.random() < 0.5:
            sim.revive_primary()
            sim.up = {"pub": True, "priv": True}
        sim.run_until(sim.now + rnd.uniform(0, 2))
        assert sim.monitor is not None
        sim.monitor.shutdown(sim.now)
        sim._flush_monitor()
        sim.run_until(sim.now + 5)
        assert sim.monitor.state is State.STOPPED
        # whatever was taken was given back, once
        assert len(sim.rec.acquires) == len(sim.rec.releases), (seed, sim.rec)
        check_no_overlap(sim)


# Broken monitors: each must fail the checks above -------------------------------------------


class NeverAgain(Monitor):
    """Never takes over again after its first hand-back."""

    def _due_trigger(self, now: float) -> Trigger | None:
        trigger = super()._due_trigger(now)
        released = self.counters["transitions.released"]
        if trigger is Trigger.PEER_SILENT and self.state is State.STANDBY and released:
            return None
        return trigger


class SlowLater(Monitor):
    """Its later takeovers take twice the dead time."""

    def _due_trigger(self, now: float) -> Trigger | None:
        trigger = super()._due_trigger(now)
        last = self.detector.last_evidence()
        if (
            trigger is Trigger.PEER_SILENT
            and self.state is State.STANDBY
            and self.counters["transitions.released"]
            and last is not None
            and now < last + 2 * self.cfg.deadtime
        ):
            return None
        return trigger


class NoHolddown(Monitor):
    """Hands back the moment the primary is heard."""

    def _due_trigger(self, now: float) -> Trigger | None:
        trigger = super()._due_trigger(now)
        if self.state is State.HOLDDOWN and trigger is None:
            return Trigger.HOLDDOWN_EXPIRED
        return trigger


class OneNetwork(Monitor):
    """Judges the primary by the first network alone (Apple's two-network rule forgotten)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        det = self.detector

        def first_alive(now: float) -> bool:
            return det.alive(sorted(det.networks)[0], now)

        det.any_alive = first_alive  # type: ignore[method-assign]
        det.all_silent = lambda now: not det.in_grace(now) and not first_alive(now)  # type: ignore[method-assign]


class TrustsArrival(Monitor):
    """Believes a heartbeat proves life at its arrival, whatever nonce it echoes."""

    def _evidence(self, msg: wire.Message, now: float) -> float | None:
        return now if any(e in self._nonces for e in msg.echoes) else None


# A schedule that exercises every promise: an outage, a return, a second outage, replays.
OUTAGES = [
    (2.0, True, True, "alive"),
    (3.0, False, False, "alive"),
    (4.0, True, True, "alive"),
    (3.0, True, True, "dead"),
    (4.0, True, True, "restart"),
    (3.0, False, True, "alive"),
    (3.0, True, False, "alive"),
    (3.0, True, True, "dead"),
]


@pytest.mark.parametrize(
    "broken",
    [NeverAgain, SlowLater, NoHolddown, OneNetwork, TrustsArrival],
    ids=lambda c: c.__name__,
)
def test_broken_monitors_fail_the_properties(broken: type[Monitor]) -> None:
    p = Params(interval=0.2, deadtime=0.6, failback=0.6, transition=0.002, retry=None)
    caught: list[int] = []
    for seed in range(12):
        try:
            run_schedule(OUTAGES, p, seed=seed, replay=True, monitor_cls=broken)
        except AssertionError:
            caught.append(seed)
    assert caught, f"{broken.__name__} passed every check: the properties cannot see it"


def test_the_real_monitor_passes_the_fixed_schedule() -> None:
    p = Params(interval=0.2, deadtime=0.6, failback=0.6, transition=0.002, retry=None)
    for seed in range(12):
        run_schedule(OUTAGES, p, seed=seed, replay=True)
