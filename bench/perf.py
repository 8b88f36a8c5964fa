"""Performance bench (issue 10): ipfailover against keepalived in the same namespace lab.

Usage (as root, from the repository, with the project's venv)::

    .venv/bin/python bench/perf.py [--window 30] [--quick]

One command measures, on this machine, each against keepalived where keepalived has a counterpart:

* ``idle``: steady-state CPU of the pair (heartbeatd + failoverd; keepalived master + backup) as
  scheduler runtime from ``/proc/PID/schedstat`` over ``--window`` seconds, at 1 s and 0.1 s
  (and ipfailover at 0.01 s), with RSS and PSS from ``/proc/PID/smaps_rollup``;
* ``startup``: exec to sd_notify READY for each daemon, through a ``NOTIFY_SOCKET`` the bench binds;
* ``timeline``: the lab's failover and failback phases at 0.1 s, with every probe of the client;
* ``scale``: 1,024 pairs (IPv4 and IPv6, on pub0 and priv0): heartbeatd's start-up burst with a
  failoverd at 0.1 s watching, a takeover (both of P's cables pulled) and the release; the daemon's
  own work (acquire-done / release-done), the first to last address change seen by a netlink
  monitor in S, the gaps between heartbeats (P) and challenges (S) during the bursts, and the
  client-side switch of sample addresses; keepalived with 1,024 ``virtual_ipaddress`` entries;
* ``fast``: FAILOVER_INTERVAL=0.01, the failover phase ``--fast-runs`` times.

Every measured daemon runs under ``nice -n -10`` (the machine is shared, so wall-clock
latencies are upper bounds; CPU time is what the processes themselves used). Results go to
``bench/results/perf-<date>.json`` and ``.md``; plots (matplotlib) to ``docs/perf-*.png``.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import signal
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import keepalived_lab

from ipfailover.lab import processes, testbed, topology
from ipfailover.lab import scenario as iplab
from ipfailover.lab.settings import LabSettings
from ipfailover.lab.testbed import Lab
from ipfailover.lab.topology import Network, Node

REPO = Path(__file__).resolve().parent.parent
NICE = ["nice", "-n", "-10"]
HEARTBEAT_PORT = topology.HEARTBEAT_PORT

_daemon_command = processes.daemon_command
_keepalived_argv = keepalived_lab.keepalived_argv


PROFILE_DIR: Path | None = None  # --profile: every daemon runs under cProfile, stats here
_profiles = iter(range(1, 1 << 30))


def niced_daemon_command(name: str) -> list[str]:
    if PROFILE_DIR is not None and name in ("heartbeatd", "failoverd"):
        out = PROFILE_DIR / f"{name}-{next(_profiles)}.prof"
        return [*NICE, sys.executable, "-m", "cProfile", "-o", str(out), "-m",
                f"ipfailover.{name}"]  # fmt: skip
    return [*NICE, *_daemon_command(name)]


def niced_keepalived_argv(workdir: Path, config: Path) -> list[str]:
    return [*NICE, *_keepalived_argv(workdir, config)]


# every daemon the lab starts runs niced (testbed imported the name, so both are set)
processes.daemon_command = testbed.daemon_command = niced_daemon_command
keepalived_lab.keepalived_argv = niced_keepalived_argv


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# --- /proc ------------------------------------------------------------------------------------


def runtime_ms(pid: int) -> float:
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e6


def memory_mb(pid: int) -> dict[str, float]:
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        parts = line.split()
        if parts[0] in ("Rss:", "Pss:"):
            out[parts[0][:-1].lower()] = round(int(parts[1]) / 1024, 1)
    return out


def children(pid: int) -> list[int]:
    """keepalived forks its VRRP child: the processes of the tree under ``pid``."""
    out = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            out += [int(c) for c in (task / "children").read_text().split()]
    return out


def cpu_window(pids: dict[str, int], window: float) -> dict[str, float]:
    before = {name: runtime_ms(pid) for name, pid in pids.items()}
    time.sleep(window)
    return {name: round(runtime_ms(pid) - before[name], 1) for name, pid in pids.items()}


# --- idle -------------------------------------------------------------------------------------


def idle_ipfailover(interval: float, window: float) -> dict[str, Any]:
    with Lab() as lab:
        pc = lab.node_config(Node.PRIMARY, FAILOVER_INTERVAL=interval)
        sc = lab.node_config(Node.SECONDARY, FAILOVER_INTERVAL=interval)
        hb = lab.start_daemon(Node.PRIMARY, "heartbeatd", pc)
        fd = lab.start_daemon(Node.SECONDARY, "failoverd", sc)
        for net in Network:
            fd.wait_event("peer-verified", 20.0, network=net.value)
        time.sleep(max(2.0, 5 * interval))
        pids = {"heartbeatd": hb.pid, "failoverd": fd.pid}
        cpu = cpu_window(pids, window)
        mem = {name: memory_mb(pid) for name, pid in pids.items()}
    return {
        "software": "ipfailover",
        "interval": interval,
        "window": window,
        "cpu_ms": cpu,
        "pair_ms": round(sum(cpu.values()), 1),
        "memory": mem,
    }


def idle_keepalived(interval: float, window: float) -> dict[str, Any]:
    vrrp = keepalived_lab.VrrpSettings(interval, 2 if interval >= 1 else 3)
    with Lab() as lab:
        args = keepalived_lab.scenario_settings(vrrp)
        scenario = keepalived_lab.KeepalivedScenario(lab, vrrp, args, iplab.RunResult(0))
        master = scenario.start_keepalived(Node.PRIMARY)
        backup = scenario.start_keepalived(Node.SECONDARY)
        keepalived_lab.wait_line(backup, "Entering BACKUP STATE", 20.0)
        keepalived_lab.wait_line(master, "Entering MASTER STATE", 20.0)
        time.sleep(max(2.0, 5 * interval))
        pids = {}
        for role, proc in (("master", master), ("backup", backup)):
            for i, pid in enumerate(children(proc.pid)):
                pids[f"{role}{'' if i == 0 else '-vrrp'}"] = pid
        cpu = cpu_window(pids, window)
        mem = {name: memory_mb(pid) for name, pid in pids.items()}
    return {
        "software": "keepalived",
        "interval": interval,
        "window": window,
        "cpu_ms": cpu,
        "pair_ms": round(sum(cpu.values()), 1),
        "memory": mem,
    }


# The floor: two bare asyncio processes in the same lab, exchanging the pair's datagrams (P: a
# heartbeat to each network's broadcast per interval; S: two copies of a challenge to P on each
# network per interval, as failoverd's CHALLENGE_COPIES) with no authentication, no state, no
# logging. What any Python asyncio daemon with this protocol would cost here.
FLOOR = """
import asyncio, socket, sys
role, interval = sys.argv[1], float(sys.argv[2])
PEERS = {"pub": ("203.0.113.10", "203.0.113.255"), "priv": ("198.51.100.10", "198.51.100.255")}
async def main():
    loop = asyncio.get_running_loop()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setblocking(False)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    s.bind(("0.0.0.0", 1694 if role == "s" else 0))
    def read():
        while True:
            try:
                s.recvfrom(2048)
            except BlockingIOError:
                return
    loop.add_reader(s.fileno(), read)
    payload = bytes(96)
    def tick():
        for own, bcast in PEERS.values():
            if role == "p":
                s.sendto(payload, (bcast, 1694))
            else:
                s.sendto(payload, (own, 40000))
                s.sendto(payload, (own, 40000))
        loop.call_later(interval, tick)
    tick()
    print("start", flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


def idle_floor(interval: float, window: float) -> dict[str, Any]:
    with Lab() as lab:
        procs = {
            "p": lab.spawn(Node.PRIMARY, [*NICE, sys.executable, "-c", FLOOR, "p", str(interval)],
                           "floor-p"),
            "s": lab.spawn(Node.SECONDARY, [*NICE, sys.executable, "-c", FLOOR, "s",
                           str(interval)], "floor-s"),
        }  # fmt: skip
        time.sleep(2.0)
        pids = {name: proc.pid for name, proc in procs.items()}
        cpu = cpu_window(pids, window)
        mem = {name: memory_mb(pid) for name, pid in pids.items()}
    return {
        "software": "bare asyncio (floor)",
        "interval": interval,
        "window": window,
        "cpu_ms": cpu,
        "pair_ms": round(sum(cpu.values()), 1),
        "memory": mem,
    }


# --- start-up ---------------------------------------------------------------------------------


def startup(runs: int) -> dict[str, Any]:
    """exec to READY=1: the bench binds NOTIFY_SOCKET and starts each daemon ``runs`` times."""
    out: dict[str, list[float]] = {"heartbeatd": [], "failoverd": []}
    cpu: dict[str, list[float]] = {"heartbeatd": [], "failoverd": []}
    with Lab() as lab, tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/notify"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.settimeout(10.0)
        os.environ["NOTIFY_SOCKET"] = path
        try:
            configs = {
                "heartbeatd": (Node.PRIMARY, lab.node_config(Node.PRIMARY)),
                "failoverd": (Node.SECONDARY, lab.node_config(Node.SECONDARY)),
            }
            for i in range(runs):
                for name, (node, config) in configs.items():
                    start = time.monotonic()
                    proc = lab.start_daemon(node, name, config, log_name=f"{name}-{i}")
                    while True:
                        data = sock.recv(4096)
                        if b"READY=1" in data:
                            break
                    out[name].append(round(time.monotonic() - start, 3))
                    cpu[name].append(round(runtime_ms(proc.pid) / 1000, 3))
                    proc.stop()
        finally:
            del os.environ["NOTIFY_SOCKET"]
            sock.close()
    return {
        name: {
            "runs": v,
            "median": statistics.median(v),
            "cpu_runs": cpu[name],
            "cpu_median": statistics.median(cpu[name]),
        }
        for name, v in out.items()
    }


# --- timelines --------------------------------------------------------------------------------


def timeline(software: str, interval: float) -> dict[str, Any]:
    """The lab's failover and failback phases once, with every probe of the client."""
    result = iplab.RunResult(0)
    phases: dict[str, Any] = {}
    with Lab() as lab:
        if software == "ipfailover":
            args = LabSettings(interval=interval, failback_delay=3.0)
            scenario: iplab.Scenario = iplab.Scenario(lab, args, result)
        else:
            vrrp = keepalived_lab.VrrpSettings(interval, 3)
            args = keepalived_lab.scenario_settings(vrrp)
            scenario = keepalived_lab.KeepalivedScenario(lab, vrrp, args, result)
        scenario.setup()
        assert scenario.client is not None
        for name, step in (("failover", scenario.failover), ("failback", scenario.failback)):
            scenario.pause()
            start = time.monotonic()
            phase = step()
            end = time.monotonic()
            probes = scenario.client.between(start - 0.2, end)
            phases[name] = {
                "seconds": phase.seconds,
                "lost": phase.lost,
                "error": phase.error,
                "probes": [(round(p.sent - start, 4), p.who) for p in probes],
            }
    return {"software": software, "interval": interval, "phases": phases}


# --- scale ------------------------------------------------------------------------------------

MONITOR = """
import socket, sys, time
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
s.setsockopt(socket.SOL_SOCKET, 33, 1 << 22)
s.bind((0, 0x10 | 0x100))
print("start", flush=True)
while True:
    data = s.recv(1 << 16)
    t = time.monotonic()
    off = 0
    while off + 16 <= len(data):
        n = int.from_bytes(data[off:off + 4], "little")
        kind = int.from_bytes(data[off + 4:off + 6], "little")
        if kind in (20, 21):
            print(f"{t:.6f} {'add' if kind == 20 else 'del'}", flush=False)
        off += (n + 3) & ~3
    sys.stdout.flush()
"""

SNIFFER = """
import socket, struct, sys, time
port = int(sys.argv[2])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
s.bind((sys.argv[1], 0))
print("start", flush=True)
while True:
    frame, addr = s.recvfrom(2048)
    t = time.monotonic()
    if addr[2] != 4:  # outgoing only
        continue
    kind = struct.unpack_from("!H", frame, 12)[0]
    if kind == 0x0800 and frame[23] == 17:
        ihl = (frame[14] & 15) * 4
        sport, dport = struct.unpack_from("!HH", frame, 14 + ihl)
    elif kind == 0x86DD and frame[20] == 17:
        sport, dport = struct.unpack_from("!HH", frame, 54)
    else:
        continue
    if port in (sport, dport):
        print(f"{t:.6f}", flush=True)
"""


def scale_addresses() -> list[tuple[str, str, int]]:
    """1,024 (interface, address, prefix) pairs: IPv4 and IPv6 on pub0 and priv0."""
    out = []
    for i in range(21, 221):
        if i != 100:
            out.append(("pub0", f"203.0.113.{i}", 24))
        out.append(("priv0", f"198.51.100.{i}", 24))
    i = 0
    while len(out) < 1024:
        ifname, net = ("pub0", "2001:db8:1") if i % 2 == 0 else ("priv0", "2001:db8:2")
        out.append((ifname, f"{net}::{0x1000 + i:x}", 64))
        i += 1
    return out


def client_samples(pairs: Sequence[tuple[str, str, int]]) -> list[tuple[str, str, int]]:
    """Four addresses the client (on pub0 only) can reach: the first and last IPv4 and IPv6."""
    pub = [p for p in pairs if p[0] == "pub0"]
    v4 = [p for p in pub if ":" not in p[1]]
    v6 = [p for p in pub if ":" in p[1]]
    return [v4[0], v4[-1], v6[0], v6[-1]]


def add_on(lab: Lab, node: Node, pairs: Sequence[tuple[str, str, int]]) -> None:
    batch = "".join(f"addr add {a}/{p} dev {ifname}{' nodad' if ':' in a else ''}\n"
                    for ifname, a, p in pairs)  # fmt: skip
    lab.sh_in(node, ["ip", "-batch", "-"], stdin=batch, timeout=60)


class Lines:
    """A helper process in a namespace whose stdout lines are stamped floats."""

    def __init__(self, lab: Lab, node: Node, code: str, *args: str, name: str) -> None:
        self.proc = lab.spawn(node, [sys.executable, "-c", code, *args], name)
        self.proc.wait_event  # noqa: B018 (lines are parsed by LabProcess)
        deadline = time.monotonic() + 10
        while not any(ln.text == "start" for ln in list(self.proc.lines)):
            if time.monotonic() > deadline:
                raise topology.LabTimeout(f"{name} did not start")
            time.sleep(0.02)

    def times(self, since: float = 0.0, until: float = float("inf")) -> list[float]:
        out = []
        for ln in list(self.proc.lines):
            with contextlib.suppress(ValueError, IndexError):
                t = float(ln.text.split()[0])
                if since <= t <= until:
                    out.append(t)
        return out


def worst_gap(times: Sequence[float], interval: float) -> dict[str, Any]:
    """The largest deviation of a gap between sends from the interval (sends come in rounds:
    the copies of one round are merged first)."""
    rounds: list[float] = []
    for t in sorted(times):
        if not rounds or t - rounds[-1] > interval / 2:
            rounds.append(t)
    gaps = [b - a for a, b in itertools.pairwise(rounds)]
    if not gaps:
        return {"rounds": len(rounds), "max_gap": None, "worst_late": None}
    return {
        "rounds": len(rounds),
        "max_gap": round(max(gaps), 4),
        "worst_late": round(max(gaps) - interval, 4),
        "worst_late_fraction": round((max(gaps) - interval) / interval, 3),
    }


def sample_switch(client: Sequence[Any], start: float) -> float | None:
    first = next((p for p in client if p.sent >= start and p.who == "secondary"), None)
    return None if first is None else round(first.sent - start, 4)


def scale_ipfailover(interval: float) -> dict[str, Any]:
    res: dict[str, Any] = {"software": "ipfailover", "interval": interval}
    try:
        _scale_ipfailover(interval, res)
    except topology.LabError as e:  # keep what was measured before
        res["error"] = str(e)[:2000]
    return res


def _scale_ipfailover(interval: float, res: dict[str, Any]) -> None:
    pairs = scale_addresses()
    samples = client_samples(pairs)
    res["pairs"] = len(pairs)
    with Lab() as lab:
        add_on(lab, Node.PRIMARY, pairs)
        spec = " ".join(f"{ifname}:{a}" for ifname, a, _ in pairs)
        pc = lab.node_config(Node.PRIMARY, FAILOVER_INTERVAL=interval)
        sc = lab.node_config(
            Node.SECONDARY,
            FAILOVER_INTERVAL=interval,
            FAILOVER_PEER_IP_PAIRS=spec,
            FAILOVER_FAILBACK_DELAY=3,
        )
        lab.start_responders()
        sniff_p = Lines(lab, Node.PRIMARY, SNIFFER, "pub0", str(HEARTBEAT_PORT), name="sniff-p")
        sniff_s = Lines(lab, Node.SECONDARY, SNIFFER, "pub0", str(HEARTBEAT_PORT), name="sniff-s")
        monitor = Lines(lab, Node.SECONDARY, MONITOR, name="addr-monitor")
        t0 = time.monotonic()
        fd = lab.start_daemon(Node.SECONDARY, "failoverd", sc)
        fd.wait_event("start", 60.0)
        res["failoverd_start_s"] = round(time.monotonic() - t0, 3)
        time.sleep(0.5)
        t1 = time.monotonic()
        hb = lab.start_daemon(Node.PRIMARY, "heartbeatd", pc)
        for net in Network:
            fd.wait_event("peer-verified", 30.0, network=net.value)
        time.sleep(3.0)  # heartbeatd's start-up announcements (5 rounds, 0.2 s apart)
        t2 = time.monotonic()
        res["startup_burst"] = {
            "heartbeats_p": worst_gap(sniff_p.times(t1 + 0.5, t2), interval),
            "challenges_s": worst_gap(sniff_s.times(t1 + 0.5, t2), interval),
            "false_takeover": fd.find_event("acquire-start", since=t0) is not None,
        }
        clients = [
            lab.start_client(a, duration=120.0, log_name=f"client-{i}")
            for i, (_, a, _) in enumerate(samples)
        ]
        time.sleep(1.0)
        # takeover
        start = lab.cable(Node.PRIMARY, Network.PUBLIC, up=False)
        lab.cable(Node.PRIMARY, Network.PRIVATE, up=False)
        done = fd.wait_event("acquire-done", 30.0, since=start)
        time.sleep(1.5)
        adds = monitor.times(start)
        res["takeover"] = {
            "duration": float(done.fields["duration"]),
            "changed_at": float(done.fields["changed-at"]),
            "monitor_first_to_last": round(max(adds) - min(adds), 4) if adds else None,
            "monitor_first_after_pull": round(min(adds) - start, 4) if adds else None,
            "monitor_changes": len(adds),
            # (S's challenges to a silent primary back off by design: no schedule to keep)
            "client_switch": [sample_switch(c.between(start), start) for c in clients],
        }
        # release (failback after the hold-down)
        mark = time.monotonic()
        lab.cable(Node.PRIMARY, Network.PUBLIC, up=True)
        lab.cable(Node.PRIMARY, Network.PRIVATE, up=True)
        res["release"] = {"holddowns": None}
        try:
            done = fd.wait_event("release-done", 30.0, since=mark)
        finally:
            res["release"]["holddowns"] = len(fd.events("holddown-start", since=mark))
        time.sleep(1.5)
        dels = [t for t in monitor.times(done.t - 2.0)]
        res["release"] |= {
            "duration": float(done.fields["duration"]),
            "changed_at": float(done.fields["changed-at"]),
            "monitor_changes": len(dels),
            "heartbeats_p": worst_gap(sniff_p.times(done.t - 1.0, done.t + 1.5), interval),
            "challenges_s": worst_gap(sniff_s.times(done.t - 1.0, done.t + 1.5), interval),
        }
        fd.stop()  # releases what it holds
        hb.stop()
        # the kernel's share: the same 1,024 adds and deletes by `ip -batch` in S, seen by the
        # same monitor (an upper bound on what any daemon could reach here)
        for verb in ("add", "del"):
            mark = time.monotonic()
            nodad = " nodad" if verb == "add" else ""
            batch = "".join(f"addr {verb} {a}/{p} dev {ifname}{nodad if ':' in a else ''}\n"
                            for ifname, a, p in pairs)  # fmt: skip
            lab.sh_in(Node.SECONDARY, ["ip", "-batch", "-"], stdin=batch, timeout=60)
            time.sleep(0.5)
            changes = monitor.times(mark)
            res[f"ip_batch_{verb}_first_to_last"] = (
                round(max(changes) - min(changes), 4) if changes else None
            )


def scale_keepalived(interval: float) -> dict[str, Any]:
    pairs = scale_addresses()
    vrrp = keepalived_lab.VrrpSettings(interval, 3)
    res: dict[str, Any] = {"software": "keepalived", "interval": interval, "pairs": len(pairs)}
    vips = "\n".join(f"        {a}/{p} dev {ifname}" for ifname, a, p in pairs)

    def render(node: Node, v: keepalived_lab.VrrpSettings) -> str:
        # one VRRP instance carries one family: the 1,024 (both families) are "excluded"
        # addresses, which keepalived adds and deletes with the instance without advertising
        text = original_render(node, v)
        return text.replace(
            "    }\n}\n", f"    }}\n    virtual_ipaddress_excluded {{\n{vips}\n    }}\n}}\n"
        )

    original_render = keepalived_lab.render_config
    keepalived_lab.render_config = render
    try:
        with Lab() as lab:
            args = keepalived_lab.scenario_settings(vrrp)
            scenario = keepalived_lab.KeepalivedScenario(lab, vrrp, args, iplab.RunResult(0))
            monitor = Lines(lab, Node.SECONDARY, MONITOR, name="addr-monitor")
            lab.start_responders()
            master = scenario.start_keepalived(Node.PRIMARY)
            backup = scenario.start_keepalived(Node.SECONDARY)
            keepalived_lab.wait_line(backup, "Entering BACKUP STATE", 30.0)
            keepalived_lab.wait_line(master, "Entering MASTER STATE", 30.0)
            samples = client_samples(pairs)
            clients = [
                lab.start_client(a, duration=60.0, log_name=f"client-{i}")
                for i, (_, a, _) in enumerate(samples)
            ]
            time.sleep(2.0)
            start = lab.cable(Node.PRIMARY, Network.PUBLIC, up=False)
            lab.cable(Node.PRIMARY, Network.PRIVATE, up=False)
            keepalived_lab.wait_line(backup, "Entering MASTER STATE", 30.0, since=start)
            time.sleep(2.0)
            adds = monitor.times(start)
            res["takeover"] = {
                "monitor_first_to_last": round(max(adds) - min(adds), 4) if adds else None,
                "monitor_first_after_pull": round(min(adds) - start, 4) if adds else None,
                "monitor_changes": len(adds),
                "client_switch": [sample_switch(c.between(start), start) for c in clients],
            }
    finally:
        keepalived_lab.render_config = original_render
    return res


# --- fast intervals ---------------------------------------------------------------------------


def fast(interval: float, runs: int, window: float) -> dict[str, Any]:
    seconds: list[float] = []
    errors: list[str] = []
    steps: list[dict[str, float]] = []
    for _ in range(runs):
        result = iplab.RunResult(0)
        with Lab() as lab:
            args = LabSettings(interval=interval, failback_delay=3.0)
            scenario = iplab.Scenario(lab, args, result)
            try:
                scenario.setup()
                scenario.pause()
                start = time.monotonic()
                phase = scenario.failover()
                assert scenario.failoverd is not None
                began = scenario.failoverd.wait_event("acquire-start", 5.0, since=start)
                done = scenario.failoverd.wait_event("acquire-done", 5.0, since=start)
            except topology.LabError as e:
                errors.append(str(e))
                continue
            if phase.seconds is not None:
                seconds.append(round(phase.seconds, 4))
                steps.append(
                    {
                        "acquire_start": round(began.t - start, 4),
                        "acquire_done": round(done.t - start, 4),
                        "own_work": float(done.fields["duration"]),
                        "client_switch": round(phase.seconds, 4),
                    }
                )
            else:
                errors.append(str(phase.error))
    idle = idle_ipfailover(interval, window)
    try:
        keepalived = idle_keepalived(interval, window)
    except topology.LabError as e:
        keepalived = {"error": str(e)[:500]}
    return {
        "keepalived_idle": keepalived,
        "interval": interval,
        "failover_runs": seconds,
        "failover_median": statistics.median(seconds) if seconds else None,
        "steps": steps,
        "errors": errors,
        "idle": idle,
    }


# --- output -----------------------------------------------------------------------------------


def plot(results: dict[str, Any], docs: Path, stamp: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    tls = _list(results, "timelines")
    if tls:
        phases = ["failover", "failback"]
        fig, axes = plt.subplots(len(tls), len(phases), figsize=(12, 1.6 * len(tls) + 1))
        colours = {"primary": "tab:blue", "secondary": "tab:orange", None: "tab:red"}
        for row, tl in enumerate(tls):
            for col, phase in enumerate(phases):
                ax = axes[row][col]
                probes = tl["phases"].get(phase, {}).get("probes", [])
                for level, who in enumerate(("primary", "secondary", None)):
                    xs = [t for t, w in probes if w == who]
                    ax.scatter(xs, [2 - level] * len(xs), s=8, marker="|", c=colours[who],
                               label=who or "lost")  # fmt: skip
                ax.set_yticks([0, 1, 2], ["lost", "S", "P"], fontsize=7)
                ax.set_ylim(-0.5, 2.5)
                ax.set_title(f"{tl['software']} {tl['interval']:g} s: {phase}", fontsize=9)
                ax.set_xlabel("s after the cables changed", fontsize=8)
        axes[0][0].legend(loc="upper right", fontsize=7)
        fig.tight_layout()
        path = docs / "perf-timeline.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path.name)
    idle = _list(results, "idle")
    before = [{**r, "software": "before"} for r in _list(results.get("before", {}), "idle")
              if r["software"] == "ipfailover"]  # fmt: skip
    if idle:
        rows = sorted(
            [*before, *idle], key=lambda r: (-r["interval"], _ORDER.get(r["software"], 9))
        )
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.5))
        labels = [f"{_SHORT.get(r['software'], r['software'])}\n{r['interval']:g} s" for r in rows]
        per30 = [r["pair_ms"] * 30 / r["window"] for r in rows]
        bars = ax1.bar(range(len(rows)), per30,
                       color=[_COLOURS.get(r["software"], "tab:gray") for r in rows])  # fmt: skip
        ax1.bar_label(bars, fmt="%.0f", fontsize=7)
        ax1.set_xticks(range(len(rows)), labels, fontsize=7)
        ax1.set_ylabel("pair CPU per 30 s (ms, schedstat)")
        ax1.set_yscale("log")
        names, rss, pss = [], [], []
        for r in sorted([*before, *idle], key=lambda r: _ORDER.get(r["software"], 9)):
            if r["interval"] != idle[0]["interval"]:
                continue
            for name, m in r["memory"].items():
                names.append(f"{_SHORT.get(r['software'], r['software'])}\n{name}")
                rss.append(m["rss"])
                pss.append(m["pss"])
        xs = range(len(names))
        ax2.bar([x - 0.2 for x in xs], rss, width=0.4, label="RSS")
        ax2.bar([x + 0.2 for x in xs], pss, width=0.4, label="PSS")
        ax2.set_xticks(list(xs), names, fontsize=6)
        ax2.set_ylabel("MB")
        ax2.axhline(25, color="red", lw=0.8, ls="--")
        ax2.legend()
        fig.tight_layout()
        path = docs / "perf-cpu-rss.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path.name)
    return written


_SHORT = {"bare asyncio (floor)": "floor", "before": "ipfailover\nbefore"}
_ORDER = {"before": 0, "ipfailover": 1, "keepalived": 2, "bare asyncio (floor)": 3}
_COLOURS = {"before": "tab:red", "ipfailover": "tab:blue", "keepalived": "tab:gray",
            "bare asyncio (floor)": "tab:olive"}  # fmt: skip


def _list(results: dict[str, Any], key: str) -> list[Any]:
    value = results.get(key, [])
    return value if isinstance(value, list) else []


def markdown(results: dict[str, Any]) -> str:
    lines = [f"Run {results['date']} on {results['machine']}; command: `{results['command']}`", ""]
    lines += ["| idle pair | interval | CPU per 30 s (ms) | per daemon (ms / window) | RSS MB "
              "| PSS MB |", "|---|---|---|---|---|---|"]  # fmt: skip
    before = [{**r, "software": "ipfailover before"} for r in _list(results.get("before", {}),
              "idle") if r["software"] == "ipfailover"]  # fmt: skip
    for r in [*before, *_list(results, "idle")]:
        per30 = r["pair_ms"] * 30 / r["window"]
        cpu = ", ".join(f"{k} {v:g}" for k, v in r["cpu_ms"].items())
        rss = ", ".join(f"{k} {m['rss']:g}" for k, m in r["memory"].items())
        pss = ", ".join(f"{k} {m['pss']:g}" for k, m in r["memory"].items())
        lines.append(f"| {r['software']} | {r['interval']:g} s | {per30:.1f} | {cpu} | {rss} "
                     f"| {pss} |")  # fmt: skip
    if "startup" in results and "error" not in results["startup"]:
        lines += ["", "| start-up, exec to READY | wall median (s) | runs "
                  "| CPU to READY, median (s) |", "|---|---|---|---|"]  # fmt: skip
        for name, s in results["startup"].items():
            lines.append(f"| {name} | {s['median']:.3f} | {s['runs']} | {s['cpu_median']:.3f} |")
    for tl in _list(results, "timelines"):
        for phase, p in tl["phases"].items():
            lines.append(
                f"\n{tl['software']} {tl['interval']:g} s {phase}: {p['seconds']} s, "
                f"lost {p['lost']}" + (f" ({p['error']})" if p["error"] else "")
            )
    for s in _list(results, "scale"):
        lines += ["", f"scale, {s['software']}, {s['pairs']} pairs at {s['interval']:g} s:",
                  "```", json.dumps({k: v for k, v in s.items() if k not in ("software",)},
                                    indent=1), "```"]  # fmt: skip
    if "fast" in results and "error" not in results["fast"]:
        f = results["fast"]
        lines += ["", f"FAILOVER_INTERVAL={f['interval']:g}: failover median "
                  f"{f['failover_median']} s over {f['failover_runs']}; idle pair CPU "
                  f"{f['idle']['pair_ms'] * 30 / f['idle']['window']:.1f} ms per 30 s "
                  f"(keepalived's pair: {f['keepalived_idle'].get('pair_ms', 'n/a')} ms per "
                  f"{f['keepalived_idle'].get('window', '?')} s); "
                  f"errors: {f['errors']}"]  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--window", type=float, default=30.0, help="CPU window (s)")
    p.add_argument("--only", nargs="*", default=["idle", "startup", "timeline", "scale", "fast"])
    p.add_argument("--fast-runs", type=int, default=5)
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    p.add_argument("--docs", type=Path, default=REPO / "docs")
    p.add_argument("--profile", type=Path, help="run the daemons under cProfile, stats here")
    p.add_argument("--before", type=Path, help="a JSON of an earlier run, plotted alongside")
    p.add_argument("--replot", type=Path, help="only redo the table and plots of this JSON")
    args = p.parse_args(argv)
    if args.replot is not None:
        results = json.loads(args.replot.read_text())
        if args.before is not None:
            results["before"] = json.loads(args.before.read_text())
        results["plots"] = plot(results, args.docs, "")
        text = markdown(results)
        args.replot.with_suffix(".md").write_text(text)
        print(text)
        return 0
    if args.profile is not None:
        global PROFILE_DIR
        PROFILE_DIR = args.profile
        PROFILE_DIR.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        print("bench/perf.py: needs root (network namespaces)", file=sys.stderr)
        return 2
    stamp = datetime.now(UTC).strftime("%Y-%m-%d")
    results: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.node()}, {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Linux {platform.release()}, Python {platform.python_version()}, shared with other "
        "jobs; measured processes under nice -n -10",
        "command": "bench/perf.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    steps: list[tuple[str, Callable[[], Any]]] = []
    if "idle" in args.only:
        steps += [
            ("idle", lambda: [
                idle_ipfailover(1.0, args.window), idle_keepalived(1.0, args.window),
                idle_ipfailover(0.1, args.window), idle_keepalived(0.1, args.window),
                idle_floor(1.0, args.window), idle_floor(0.1, args.window),
            ]),
        ]  # fmt: skip
    if "startup" in args.only:
        steps.append(("startup", lambda: startup(5)))
    if "timeline" in args.only:
        steps.append(("timelines", lambda: [timeline("ipfailover", 0.1),
                                            timeline("keepalived", 0.1)]))  # fmt: skip
    if "scale" in args.only:
        steps.append(("scale", lambda: [scale_ipfailover(0.1), scale_keepalived(0.1)]))
    if "fast" in args.only:
        steps.append(("fast", lambda: fast(0.01, args.fast_runs, args.window)))
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(130))
    try:
        for name, step in steps:
            log(f"{name} ...")
            try:
                results[name] = step()
            except topology.LabError as e:
                results[name] = {"error": str(e)}
                log(f"{name} failed: {e}")
            log(f"{name}: {json.dumps(results[name])[:300]}")
    finally:
        signal.signal(signal.SIGTERM, previous)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"perf-{stamp}.json").write_text(json.dumps(results, indent=1) + "\n")
    if args.before is not None:
        results["before"] = json.loads(args.before.read_text())
    results["plots"] = plot(results, args.docs, stamp)
    text = markdown(results)
    (args.out / f"perf-{stamp}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
