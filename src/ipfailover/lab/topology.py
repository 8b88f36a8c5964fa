"""The lab's network: throwaway namespaces, a switch with two bridges, cables and partitions.

``Topology`` builds four namespaces on this machine -- primary (P), secondary (S),
client (C) and a switch (SW) holding a public and a private bridge -- wires them
with veth pairs created directly inside the namespaces (no name ever exists in
the root namespace), and tears everything down again, also on failure.  Only
documentation addresses are used:

=========  =====================  ==================  ===================
network    subnet                 primary / second.   client
=========  =====================  ==================  ===================
public     203.0.113.0/24         .10 / .20           .100
           2001:db8:1::/64        ::10 / ::20         ::100
private    198.51.100.0/24        .10 / .20           --
           2001:db8:2::/64        ::10 / ::20         --
=========  =====================  ==================  ===================

The service addresses are the primary's own public addresses (Apple's model:
the secondary takes over the primary's real address).

The rest of the lab builds on this: :mod:`ipfailover.lab.processes` (a process in a
namespace and its log), :mod:`ipfailover.lab.testbed` (``Lab``: this topology plus the
hosts' files and processes), :mod:`ipfailover.lab.scenario` (the timed phases) and
:mod:`ipfailover.lab.cli` (``ipfailover lab``).
"""

from __future__ import annotations

import contextlib
import enum
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Self

HEARTBEAT_PORT = 1694
"""The product's heartbeat port (Apple's), the one ``Lab.partition`` drops."""


class Node(enum.StrEnum):
    """The lab's hosts; the value is the suffix of the namespace name."""

    PRIMARY = "p"
    SECONDARY = "s"
    CLIENT = "c"


class Network(enum.StrEnum):
    """The two lab networks; the value is the interface name inside P, S and C."""

    PUBLIC = "pub0"
    PRIVATE = "priv0"


NODE_NAMES = {Node.PRIMARY: "primary", Node.SECONDARY: "secondary", Node.CLIENT: "client"}
"""Human names, also the names the responders answer with."""

# (network, node) -> (IPv4 with prefix, IPv6 with prefix)
ADDRESSES: dict[tuple[Network, Node], tuple[str, str]] = {
    (Network.PUBLIC, Node.PRIMARY): ("203.0.113.10/24", "2001:db8:1::10/64"),
    (Network.PUBLIC, Node.SECONDARY): ("203.0.113.20/24", "2001:db8:1::20/64"),
    (Network.PUBLIC, Node.CLIENT): ("203.0.113.100/24", "2001:db8:1::100/64"),
    (Network.PRIVATE, Node.PRIMARY): ("198.51.100.10/24", "2001:db8:2::10/64"),
    (Network.PRIVATE, Node.SECONDARY): ("198.51.100.20/24", "2001:db8:2::20/64"),
}
SERVICE_V4 = "203.0.113.10"
SERVICE_V6 = "2001:db8:1::10"
BROADCASTS = ("203.0.113.255", "198.51.100.255")


class LabError(RuntimeError):
    """Building, driving or tearing down the lab failed."""


class LabTimeout(LabError, TimeoutError):
    """A bounded wait ended without the awaited event."""


def service_address(ipv6: bool = False) -> str:
    """The address clients use for the service (the primary's public address)."""
    return SERVICE_V6 if ipv6 else SERVICE_V4


def sh(argv: Sequence[str], *, stdin: str | None = None, timeout: float = 20.0) -> str:
    """Run a setup command, return its stdout; raise LabError with its stderr on failure."""
    try:
        done = subprocess.run(
            list(argv), input=stdin, capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LabError(f"{' '.join(argv)}: {exc}") from exc
    if done.returncode != 0:
        raise LabError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()}")
    return done.stdout


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM until the block ends, so a Ctrl-C cannot cut a cleanup short.

    Outside the main thread (where handlers cannot be changed) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []

    def note(signum: int, frame: FrameType | None) -> None:
        caught.append(signum)

    previous = {sig: signal.signal(sig, note) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for signum in dict.fromkeys(caught):
            signal.raise_signal(signum)


@dataclass
class _Port:
    """One node's attachment to one network: interface in the node, veth end in SW."""

    node: Node
    network: Network
    sw_name: str


class Topology:
    """Four throwaway namespaces wired as primary, secondary, client and switch.

    Use as a context manager (``with Topology() as net:``), or call ``build()`` and
    ``teardown()``.  Teardown is idempotent and always runs all of its steps:
    it stops what runs in the namespaces (``stop_processes``, which
    :class:`ipfailover.lab.testbed.Lab` fills in), deletes the namespaces (which
    removes their veths, bridges and nftables tables) and, if it created its temp
    dir itself, removes it.
    """

    def __init__(
        self,
        *,
        tmpdir: Path | None = None,
        run_id: str | None = None,
        heartbeat_port: int = HEARTBEAT_PORT,
    ) -> None:
        self.run_id = run_id or secrets.token_hex(3)
        if not re.fullmatch(r"[0-9a-f]{6}", self.run_id):
            raise ValueError(f"run_id must be 6 lowercase hex digits, not {self.run_id!r}")
        self.namespaces = {node: f"ipfo-{self.run_id}-{node.value}" for node in Node}
        self.switch_ns = f"ipfo-{self.run_id}-sw"
        self.bridges = {
            Network.PUBLIC: f"brpub-{self.run_id}",
            Network.PRIVATE: f"brprv-{self.run_id}",
        }
        self.ports = [_Port(node, net, f"{node.value}-{net.value}") for net, node in ADDRESSES]
        self.nft_table = f"ipfo_{self.run_id}"
        self.heartbeat_port = heartbeat_port
        self._own_tmpdir = tmpdir is None
        self._tmpdir = tmpdir
        self.marks: list[tuple[float, str]] = []
        self._created: list[str] = []
        self._partitions: dict[Node, set[Network]] = {}
        self._built = False
        self._torn_down = False

    # --- lifecycle -----------------------------------------------------------

    @property
    def tmpdir(self) -> Path:
        """Directory for configs, keys and logs of this lab."""
        if self._tmpdir is None:
            self._tmpdir = Path(tempfile.mkdtemp(prefix=f"ipfo-{self.run_id}-"))
        return self._tmpdir

    def ns(self, node: Node) -> str:
        """The namespace name of a node."""
        return self.namespaces[node]

    def __enter__(self) -> Self:
        return self.build()

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        try:
            self.teardown()
        except LabError as error:
            if exc_type is None:
                raise
            print(f"lab teardown: {error}", file=sys.stderr)

    def build(self) -> Self:
        """Create namespaces, bridges, veths and addresses; on any failure, undo it all."""
        if self._built:
            raise LabError("lab already built")
        self._built = True
        self.tmpdir.mkdir(parents=True, exist_ok=True)
        try:
            self._build()
        except BaseException:
            with contextlib.suppress(LabError):
                self.teardown()
            raise
        self.mark("lab built")
        return self

    def _build(self) -> None:
        for name in [*self.namespaces.values(), self.switch_ns]:
            sh(["ip", "netns", "add", name])
            self._created.append(name)
            # defaults first, so every interface created later inherits them
            self.sysctl(
                name, "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0"
            )
            sh(["ip", "-n", name, "link", "set", "lo", "up"])
        sw = self.switch_ns
        self.sysctl(sw, "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
        for bridge in self.bridges.values():
            # a dumb switch: no multicast snooping, no STP
            sh(["ip", "-n", sw, "link", "add", bridge, "type", "bridge", "mcast_snooping", "0"])
            sh(["ip", "-n", sw, "link", "set", bridge, "up"])
        for port in self.ports:
            self._wire(port)

    def _wire(self, port: _Port) -> None:
        node_ns, ifname = self.ns(port.node), port.network.value
        sh(["ip", "link", "add", ifname, "netns", node_ns, "type", "veth",
            "peer", "name", port.sw_name, "netns", self.switch_ns])  # fmt: skip
        sh(["ip", "-n", self.switch_ns, "link", "set", port.sw_name,
            "master", self.bridges[port.network], "up"])  # fmt: skip
        self.sysctl(node_ns, f"net.ipv6.conf.{ifname}.accept_dad=0")
        v4, v6 = ADDRESSES[(port.network, port.node)]
        sh(["ip", "-n", node_ns, "addr", "add", v4, "dev", ifname])
        sh(["ip", "-n", node_ns, "-6", "addr", "add", v6, "dev", ifname, "nodad"])
        sh(["ip", "-n", node_ns, "link", "set", ifname, "up"])

    def sh_in(
        self, node: Node, argv: Sequence[str], *, stdin: str | None = None, timeout: float = 20.0
    ) -> str:
        """Run a command inside a node's namespace (see ``sh``)."""
        return sh(["ip", "netns", "exec", self.ns(node), *argv], stdin=stdin, timeout=timeout)

    @staticmethod
    def sysctl(namespace: str, *settings: str) -> None:
        """Set sysctls (``name=value``) inside a namespace."""
        sh(["ip", "netns", "exec", namespace, "sysctl", "-q", "-w", *settings])

    def teardown(self) -> None:
        """Stop processes, delete namespaces, remove our temp dir. Safe to call twice."""
        if self._torn_down:
            return
        self._torn_down = True
        problems: list[str] = []
        with signals_deferred():
            self.stop_processes()
            for name in reversed(self._created):
                try:
                    sh(["ip", "netns", "del", name])
                except LabError as error:
                    problems.append(str(error))
            leftover = set(self._created) & set(list_namespaces())
            if leftover:
                problems.append(f"namespaces still present: {sorted(leftover)}")
            if self._own_tmpdir and self._tmpdir is not None:
                shutil.rmtree(self._tmpdir, ignore_errors=True)
        if problems:
            raise LabError("; ".join(problems))

    def stop_processes(self) -> None:
        """Stop what runs in the namespaces; a bare topology runs nothing (see ``Lab``)."""

    def mark(self, text: str) -> float:
        """Record a lab action for the timeline; return its time.monotonic() stamp."""
        now = time.monotonic()
        self.marks.append((now, text))
        return now

    # --- cables and partitions ------------------------------------------------------

    def cable(self, node: Node, network: Network, up: bool) -> float:
        """Plug (up) or pull (down) a node's cable: its switch-side veth. Returns the time."""
        port = next((p for p in self.ports if (p.node, p.network) == (node, network)), None)
        if port is None:
            raise LabError(f"{NODE_NAMES[node]} has no {network.name.lower()} cable")
        state = "up" if up else "down"
        sh(["ip", "-n", self.switch_ns, "link", "set", port.sw_name, state])
        return self.mark(f"cable {NODE_NAMES[node]} {network.name.lower()} {state}")

    def partition(self, node: Node, network: Network, drop: bool) -> float:
        """Drop (or stop dropping) heartbeat-port UDP on one interface of a node.

        Implemented with an nftables table named after the run, inside the node's
        namespace (this kernel has no netem).  Both directions and both source
        and destination port are matched, so heartbeats and any replies to them
        are lost, while other traffic (e.g. the probes) still flows.
        """
        dropped = self._partitions.setdefault(node, set())
        (dropped.add if drop else dropped.discard)(network)
        sh(
            ["ip", "netns", "exec", self.ns(node), "nft", "-f", "-"],
            stdin=self._nft_script(dropped),
        )
        verb = "drop" if drop else "pass"
        return self.mark(f"partition {NODE_NAMES[node]} {network.name.lower()} {verb} heartbeats")

    def _nft_script(self, dropped: set[Network]) -> str:
        """An atomic nft script: (re)create our table with one drop rule set per interface."""
        table = f"inet {self.nft_table}"
        lines = [f"table {table} {{}}", f"delete table {table}"]
        if dropped:
            port = self.heartbeat_port
            rules_in = [
                f'iifname "{net.value}" udp {d} {port} drop'
                for net in sorted(dropped)
                for d in ("dport", "sport")
            ]
            rules_out = [r.replace("iifname", "oifname") for r in rules_in]
            lines += [
                f"table {table} {{",
                "  chain input { type filter hook input priority 0; policy accept;",
                *(f"    {r}" for r in rules_in),
                "  }",
                "  chain output { type filter hook output priority 0; policy accept;",
                *(f"    {r}" for r in rules_out),
                "  }",
                "}",
            ]
        return "\n".join(lines) + "\n"


def list_namespaces() -> list[str]:
    """Names of the network namespaces that ``ip netns`` knows."""
    out = sh(["ip", "netns", "list"])
    return [line.split()[0] for line in out.splitlines() if line.strip()]
