"""The lab as tests, benchmarks and ``ipfailover lab`` use it: :class:`Lab`.

A :class:`Lab` is the :class:`~ipfailover.lab.topology.Topology` (namespaces, bridges,
addresses, cables and partitions) plus what lives on its hosts: the shared key, each node's
hostconfig and private dirs under the lab's temp dir, and the processes started in the
namespaces -- the product's daemons, the probe responders and client -- tracked so that
teardown stops them all (SIGTERM, then SIGKILL) before the namespaces go.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from ipfailover.lab.probe import PROBE_PORT, Probe
from ipfailover.lab.processes import LabProcess, ProbeMonitor, daemon_command, write_key
from ipfailover.lab.topology import (
    BROADCASTS,
    HEARTBEAT_PORT,
    NODE_NAMES,
    SERVICE_V4,
    SERVICE_V6,
    LabError,
    Node,
    Topology,
    sh,
    signals_deferred,
)


class Lab(Topology):
    """A :class:`Topology` with files, configs and tracked processes on its hosts.

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
        super().__init__(tmpdir=tmpdir, run_id=run_id, heartbeat_port=heartbeat_port)
        self.stop_grace = stop_grace
        self.processes: list[LabProcess] = []

    def stop_processes(self) -> None:
        """Stop every tracked process, newest first (the client before the daemons)."""
        for proc in reversed(self.processes):
            proc.stop(self.stop_grace)

    # --- files ------------------------------------------------------------------------

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
        with signals_deferred():  # a Ctrl-C here must not leave an untracked process
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
