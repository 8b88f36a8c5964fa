"""failoverd's core: scenarios on plain float clocks, then properties over random schedules."""

from __future__ import annotations

import random

import pytest
from sim import KEY, NETS, PRIMARY, Hand, Sim, in_holddown

from ipfailover.core import wire
from ipfailover.core.monitor import (
    TRANSITIONS,
    Acquire,
    LocalProtocolError,
    Monitor,
    MonitorConfig,
    State,
    Trigger,
)


def events(m: Monitor) -> list[object]:
    out = []
    while (ev := m.next_event()) is not None:
        out.append(ev)
    return out


def answer_probe(m: Monitor, now: float, answers: dict[str, list[str]] | None = None) -> None:
    """Play the shell: answer the probe the monitor asked for (no answer by default)."""
    assert m.state in (State.PROBING, State.BLOCKED), m.state
    probe_id = m._probe_out
    assert probe_id is not None
    m.probe_done(now, probe_id, answers or {})


# Scenarios -------------------------------------------------------------------------------------


def test_takes_over_deadtime_after_last_heartbeat() -> None:
    sim = Sim()
    sim.run_until(10.5)
    assert sim.monitor and sim.monitor.state is State.STANDBY
    sim.kill_primary()
    sim.run_until(30)
    (t, reason), *_ = sim.rec.acquires
    assert reason is Trigger.PEER_SILENT
    # last heartbeat left at 10.0; dead time 3 s, and the heartbeat due at 13.0 may be late by
    # the arrival allowance (a tenth of an interval); then the probe's wait, answered by no one
    assert 13.1 + sim.probe_wait <= t <= 13.11 + sim.probe_wait


def test_one_network_silent_is_an_anomaly_not_a_takeover() -> None:
    sim = Sim()
    sim.run_until(5)
    sim.up["pub"] = False
    sim.run_until(30)
    assert sim.rec.acquires == []
    assert sim.monitor is not None
    sim.up["pub"] = True
    sim.run_until(40)
    kinds = [(kind, net) for _, kind, net in sim.rec.network_events if kind != "verified"]
    assert ("anomaly", "pub") in kinds
    assert kinds.index(("anomaly", "pub")) < kinds.index(("recovered", "pub"))
    assert ("anomaly", "priv") not in kinds


def test_failback_after_holddown_even_on_private_alone() -> None:
    """Apple's test: the private cable goes back first; the secondary must let go."""
    sim = Sim(failback=3.0)
    sim.run_until(5)
    sim.up = {"pub": False, "priv": False}
    sim.run_until(15)
    assert len(sim.rec.acquires) == 1
    sim.up["priv"] = True
    t_back = sim.now
    sim.run_until(30)
    assert sim.monitor is not None and sim.monitor.state is State.STANDBY
    ((t_rel, reason),) = sim.rec.releases
    assert reason is Trigger.PEER_HEARD
    # hold-down, plus up to an interval until the primary's next heartbeat (the simulation has
    # no carrier event), a challenge round trip and the hand-back's
    assert t_back + 3.0 <= t_rel <= t_back + 3.0 + 1.0 + 0.01
    # The primary announced before we let go, and again when told.
    assert any(r == "handback" and t < t_rel for t, r in sim.rec.announces)
    assert any(r == "released" and t > t_rel for t, r in sim.rec.announces)


def test_primary_dying_during_holddown_is_not_handed_back() -> None:
    sim = in_holddown()
    assert sim.monitor is not None
    sim.kill_primary()
    sim.run_until(40)
    assert sim.rec.releases == [] and sim.monitor.state is State.ACTIVE


def test_graceful_leave_takes_over_at_once_and_not_handed_back() -> None:
    sim = Sim()
    sim.run_until(5.5)
    sim.stop_primary()
    sim.run_until(20)
    ((t, reason),) = sim.rec.acquires
    assert reason is Trigger.PEER_LEAVING and t < 5.51
    assert sim.rec.releases == []  # heartbeats from before the LEAVING do not bring it back


def test_started_while_primary_down_takes_over_after_deadtime() -> None:
    sim = Sim(start_secondary_at=2.0)
    sim.kill_primary()
    sim.run_until(20)
    ((t, _),) = sim.rec.acquires
    assert t == pytest.approx(5.0 + sim.probe_wait)


def test_restart_while_holding_adopts_without_release() -> None:
    sim = Sim(holding=True)
    sim.kill_primary()
    sim.run_until(20)
    assert sim.monitor is not None and sim.monitor.state is State.ACTIVE
    assert sim.rec.acquires == [] and sim.rec.releases == []


def test_replayed_capture_after_restart_does_not_prevent_takeover() -> None:
    first = Sim(seed=1)
    first.run_until(20)
    capture = list(first.captured)
    sim = Sim(seed=2)  # a fresh failoverd; the same key
    sim.kill_primary()
    for i in range(100):  # replay the whole capture, ten times over, throughout
        for data, net in capture[i % 10 :: 10]:
            sim.replay(data, net, at=i * 0.1)
    sim.run_until(30)
    ((t, reason),) = sim.rec.acquires
    assert reason is Trigger.PEER_SILENT and t == pytest.approx(3.0 + sim.probe_wait)
    assert sim.monitor is not None
    assert sim.monitor.counters["rejected.stale"] + sim.monitor.counters["rejected.replay"] > 0


def test_replay_of_unseen_capture_delays_at_most_one_period() -> None:
    """The strongest attacker: held back datagrams the secondary never saw, replayed later."""
    sim = Sim()
    sim.run_until(10.0)
    sim.up = {"pub": False, "priv": False}  # the attacker swallows the next heartbeats...
    sim.run_until(10.9)
    held = [d for d in sim.captured[-2:]]
    sim.kill_primary()  # ...the primary dies at 10.9, having sent at 10.0
    sim.up = {"pub": True, "priv": True}
    for i, data in enumerate(held):
        sim.replay(data, NETS[i], at=12.9)
    sim.run_until(30)
    ((t, _),) = sim.rec.acquires
    assert t <= 10.0 + 1.0 + 3.0 + 0.01


def test_forged_and_unknown_are_counted() -> None:
    cfg = MonitorConfig(
        node="s",
        key=KEY,
        period=1.0,
        deadtime=3.0,
        failback_delay=3.0,
        networks=("pub",),
        peer_name="primary",
    )
    m = Monitor(cfg, rng=random.Random(0).randbytes, now=0.0)
    hb = wire.Message(
        type=wire.MsgType.HEARTBEAT, sender="other", boot_id=b"b" * 8, seq=1, interval=1.0
    )
    m.receive_datagram(wire.encode(hb, KEY), ("203.0.113.9", 1), "pub", 0.1)
    m.receive_datagram(wire.encode(hb, b"x" * 32), ("203.0.113.9", 1), "pub", 0.2)
    m.receive_datagram(b"heartbeat", ("203.0.113.9", 1), "pub", 0.3)
    own = wire.Message(
        type=wire.MsgType.HEARTBEAT, sender="s", boot_id=b"b" * 8, seq=1, interval=1.0
    )
    m.receive_datagram(wire.encode(own, KEY), ("203.0.113.20", 1), "pub", 0.4)
    assert m.wants_local_boots  # our name: held until the shell says which boots are ours
    m.set_local_boots(frozenset({b"b" * 8}), 0.4)  # our heartbeatd's (peering)
    assert not m.wants_local_boots
    assert m.counters["rejected.unknown-peer"] == 1
    assert m.counters["rejected.bad-auth"] == 1
    assert m.counters["rejected.malformed"] == 1
    assert m.counters["own"] == 1
    dropped = [e for e in events(m) if isinstance(e, wire.Dropped)]
    assert [d.reason for d in dropped] == [
        wire.Reason.UNKNOWN_PEER,
        wire.Reason.BAD_AUTH,
        wire.Reason.MALFORMED,
    ]


def test_peer_name_is_pinned_from_peer_ip() -> None:
    import ipaddress

    sim = Sim()
    sim.mcfg = MonitorConfig(
        **{**sim.mcfg.__dict__, "peer_ip": ipaddress.ip_address(PRIMARY["pub"][0])}
    )
    sim.run_until(5)
    assert sim.monitor is not None and sim.monitor.peer_name == "primary"


def test_illegal_transition_raises() -> None:
    cfg = MonitorConfig(
        node="s", key=KEY, period=1.0, deadtime=3.0, failback_delay=1.0, networks=("pub",)
    )
    m = Monitor(cfg, rng=random.Random(0).randbytes, now=0.0)
    with pytest.raises(LocalProtocolError):
        m.acquire_done(1.0, ok=True)  # nothing was being acquired


def test_transition_table_is_closed() -> None:
    """Every state but STOPPED can be left, and every state can be entered."""
    sources = {s for s, _ in TRANSITIONS}
    assert sources == set(State) - {State.STOPPED}
    assert set(TRANSITIONS.values()) == set(State)


def test_shutdown_waits_for_acquire_then_releases() -> None:
    cfg = MonitorConfig(
        node="s", key=KEY, period=1.0, deadtime=3.0, failback_delay=1.0, networks=("pub",)
    )
    m = Monitor(cfg, rng=random.Random(0).randbytes, now=0.0)
    m.handle_timer(3.0)
    answer_probe(m, 3.0)
    assert m.state is State.ACQUIRING
    m.shutdown(3.1)
    assert m.state is State.ACQUIRING
    m.acquire_done(3.2, ok=True)
    assert m.state is State.STOPPING
    m.release_done(3.3, ok=True)
    assert m.state is State.STOPPED and m.get_timer() is None


def test_declined_waits_for_the_peer() -> None:
    sim = Sim()
    sim.veto_acquire = True
    sim.run_until(3)
    sim.kill_primary()
    sim.run_until(20)
    assert sim.monitor is not None and sim.monitor.state is State.DECLINED
    assert len(sim.rec.acquires) == 1  # asked once, not again every tick
    sim.revive_primary()
    sim.run_until(25)
    assert sim.monitor.state is State.STANDBY


# Properties over random schedules, checked at every step: test_monitor_properties.py


def test_reconfigure_keeps_holding_and_applies_new_deadtime() -> None:
    sim = Sim()
    sim.run_until(5)
    sim.kill_primary()
    sim.run_until(10)
    assert sim.monitor is not None and sim.monitor.state is State.ACTIVE
    events_before = len(sim.rec.acquires) + len(sim.rec.releases)
    sim.monitor.reconfigure(MonitorConfig(**{**sim.mcfg.__dict__, "deadtime": 1.0}), sim.now)
    assert sim.monitor.state is State.ACTIVE
    sim.run_until(15)
    assert len(sim.rec.acquires) + len(sim.rec.releases) == events_before
    # the new dead time applies: back, handed back, then dead again, it is taken over after
    # 1 s of silence (plus the arrival allowance and the probe), not 3 s
    sim.revive_primary()
    sim.run_until(25)
    assert sim.monitor.state is State.STANDBY
    sim.kill_primary()  # its last heartbeat left at 25.0
    sim.run_until(30)
    t, _ = sim.rec.acquires[-1]
    assert t == pytest.approx(25.0 + 1.0 + 0.1 + sim.probe_wait, abs=0.02)


def test_loss_over_the_last_minute() -> None:
    sim = Sim(interval=0.5, deadtime=5.0)
    sim.run_until(30)
    assert sim.monitor is not None
    assert sim.monitor.detector.loss("pub", 0.5, sim.now) == pytest.approx(0.0, abs=0.05)
    sim.up["pub"] = False
    sim.run_until(45)
    loss = sim.monitor.detector.loss("pub", 0.5, sim.now)
    assert loss == pytest.approx(15 / 45, abs=0.05)


def test_old_evidence_arriving_after_takeover_does_not_start_a_holddown() -> None:
    """A heartbeat that echoes a nonce from before the takeover proves nothing new: no flap."""
    cfg = MonitorConfig(
        node="s", key=KEY, period=1.0, deadtime=3.0, failback_delay=3.0, networks=("pub",)
    )
    m = Monitor(cfg, rng=random.Random(0).randbytes, now=0.0)
    m.handle_timer(0.0)
    hand = Hand(m)
    beat, nonce = hand.beat, hand.nonce

    beat((), 0.1)  # stale: answered at once with a challenge
    beat((nonce(),), 0.2)
    m.handle_timer(1.0)  # the next round's nonce reaches the primary, which then goes quiet
    n1 = nonce()
    m.handle_timer(3.31)  # dead time 3 s + the arrival allowance of 0.1 s after 0.2
    answer_probe(m, 3.31)
    assert m.state is State.ACQUIRING
    m.acquire_done(3.32, ok=True)
    beat((n1,), 3.5)  # proves life at 2.0 at best: before we took over
    m.handle_timer(5.5)
    assert m.state is State.ACTIVE
    assert not [e for e in events(m) if getattr(e, "new", None) is State.HOLDDOWN]


def test_dying_primary_is_a_takeover_not_an_anomaly() -> None:
    sim = Sim(latency=0.001, start_secondary_at=0.5)  # evidence = arrival time
    sim.skew["priv"] = 0.0005  # the last heartbeats arrive a little apart
    sim.run_until(5.5)
    sim.kill_primary()
    sim.run_until(12)
    sim.revive_primary()
    sim.run_until(20)
    assert [k for _, k, _ in sim.rec.network_events if k != "verified"] == []


def test_stopping_while_holding_tells_the_primary() -> None:
    """The primary deferred its announcement while we held its address: stopping must release
    it with a RELEASED, or clients keep our MAC until their ARP entries expire."""
    sim = in_holddown()
    assert sim.monitor is not None
    before = len(sim.rec.announces)
    sim.monitor.shutdown(sim.now)
    sim._flush_monitor()
    sim.run_until(18)
    assert sim.monitor.state is State.STOPPED
    assert [r for _, r in sim.rec.announces[before:]] == ["released"]


def test_a_failed_takeover_is_retried_while_the_primary_stays_silent() -> None:
    cfg = MonitorConfig(
        node="s", key=KEY, period=1.0, deadtime=3.0, failback_delay=1.0, networks=("pub",)
    )
    m = Monitor(cfg, rng=random.Random(0).randbytes, now=0.0)
    m.handle_timer(3.0)
    answer_probe(m, 3.0)
    assert m.state is State.ACQUIRING
    m.acquire_done(3.1, ok=False, retry_after=3.0)
    assert m.state is State.DECLINED and m.get_timer() is not None
    m.handle_timer(6.0)
    assert m.state is State.DECLINED
    m.handle_timer(6.1)
    assert m.state is State.PROBING  # a retry probes again
    answer_probe(m, 6.1)
    assert m.state is State.ACQUIRING
    acquires = [e for e in events(m) if isinstance(e, Acquire)]
    assert [a.reason for a in acquires] == [Trigger.PEER_SILENT, Trigger.RETRY]
    m.acquire_done(6.2, ok=False)  # vetoed (no retry): waits for the primary
    m.handle_timer(100.0)
    assert m.state is State.DECLINED
