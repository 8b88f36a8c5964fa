"""Faults for the lab: :class:`FaultInjector`, and the flood generator it runs.

Everything here drives an :class:`ipfailover.lab.testbed.Lab` (see :mod:`ipfailover.lab.topology`
for the topology and the addresses) and runs only inside its namespaces.
:class:`FaultInjector` applies composable faults on any node and network: random loss of the
heartbeat protocol's datagrams in either direction (nftables ``numgen random mod 100 < N``
rules in the node's own table), one-way and two-way partitions (the same rule at 100 %),
cable flaps with a period, SIGSTOP/SIGCONT/SIGKILL of a process the lab started (by its PID),
and a bounded flood of forged datagrams from the client namespace (``python -m
ipfailover.lab.faults flood``, :func:`flood_main`). The *schedule* of faults is drawn from a
seeded ``random.Random``; which packet a loss rule drops is the kernel's random choice, so two
runs with one seed apply the same faults at the same times, not the same drops.

The rest of ``ipfailover lab --faults``: :mod:`ipfailover.lab.faultrun` (the pair under test,
watched), :mod:`ipfailover.lab.invariants` (the checker) and :mod:`ipfailover.lab.cases` (the
cases of issue 8).
"""

from __future__ import annotations

import argparse
import contextlib
import enum
import os
import random
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from ipfailover.lab.processes import LabProcess
from ipfailover.lab.testbed import Lab
from ipfailover.lab.topology import HEARTBEAT_PORT, NODE_NAMES, LabError, Network, Node


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


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "flood":
        sys.exit(flood_main(sys.argv[2:]))
    print("usage: python -m ipfailover.lab.faults flood --target ADDR --count N --seconds S")
    sys.exit(2)
