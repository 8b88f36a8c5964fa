"""Own datagrams are recognised by boot id, never by name alone (issue 7 section 1)."""

from __future__ import annotations

import asyncio
import random
import socket
import stat
import time
from pathlib import Path

import pytest
from sim import BCAST, KEY, SECONDARY, Sim

from ipfailover.core import auth, wire
from ipfailover.core.monitor import Monitor, MonitorConfig, State
from ipfailover.core.sender import Sender, SenderConfig
from ipfailover.shell import control


def cloned(sim: Sim) -> Sim:
    """Both machines carry the primary's name (a cloned host name, no FAILOVER_NODE_NAME)."""
    sim.mcfg = MonitorConfig(**{**sim.mcfg.__dict__, "node": "primary"})
    return sim


def test_clones_still_work_as_a_pair_and_say_so() -> None:
    sim = cloned(Sim(seed=4, start_secondary_at=0.3))
    sim.run_until(60)
    assert sim.rec.acquires == [], f"took a live primary over at {sim.rec.acquires[0][0]:.2f} s"
    m = sim.monitor
    assert m is not None and m.state is State.STANDBY
    assert m.collision is not None and m.collision.name == "primary"
    assert m.collision.boot == sim.sender.boot_id
    assert m.counters["name-collision"] > 50
    assert sim.sender.collision is not None and sim.sender.collision.boot == m.boot_id
    sim.kill_primary()
    sim.run_until(70)
    (t, _), *_ = sim.rec.acquires
    assert 60 < t < 64


def test_a_collision_is_one_event_per_episode(monkeypatch: pytest.MonkeyPatch) -> None:
    got: list[auth.NameCollision] = []
    original = Monitor.next_event

    def spy(self: Monitor) -> object:
        ev = original(self)
        if isinstance(ev, auth.NameCollision):
            got.append(ev)
        return ev

    monkeypatch.setattr(Monitor, "next_event", spy)
    sim = cloned(Sim(seed=5))
    sim.run_until(30)
    assert len(got) == 1 and got[0].name == "primary"
    assert sim.monitor is not None and sim.monitor.collision is not None
    assert sim.monitor.collision.episodes == 1 and sim.monitor.collision.count > 50


def test_own_host_daemons_are_ignored_by_boot_id() -> None:
    """Peering: this host's heartbeatd loops back to its failoverd, and its failoverd's
    challenges reach its heartbeatd. Known boot ids: ignored, as before, and no collision."""
    sim = cloned(Sim(seed=6, start_secondary_at=0.5))
    sim.host_up = False  # the "primary" is ourselves: nothing on the link has its address
    sim.secondary_boots = frozenset({sim.sender.boot_id})
    sim.run_until(0.5)
    assert sim.monitor is not None
    sim.primary_boots = frozenset({sim.monitor.boot_id})
    sim.run_until(20)
    m = sim.monitor
    assert m.counters["own"] > 10 and m.counters["name-collision"] == 0
    assert m.collision is None and sim.sender.collision is None
    assert sim.sender.listeners == []  # its own failoverd's challenges were not taken
    # nothing verified the "primary", which is ourselves: the takeover follows the dead time
    assert [round(t - 0.5) for t, _ in sim.rec.acquires] == [3]


def test_own_name_with_unknown_boot_is_held_until_the_shell_answers() -> None:
    rand = random.Random(1)
    cfg = SenderConfig(node="a", key=KEY, interval=1.0, targets=tuple(BCAST.values()))
    sender = Sender(cfg, rng=rand.randbytes, now=0.0)
    sender.handle_timer(0.0)
    sender.datagrams_to_send()
    challenge = wire.Message(
        type=wire.MsgType.CHALLENGE,
        sender="a",
        boot_id=b"F" * 8,
        seq=1,
        interval=1.0,
        nonce=b"n" * 8,
        echo_boot=sender.boot_id,
        echo_seq=sender.seq,
    )
    sender.receive_datagram(wire.encode(challenge, KEY), SECONDARY["pub"], 0.1)
    assert sender.wants_local_boots and sender.listeners == []
    sender.set_local_boots(frozenset({b"F" * 8}), 0.1)  # ours after all: this host's failoverd
    assert sender.listeners == [] and sender.counters["own"] == 1
    other = wire.Message(**{**challenge.__dict__, "boot_id": b"G" * 8})
    sender.receive_datagram(wire.encode(other, KEY), SECONDARY["pub"], 0.2)
    sender.set_local_boots(frozenset({b"F" * 8}), 0.2)  # not ours: a clone's failoverd
    assert sender.listeners == ["a"] and sender.counters["name-collision"] == 1
    assert any(isinstance(e, auth.NameCollision) for e in iter(sender.next_event, None))


# Names on the wire -------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["web server", "caf\u00e9", "a;b", "x$(id)"])
def test_a_host_name_that_cannot_be_a_node_name_stops_start_up(
    host: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from ipfailover.core import config
    from ipfailover.shell import runtime as daemon

    monkeypatch.setattr(socket, "gethostname", lambda: host)
    cfg = config.Config(path=str(tmp_path / "ipfailover.conf"))
    with pytest.raises(daemon.StartupError) as caught:
        daemon.node_name(cfg)
    text = str(caught.value)
    assert text.startswith(f"{cfg.path}: FAILOVER_NODE_NAME: unset, and the host name")
    assert "set FAILOVER_NODE_NAME" in text
    # a plain host name is still the default, and FAILOVER_NODE_NAME overrides a bad one
    monkeypatch.setattr(socket, "gethostname", lambda: "db-1.example.org")
    assert daemon.node_name(cfg) == "db-1.example.org"
    monkeypatch.setattr(socket, "gethostname", lambda: host)
    assert daemon.node_name(config.Config(path=cfg.path, node_name="db-1")) == "db-1"


# The shells: boot files, status, metrics, check -------------------------------------------------

COLLIDING = {
    "name": "primary",
    "source": "203.0.113.10:40000",
    "boot": "0102030405060708",
    "network": None,
    "first": time.time() - 30,
    "last": time.time() - 1,
    "datagrams": 57,
    "episodes": 1,
    "active": True,
}


def test_boot_files_name_this_hosts_daemons(tmp_path: Path) -> None:
    run = tmp_path / "run"
    control.write_boot(run, "heartbeatd", b"H" * 8)
    control.write_boot(run, "failoverd", b"F" * 8)
    assert control.read_boots(run) == {b"H" * 8, b"F" * 8}
    assert stat.S_IMODE((run / "failoverd.boot").stat().st_mode) == 0o600
    control.remove_boot(run, "failoverd", b"X" * 8)  # not ours: left alone
    assert control.read_boots(run) == {b"H" * 8, b"F" * 8}
    control.remove_boot(run, "failoverd", b"F" * 8)
    (run / "heartbeatd.boot").write_text("not hex\n")
    assert control.read_boots(run) == frozenset()


def test_status_and_metrics_show_a_collision(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from test_metrics import scrape
    from test_status import FAILOVERD, serve_and_run

    snap = {**FAILOVERD, "name_collision": COLLIDING}
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(FAILOVERD, "name_collision", COLLIDING)
        code, out = serve_and_run(tmp_path, ["status"], capsys)
    assert code == 0
    head, line, *_ = out.splitlines()
    assert head.startswith("failoverd on secondary")
    assert line.startswith("  NODE NAME COLLISION: another machine sends as 'primary' from ")
    assert "give each machine its own FAILOVER_NODE_NAME" in line
    text = scrape(snap)
    assert "ipfailover_name_collision 1.0" in text
    assert "ipfailover_name_collision_datagrams_total 57.0" in text


def test_check_asks_the_running_daemon_about_a_collision(tmp_path: Path) -> None:
    from ipfailover.core import config
    from ipfailover.tools import check

    cfg = config.Config(path=str(tmp_path / "hostconfig"), run_dir=str(tmp_path), node_name="a")

    async def main() -> list[check.Problem]:
        snap = {"role": "heartbeatd", "name_collision": COLLIDING}
        server = control.ControlServer(str(tmp_path), "heartbeatd", lambda: snap)
        await server.start()
        try:
            return await asyncio.to_thread(check.identity_problems, cfg)
        finally:
            await server.close()

    (problem,) = asyncio.run(main())
    assert not problem.fatal
    assert str(problem) == (
        f"warning: {cfg.path}: FAILOVER_NODE_NAME: the running heartbeatd hears another machine "
        "use its node name 'primary' (from 203.0.113.10:40000): give each machine its own "
        "FAILOVER_NODE_NAME"
    )
    assert check.identity_problems(cfg) == []  # nothing running


def test_the_collision_mail_says_what_to_do() -> None:
    from ipfailover import mail

    ev = auth.NameCollision(
        name="db", boot=b"\x01" * 8, addr=("203.0.113.10", 40000), network="eth0", at=1.0
    )
    s = mail.Situation(node="db", host="db", peer="db", addresses=("eth0:203.0.113.10/24",))
    notice = mail.collision_notice(ev, s, time.time())
    assert notice.event == "name-collision" and notice.ips == ("203.0.113.10",)
    assert notice.subject == "[ipfailover] db: another machine uses this node name (203.0.113.10)"
    assert "from 203.0.113.10 port 40000 on eth0 (boot id 0101010101010101)" in notice.body
    assert "FAILOVER_NODE_NAME" in notice.body
