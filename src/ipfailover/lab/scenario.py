"""The timing scenario behind ``ipfailover lab``: its phases, and a stopwatch on each.

A :class:`Scenario` starts heartbeatd on P, failoverd on S, probe responders on both and a
probe client on C, then pulls cables and stops daemons while timing who answers the service
address: failover, failback, a graceful stop and a restart (:data:`PHASES`). Every wait is
bounded (:class:`Bounds`); a timeout is a failed measurement. :func:`run_once` builds a fresh
lab for one run and always tears it down; :func:`summarise` gives the per-phase statistics.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ipfailover.lab import mail as labmail
from ipfailover.lab.probe import Probe
from ipfailover.lab.processes import LabProcess, ProbeMonitor
from ipfailover.lab.settings import LabSettings
from ipfailover.lab.testbed import Lab
from ipfailover.lab.topology import NODE_NAMES, LabError, LabTimeout, Network, Node, service_address

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
    def from_settings(cls, settings: LabSettings) -> Bounds:
        interval = settings.interval
        deadtime = settings.deadtime if settings.deadtime is not None else 5 * interval
        failback_delay = settings.failback_delay if settings.failback_delay is not None else 15.0
        quiet = max(3.0, 3 * interval)
        return cls(
            setup=10.0 + 5 * interval,
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

    def __init__(self, lab: Lab, settings: LabSettings, result: RunResult) -> None:
        self.lab = lab
        self.settings = settings
        self.bounds = Bounds.from_settings(settings)
        self.result = result
        self.heartbeatd: LabProcess | None = None
        self.failoverd: LabProcess | None = None
        self.client: ProbeMonitor | None = None
        self.primary_config = Path()

    def setup(self) -> None:
        """Start responders, daemons and the client; wait for peer-verified on both networks."""
        lab, settings = self.lab, self.settings
        self.primary_config = lab.node_config(Node.PRIMARY, FAILOVER_INTERVAL=settings.interval)
        secondary_config = lab.node_config(
            Node.SECONDARY,
            FAILOVER_INTERVAL=settings.interval,
            FAILOVER_DEADTIME=settings.deadtime,
            FAILOVER_FAILBACK_DELAY=settings.failback_delay,
        )
        lab.start_responders()
        start_mail_sink(lab)
        self.heartbeatd = lab.start_daemon(Node.PRIMARY, "heartbeatd", self.primary_config)
        self.failoverd = lab.start_daemon(Node.SECONDARY, "failoverd", secondary_config)
        start = time.monotonic()
        self.client = lab.start_client(service_address(settings.ipv6), duration=self.bounds.total())
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
        if self.settings.fixed_phase:
            return
        delay = random.uniform(0.0, self.settings.interval)
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
