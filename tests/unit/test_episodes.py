"""No mail storm: network notices are grouped into episodes (ipfailover.core.episodes).

The flapping network is the real core's: a Sim (heartbeatd's and failoverd's cores over an
in-memory link) whose public network is cut for 4 s every 8 s, for a simulated hour. Its
anomaly/recovered events, one mail each before, are fed to the policy at their times."""

from __future__ import annotations

from sim import Sim

from ipfailover.core.episodes import NetworkNotices, Summary, settle_time

HOUR = 3600.0


class QuietSim(Sim):
    """The Sim with its timer events de-duplicated, so a simulated hour stays fast."""

    def __init__(self, **kw: object) -> None:
        self._armed: set[tuple[str, float]] = set()
        super().__init__(**kw)  # type: ignore[arg-type]

    def _push(self, t: float, kind: str, payload: object) -> None:
        if kind.endswith("-timer"):
            if (kind, t) in self._armed:
                return
            self._armed.add((kind, t))
        super()._push(t, kind, payload)

    def _dispatch(self, kind: str, payload: object) -> None:
        if kind.endswith("-timer"):
            self._armed.discard((kind, self.now))
        super()._dispatch(kind, payload)


def flapping(until: float, *, down: float = 4.0, up: float = 4.0) -> list[tuple[float, str, str]]:
    """The core's anomaly/recovered events while "pub" flaps from t=10 s to ``until``."""
    sim = QuietSim(interval=1.0, deadtime=3.0, failback=3.0, seed=1)
    sim.run_until(10.0)
    t = 10.0
    while t < until:
        sim.up["pub"] = False
        sim.run_until(t + down)
        sim.up["pub"] = True
        sim.run_until(t + down + up)
        t += down + up
    sim.run_until(until + 600.0)
    assert not sim.rec.acquires  # the other network hears the primary: never a takeover
    return [e for e in sim.rec.network_events if e[1] != "verified"]


def mails(
    events: list[tuple[float, str, str]], policy: NetworkNotices, end: float
) -> list[Summary]:
    """Drive the policy as failoverd does: each event at its time, the timer when due."""
    out: list[Summary] = []
    for at, kind, network in [*events, (end, "end", "")]:
        while (due := policy.get_timer()) is not None and due <= at:
            out += policy.handle_timer(due)
        if kind != "end":
            out += policy.event(kind, network, at)
    return out


def test_a_network_flapping_every_4_s_for_an_hour_mails_once_and_once_more_when_settled() -> None:
    end = 10.0 + HOUR  # the hour from the first cut
    events = flapping(end)
    in_hour = [e for e in events if e[0] < end]
    before = len(in_hour)  # one mail per event, as before
    assert [k for _, k, _ in in_hour].count("anomaly") == 450
    assert [k for _, k, _ in in_hour].count("recovered") >= 449
    policy = NetworkNotices(settle=settle_time(3.0), remind=HOUR)
    sent = mails(events, policy, end + 600.0)
    in_hour_after = [m for m in sent if m.at < end]
    print(f"mails in the simulated hour: before {before}, after {len(in_hour_after)}")
    assert len(in_hour_after) == 1 and in_hour_after[0].reason == "start"
    # the first loss at once; an hour later a reminder (it changed 7 s before: still
    # flapping, for all anyone can tell); the summary once it has not changed for 60 s
    assert [(m.kind, m.reason) for m in sent] == [
        ("anomaly", "start"), ("recovered", "reminder"), ("recovered", "settled"),
    ]  # fmt: skip
    assert sent[0].network == "pub"
    last = sent[-1]
    assert (last.anomalies, last.recoveries) == (450, 450)
    assert last.at == events[-1][0] + 60.0
    assert 449 < last.silent_for < 451  # from each anomaly to its recovery: 1 s each here


def test_one_blip_is_one_anomaly_mail_and_one_recovered_mail_after_it_settles() -> None:
    policy = NetworkNotices(settle=60.0)
    assert [m.reason for m in policy.event("anomaly", "pub", 100.0)] == ["start"]
    assert policy.event("recovered", "pub", 104.0) == []
    assert policy.get_timer() == 164.0
    assert policy.handle_timer(163.9) == []
    (done,) = policy.handle_timer(164.0)
    assert (done.kind, done.reason, done.anomalies, done.recoveries) == (
        "recovered",
        "settled",
        1,
        1,
    )
    assert done.silent_for == 4.0 and done.started == 100.0
    assert policy.get_timer() is None  # the episode is over
    assert [m.reason for m in policy.event("anomaly", "pub", 500.0)] == ["start"]  # a new one


def test_a_network_that_flaps_then_stays_down_says_so_once_and_then_waits() -> None:
    policy = NetworkNotices(settle=60.0)
    sent = policy.event("anomaly", "priv", 0.0)
    for t in range(10, 100, 10):  # back at 10, 30, ...; lost again at 20, 40, ...
        sent += policy.event("recovered" if t % 20 else "anomaly", "priv", float(t))
    sent += policy.event("anomaly", "priv", 100.0)
    sent += policy.handle_timer(160.0)  # silent and steady since 100: it settled, down
    assert [(m.kind, m.reason) for m in sent] == [("anomaly", "start"), ("anomaly", "settled")]
    assert (sent[-1].anomalies, sent[-1].recoveries) == (6, 5)
    assert policy.get_timer() is None  # nothing more until it changes
    assert policy.event("recovered", "priv", 1000.0) == []
    (back,) = policy.handle_timer(1060.0)
    assert (back.kind, back.reason, back.anomalies, back.recoveries) == (
        "recovered",
        "settled",
        6,
        6,
    )


def test_a_plain_outage_that_lasts_is_one_mail_and_its_end_one_more() -> None:
    policy = NetworkNotices(settle=60.0)
    assert len(policy.event("anomaly", "pub", 0.0)) == 1
    assert policy.handle_timer(60.0) == []  # down and steady, never came back: nothing new
    (back,) = [*policy.event("recovered", "pub", 5000.0), *policy.handle_timer(5060.0)]
    assert (back.kind, back.silent_for) == ("recovered", 5000.0)


def test_an_episode_that_never_settles_is_recalled_once_an_hour() -> None:
    events = flapping(3 * HOUR)
    sent = mails(events, NetworkNotices(settle=60.0, remind=HOUR), 3 * HOUR + 600.0)
    reasons = [m.reason for m in sent]
    assert reasons[0] == "start" and reasons[-1] == "settled"
    assert reasons.count("reminder") == 3  # ~1 h, 2 h, 3 h after the first mail
    assert len(sent) == 5 and len(events) == 2698  # 5 mails, against 2698 before


def test_networks_have_episodes_of_their_own() -> None:
    policy = NetworkNotices(settle=60.0)
    assert len(policy.event("anomaly", "pub", 0.0)) == 1
    assert len(policy.event("anomaly", "priv", 1.0)) == 1
    policy.event("recovered", "pub", 2.0)
    assert [m.network for m in policy.handle_timer(62.0)] == ["pub"]


def test_the_open_episode_is_there_for_status() -> None:
    policy = NetworkNotices(settle=60.0)
    assert policy.episode("pub", 0.0) is None
    policy.event("anomaly", "pub", 10.0)
    policy.event("recovered", "pub", 12.0)
    policy.event("anomaly", "pub", 20.0)
    now = policy.episode("pub", 25.0)
    assert now is not None and (now.anomalies, now.recoveries) == (2, 1)
    assert now.silent_for == 7.0 and now.started == 10.0 and now.changed == 20.0
