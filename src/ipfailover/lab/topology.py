"""The failover lab: real daemons in throwaway network namespaces, and a stopwatch.

``Lab`` builds four namespaces on this machine -- primary (P), secondary (S),
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

The scenario runner behind ``ipfailover lab`` (``configure_parser`` / ``run``)
starts heartbeatd on P, failoverd on S, probe responders on both and a probe
client on C, then pulls cables and stops daemons while timing who answers the
service address.  Every wait is bounded; a timeout is a failed measurement.
"""

from __future__ import annotations

import argparse
import contextlib
import enum
import json
import os
import random
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any, Self

from ipfailover.lab import mail as labmail
from ipfailover.lab import report as labreport
from ipfailover.lab.probe import PROBE_PORT, Probe

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


def daemon_command(name: str) -> list[str]:
    """How to start one of the product's programs (heartbeatd, failoverd, ipfailover).

    The console script next to this interpreter if installed, else ``python -m``.
    """
    script = Path(sys.executable).parent / name
    if script.exists():
        return [str(script)]
    module = "cli" if name == "ipfailover" else name
    return [sys.executable, "-m", f"ipfailover.{module}"]


def write_key(path: Path) -> Path:
    """Write a fresh shared key with the product's own ``ipfailover keygen PATH``.

    That writes 64 hex digits and a newline, mode 0600; using the real command
    keeps the lab honest about the key format the daemons accept.
    """
    sh([*daemon_command("ipfailover"), "keygen", "--force", str(path)])
    return path


_FIELD = re.compile(r'([A-Za-z_][\w.-]*)=("(?:[^"\\]|\\.)*"|\S*)')


def parse_fields(line: str) -> dict[str, str]:
    """The ``key=value`` fields of one daemon log line (double-quoted values unquoted)."""
    fields: dict[str, str] = {}
    for key, value in _FIELD.findall(line):
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        fields[key] = value
    return fields


@dataclass(frozen=True, slots=True)
class LogLine:
    """One line a lab process wrote, stamped with time.monotonic() when read."""

    t: float
    text: str
    fields: dict[str, str]

    @property
    def event(self) -> str | None:
        return self.fields.get("event")


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
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


class LabProcess(subprocess.Popen[bytes]):
    """A process started in a lab namespace, its output teed to a log file.

    Every line is stamped with time.monotonic() as it arrives and parsed for
    ``key=value`` fields, so tests and the runner can wait for daemon events and
    place them on the same time axis as the probes.  With ``capture_stdout`` the
    stdout pipe is left to the caller (the probe client's JSON) and only stderr
    is teed; otherwise stderr and stdout go to the log together.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        node: Node,
        name: str,
        log_path: Path,
        capture_stdout: bool = False,
        stdin_pipe: bool = False,
    ) -> None:
        self.node = node
        self.name = name
        self.log_path = log_path
        self.lines: list[LogLine] = []
        self._cond = threading.Condition()
        self._eof = False
        self.closed_at: float | None = None
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        super().__init__(
            list(argv),
            stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE if capture_stdout else subprocess.STDOUT,
            start_new_session=True,  # a terminal's Ctrl-C reaches only the runner
            env=env,
        )
        stream = self.stderr if capture_stdout else self.stdout
        assert stream is not None
        self._tee = threading.Thread(target=self._tee_lines, args=(stream,), daemon=True)
        self._tee.start()

    def _tee_lines(self, stream: IO[bytes]) -> None:
        with open(self.log_path, "ab") as log:
            for raw in iter(stream.readline, b""):
                now = time.monotonic()
                log.write(raw)
                log.flush()
                text = raw.decode("utf-8", "replace").rstrip("\n")
                with self._cond:
                    self.lines.append(LogLine(now, text, parse_fields(text)))
                    self._cond.notify_all()
        with self._cond:
            self._eof = True
            self.closed_at = time.monotonic()  # about when it exited (or closed its output)
            self._cond.notify_all()

    @property
    def label(self) -> str:
        return f"{NODE_NAMES[self.node]}/{self.name}"

    def events(self, event: str | None = None, since: float = 0.0) -> list[LogLine]:
        """Lines with an ``event`` field (of that name, if given) read at or after since."""
        with self._cond:
            return [
                ln
                for ln in self.lines
                if ln.t >= since and ln.event is not None and event in (None, ln.event)
            ]

    def find_event(self, event: str, since: float = 0.0, **fields: str) -> LogLine | None:
        """The first ``event=<event>`` line since ``since`` whose fields include ``fields``."""
        for line in self.events(event, since):
            if all(line.fields.get(k) == v for k, v in fields.items()):
                return line
        return None

    def wait_event(self, event: str, timeout: float, since: float = 0.0, **fields: str) -> LogLine:
        """Wait up to timeout seconds for a matching event line; raise LabTimeout if none.

        Gives up at once if the process has closed its output (it exited).
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = self.find_event(event, since, **fields)
                if found is not None:
                    return found
                remaining = deadline - time.monotonic()
                if self._eof or remaining <= 0:
                    break
                self._cond.wait(remaining)
        want = " ".join([f"event={event}", *(f"{k}={v}" for k, v in fields.items())])
        why = f"exited with {self.poll()}" if self._eof else f"not within {timeout:.1f}s"
        raise LabTimeout(f"{self.label}: no '{want}' ({why}); last lines:\n{self.tail()}")

    def tail(self, n: int = 15) -> str:
        """The last n lines of output, for error messages."""
        with self._cond:
            return "\n".join(f"    {ln.text}" for ln in self.lines[-n:])

    def stop(self, grace: float = 3.0) -> int | None:
        """SIGTERM, then after grace seconds SIGKILL its process group; return the exit code.

        The group was created by us at spawn time (start_new_session), so killing
        it only reaches this process and the children it started.
        """
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.send_signal(signal.SIGTERM)
            try:
                self.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.wait(5.0)
        self._tee.join(1.0)
        if self._tee.is_alive():  # a leftover child of ours still holds the pipe
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
            self._tee.join(2.0)
        for pipe in (self.stdin, self.stdout, self.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        return self.returncode


class ProbeMonitor:
    """Reads a probe client's JSON lines live and answers timing questions about them."""

    def __init__(self, process: LabProcess, reply_timeout: float) -> None:
        self.process = process
        self.reply_timeout = reply_timeout
        self.probes: list[Probe] = []
        self.bad_lines = 0
        self._cond = threading.Condition()
        assert process.stdout is not None
        self._reader = threading.Thread(target=self._read, args=(process.stdout,), daemon=True)
        self._reader.start()

    def _read(self, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            try:
                probe = Probe.from_json(raw.decode("utf-8", "replace"))
            except ValueError:
                self.bad_lines += 1
                continue
            with self._cond:
                self.probes.append(probe)
                self._cond.notify_all()

    def between(self, start: float, end: float = float("inf")) -> list[Probe]:
        """Probes sent in [start, end], ordered by send time."""
        with self._cond:
            return sorted((p for p in self.probes if start <= p.sent <= end), key=lambda p: p.sent)

    def first(self, who: str, after: float) -> Probe | None:
        """The earliest-sent probe since ``after`` that ``who`` answered."""
        return next((p for p in self.between(after) if p.who == who), None)

    def lost(self, start: float, end: float) -> int:
        """How many probes sent in [start, end] got no reply."""
        return sum(1 for p in self.between(start, end) if p.who is None)

    def who_answers(self, start: float, end: float = float("inf")) -> Counter[str | None]:
        """Who answered the probes sent in [start, end] (None = lost)."""
        return Counter(p.who for p in self.between(start, end))

    def wait_first(self, who: str, after: float, timeout: float) -> Probe | None:
        """Wait up to timeout for a probe sent since ``after`` answered by ``who``.

        Outcomes arrive out of send order (a loss is known only after the reply
        timeout), so once one is seen, wait a reply timeout longer for earlier
        probes to resolve before naming the first.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.first(who, after) is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(min(remaining, 0.1))
        time.sleep(self.reply_timeout + 0.05)
        return self.first(who, after)

    def settle_candidate(self, who: str, after: float) -> Probe | None:
        """The first probe answered by ``who`` after the last one another node answered."""
        probes = self.between(after)
        last_other = max((i for i, p in enumerate(probes) if p.who not in (None, who)), default=-1)
        return next((p for p in probes[last_other + 1 :] if p.who == who), None)

    def wait_settled(self, who: str, after: float, timeout: float, quiet: float) -> Probe | None:
        """Wait until ``who`` alone has answered for ``quiet`` seconds; return its first answer.

        The result is the first probe answered by ``who`` after which no other
        node answered, confirmed over a quiet window of resolved probes.  None if
        that does not happen within timeout seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            now = time.monotonic()
            candidate = self.settle_candidate(who, after)
            resolved_until = now - self.reply_timeout - 0.05
            if candidate is not None and resolved_until - candidate.sent >= quiet:
                return candidate
            if now >= deadline:
                return None
            time.sleep(min(0.05, deadline - now))


@dataclass
class _Port:
    """One node's attachment to one network: interface in the node, veth end in SW."""

    node: Node
    network: Network
    sw_name: str


class Lab:
    """Four throwaway namespaces wired as primary, secondary, client and switch.

    Use as a context manager (``with Lab() as lab:``), or call ``build()`` and
    ``teardown()``.  Teardown is idempotent and always runs all of its steps:
    it stops tracked processes (SIGTERM, then SIGKILL), deletes the namespaces
    (which removes their veths, bridges and nftables tables) and, if the lab
    created its temp dir itself, removes it.
    """

    def __init__(
        self,
        *,
        tmpdir: Path | None = None,
        run_id: str | None = None,
        stop_grace: float = 3.0,
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
        self.stop_grace = stop_grace
        self._own_tmpdir = tmpdir is None
        self._tmpdir = tmpdir
        self.processes: list[LabProcess] = []
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
        with _signals_deferred():
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
        """Stop every tracked process, newest first (the client before the daemons)."""
        for proc in reversed(self.processes):
            proc.stop(self.stop_grace)

    def mark(self, text: str) -> float:
        """Record a lab action for the timeline; return its time.monotonic() stamp."""
        now = time.monotonic()
        self.marks.append((now, text))
        return now

    # --- faults ----------------------------------------------------------------

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

    # --- files and processes ------------------------------------------------------

    def write_file(self, relpath: str, text: str, mode: int = 0o644) -> Path:
        """Write a file under the lab's temp dir (parents created); return its path."""
        path = self.tmpdir / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(mode)
        return path

    @property
    def key_path(self) -> Path:
        """The shared key file; created on first use."""
        path = self.tmpdir / "key"
        if not path.exists():
            write_key(path)
        return path

    def node_dirs(self, node: Node) -> dict[str, str]:
        """FAILOVER_RUN_DIR, _SPOOL_DIR and _SCRIPT_DIR for a node, created under tmpdir."""
        dirs = {}
        for var, sub in (("RUN", "run"), ("SPOOL", "spool"), ("SCRIPT", "scripts")):
            path = self.tmpdir / NODE_NAMES[node] / sub
            path.mkdir(parents=True, exist_ok=True)
            if var != "SCRIPT":
                path.chmod(0o700)  # the daemons refuse a run dir or spool open to others
            dirs[f"FAILOVER_{var}_DIR"] = str(path)
        return dirs

    def node_config(self, node: Node, *, filename: str = "hostconfig", **overrides: object) -> Path:
        """Write a node's hostconfig (``NAME="value"`` lines) and return its path.

        The primary gets the heartbeatd variables, the secondary the failoverd
        ones, both with the lab key and private dirs.  ``overrides`` are
        ``FAILOVER_*`` variables: a value sets or adds the variable (so a node can
        carry both roles' settings), None removes it.
        """
        values: dict[str, object] = {
            "FAILOVER_NODE_NAME": NODE_NAMES[node],
            "FAILOVER_KEY_FILE": str(self.key_path),
            "FAILOVER_INTERVAL": 1.0,
            **self.node_dirs(node),
        }
        if node is Node.PRIMARY:
            values["FAILOVER_BCAST_IPS"] = " ".join(BROADCASTS)
        elif node is Node.SECONDARY:
            values["FAILOVER_PEER_IP"] = SERVICE_V4
            values["FAILOVER_PEER_IP_PAIRS"] = f"pub0:{SERVICE_V4} pub0:{SERVICE_V6}"
            values["FAILOVER_NETWORKS"] = "pub0 priv0"
        for name, value in overrides.items():
            if not name.startswith("FAILOVER_"):
                raise ValueError(f"override {name!r} is not a FAILOVER_* variable")
            if value is None:
                values.pop(name, None)
            else:
                values[name] = value
        return self.write_file(f"{NODE_NAMES[node]}/{filename}", render_hostconfig(values))

    def spawn(
        self,
        node: Node,
        argv: Sequence[str],
        log_name: str,
        *,
        capture_stdout: bool = False,
        stdin_pipe: bool = False,
    ) -> LabProcess:
        """Start argv inside a node's namespace, tracked for teardown, logged to tmpdir.

        The log is ``<tmpdir>/logs/<node>-<log_name>.log``.  The returned object is
        a ``subprocess.Popen`` with event helpers (see LabProcess).
        """
        if not self._built or self._torn_down:
            raise LabError("spawn needs a built lab that is not torn down")
        log_path = self.tmpdir / "logs" / f"{NODE_NAMES[node]}-{log_name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with _signals_deferred():  # a Ctrl-C here must not leave an untracked process
            proc = LabProcess(
                ["ip", "netns", "exec", self.ns(node), *argv],
                node=node,
                name=log_name,
                log_path=log_path,
                capture_stdout=capture_stdout,
                stdin_pipe=stdin_pipe,
            )
            self.processes.append(proc)
        return proc

    def start_daemon(
        self, node: Node, daemon: str, config: Path, log_name: str | None = None
    ) -> LabProcess:
        """Start heartbeatd or failoverd (``--config PATH``) in a node's namespace."""
        argv = [*daemon_command(daemon), "--config", str(config)]
        proc = self.spawn(node, argv, log_name or daemon)
        self.mark(f"start {NODE_NAMES[node]}/{log_name or daemon}")
        return proc

    def start_responders(self, ports: Sequence[int] = (PROBE_PORT,)) -> list[LabProcess]:
        """Start a probe responder on the primary and the secondary, and wait until both listen."""
        procs = []
        for node in (Node.PRIMARY, Node.SECONDARY):
            argv = [sys.executable, "-m", "ipfailover.lab.probe", "responder",
                    "--name", NODE_NAMES[node], *(f"--port={p}" for p in ports)]  # fmt: skip
            procs.append(self.spawn(node, argv, "responder"))
        for proc in procs:
            proc.wait_event("start", timeout=10.0)
        return procs

    def client_argv(
        self, target: str, *, port: int, interval: float, reply_timeout: float, duration: float
    ) -> list[str]:
        """The probe client's command line."""
        return [sys.executable, "-m", "ipfailover.lab.probe", "client", "--target", target,
                f"--port={port}", f"--interval={interval}", f"--timeout={reply_timeout}",
                f"--duration={duration}"]  # fmt: skip

    def start_client(
        self,
        target: str = SERVICE_V4,
        *,
        port: int = PROBE_PORT,
        interval: float = 0.01,
        reply_timeout: float = 0.5,
        duration: float = 600.0,
        log_name: str = "client",
    ) -> ProbeMonitor:
        """Start a probe client on C; returns a monitor reading its outcomes live.

        The client stops at the end of ``duration``, when stdin closes
        (``monitor.process.stdin.close()``) or at teardown.
        """
        argv = self.client_argv(
            target, port=port, interval=interval, reply_timeout=reply_timeout, duration=duration
        )
        proc = self.spawn(
            Node.CLIENT, [*argv, "--watch-stdin"], log_name, capture_stdout=True, stdin_pipe=True
        )
        return ProbeMonitor(proc, reply_timeout)

    def sample(
        self,
        target: str = SERVICE_V4,
        *,
        duration: float = 0.3,
        port: int = PROBE_PORT,
        interval: float = 0.01,
        reply_timeout: float = 0.3,
    ) -> Counter[str | None]:
        """Who answers target right now: probe it for duration seconds from C and count.

        Keys are the responders' names, None for lost probes.
        """
        argv = self.client_argv(
            target, port=port, interval=interval, reply_timeout=reply_timeout, duration=duration
        )
        out = sh(["ip", "netns", "exec", self.ns(Node.CLIENT), *argv],
                 timeout=duration + reply_timeout + 10)  # fmt: skip
        return Counter(Probe.from_json(line).who for line in out.splitlines() if line.strip())


def render_hostconfig(values: dict[str, object]) -> str:
    """Render ``NAME="value"`` lines; refuse values that would need shell quoting."""
    lines = []
    for name, value in values.items():
        text = str(value)
        if re.search(r'["\\$`\n]', text):
            raise ValueError(f"{name}: value {text!r} needs quoting the lab does not do")
        lines.append(f'{name}="{text}"')
    return "\n".join(lines) + "\n"


def list_namespaces() -> list[str]:
    """Names of the network namespaces that ``ip netns`` knows."""
    out = sh(["ip", "netns", "list"])
    return [line.split()[0] for line in out.splitlines() if line.strip()]


# ============================================================================
# Scenario runner: ``ipfailover lab``
# ============================================================================

PHASES = ("failover", "failback", "graceful-stop", "restart-failback")


@dataclass
class PhaseResult:
    """One measurement: seconds until the expected node answered, and probes lost meanwhile."""

    name: str
    seconds: float | None = None
    lost: int | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.seconds is not None and self.error is None


@dataclass
class RunResult:
    """One run of all phases, with its timeline (seconds since the lab was built)."""

    index: int
    phases: dict[str, PhaseResult] = field(default_factory=dict)
    timeline: list[tuple[float, str, str]] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and all(
            name in self.phases and self.phases[name].ok for name in PHASES
        )


@dataclass(frozen=True)
class Bounds:
    """How long each wait may take before it counts as a failed measurement."""

    setup: float
    failover: float
    failback: float
    quiet: float  # a failback counts once the primary alone answered this long

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Bounds:
        deadtime = args.deadtime if args.deadtime is not None else 5 * args.interval
        failback_delay = args.failback_delay if args.failback_delay is not None else 15.0
        quiet = max(3.0, 3 * args.interval)
        return cls(
            setup=10.0 + 5 * args.interval,
            failover=deadtime + 10.0,
            failback=failback_delay + deadtime + 10.0 + quiet,
            quiet=quiet,
        )

    def total(self) -> float:
        """An upper bound on one whole run, used as the client's duration."""
        return 2 * self.setup + 2 * self.failover + 2 * self.failback + 60.0


class Scenario:
    """One run: build the lab, start everything, then measure each phase in turn."""

    PRIMARY = NODE_NAMES[Node.PRIMARY]
    SECONDARY = NODE_NAMES[Node.SECONDARY]

    def __init__(self, lab: Lab, args: argparse.Namespace, result: RunResult) -> None:
        self.lab = lab
        self.args = args
        self.bounds = Bounds.from_args(args)
        self.result = result
        self.heartbeatd: LabProcess | None = None
        self.failoverd: LabProcess | None = None
        self.client: ProbeMonitor | None = None
        self.primary_config = Path()

    def setup(self) -> None:
        """Start responders, daemons and the client; wait for peer-verified on both networks."""
        lab, args = self.lab, self.args
        self.primary_config = lab.node_config(Node.PRIMARY, FAILOVER_INTERVAL=args.interval)
        secondary_config = lab.node_config(
            Node.SECONDARY,
            FAILOVER_INTERVAL=args.interval,
            FAILOVER_DEADTIME=args.deadtime,
            FAILOVER_FAILBACK_DELAY=args.failback_delay,
        )
        lab.start_responders()
        start_mail_sink(lab)
        self.heartbeatd = lab.start_daemon(Node.PRIMARY, "heartbeatd", self.primary_config)
        self.failoverd = lab.start_daemon(Node.SECONDARY, "failoverd", secondary_config)
        start = time.monotonic()
        self.client = lab.start_client(service_address(args.ipv6), duration=self.bounds.total())
        for net in Network:
            remaining = max(0.1, start + self.bounds.setup - time.monotonic())
            self.failoverd.wait_event("peer-verified", remaining, network=net.value)
        if self.client.wait_first(self.PRIMARY, start, self.bounds.setup) is None:
            raise LabTimeout(
                f"the client got no answer from the primary within {self.bounds.setup}s"
            )
        lab.mark("setup done: peer verified on both networks, primary answers")

    def measure_takeover(self, name: str, start: float) -> PhaseResult:
        """Time from start to the first probe the secondary answered."""
        assert self.client is not None
        probe = self.client.wait_first(self.SECONDARY, start, self.bounds.failover)
        if probe is None:
            error = f"secondary did not answer within {self.bounds.failover:.1f}s"
            return PhaseResult(name, lost=self.client.lost(start, time.monotonic()), error=error)
        return PhaseResult(name, probe.sent - start, self.client.lost(start, probe.sent))

    def measure_failback(self, name: str, start: float) -> PhaseResult:
        """Time from start to the primary's first answer after which the secondary stays quiet."""
        assert self.client is not None
        probe = self.client.wait_settled(
            self.PRIMARY, start, self.bounds.failback, self.bounds.quiet
        )
        if probe is None:
            error = f"primary did not answer alone within {self.bounds.failback:.1f}s"
            return PhaseResult(name, lost=self.client.lost(start, time.monotonic()), error=error)
        return PhaseResult(name, probe.sent - start, self.client.lost(start, probe.sent))

    def failover(self) -> PhaseResult:
        """Pull both of the primary's cables."""
        start = self.lab.cable(Node.PRIMARY, Network.PUBLIC, up=False)
        self.lab.cable(Node.PRIMARY, Network.PRIVATE, up=False)
        return self.measure_takeover("failover", start)

    def failback(self) -> PhaseResult:
        """Plug both cables back in."""
        start = self.lab.cable(Node.PRIMARY, Network.PUBLIC, up=True)
        self.lab.cable(Node.PRIMARY, Network.PRIVATE, up=True)
        result = self.measure_failback("failback", start)
        self._await_release(start)
        return result

    def graceful_stop(self) -> PhaseResult:
        """SIGTERM heartbeatd on the primary."""
        assert self.heartbeatd is not None
        start = self.lab.mark("SIGTERM primary/heartbeatd")
        self.heartbeatd.send_signal(signal.SIGTERM)
        result = self.measure_takeover("graceful-stop", start)
        try:
            self.heartbeatd.wait(5.0)
        except subprocess.TimeoutExpired:
            self.heartbeatd.stop(0.0)
            self.lab.mark("primary/heartbeatd ignored SIGTERM for 5s; killed")
            result.error = result.error or "heartbeatd did not exit within 5s of SIGTERM"
        return result

    def restart(self) -> PhaseResult:
        """Start heartbeatd again and wait for the failback."""
        start = time.monotonic()
        self.heartbeatd = self.lab.start_daemon(
            Node.PRIMARY, "heartbeatd", self.primary_config, log_name="heartbeatd-2"
        )
        result = self.measure_failback("restart-failback", start)
        self._await_release(start)
        return result

    def _await_release(self, since: float) -> None:
        """Give failoverd a bounded moment to log release-done before the next phase."""
        assert self.failoverd is not None
        with contextlib.suppress(LabTimeout):
            self.failoverd.wait_event("release-done", 5.0, since=since)

    def pause(self) -> None:
        """Wait a random part of one interval, so each phase starts at a random point of the
        heartbeat cycle. Setup ends at a fixed offset from the daemons' start, so without this
        every cable would be pulled at the same point of the cycle and the failover time would
        hardly vary, at a value set by that offset rather than by the software."""
        if self.args.fixed_phase:
            return
        delay = random.uniform(0.0, self.args.interval)
        time.sleep(delay)
        self.lab.mark(f"random pause of {delay:.3f}s before the next phase")

    def run_phases(self) -> None:
        """Measure each phase in order; stop early if one fails (later ones depend on it)."""
        for name, step in zip(
            PHASES, (self.failover, self.failback, self.graceful_stop, self.restart), strict=True
        ):
            self.pause()
            result = step()
            self.result.phases[name] = result
            if not result.ok:
                self.result.error = f"{name}: {result.error}"
                break

    def timeline(self, origin: float) -> list[tuple[float, str, str]]:
        """Lab actions, daemon events and changes of who answers, in time order."""
        entries = [(t - origin, "lab", text) for t, text in self.lab.marks]
        for proc in self.lab.processes:
            if proc.name == "client" or proc.name == "responder":
                continue
            entries += [(ln.t - origin, proc.label, _from_event(ln.text)) for ln in proc.events()]
            if proc.closed_at is not None:
                entries.append((proc.closed_at - origin, proc.label, f"exited ({proc.poll()})"))
        if self.client is not None:
            entries += [
                (t - origin, "client", text) for t, text in answer_changes(self.client.between(0))
            ]
        return sorted(entries, key=lambda e: e[0])


def start_mail_sink(lab: Lab) -> LabProcess | None:
    """The secondary's local SMTP sink (ipfailover.lab.mail), so failoverd's mails are delivered
    and show in the timeline; None, with a mark saying so, without aiosmtpd."""
    if not labmail.available():
        lab.mark("no SMTP sink (aiosmtpd is not installed): failoverd's mails stay spooled")
        return None
    proc = lab.spawn(Node.SECONDARY, [sys.executable, "-m", "ipfailover.lab.mail"], "smtp-sink")
    proc.wait_event(labmail.READY, timeout=10.0)
    return proc


def _from_event(text: str) -> str:
    """A log line from its ``event=`` field on (dropping the logger's own time and level)."""
    start = text.find("event=")
    return text[start:] if start >= 0 else text


def answer_changes(probes: Sequence[Probe]) -> list[tuple[float, str]]:
    """Compress a probe series into runs: one line each time the answering node changes."""
    changes: list[tuple[float, str]] = []
    run: list[Probe] = []
    for probe in [*probes, None]:
        if run and (probe is None or probe.who != run[0].who):
            who = run[0].who or "nobody (lost)"
            span = run[-1].sent - run[0].sent
            changes.append((run[0].sent, f"answers: {who} ({len(run)} probes over {span:.3f}s)"))
            run = []
        if probe is not None:
            run.append(probe)
    return changes


ScenarioFactory = Callable[[Lab, RunResult], Scenario]


def run_once(index: int, make: ScenarioFactory, keep: Path | None) -> RunResult:
    """Build a fresh lab and measure all phases once; the lab is always torn down.

    ``make`` builds the scenario (``ipfailover lab``'s, or the benchmark's keepalived one);
    ``keep`` is where the run's logs and configs are copied, if anywhere.
    """
    result = RunResult(index)
    with Lab() as lab:
        origin = lab.marks[0][0]
        scenario = make(lab, result)
        try:
            scenario.setup()
            scenario.run_phases()
        except LabError as error:
            result.error = str(error)
        finally:
            lab.mark("measurements over; stopping all processes")
            lab.stop_processes()
            result.timeline = scenario.timeline(origin)
            if keep is not None:
                keep_logs(lab.tmpdir, keep / f"run-{index}")
    return result


def keep_logs(source: Path, dest: Path) -> None:
    """Copy a lab's logs and configs (not its key) to dest."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source, dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns("key"))


def summarise(runs: Sequence[RunResult]) -> dict[str, dict[str, Any]]:
    """Per phase: how many runs measured it, median/min/max seconds and lost probes."""
    summary: dict[str, dict[str, Any]] = {}
    for name in PHASES:
        measured = [r.phases[name] for r in runs if name in r.phases and r.phases[name].ok]
        seconds = [p.seconds for p in measured if p.seconds is not None]
        lost = [p.lost for p in measured if p.lost is not None]
        summary[name] = {
            "ok": len(measured),
            "runs": len(runs),
            "median": statistics.median(seconds) if seconds else None,
            "min": min(seconds, default=None),
            "max": max(seconds, default=None),
            "lost_median": statistics.median(lost) if lost else None,
            "lost_max": max(lost, default=None),
        }
    return summary


def _fmt(value: float | None, unit: str = "s") -> str:
    return "-" if value is None else f"{value:.3f}{unit}"


MAX_CLIENT_LINES = 80
"""Human timelines show at most this many answer changes (a flapping run has thousands)."""


def print_run(result: RunResult, out: IO[str]) -> None:
    """Human report of one run: timeline and a phase table."""
    print(f"== run {result.index}: timeline (seconds since the lab was built)", file=out)
    client_lines = 0
    for t, source, text in result.timeline:
        client_lines += source == "client"
        if source != "client" or client_lines <= MAX_CLIENT_LINES:
            print(f"  {t:+9.3f}  {source:<22} {text}", file=out)
    if client_lines > MAX_CLIENT_LINES:
        hidden = client_lines - MAX_CLIENT_LINES
        print(f"  ({hidden} more changes of who answers not shown; see --json)", file=out)
    print(f"{'phase':<18}{'time':>10}{'lost':>8}  status", file=out)
    for name in PHASES:
        phase = result.phases.get(name)
        if phase is None:
            print(f"{name:<18}{'-':>10}{'-':>8}  not run", file=out)
            continue
        status = "ok" if phase.ok else f"FAILED: {phase.error}"
        lost = "-" if phase.lost is None else str(phase.lost)
        print(f"{name:<18}{_fmt(phase.seconds):>10}{lost:>8}  {status}", file=out)
    if result.error:
        print(f"run {result.index} failed: {result.error}", file=out)


def print_header(args: argparse.Namespace, out: IO[str]) -> None:
    """What is measured, with which settings, and how long each wait may take."""
    bounds = Bounds.from_args(args)
    deadtime = "default" if args.deadtime is None else f"{args.deadtime}s"
    failback = "default" if args.failback_delay is None else f"{args.failback_delay}s"
    print(
        f"ipfailover lab: probing {service_address(args.ipv6)}; interval={args.interval}s "
        f"deadtime={deadtime} failback-delay={failback}; waits bounded at "
        f"{bounds.failover:.0f}s (takeover) and {bounds.failback:.0f}s (failback)",
        file=out,
    )


def print_summary(summary: dict[str, dict[str, Any]], out: IO[str]) -> None:
    """Human table of the per-phase statistics over all runs."""
    print("== summary", file=out)
    print(f"{'phase':<18}{'ok':>6}{'median':>10}{'min':>10}{'max':>10}{'lost med':>10}", file=out)
    for name, row in summary.items():
        lost = "-" if row["lost_median"] is None else f"{row['lost_median']:g}"
        print(
            f"{name:<18}{row['ok']:>3}/{row['runs']:<2}{_fmt(row['median']):>10}"
            f"{_fmt(row['min']):>10}{_fmt(row['max']):>10}{lost:>10}",
            file=out,
        )


def configure_parser(p: argparse.ArgumentParser) -> None:
    """Add the ``ipfailover lab`` options to a (sub)parser."""
    p.description = (
        "Build a throwaway network-namespace lab, run heartbeatd and failoverd in it, and time "
        "failover, failback and a graceful stop as seen by a client probing the service address. "
        "With --faults, run fault cases instead (loss, partitions, flapping cables, frozen or "
        "killed daemons, a soak), judge each run with the invariant checker, and print a "
        "Markdown table (with --report, also a JSON report); see docs/reliability.md."
    )
    p.add_argument("--interval", type=float, default=1.0, help="heartbeat interval (s)")
    p.add_argument("--deadtime", type=float, help="FAILOVER_DEADTIME for the secondary (s)")
    p.add_argument("--failback-delay", type=float, help="FAILOVER_FAILBACK_DELAY (s)")
    p.add_argument("--runs", type=int, default=1, help="repeat the whole scenario N times")
    p.add_argument("--ipv6", action="store_true", help="probe the IPv6 service address")
    p.add_argument("--json", action="store_true", help="print a machine-readable result")
    p.add_argument("--keep-logs", metavar="DIR", help="copy each run's logs and configs here")
    p.add_argument(
        "--plot",
        metavar="FILE.png",
        type=Path,
        help="draw who answered each probe over time, with the phases marked (needs matplotlib: "
        "pip install 'ipfailover[plot]')",
    )
    p.add_argument(
        "--fixed-phase",
        action="store_true",
        help="start each phase right away, not after a random part of an interval (then every "
        "cable is pulled at the same point of the heartbeat cycle)",
    )
    from ipfailover.lab import faults as labfaults  # the fault cases share the lab's options

    labfaults.configure_parser(p)


def _preflight(args: argparse.Namespace) -> str | None:
    """Why the lab cannot run here, or None."""
    if os.geteuid() != 0:
        return "must run as root (it creates network namespaces)"
    missing = [tool for tool in ("ip", "nft", "sysctl") if shutil.which(tool) is None]
    if missing:
        return f"missing tools: {', '.join(missing)}"
    if args.runs < 1 or args.interval <= 0:
        return "--runs must be >= 1 and --interval > 0"
    if getattr(args, "plot", None) is not None and not labreport.available():
        return "--plot needs matplotlib: pip install 'ipfailover[plot]' (or python3-matplotlib)"
    return None


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    """Run the scenario ``args.runs`` times; 0 if every measurement succeeded, else 1."""
    problem = _preflight(args)
    if problem:
        print(f"ipfailover lab: {problem}", file=sys.stderr)
        return 2
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    if getattr(args, "faults", None):
        from ipfailover.lab import faults as labfaults

        try:
            return labfaults.run_cli(args)
        except KeyboardInterrupt:
            print("ipfailover lab: interrupted; lab torn down", file=sys.stderr)
            return 130
        finally:
            signal.signal(signal.SIGTERM, previous)
    if not args.json:
        print_header(args, sys.stdout)
    runs: list[RunResult] = []
    keep = Path(args.keep_logs) if args.keep_logs else None

    def make(lab: Lab, result: RunResult) -> Scenario:
        return Scenario(lab, args, result)

    try:
        for index in range(1, args.runs + 1):
            runs.append(run_once(index, make, keep))
            if not args.json:
                print_run(runs[-1], sys.stdout)
    except KeyboardInterrupt:
        print("ipfailover lab: interrupted; lab torn down", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    summary = summarise(runs)
    if args.json:
        print(json.dumps(_json_result(args, runs, summary), indent=2))
    else:
        print_summary(summary, sys.stdout)
    if getattr(args, "plot", None) is not None:
        labreport.plot(runs, args.plot)
        print(f"ipfailover lab: wrote {args.plot}", file=sys.stderr)
    if not args.json:
        labreport.print_next_steps(sys.stdout)
    return 0 if all(r.ok for r in runs) else 1


def _json_result(
    args: argparse.Namespace, runs: Sequence[RunResult], summary: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    params = {
        k: getattr(args, k) for k in ("interval", "deadtime", "failback_delay", "runs", "ipv6")
    }
    return {
        "params": params,
        "ok": all(r.ok for r in runs),
        "summary": summary,
        "runs": [
            {
                "run": r.index,
                "ok": r.ok,
                "error": r.error,
                "phases": {n: {**asdict(p), "ok": p.ok} for n, p in r.phases.items()},
                "timeline": [{"t": round(t, 6), "source": s, "text": x} for t, s, x in r.timeline],
            }
            for r in runs
        ],
    }
