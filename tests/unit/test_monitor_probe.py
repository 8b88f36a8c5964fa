"""Evidence before a takeover, and conflicts while holding (issue 7, section 2; docs/safety.md).

The secondary asks the link whether the primary's addresses still answer before it takes them
(PROBING), holds back while they answer and the primary was never verified (BLOCKED), and, while
holding, reports and defends against other MACs claiming its addresses.
"""

from __future__ import annotations

import itertools
import random

import pytest
from sim import KEY, PRIMARY_MAC, SERVICE, Sim, in_holddown

from ipfailover.core.monitor import (
    DEFEND_INTERVAL,
    REPROBE_MIN,
    AddressAnswers,
    AddressConflict,
    Defend,
    Monitor,
    MonitorConfig,
    Probe,
    State,
    StateChanged,
    Trigger,
)

OTHER_MAC = "02:00:00:00:00:99"


def events(m: Monitor) -> list[object]:
    out = []
    while (ev := m.next_event()) is not None:
        out.append(ev)
    return out


def monitor(**kw: object) -> Monitor:
    cfg = MonitorConfig(
        node="s",
        key=KEY,
        period=1.0,
        deadtime=3.0,
        failback_delay=3.0,
        networks=("pub",),
        **kw,  # type: ignore[arg-type]
    )
    return Monitor(cfg, rng=random.Random(0).randbytes, now=0.0)


def probe_of(evs: list[object]) -> Probe:
    (p,) = [e for e in evs if isinstance(e, Probe)]
    return p


# The firewalled secondary --------------------------------------------------------------------


def test_a_secondary_that_never_hears_the_primary_takes_nothing_while_it_answers() -> None:
    sim = Sim()
    sim.firewalled = True  # inbound UDP 1694 dropped: heartbeats never arrive
    sim.run_until(30)
    assert sim.rec.acquires == []
    assert sim.monitor is not None and sim.monitor.state is State.BLOCKED
    assert not sim.monitor.ever_verified
    (told,) = sim.rec.answers  # reported once, not at every re-probe
    assert told.answering == ((SERVICE, (PRIMARY_MAC,)),)
    assert not told.verified_before and not told.taking
    assert [c.trigger for c in sim.rec.states] == [
        Trigger.PEER_SILENT,
        Trigger.ANSWERS_NEVER_VERIFIED,
    ]
    # it keeps probing, at a bounded rate
    times = [t for t, _ in sim.rec.probes]
    assert times[0] == pytest.approx(3.0)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(times) > 20 and min(gaps) >= REPROBE_MIN


def test_blocked_takes_over_once_the_address_stops_answering() -> None:
    sim = Sim()
    sim.firewalled = True
    sim.run_until(10)
    sim.kill_primary()  # the host dies: its address no longer answers
    sim.run_until(20)
    ((t, reason),) = sim.rec.acquires
    assert reason is Trigger.PEER_SILENT
    assert 10 < t <= 10 + REPROBE_MIN + sim.probe_wait + 0.01
    (acq,) = sim.rec.acquire_events
    assert acq.probe == "silent" and acq.answering == ()
    assert sim.monitor is not None and sim.monitor.state is State.ACTIVE


def test_blocked_goes_back_to_standby_when_the_firewall_opens() -> None:
    sim = Sim()
    sim.firewalled = True
    sim.run_until(10)
    sim.firewalled = False
    sim.run_until(15)
    assert sim.monitor is not None and sim.monitor.state is State.STANDBY
    assert sim.monitor.ever_verified
    assert sim.rec.acquires == []
    # from now on the primary counts as verified: a hung one is taken over (Apple's way)
    sim.hang_primary()
    sim.run_until(25)
    assert len(sim.rec.acquires) == 1


# Verified, then silent --------------------------------------------------------------------


def test_a_hung_primary_whose_address_answers_is_taken_over_and_the_fact_handed_on() -> None:
    sim = Sim()
    sim.run_until(10.5)
    sim.hang_primary()  # heartbeats stop; the kernel still answers ARP
    sim.run_until(20)
    ((t, reason),) = sim.rec.acquires
    assert reason is Trigger.PEER_SILENT
    # dead time 3 s after the last heartbeat at 10.0, the arrival allowance (0.1 s), the probe
    assert t == pytest.approx(13.1 + sim.probe_wait, abs=0.011)
    (acq,) = sim.rec.acquire_events
    assert acq.probe == "answered"
    assert acq.answering == ((SERVICE, (PRIMARY_MAC,)),)
    (told,) = sim.rec.answers
    assert told.verified_before and told.taking
    assert Trigger.ANSWERS_AFTER_VERIFIED in [c.trigger for c in sim.rec.states]


def test_take_answering_no_refuses_until_the_address_stops_answering() -> None:
    sim = Sim(take_answering=False)
    sim.run_until(10.5)
    sim.hang_primary()
    sim.run_until(20)
    assert sim.rec.acquires == []
    assert sim.monitor is not None and sim.monitor.state is State.BLOCKED
    assert [c.trigger for c in sim.rec.states][-1] is Trigger.ANSWERS_REFUSED
    (told,) = sim.rec.answers
    assert told.verified_before and not told.taking
    sim.kill_primary()
    sim.run_until(25)
    assert len(sim.rec.acquires) == 1 and sim.rec.acquire_events[0].probe == "silent"


def test_a_dead_host_does_not_answer_and_is_taken_over() -> None:
    sim = Sim()
    sim.run_until(10.5)
    sim.kill_primary()
    sim.run_until(20)
    (acq,) = sim.rec.acquire_events
    assert acq.probe == "silent" and sim.rec.answers == []


def test_graceful_leave_skips_the_probe() -> None:
    """LEAVING is the primary's own, authenticated word: no probe (its address still answers,
    since heartbeatd does not delete it), and the handover stays immediate."""
    sim = Sim()
    sim.run_until(5.5)
    sim.stop_primary()
    sim.run_until(20)
    ((t, reason),) = sim.rec.acquires
    assert reason is Trigger.PEER_LEAVING and t < 5.51
    assert sim.rec.probes == []
    assert sim.rec.acquire_events[0].probe == ""


# The state machine directly -----------------------------------------------------------------


def test_probe_failure_counts_as_no_answer_and_says_so() -> None:
    m = monitor()
    m.handle_timer(3.0)
    p = probe_of(events(m))
    m.probe_done(3.02, p.id, {}, ok=False)
    assert m.state is State.ACQUIRING and m.probe_result == "failed"
    (acq,) = [e for e in events(m) if type(e).__name__ == "Acquire"]
    assert acq.probe == "failed"  # type: ignore[attr-defined]


def test_a_late_or_unknown_probe_answer_changes_nothing() -> None:
    m = monitor()
    m.handle_timer(3.0)
    p = probe_of(events(m))
    m.probe_done(3.01, p.id + 1, {SERVICE: [OTHER_MAC]})
    assert m.state is State.PROBING and m.counters["probe-late"] == 1
    m.shutdown(3.02)
    assert m.state is State.STOPPED
    m.probe_done(3.03, p.id, {SERVICE: [OTHER_MAC]})
    assert m.state is State.STOPPED and m.counters["probe-late"] == 2


def test_shutdown_while_blocked_stops() -> None:
    m = monitor()
    m.handle_timer(3.0)
    m.probe_done(3.01, probe_of(events(m)).id, {SERVICE: [OTHER_MAC]})
    assert m.state is State.BLOCKED
    m.shutdown(4.0)
    assert m.state is State.STOPPED and m.get_timer() is None


def test_blocked_reports_a_new_mac_and_re_probes_no_faster_than_the_interval() -> None:
    m = monitor()
    m.handle_timer(3.0)
    m.probe_done(3.01, probe_of(events(m)).id, {SERVICE: [OTHER_MAC]})
    events(m)
    # the timer may fire earlier for a challenge round; no probe before the re-probe time
    m.handle_timer(3.5)
    assert not [e for e in events(m) if isinstance(e, Probe)]
    m.handle_timer(4.01)
    p = probe_of(events(m))
    m.probe_done(4.02, p.id, {SERVICE: [OTHER_MAC, PRIMARY_MAC]})
    (told,) = [e for e in events(m) if isinstance(e, AddressAnswers)]
    assert told.answering == ((SERVICE, tuple(sorted([OTHER_MAC, PRIMARY_MAC]))),)
    m.handle_timer(5.02)
    p = probe_of(events(m))
    m.probe_done(5.03, p.id, {SERVICE: [OTHER_MAC]})
    assert not [e for e in events(m) if isinstance(e, AddressAnswers)]  # nothing new
    assert m.state is State.BLOCKED


# Conflicts while holding ----------------------------------------------------------------------


def holding_monitor() -> Monitor:
    m = monitor()
    m.handle_timer(3.0)
    m.probe_done(3.01, probe_of(events(m)).id, {})
    m.acquire_done(3.05, ok=True)
    assert m.state is State.ACTIVE
    events(m)
    return m


def test_a_conflict_is_reported_once_per_episode_and_defended_at_most_every_10_s() -> None:
    m = holding_monitor()
    out: list[object] = []
    for i in range(60):  # another MAC claims the address every half second for 30 s
        m.address_claimed(10.0 + i * 0.5, SERVICE, OTHER_MAC)
        out += events(m)
    conflicts = [e for e in out if isinstance(e, AddressConflict)]
    defences = [e for e in out if isinstance(e, Defend)]
    assert [(c.address, c.mac, c.state) for c in conflicts] == [(SERVICE, OTHER_MAC, State.ACTIVE)]
    assert [d.at for d in defences] == [10.0, 20.0, 30.0]
    assert all(b.at - a.at >= DEFEND_INTERVAL for a, b in itertools.pairwise(defences))
    # a second MAC is news; it does not reset the defence clock
    m.address_claimed(40.0, SERVICE, PRIMARY_MAC)
    out = events(m)
    assert [e.mac for e in out if isinstance(e, AddressConflict)] == [PRIMARY_MAC]
    assert [e.at for e in out if isinstance(e, Defend)] == [40.0]
    (episode,) = m.conflicts(40.0)
    assert episode.macs == [OTHER_MAC, PRIMARY_MAC] and episode.defences == 4
    # quiet for longer than CONFLICT_QUIET: the next claim starts a new episode, reported again
    m.address_claimed(100.0, SERVICE, OTHER_MAC)
    assert [type(e) for e in events(m)] == [AddressConflict, Defend]


def test_no_conflict_and_no_defence_in_the_holddown_or_when_not_holding() -> None:
    m = monitor()
    m.address_claimed(1.0, SERVICE, OTHER_MAC)  # standby: not ours
    assert events(m) == [] and m.counters["claims.ignored"] == 1
    sim = in_holddown()
    assert sim.monitor is not None
    before = len(sim.rec.defences)
    sim.monitor.address_claimed(sim.now, SERVICE, PRIMARY_MAC)  # the primary is back: expected
    assert not [e for e in events(sim.monitor) if isinstance(e, AddressConflict | Defend)]
    assert sim.monitor.counters["claims.holddown"] == 1 and len(sim.rec.defences) == before


def test_an_episode_ends_when_we_stop_holding() -> None:
    m = holding_monitor()
    m.address_claimed(4.0, SERVICE, OTHER_MAC)
    events(m)
    m.shutdown(5.0)
    m.release_done(5.1, ok=True)
    assert m.state is State.STOPPED and m.conflicts(5.2) == []


def test_state_changes_name_the_probe_verdict() -> None:
    m = monitor()
    m.handle_timer(3.0)
    m.probe_done(3.01, probe_of(events(m)).id, {})
    changes = [e for e in events(m) if isinstance(e, StateChanged)]
    assert [(c.old, c.new, c.trigger) for c in changes] == [
        (State.PROBING, State.ACQUIRING, Trigger.NO_ANSWER)
    ]


def test_a_reload_that_allows_answering_takeovers_ends_a_refusal_at_the_next_probe() -> None:
    sim = Sim(take_answering=False)
    sim.run_until(10.5)
    sim.hang_primary()
    sim.run_until(15)
    assert sim.monitor is not None and sim.monitor.state is State.BLOCKED
    cfg = MonitorConfig(**{**sim.mcfg.__dict__, "take_answering": True})
    sim.monitor.reconfigure(cfg, sim.now)
    sim.run_until(17)
    (acq,) = sim.rec.acquire_events
    assert acq.probe == "answered" and 15 < acq.at <= 15 + REPROBE_MIN + sim.probe_wait + 0.01
