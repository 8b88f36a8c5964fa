"""The peer benchmark: keepalived's VRRP in the same namespace lab, timed the same way.

``KeepalivedScenario`` drives an ``ipfailover.lab.testbed.Lab`` (same topology, same
probe responders, same probe client), runs keepalived on P (MASTER, priority
150) and S (BACKUP, priority 100) with one VRRP instance on pub0, and measures
the lab's four phases with the lab's own ``Scenario`` measurements:

* failover: pull both of P's cables -> first probe S answers;
* failback: plug them back in -> P answers and S stays quiet (keepalived
  preempts by default, with no delay);
* graceful-stop: SIGTERM keepalived on P (it sends a priority-0 advert)
  -> first probe S answers;
* restart-failback: start keepalived on P again -> P answers and S stays quiet.

VRRP moves a virtual address rather than taking over the primary's own, so the
client probes ``VIRTUAL_ADDRESS`` here, not ``ipfailover.lab.topology.SERVICE_V4``.
Adverts go to VRRP's multicast group 224.0.0.18 (the lab's bridges do no
multicast snooping).  Every keepalived runs in the foreground with its config
and pid files under the lab's temp dir, so parallel labs never share a file.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from ipfailover.lab.processes import LabProcess
from ipfailover.lab.scenario import PhaseResult, RunResult, Scenario
from ipfailover.lab.settings import LabSettings
from ipfailover.lab.testbed import Lab
from ipfailover.lab.topology import NODE_NAMES, LabTimeout, Network, Node

VIRTUAL_ADDRESS = "203.0.113.50"
"""The VRRP virtual address the client probes (a documentation address)."""

VIRTUAL_ROUTER_ID = 51
PRIORITIES = {Node.PRIMARY: 150, Node.SECONDARY: 100}
_STATE = re.compile(r"\(VI_1\) (Entering \w+ STATE|.*priority 0.*)")


@dataclass(frozen=True)
class VrrpSettings:
    """One keepalived configuration under test."""

    advert_int: float  # seconds between adverts (VRRPv3 allows centiseconds)
    version: int  # VRRP protocol version: 2 (keepalived's default) or 3

    def master_down(self, priority: int) -> float:
        """RFC 5798's Master_Down_Interval for a backup of this priority, in seconds.

        Skew_Time is (256 - priority) / 256 of an advert interval (VRRPv3); VRRPv2
        defines it in whole seconds, which is the same thing at advert_int 1.
        """
        unit = self.advert_int if self.version == 3 else 1.0
        return 3 * self.advert_int + (256 - priority) / 256 * unit


def render_config(node: Node, vrrp: VrrpSettings) -> str:
    """keepalived.conf for one node: one VRRP instance on pub0 carrying VIRTUAL_ADDRESS."""
    state = "MASTER" if node is Node.PRIMARY else "BACKUP"
    return f"""\
global_defs {{
    router_id lab-{NODE_NAMES[node]}
    vrrp_version {vrrp.version}
}}
vrrp_instance VI_1 {{
    state {state}
    interface {Network.PUBLIC.value}
    virtual_router_id {VIRTUAL_ROUTER_ID}
    priority {PRIORITIES[node]}
    advert_int {vrrp.advert_int:g}
    virtual_ipaddress {{
        {VIRTUAL_ADDRESS}/24 dev {Network.PUBLIC.value}
    }}
}}
"""


def keepalived_argv(workdir: Path, config: Path) -> list[str]:
    """Foreground keepalived, VRRP only, logging to the console, with private pid files."""
    return [
        shutil.which("keepalived") or "keepalived",
        "--dont-fork", "--log-console", "--log-detail", "--no-syslog", "--vrrp",
        f"--use-file={config}",
        f"--pid={workdir / 'keepalived.pid'}",
        f"--vrrp_pid={workdir / 'vrrp.pid'}",
        f"--checkers_pid={workdir / 'checkers.pid'}",
        f"--bfd_pid={workdir / 'bfd.pid'}",
    ]  # fmt: skip


def wait_line(proc: LabProcess, needle: str, timeout: float, since: float = 0.0) -> float:
    """Wait up to timeout seconds for an output line containing needle; return its time.

    keepalived's log lines carry no ``event=`` fields, so the lab's
    ``wait_event`` does not apply; this polls the same stamped lines.
    """
    deadline = time.monotonic() + timeout
    while True:
        found = next((ln.t for ln in list(proc.lines) if ln.t >= since and needle in ln.text), None)
        if found is not None:
            return found
        if proc.poll() is not None or time.monotonic() >= deadline:
            why = f"exited with {proc.poll()}" if proc.poll() is not None else f"{timeout:.1f}s"
            raise LabTimeout(f"{proc.label}: no {needle!r} ({why}); last lines:\n{proc.tail()}")
        time.sleep(0.02)


class KeepalivedScenario(Scenario):
    """The lab's scenario with keepalived in place of heartbeatd and failoverd.

    Reuses the lab's cable pulls, probe monitor and phase measurements; only
    what starts, stops and restarts the failover software differs.
    """

    def __init__(
        self, lab: Lab, vrrp: VrrpSettings, settings: LabSettings, result: RunResult
    ) -> None:
        super().__init__(lab, settings, result)
        self.vrrp = vrrp
        self.keepalived: dict[Node, LabProcess] = {}

    def start_keepalived(self, node: Node, log_name: str = "keepalived") -> LabProcess:
        """Write the node's config and start keepalived in its namespace."""
        relpath = f"keepalived/{NODE_NAMES[node]}/keepalived.conf"
        config = self.lab.write_file(relpath, render_config(node, self.vrrp))
        workdir = config.parent
        proc = self.lab.spawn(node, keepalived_argv(workdir, config), log_name)
        self.lab.mark(f"start {NODE_NAMES[node]}/{log_name}")
        self.keepalived[node] = proc
        return proc

    def setup(self) -> None:
        """Start responders, both keepalived and the client; wait until P is master and answers."""
        self.lab.start_responders()
        start = time.monotonic()
        primary = self.start_keepalived(Node.PRIMARY)
        secondary = self.start_keepalived(Node.SECONDARY)
        self.client = self.lab.start_client(VIRTUAL_ADDRESS, duration=self.bounds.total())
        wait_line(secondary, "Entering BACKUP STATE", self.bounds.setup)
        remaining = max(0.1, start + self.bounds.setup - time.monotonic())
        wait_line(primary, "Entering MASTER STATE", remaining)
        if self.client.wait_first(self.PRIMARY, start, self.bounds.setup) is None:
            raise LabTimeout(f"the client got no answer from P within {self.bounds.setup}s")
        # let S hear a few of P's adverts, so its master-down timer runs from an advert
        time.sleep(2 * self.vrrp.advert_int + 0.2)
        self.lab.mark("setup done: primary is VRRP master and answers")

    def failback(self) -> PhaseResult:
        """Plug both of P's cables back in."""
        start = self.lab.cable(Node.PRIMARY, Network.PUBLIC, up=True)
        self.lab.cable(Node.PRIMARY, Network.PRIVATE, up=True)
        result = self.measure_failback("failback", start)
        self._await_backup(start)
        return result

    def graceful_stop(self) -> PhaseResult:
        """SIGTERM keepalived on P."""
        proc = self.keepalived[Node.PRIMARY]
        start = self.lab.mark("SIGTERM primary/keepalived")
        proc.send_signal(signal.SIGTERM)
        result = self.measure_takeover("graceful-stop", start)
        try:
            proc.wait(5.0)
        except subprocess.TimeoutExpired:
            proc.stop(0.0)
            result.error = result.error or "keepalived did not exit within 5s of SIGTERM"
        return result

    def restart(self) -> PhaseResult:
        """Start keepalived on P again and wait for it to take the address back."""
        start = time.monotonic()
        self.start_keepalived(Node.PRIMARY, log_name="keepalived-2")
        result = self.measure_failback("restart-failback", start)
        self._await_backup(start)
        return result

    def _await_backup(self, since: float) -> None:
        """Give S a bounded moment to log its return to BACKUP before the next phase."""
        with contextlib.suppress(LabTimeout):
            wait_line(self.keepalived[Node.SECONDARY], "Entering BACKUP STATE", 5.0, since)

    def timeline(self, origin: float) -> list[tuple[float, str, str]]:
        """The lab's timeline plus keepalived's state changes and priority-0 adverts."""
        entries = super().timeline(origin)
        for proc in self.lab.processes:
            if not proc.name.startswith("keepalived"):
                continue
            for line in list(proc.lines):
                match = _STATE.search(line.text)
                if match:
                    entries.append((line.t - origin, proc.label, match.group(1)))
        return sorted(entries, key=lambda e: e[0])


def scenario_settings(vrrp: VrrpSettings, fixed_phase: bool = False) -> LabSettings:
    """What the lab's ``Scenario`` reads from its settings, for keepalived.

    Its wait bounds come from these: the dead time is S's master-down interval
    and there is no hold-down before a failback.
    """
    return LabSettings(
        interval=vrrp.advert_int,
        deadtime=vrrp.master_down(PRIORITIES[Node.SECONDARY]),
        failback_delay=0.0,
        ipv6=False,
        fixed_phase=fixed_phase,
    )
