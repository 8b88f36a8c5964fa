"""The pair under fault: one lab with both daemons, a probing client, and address watches.

:class:`FaultRun` starts heartbeatd on the primary, failoverd on the secondary, probe
responders, a probe client on the client namespace and ``ip monitor address`` on the primary
and the secondary (:class:`AddressWatch`), so that every change of who holds the service
address is stamped on the same clock as the probes and the daemons' log lines. With mail on
(:attr:`Settings.mail`) failoverd mails an SMTP sink in its namespace (:class:`MailSink`).
The faults come from its :class:`~ipfailover.lab.faults.FaultInjector`; the judging is
:mod:`ipfailover.lab.invariants`.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ipfailover.lab.faults import HEARTBEAT_MATCHES, FaultInjector
from ipfailover.lab.processes import LabProcess, ProbeMonitor
from ipfailover.lab.testbed import Lab
from ipfailover.lab.topology import NODE_NAMES, SERVICE_V4, SERVICE_V6, LabTimeout, Network, Node

PRIMARY = NODE_NAMES[Node.PRIMARY]
SECONDARY = NODE_NAMES[Node.SECONDARY]


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
        message_id = str(msg["message-id"] or "")
        with open(out, "a") as f:
            f.write(json.dumps({"subject": subject, "message_id": message_id}) + "\n")
        return "250 OK"


async def main():
    loop = asyncio.get_running_loop()
    await loop.create_server(lambda: SMTP(Handler()), "127.0.0.1", port, reuse_address=True)
    print(f"event=smtp-listening port={port}", flush=True)
    await asyncio.Event().wait()


asyncio.run(main())
"""


class MailSink:
    """An aiosmtpd server in the secondary's namespace, recording the subject and Message-ID of
    every mail."""

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
        return [subject for subject, _ in self.received()]

    def received(self) -> list[tuple[str, str]]:
        """(subject, Message-ID) of every mail, in the order received."""
        mails = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
        return [(m["subject"], m.get("message_id", "")) for m in mails]


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
