"""The fault cases of issue 8 (1-7 and the soak, 12) behind ``ipfailover lab --faults``.

Each case is a function ``case_*(run, check, params)`` that drives a
:class:`~ipfailover.lab.faultrun.FaultRun` with its
:class:`~ipfailover.lab.faults.FaultInjector`, asks the
:class:`~ipfailover.lab.invariants.Checker` along the way, and returns its metrics;
:data:`CASES` names them, :func:`run_case` runs one in a fresh lab, :func:`plan` lays out
``--faults NAME|all --minutes N`` and :func:`markdown` renders the results' table.
"""

from __future__ import annotations

import contextlib
import json
import random
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ipfailover.lab.faultrun import SECONDARY, FaultRun, Settings
from ipfailover.lab.faults import Direction, Drop
from ipfailover.lab.invariants import Checker, Verdict
from ipfailover.lab.processes import LabProcess
from ipfailover.lab.scenario import keep_logs
from ipfailover.lab.settings import LOSS_LEVELS
from ipfailover.lab.testbed import Lab
from ipfailover.lab.topology import LabError, Network, Node


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
    failoverd = run.failoverd  # None when the bench runs keepalived through this case
    return {
        "seconds": p.seconds,
        "owner_changes": run.owner_changes(start, settled),
        "lost_probes": run.lost(start, settled),
        "takeovers": run.takeovers(start, settled),
        # peer-cut-off: the primary said its cables were out (docs/protocol.md)
        "takeover_reasons": [
            ln.fields.get("reason", "") for ln in failoverd.events("acquire-start", start)
        ]
        if failoverd is not None
        else [],
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
                keep_logs(lab.tmpdir, keep / f"{name}-{params.loss if name == 'loss' else 0}")
    result.seconds = round(time.monotonic() - began, 1)
    return result


FULL_SECONDS = {
    "one-network": 60.0,
    "flap": 60.0,
    "freeze": 0.0,
    "kill-failoverd": 0.0,
    "kill-heartbeatd": 5.0,
    "secondary-cables": 10.0,
}


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
