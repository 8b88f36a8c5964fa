"""Faults for the lab, an invariant checker, and the fault cases behind ``ipfailover lab --faults``.

Everything here drives an :class:`ipfailover.lab.topology.Lab` (see that module for the topology and
the addresses) and runs only inside its namespaces:

* :class:`FaultInjector` -- composable faults on any node and network: random loss of the
  heartbeat protocol's datagrams in either direction (nftables ``numgen random mod 100 < N``
  rules in the node's own table), one-way and two-way partitions (the same rule at 100 %),
  cable flaps with a period, SIGSTOP/SIGCONT/SIGKILL of a process the lab started (by its PID),
  and a bounded flood of forged datagrams from the client namespace.  The *schedule* of faults
  is drawn from a seeded ``random.Random``; which packet a loss rule drops is the kernel's
  random choice, so two runs with one seed apply the same faults at the same times, not the
  same drops.
* :class:`FaultRun` -- one lab with heartbeatd on the primary, failoverd on the secondary, probe
  responders, a probe client on the client namespace and ``ip monitor address`` on the primary
  and the secondary, so that every change of who holds the service address is stamped on the
  same clock as the probes and the daemons' log lines.
* :class:`Checker` -- judges a run against the promises: after a fault clears, the right node
  holds every address within dead time + hold-down + 1 s; no address is left where it should
  not be; transitions never overlap; no daemon dies (unless the case killed it on purpose).
* The cases of issue 8 (1-7 and the soak, 12) as functions returning a :class:`CaseResult`, and
  :func:`run_cli` behind ``ipfailover lab --faults NAME|all --minutes N --seed S``, which writes
  a JSON report and a Markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import enum
import itertools
import json
import os
import platform
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ipfailover.lab.topology import (
    HEARTBEAT_PORT,
    NODE_NAMES,
    SERVICE_V4,
    SERVICE_V6,
    Lab,
    LabError,
    LabProcess,
    LabTimeout,
    Network,
    Node,
    ProbeMonitor,
)

PRIMARY = NODE_NAMES[Node.PRIMARY]
SECONDARY = NODE_NAMES[Node.SECONDARY]


class Direction(enum.StrEnum):
    """Which way a drop rule works, seen from the node it is installed on."""

    IN = "in"
    OUT = "out"
    BOTH = "both"


HEARTBEAT_MATCHES = (f"udp dport {HEARTBEAT_PORT}", f"udp sport {HEARTBEAT_PORT}")
"""nft matches for the heartbeat protocol: heartbeats go to the port, challenges come from it."""

VRRP_MATCHES = ("ip protocol vrrp",)
"""nft match for keepalived's VRRP adverts (the peer benchmark)."""


@dataclass(frozen=True)
class Drop:
    """Drop ``percent`` % of the protocol's datagrams on a node's interface(s), one way or both.

    100 % is a partition. ``network`` None means every network of the node.
    """

    node: Node
    percent: int
    network: Network | None = None
    direction: Direction = Direction.BOTH

    def describe(self) -> str:
        where = self.network.name.lower() if self.network else "all networks"
        what = "partition" if self.percent >= 100 else f"{self.percent}% loss"
        return f"{what} {NODE_NAMES[self.node]} {where} {self.direction.value}"


class FaultInjector:
    """Applies and clears faults in a lab; every fault is marked on the lab's timeline."""

    def __init__(self, lab: Lab, matches: Sequence[str] = HEARTBEAT_MATCHES) -> None:
        self.lab = lab
        self.matches = tuple(matches)
        self.table = f"ipfo_{lab.run_id}_faults"
        self.drops: list[Drop] = []
        self._flappers: list[threading.Thread] = []
        self._stop_flap = threading.Event()

    # --- loss and partitions -------------------------------------------------------------------

    def add(self, drop: Drop) -> Drop:
        if not 0 < drop.percent <= 100:
            raise ValueError("percent must be in 1..100")
        self.drops.append(drop)
        self._apply(drop.node)
        self.lab.mark(f"fault on: {drop.describe()}")
        return drop

    def remove(self, drop: Drop) -> None:
        with contextlib.suppress(ValueError):
            self.drops.remove(drop)
        self._apply(drop.node)
        self.lab.mark(f"fault off: {drop.describe()}")

    def clear(self) -> None:
        """Remove every loss and partition rule (flaps are stopped by ``stop_flaps``)."""
        nodes = {d.node for d in self.drops}
        self.drops.clear()
        for node in nodes:
            self._apply(node)
        if nodes:
            self.lab.mark("faults cleared")

    def _apply(self, node: Node) -> None:
        script = self.nft_script([d for d in self.drops if d.node is node])
        self.lab.sh_in(node, ["nft", "-f", "-"], stdin=script)

    def nft_script(self, drops: Sequence[Drop]) -> str:
        """An atomic nft script: (re)create this injector's table with one rule per drop."""
        table = f"inet {self.table}"
        lines = [f"table {table} {{}}", f"delete table {table}"]
        chains: dict[str, list[str]] = {"input": [], "output": []}
        for drop in drops:
            hooks = {Direction.IN: ["input"], Direction.OUT: ["output"]}.get(
                drop.direction, ["input", "output"]
            )
            nets = [drop.network] if drop.network else list(Network)
            for hook in hooks:
                key = "iifname" if hook == "input" else "oifname"
                for net in nets:
                    for match in self.matches:
                        verdict = (
                            "drop"
                            if drop.percent >= 100
                            else f"numgen random mod 100 < {drop.percent} drop"
                        )
                        chains[hook].append(f'{key} "{net.value}" {match} {verdict}')
        if drops:
            lines.append(f"table {table} {{")
            for hook, rules in chains.items():
                lines.append(
                    f"  chain {hook} {{ type filter hook {hook} priority -5; policy accept;"
                )
                lines += [f"    {rule}" for rule in rules]
                lines.append("  }")
            lines.append("}")
        return "\n".join(lines) + "\n"

    # --- cables ---

    def flap(
        self, node: Node, networks: Sequence[Network], down: float, up: float, duration: float
    ) -> threading.Thread:
        """Pull and plug a node's cables (down seconds out, up seconds in) for ``duration``.

        Runs in a thread; the cables are always plugged back in at the end.
        """
        self._stop_flap.clear()

        def loop() -> None:
            end = time.monotonic() + duration
            try:
                while time.monotonic() < end and not self._stop_flap.is_set():
                    for net in networks:
                        self.lab.cable(node, net, up=False)
                    self._stop_flap.wait(min(down, max(0.0, end - time.monotonic())))
                    for net in networks:
                        self.lab.cable(node, net, up=True)
                    self._stop_flap.wait(up)
            finally:
                for net in networks:
                    with contextlib.suppress(LabError):
                        self.lab.cable(node, net, up=True)

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        self._flappers.append(thread)
        self.lab.mark(f"fault on: flap {NODE_NAMES[node]} {down}s out/{up}s in for {duration}s")
        return thread

    def stop_flaps(self, timeout: float = 10.0) -> None:
        self._stop_flap.set()
        for thread in self._flappers:
            thread.join(timeout)
        self._flappers.clear()

    # --- processes ---

    def signal(self, proc: LabProcess, sig: signal.Signals) -> float:
        """Send a signal to a process the lab started (by its PID); return the time."""
        if proc not in self.lab.processes:
            raise LabError(f"{proc.label} was not started by this lab")
        if proc.poll() is None:
            os.kill(proc.pid, sig)
        return self.lab.mark(f"{sig.name} {proc.label} (pid {proc.pid})")

    def flood(self, count: int, seconds: float, target: str = "203.0.113.20") -> LabProcess:
        """Send up to ``count`` forged datagrams in at most ``seconds`` from the client namespace
        to failoverd's port, as fast as one process can; returns the flooding process, whose
        last line is ``event=flood-done sent=N seconds=S``."""
        argv = [sys.executable, "-m", "ipfailover.lab.faults", "flood", "--target", target,
                f"--port={HEARTBEAT_PORT}", f"--count={count}", f"--seconds={seconds}"]  # fmt: skip
        proc = self.lab.spawn(Node.CLIENT, argv, f"flood-{len(self.lab.processes)}")
        self.lab.mark(f"fault on: flood of {count} forged datagrams within {seconds}s")
        return proc


def flood_main(argv: Sequence[str]) -> int:
    """The flood generator: forged datagrams (valid magic and version, random rest, so they
    fail authentication) to target:port, bounded in count and time."""
    p = argparse.ArgumentParser(prog="ipfailover.lab.faults flood")
    p.add_argument("--target", required=True)
    p.add_argument("--port", type=int, default=HEARTBEAT_PORT)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--seconds", type=float, required=True)
    args = p.parse_args(argv)
    rng = random.Random(args.count)
    payloads = [b"IPFO\x01\x01\x00\x07" + rng.randbytes(rng.randrange(40, 160)) for _ in range(64)]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dest = (args.target, args.port)
    start = time.monotonic()
    end = start + args.seconds
    sent = 0
    while sent < args.count and time.monotonic() < end:
        for payload in payloads:
            with contextlib.suppress(OSError):
                sock.sendto(payload, dest)
            sent += 1
    took = time.monotonic() - start
    print(f"event=flood-done sent={sent} seconds={took:.3f} rate={sent / max(took, 1e-9):.0f}")
    return 0


# ============================================================================
# The run: the pair, the client, and the address watches
# ============================================================================


_ADDR = re.compile(
    r"^(?P<deleted>Deleted )?\d+:\s+(?P<dev>\S+)\s+inet6?\s+(?P<addr>[0-9a-fA-F.:]+)/"
)


@dataclass
class Holding:
    """An interval during which a node held the service address (end None: still holds)."""

    start: float
    end: float | None = None


class AddressWatch:
    """``ip -o monitor address`` in one namespace: when the service address came and went."""

    def __init__(self, lab: Lab, node: Node, address: str) -> None:
        self.node = node
        self.address = address
        self.proc = lab.spawn(node, ["ip", "-o", "monitor", "address"], "addrmon")

    def intervals(self, initially: bool = False) -> list[Holding]:
        out: list[Holding] = [Holding(0.0)] if initially else []
        for line in list(self.proc.lines):
            m = _ADDR.match(line.text)
            if m is None or m.group("addr") != self.address:
                continue
            if m.group("deleted"):
                if out and out[-1].end is None:
                    out[-1].end = line.t
            elif not out or out[-1].end is not None:
                out.append(Holding(line.t))
        return out


SMTP_PORT = 2525
MAIL_SINK = r"""
import asyncio, email, email.policy, json, sys
from aiosmtpd.smtp import SMTP

port, out = int(sys.argv[1]), sys.argv[2]


class Handler:
    async def handle_DATA(self, server, session, envelope):
        msg = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        subject = str(msg["subject"] or "")
        with open(out, "a") as f:
            f.write(json.dumps({"subject": subject}) + "\n")
        return "250 OK"


async def main():
    loop = asyncio.get_running_loop()
    await loop.create_server(lambda: SMTP(Handler()), "127.0.0.1", port, reuse_address=True)
    print(f"event=smtp-listening port={port}", flush=True)
    await asyncio.Event().wait()


asyncio.run(main())
"""


class MailSink:
    """An aiosmtpd server in the secondary's namespace, recording the subject of every mail."""

    def __init__(self, lab: Lab) -> None:
        self.path = lab.tmpdir / "mail.jsonl"
        self.path.touch()
        self.proc = lab.spawn(
            Node.SECONDARY,
            [sys.executable, "-c", MAIL_SINK, str(SMTP_PORT), str(self.path)],
            "smtp",
        )
        self.proc.wait_event("smtp-listening", 10.0)

    def subjects(self) -> list[str]:
        lines = self.path.read_text().splitlines()
        return [json.loads(line)["subject"] for line in lines if line.strip()]


@dataclass
class Settings:
    interval: float = 0.1
    deadtime: float | None = None  # None: the product's default, 3 intervals
    failback_delay: float | None = None  # None: the product's default, 3 s
    scripts: dict[str, str] = field(default_factory=dict)  # name -> shell body (secondary)
    mail: bool = True  # failoverd mails an SMTP sink in its namespace; the checker counts them

    @property
    def dead(self) -> float:
        return self.deadtime if self.deadtime is not None else 3 * self.interval

    @property
    def holddown(self) -> float:
        return self.failback_delay if self.failback_delay is not None else 3.0

    @property
    def settle(self) -> float:
        """The promise: the right node holds every address this long after a fault clears."""
        return self.dead + self.holddown + 1.0


class FaultRun:
    """One lab with the pair running, a client probing and the address watches on."""

    service = SERVICE_V4
    addresses: Sequence[str] = (SERVICE_V4, SERVICE_V6)
    matches: Sequence[str] = HEARTBEAT_MATCHES

    def __init__(self, lab: Lab, settings: Settings) -> None:
        self.lab = lab
        self.settings = settings
        self.faults = FaultInjector(lab, self.matches)
        self.watch: dict[Node, AddressWatch] = {}
        self.client: ProbeMonitor | None = None
        self.heartbeatd: LabProcess | None = None
        self.failoverd: LabProcess | None = None
        self.killed: set[int] = set()  # PIDs the case killed on purpose
        self.primary_config = Path()
        self.secondary_config = Path()
        self.mail: MailSink | None = None

    def config(self) -> None:
        s = self.settings
        self.primary_config = self.lab.node_config(Node.PRIMARY, FAILOVER_INTERVAL=s.interval)
        self.secondary_config = self.lab.node_config(
            Node.SECONDARY,
            FAILOVER_INTERVAL=s.interval,
            FAILOVER_DEADTIME=s.deadtime,
            FAILOVER_FAILBACK_DELAY=s.failback_delay,
            FAILOVER_SMTP_SERVER=f"127.0.0.1:{SMTP_PORT}" if s.mail else None,
            FAILOVER_EMAIL_RECIPIENT="ops@example.org" if s.mail else None,
        )
        script_dir = Path(self.lab.node_dirs(Node.SECONDARY)["FAILOVER_SCRIPT_DIR"])
        for name, body in s.scripts.items():
            path = script_dir / name
            path.write_text(f"#!/bin/sh\n{body}\n")
            path.chmod(0o755)

    def start(self, timeout: float = 20.0) -> None:
        """Start everything and wait until the secondary verified the primary on both networks
        and the client hears the primary."""
        self.config()
        if self.settings.mail:
            self.mail = MailSink(self.lab)
        self.lab.start_responders()
        for node in (Node.PRIMARY, Node.SECONDARY):
            self.watch[node] = AddressWatch(self.lab, node, self.service)
        start = time.monotonic()
        self.start_pair()
        self.client = self.lab.start_client(self.service, duration=24 * 3600.0)
        if self.client.wait_first(PRIMARY, start, timeout) is None:
            raise LabTimeout(f"the client got no answer from the primary within {timeout}s")
        self.lab.mark("setup done")

    def start_pair(self) -> None:
        self.heartbeatd = self.start_heartbeatd()
        self.failoverd = self.start_failoverd()
        for net in Network:
            self.failoverd.wait_event("peer-verified", 20.0, network=net.value)

    def start_heartbeatd(self, log_name: str = "heartbeatd") -> LabProcess:
        name = f"{log_name}-{len(self.lab.processes)}" if self.heartbeatd else log_name
        self.heartbeatd = self.lab.start_daemon(
            Node.PRIMARY, "heartbeatd", self.primary_config, log_name=name
        )
        return self.heartbeatd

    def start_failoverd(self, log_name: str = "failoverd") -> LabProcess:
        name = f"{log_name}-{len(self.lab.processes)}" if self.failoverd else log_name
        self.failoverd = self.lab.start_daemon(
            Node.SECONDARY, "failoverd", self.secondary_config, log_name=name
        )
        return self.failoverd

    def kill(self, proc: LabProcess, sig: signal.Signals = signal.SIGKILL) -> float:
        t = self.faults.signal(proc, sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            self.killed.add(proc.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5.0)
        return t

    # --- what the run saw ------------------------------------------------------------------------

    def secondary_holdings(self) -> list[Holding]:
        return self.watch[Node.SECONDARY].intervals()

    def takeovers(self, start: float, end: float = float("inf")) -> int:
        """How many times the secondary added the service address in [start, end]."""
        return sum(1 for h in self.secondary_holdings() if start <= h.start <= end)

    def held_seconds(self, start: float, end: float) -> float:
        """Seconds within [start, end] during which the secondary held the service address."""
        total = 0.0
        for h in self.secondary_holdings():
            lo, hi = max(start, h.start), min(end, h.end if h.end is not None else end)
            total += max(0.0, hi - lo)
        return total

    def owner_changes(self, start: float, end: float) -> int:
        """Changes of which node answers the client's probes sent in [start, end]."""
        assert self.client is not None
        whos = [p.who for p in self.client.between(start, end) if p.who is not None]
        return sum(1 for a, b in itertools.pairwise(whos) if a != b)

    def lost(self, start: float, end: float) -> int:
        assert self.client is not None
        return self.client.lost(start, end)

    def sleep(self, seconds: float) -> None:
        time.sleep(max(0.0, seconds))

    def holds(self, node: Node) -> list[bool]:
        """Whether a node holds each of the service addresses now."""
        out = self.lab.sh_in(node, ["ip", "-o", "addr", "show"])
        return [f" {address}/" in out for address in self.addresses]

    def secondary_holds_now(self) -> bool:
        return any(self.holds(Node.SECONDARY))

    def primary_holds_now(self) -> bool:
        return all(self.holds(Node.PRIMARY))

    def daemons(self) -> list[LabProcess]:
        return [p for p in self.lab.processes if p.name.startswith(("heartbeatd", "failoverd"))]


# ============================================================================
# The invariant checker
# ============================================================================


@dataclass
class Verdict:
    name: str
    ok: bool
    detail: str = ""


class Checker:
    """Judges a run against the promises; each ``check_*`` appends a Verdict."""

    def __init__(self, run: FaultRun) -> None:
        self.run = run
        self.verdicts: list[Verdict] = []

    def add(self, name: str, ok: bool, detail: str = "") -> bool:
        self.verdicts.append(Verdict(name, ok, detail))
        self.run.lab.mark(f"check {name}: {'ok' if ok else 'FAILED'} {detail}")
        return ok

    @property
    def ok(self) -> bool:
        return all(v.ok for v in self.verdicts)

    def converged(self, cleared: float, owner: str = PRIMARY, label: str = "") -> bool:
        """After a fault cleared at ``cleared``: within dead time + hold-down + 1 s the right
        node holds the address (the client hears only it) and the other holds nothing."""
        run = self.run
        assert run.client is not None
        bound = run.settings.settle
        quiet = max(1.0, 5 * run.settings.interval)
        wait_until = cleared + bound + quiet + run.client.reply_timeout + 0.2
        run.sleep(wait_until - time.monotonic())
        probes = run.client.between(cleared + bound, cleared + bound + quiet)
        answered = {p.who for p in probes}
        other = SECONDARY if owner == PRIMARY else PRIMARY
        holds = run.secondary_holds_now()
        ok = bool(probes) and answered == {owner} and holds == (owner == SECONDARY)
        detail = (
            f"{label} probes {bound:.2f}..{bound + quiet:.2f}s after clearing answered by "
            f"{sorted(map(str, answered))}; secondary holds the address: {holds}"
        )
        if owner == PRIMARY:
            ok = ok and run.primary_holds_now()
        ok = ok and other not in answered
        return self.add(f"converged{'-' + label if label else ''}", ok, detail)

    def no_daemon_died(self) -> bool:
        dead = [
            f"{p.label} (exit {p.poll()})"
            for p in self.run.daemons()
            if p.poll() is not None and p.pid not in self.run.killed
        ]
        return self.add("no-daemon-died", not dead, ", ".join(dead))

    def transitions_ordered(self) -> bool:
        """Every failoverd's state changes form one chain (no overlap, none skipped), and no
        transition error was logged. ACQUIRING is logged at debug level only, so a change out
        of it may follow a change into one of the states a takeover starts from."""
        problems: list[str] = []
        for proc in self.run.daemons():
            if not proc.name.startswith("failoverd"):
                continue
            previous: str | None = None
            for line in proc.events("state"):
                old, new = line.fields.get("old"), line.fields.get("new")
                expected = {previous} if previous else {old}
                if previous in ("standby", "probing", "blocked", "declined"):
                    expected.add("acquiring")
                if old not in expected:
                    problems.append(f"{proc.label}: {old}->{new} after {previous}")
                previous = new
            problems += [f"{proc.label}: {ln.text}" for ln in proc.events("transition-error")]
        return self.add("transitions-ordered", not problems, "; ".join(problems[:3]))

    def no_stray(self) -> bool:
        """At the end (every fault cleared, the primary up): the primary holds its addresses and
        the secondary none."""
        s, p = self.run.secondary_holds_now(), self.run.primary_holds_now()
        return self.add("no-stray-address", not s and p, f"secondary holds: {s}; primary: {p}")

    def mail_exactly_once(self, timeout: float = 20.0) -> bool:
        """Every mail any failoverd queued reached the SMTP sink exactly once (waits up to
        ``timeout`` for the outbox to drain; a queued mail is matched by its subject)."""
        sink = self.run.mail
        if sink is None:
            return True
        queued: Counter[str] = Counter()
        deadline = time.monotonic() + timeout
        while True:
            queued = Counter(
                ln.fields.get("subject", "")
                for proc in self.run.daemons()
                if proc.name.startswith("failoverd")
                for ln in proc.events("mail-queued")
            )
            received = Counter(sink.subjects())
            if received == queued or time.monotonic() >= deadline:
                break
            time.sleep(0.5)
        missing, extra = queued - received, received - queued
        detail = f"{sum(queued.values())} queued, {sum(received.values())} received"
        if missing:
            detail += f"; missing {dict(missing)}"
        if extra:
            detail += f"; extra {dict(extra)}"
        return self.add("mail-exactly-once", not missing and not extra, detail)

    def finish(self) -> None:
        self.no_daemon_died()
        self.transitions_ordered()
        self.no_stray()
        self.mail_exactly_once()


# ============================================================================
# The cases
# ============================================================================


@dataclass
class CaseResult:
    case: str
    params: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)
    verdicts: list[Verdict] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None and all(v.ok for v in self.verdicts)


Case = Callable[[FaultRun, Checker, "CaseParams"], dict[str, Any]]


@dataclass
class CaseParams:
    seconds: float  # how long the main fault lasts (case-specific meaning)
    rng: random.Random
    loss: int = 30


def case_loss(run: FaultRun, check: Checker, p: CaseParams) -> dict[str, Any]:
    """1: random heartbeat loss on both networks, every heartbeat-protocol packet in and out of
    the secondary. Counts false takeovers and the time the secondary wrongly held the address."""
    start = time.monotonic()
    drop = run.faults.add(Drop(Node.SECONDARY, p.loss))
    run.sleep(p.seconds)
    end = time.monotonic()
    run.faults.remove(drop)
    rounds = (end - start) / run.settings.interval
    takeovers = run.takeovers(start, end)
    check.converged(end)
    return {
        "loss_percent": p.loss,
        "seconds": round(end - start, 1),
        "rounds": round(rounds),
        "false_takeovers": takeovers,
        "per_1000_rounds": round(1000 * takeovers / rounds, 2),
        "wrongly_held_s": round(run.held_seconds(start, time.monotonic()), 2),
    }


ONE_NETWORK_FAULTS: tuple[tuple[str, Drop], ...] = (
    ("public partition", Drop(Node.SECONDARY, 100, Network.PUBLIC)),
    ("private partition", Drop(Node.SECONDARY, 100, Network.PRIVATE)),
    ("public one-way in", Drop(Node.SECONDARY, 100, Network.PUBLIC, Direction.IN)),
    ("public one-way out", Drop(Node.SECONDARY, 100, Network.PUBLIC, Direction.OUT)),
    ("private one-way in (primary side)", Drop(Node.PRIMARY, 100, Network.PRIVATE, Direction.IN)),
    ("private 50% loss", Drop(Node.SECONDARY, 50, Network.PRIVATE)),
)


def blocks_heartbeats(drop: Drop) -> bool:
    """Whether a drop rule stops heartbeats (primary to secondary), not only challenges."""
    if drop.direction is Direction.BOTH:
        return True
    return (drop.node is Node.SECONDARY) == (drop.direction is Direction.IN)


def case_one_network(run: FaultRun, check: Checker, p: CaseParams) -> dict[str, Any]:
    """2: loss or partition on one network only, incl. one-way: anomaly only, never a takeover."""
    each = p.seconds / len(ONE_NETWORK_FAULTS)
    out: dict[str, Any] = {}
    assert run.failoverd is not None
    for label, drop in ONE_NETWORK_FAULTS:
        start = time.monotonic()
        run.faults.add(drop)
        run.sleep(each)
        run.faults.remove(drop)
        end = time.monotonic()
        run.sleep(run.settings.dead + 2 * run.settings.interval)
        anomalies = len(run.failoverd.events("anomaly", since=start))
        takeovers = run.takeovers(start, time.monotonic())
        out[label] = {"takeovers": takeovers, "anomalies": anomalies, "seconds": round(each, 1)}
        check.add(f"no-takeover ({label})", takeovers == 0, f"{takeovers} takeovers")
        if drop.percent >= 100 and blocks_heartbeats(drop):
            # Heartbeats no longer arrive on that network: the anomaly must be reported.
            # (Blocking only challenges on one network leaves it alive: heartbeatd echoes the
            # nonces that arrive on the other network on every network; docs/protocol.md.)
            check.add(f"anomaly ({label})", anomalies >= 1, f"{anomalies} anomaly events")
        del end
    return out


def case_flap(run: FaultRun, check: Checker, p: CaseParams) -> dict[str, Any]:
    """3: the primary's cables flapping 0.5 s out / 0.5 s in for ``seconds``."""
    start = time.monotonic()
    thread = run.faults.flap(Node.PRIMARY, list(Network), 0.5, 0.5, p.seconds)
    thread.join(p.seconds + 30.0)
    end = time.monotonic()
    run.lab.mark("flapping over")
    check.converged(end)
    settled = time.monotonic()
    return {
        "seconds": p.seconds,
        "owner_changes": run.owner_changes(start, settled),
        "lost_probes": run.lost(start, settled),
        "takeovers": run.takeovers(start, settled),
    }


def case_freeze(run: FaultRun, check: Checker, p: CaseParams) -> dict[str, Any]:
    """4: SIGSTOP heartbeatd for 2 dead times, then SIGCONT: one takeover, then failback."""
    assert run.heartbeatd is not None
    start = run.faults.signal(run.heartbeatd, signal.SIGSTOP)
    run.sleep(2 * run.settings.dead)
    end = run.faults.signal(run.heartbeatd, signal.SIGCONT)
    check.converged(end)
    takeovers = run.takeovers(start, time.monotonic())
    check.add("one-takeover", takeovers == 1, f"{takeovers} takeovers")
    return {"takeovers": takeovers, "lost_probes": run.lost(start, time.monotonic())}


def _wait_state(proc: LabProcess, new: str, since: float, timeout: float) -> float:
    return proc.wait_event("state", timeout, since=since, new=new).t


def case_kill_failoverd(run: FaultRun, check: Checker, p: CaseParams) -> dict[str, Any]:
    """5: SIGKILL failoverd in each state (standby, acquiring, active, holddown, releasing),
    then restart it: no stray address, no missing address, and its state matches reality.
    The secondary's scripts sleep (PreAcq, PreRel) to widen the acquiring and releasing windows.
    """
    s = run.settings
    out: dict[str, Any] = {}
    for state in ("standby", "acquiring", "active", "holddown", "releasing"):
        assert run.failoverd is not None
        t0 = time.monotonic()
        fd = run.failoverd
        cables_out = state != "standby"
        if cables_out:
            for net in Network:
                run.lab.cable(Node.PRIMARY, net, up=False)
            if state == "acquiring":
                # the PreAcq script sleeps: kill while it runs
                run.sleep(s.dead + 0.5 * SLOW_SCRIPT)
            else:
                _wait_state(fd, "active", t0, s.dead + SLOW_SCRIPT + 10.0)
            if state in ("holddown", "releasing"):
                t1 = time.monotonic()
                for net in Network:
                    run.lab.cable(Node.PRIMARY, net, up=True)
                cables_out = False
                _wait_state(fd, "holddown", t1, s.dead + 10.0)
                if state == "releasing":
                    _wait_state(fd, "releasing", t1, s.holddown + 10.0)
                    run.sleep(0.3 * SLOW_SCRIPT)
        killed = run.kill(fd)
        if cables_out:
            for net in Network:
                run.lab.cable(Node.PRIMARY, net, up=True)
        restarted = run.start_failoverd()
        cleared = time.monotonic()
        ok = check.converged(cleared + SLOW_SCRIPT, label=f"after-kill-in-{state}")
        out[state] = {"killed_at": round(killed - t0, 2), "converged": ok}
        # the restarted daemon must have verified the primary (its state matches reality)
        verified = restarted.find_event("peer-verified", since=cleared) is not None
        check.add(f"restarted-verified ({state})", verified, "")
    return out


SLOW_SCRIPT = 2.0
"""Seconds the PreAcq and PreRel scripts of case 5 sleep."""


def case_kill_heartbeatd(run: FaultRun, check: Checker, p: CaseParams) -> dict[str, Any]:
    """6: SIGKILL heartbeatd, then restart it: takeover after the dead time, then failback."""
    assert run.heartbeatd is not None
    start = run.kill(run.heartbeatd)
    took = run.watch[Node.SECONDARY]
    deadline = start + run.settings.dead + 5.0
    while time.monotonic() < deadline and not any(h.start >= start for h in took.intervals()):
        time.sleep(0.05)
    holdings = [h for h in took.intervals() if h.start >= start]
    takeover = holdings[0].start - start if holdings else None
    check.add("takeover", takeover is not None, f"after {takeover}s")
    run.sleep(max(0.0, p.seconds - (time.monotonic() - start)))
    restart = time.monotonic()
    run.start_heartbeatd()
    check.converged(restart)
    return {"takeover_s": None if takeover is None else round(takeover, 3)}


def case_secondary_cables(run: FaultRun, check: Checker, p: CaseParams) -> dict[str, Any]:
    """7: the secondary's own cables pulled while standby, then back: no takeover of a live
    primary once they return (the secondary may take the address on its dead link meanwhile:
    nobody can reach it there), and no stuck state."""
    start = time.monotonic()
    for net in Network:
        run.lab.cable(Node.SECONDARY, net, up=False)
    run.sleep(max(p.seconds, run.settings.dead + 1.0))
    back = time.monotonic()
    for net in Network:
        run.lab.cable(Node.SECONDARY, net, up=True)
    check.converged(back)
    assert run.client is not None
    answered_by_s = sum(1 for x in run.client.between(start) if x.who == SECONDARY)
    return {
        "seconds_out": round(back - start, 1),
        "held_while_out": run.takeovers(start, back),
        "client_answers_from_secondary": answered_by_s,
    }


def case_soak(run: FaultRun, check: Checker, p: CaseParams) -> dict[str, Any]:
    """12: a seeded random schedule of the faults above, with the checker after every episode."""
    end = time.monotonic() + p.seconds
    episodes: list[dict[str, Any]] = []
    kinds = ["loss", "one-network", "flap", "freeze", "kill-heartbeatd", "kill-failoverd",
             "secondary-cables", "flood"]  # fmt: skip
    s = run.settings
    for _ in range(1000):
        if time.monotonic() >= end:
            break
        kind = p.rng.choice(kinds)
        length = p.rng.uniform(1.0, 4.0)
        t0 = time.monotonic()
        episode: dict[str, Any] = {"kind": kind, "at": round(t0 - run.lab.marks[0][0], 2)}
        assert run.heartbeatd is not None and run.failoverd is not None
        if kind == "loss":
            pct = p.rng.choice((10, 20, 30))
            episode["percent"] = pct
            drop = run.faults.add(Drop(Node.SECONDARY, pct))
            run.sleep(length)
            run.faults.remove(drop)
        elif kind == "one-network":
            label, drop = p.rng.choice(ONE_NETWORK_FAULTS)
            episode["fault"] = label
            run.faults.add(drop)
            run.sleep(length)
            run.faults.remove(drop)
        elif kind == "flap":
            run.faults.flap(Node.PRIMARY, list(Network), 0.5, 0.5, length).join(length + 30)
        elif kind == "freeze":
            run.faults.signal(run.heartbeatd, signal.SIGSTOP)
            run.sleep(p.rng.uniform(0.5, 3.0) * s.dead)
            run.faults.signal(run.heartbeatd, signal.SIGCONT)
        elif kind == "kill-heartbeatd":
            run.kill(run.heartbeatd)
            run.sleep(length)
            run.start_heartbeatd()
        elif kind == "kill-failoverd":
            run.kill(run.failoverd)
            run.sleep(p.rng.uniform(0.0, 1.0))
            run.start_failoverd()
        elif kind == "secondary-cables":
            for net in Network:
                run.lab.cable(Node.SECONDARY, net, up=False)
            run.sleep(length)
            for net in Network:
                run.lab.cable(Node.SECONDARY, net, up=True)
        elif kind == "flood":
            flood = run.faults.flood(count=200_000, seconds=length)
            with contextlib.suppress(subprocess.TimeoutExpired):
                flood.wait(length + 10.0)
        cleared = time.monotonic()
        episode["converged"] = check.converged(cleared, label=f"{len(episodes) + 1}-{kind}")
        episode["takeovers"] = run.takeovers(t0, time.monotonic())
        episodes.append(episode)
    return {
        "episodes": len(episodes),
        "failed_episodes": sum(1 for e in episodes if not e["converged"]),
        "by_kind": {k: sum(1 for e in episodes if e["kind"] == k) for k in kinds},
        "schedule": episodes,
    }


CASES: dict[str, tuple[Case, str]] = {
    "loss": (case_loss, "random heartbeat loss on both networks"),
    "one-network": (case_one_network, "loss or partition on one network only, incl. one-way"),
    "flap": (case_flap, "the primary's cables flapping 0.5 s out / 0.5 s in"),
    "freeze": (case_freeze, "a frozen primary: SIGSTOP heartbeatd 2 dead times, then SIGCONT"),
    "kill-failoverd": (case_kill_failoverd, "SIGKILL failoverd in each state, then restart"),
    "kill-heartbeatd": (case_kill_heartbeatd, "SIGKILL heartbeatd, then restart"),
    "secondary-cables": (case_secondary_cables, "the secondary's cables pulled while standby"),
    "soak": (case_soak, "a seeded random schedule of all of the above"),
}


def run_case(
    name: str,
    settings: Settings,
    params: CaseParams,
    *,
    keep: Path | None = None,
    make_run: Callable[[Lab, Settings], FaultRun] = FaultRun,
) -> CaseResult:
    """Build a fresh lab, run one case with the checker, tear the lab down."""
    case, _ = CASES[name]
    if name == "kill-failoverd" and not settings.scripts:
        settings = Settings(
            settings.interval,
            settings.deadtime,
            settings.failback_delay,
            {"PreAcq10": f"sleep {SLOW_SCRIPT}", "PreRel10": f"sleep {SLOW_SCRIPT}"},
        )
    result = CaseResult(name, {"seconds": params.seconds, **asdict(settings)})
    if name == "loss":
        result.params["loss"] = params.loss
    began = time.monotonic()
    with Lab() as lab:
        run = make_run(lab, settings)
        check = Checker(run)
        try:
            run.start()
            result.metrics = case(run, check, params)
            run.faults.clear()
            run.faults.stop_flaps()
            check.finish()
        except LabError as error:
            result.error = str(error)
        finally:
            run.faults.stop_flaps()
            result.verdicts = check.verdicts
            lab.mark("case over; stopping all processes")
            lab.stop_processes()
            if keep is not None:
                from ipfailover.lab.topology import keep_logs

                keep_logs(lab.tmpdir, keep / f"{name}-{params.loss if name == 'loss' else 0}")
    result.seconds = round(time.monotonic() - began, 1)
    return result


# ============================================================================
# ipfailover lab --faults
# ============================================================================

FULL_SECONDS = {
    "one-network": 60.0,
    "flap": 60.0,
    "freeze": 0.0,
    "kill-failoverd": 0.0,
    "kill-heartbeatd": 5.0,
    "secondary-cables": 10.0,
}
LOSS_LEVELS = (10, 20, 30, 50)


def plan(
    names: Sequence[str], minutes: float, levels: Sequence[int] = LOSS_LEVELS
) -> list[tuple[str, float, int]]:
    """(case, seconds, loss %) for each run: ``--minutes`` is the loss level's length and the
    soak's; the other cases have their fixed lengths from issue 8."""
    out: list[tuple[str, float, int]] = []
    for name in names:
        if name == "loss":
            out += [("loss", 60.0 * minutes, level) for level in levels]
        elif name == "soak":
            out.append(("soak", 60.0 * minutes, 0))
        else:
            out.append((name, FULL_SECONDS[name], 0))
    return out


def markdown(results: Sequence[CaseResult], meta: dict[str, Any]) -> str:
    lines = [
        f"Fault runs on {meta['host']} ({meta['cpus']} CPUs), {meta['date']}, seed {meta['seed']}",
        "",
        "| case | params | result | checks |",
        "|---|---|---|---|",
    ]
    for r in results:
        params = f"{r.params['seconds']:g} s at interval {r.params['interval']:g} s"
        if r.case == "loss":
            params += f", {r.params['loss']} % loss"
        shown = {k: v for k, v in r.metrics.items() if k != "schedule"}
        checks = (
            "ok"
            if r.ok
            else "FAILED: "
            + "; ".join([v.name for v in r.verdicts if not v.ok] + ([r.error] if r.error else []))
        )
        lines.append(f"| {r.case} | {params} | {json.dumps(shown)} | {checks} |")
    return "\n".join(lines) + "\n"


def configure_parser(p: argparse.ArgumentParser) -> None:
    """Add the fault options to ``ipfailover lab``'s parser."""
    p.add_argument(
        "--faults",
        metavar="NAME|all",
        help=f"run fault cases instead of the timing scenario: {', '.join(CASES)} or all",
    )
    p.add_argument(
        "--minutes", type=float, default=1.0, help="length of each loss level and of the soak"
    )
    p.add_argument("--seed", type=int, default=1, help="seed of the fault schedule")
    p.add_argument(
        "--loss-levels",
        default=",".join(map(str, LOSS_LEVELS)),
        help="loss percentages of the loss case (default: %(default)s)",
    )
    p.add_argument("--report", metavar="PATH", help="write the JSON report here (and PATH.md)")


def run_cli(args: argparse.Namespace) -> int:
    names = list(CASES) if args.faults == "all" else args.faults.split(",")
    unknown = [n for n in names if n not in CASES]
    if unknown:
        print(f"ipfailover lab: unknown fault case {unknown[0]!r}; one of {', '.join(CASES)}",
              file=sys.stderr)  # fmt: skip
        return 2
    rng = random.Random(args.seed)
    settings = Settings(args.interval, args.deadtime, args.failback_delay)
    keep = Path(args.keep_logs) if args.keep_logs else None
    meta = {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "seed": args.seed,
        "minutes": args.minutes,
        "interval": args.interval,
    }
    results: list[CaseResult] = []
    levels = [int(x) for x in args.loss_levels.split(",")]
    for name, seconds, loss in plan(names, args.minutes, levels):
        case_settings = settings
        if name == "soak" and args.interval == 1.0:
            case_settings = Settings(0.05, args.deadtime, args.failback_delay)
        params = CaseParams(seconds, random.Random(rng.random()), loss)
        print(f"== {name} {seconds:g}s {f'{loss}% ' if name == 'loss' else ''}...", file=sys.stderr)
        result = run_case(name, case_settings, params, keep=keep)
        results.append(result)
        print(f"   {'ok' if result.ok else 'FAILED'} {json.dumps(result.metrics)[:300]}",
              file=sys.stderr)  # fmt: skip
    report = {
        "meta": meta,
        "ok": all(r.ok for r in results),
        "results": [asdict(r) for r in results],
    }
    text = json.dumps(report, indent=2, default=str)
    table = markdown(results, meta)
    if args.report:
        Path(args.report).write_text(text)
        Path(args.report + ".md").write_text(table)
    if args.json:
        print(text)
    else:
        print(table)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "flood":
        sys.exit(flood_main(sys.argv[2:]))
    print("usage: python -m ipfailover.lab.faults flood --target ADDR --count N --seconds S")
    sys.exit(2)
