"""failoverd's core, evidence before a takeover (``docs/safety.md``): probes and conflicts.

Silence alone is not enough. Before it takes anything the monitor asks the shell to probe the
link (:class:`ipfailover.core.monitor_types.Probe`; ARP probe, neighbour solicitation) and the
shell reports which addresses still answer, from which MAC (``probe_done``). An address that
answers while the primary was never verified since start-up is never taken (BLOCKED: a firewall,
key, port or peer address problem, not a dead primary); one that answers after the primary was
verified and then fell silent is taken as Apple did, unless the configuration says otherwise,
and the fact goes with the takeover to the scripts and the mail. While holding, the shell reports
other MACs that claim a held address (``address_claimed``); the monitor reports each conflict
once per episode and has the shell defend the address at most once per
:data:`ipfailover.core.monitor_types.DEFEND_INTERVAL` while the primary is not heard.

The :class:`Probing` a :class:`ipfailover.core.monitor.Monitor` owns keeps the probes and the
conflict episodes and says which trigger a probe's answers fire; the monitor fires it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping

from ipfailover.core.monitor_table import State, Trigger
from ipfailover.core.monitor_types import (
    CONFLICT_QUIET,
    DEFEND_INTERVAL,
    MAX_CONFLICT_MACS,
    MAX_CONFLICTS,
    PROBE_ANSWERED,
    PROBE_FAILED,
    PROBE_SILENT,
    REPROBE_MIN,
    AddressAnswers,
    AddressConflict,
    Answers,
    Conflict,
    Defend,
    MonitorConfig,
    Outbox,
    Probe,
    ProbeResult,
)


class Probing:
    """The probes before a takeover, and the conflicts over held addresses."""

    def __init__(self) -> None:
        self.result = ProbeResult.NONE  # of the last probe that finished
        self.at: float | None = None  # when it finished
        self.answering: Answers = ()  # what answered it
        self.reason = Trigger.PEER_SILENT  # why we are probing (the takeover's reason)
        self.seq = 0
        self.out: int | None = None  # id of the probe the shell is running
        self.reprobe_at: float | None = None
        self.conflicts: OrderedDict[str, Conflict] = OrderedDict()

    def start(self, now: float, box: Outbox) -> None:
        self.seq += 1
        self.out = self.seq
        self.reprobe_at = None
        box.events.append(Probe(id=self.seq, at=now))

    def block(self, now: float, cfg: MonitorConfig) -> None:
        """BLOCKED: probe again later."""
        self.reprobe_at = now + max(REPROBE_MIN, cfg.period)

    def reprobe_due(self, now: float) -> bool:
        return self.out is None and self.reprobe_at is not None and now >= self.reprobe_at

    def done(
        self,
        now: float,
        answers: Mapping[str, Iterable[str]],
        ok: bool,
        state: State,
        verified: bool,
        cfg: MonitorConfig,
        box: Outbox,
    ) -> Trigger | None:
        """The probe under way finished (see ``Monitor.probe_done``): the trigger to fire in
        ``state``, if any. ``verified``: the primary was verified since start-up."""
        self.out = None
        found = _answers(answers)
        self.result = PROBE_ANSWERED if found else PROBE_SILENT if ok else PROBE_FAILED
        self.at = now
        box.counters[f"probes.{self.result}"] += 1
        if state is State.PROBING:
            self.answering = found
            if not found:
                trigger = Trigger.NO_ANSWER
            elif not verified:
                trigger = Trigger.ANSWERS_NEVER_VERIFIED
            elif not cfg.take_answering:
                trigger = Trigger.ANSWERS_REFUSED
            else:
                trigger = Trigger.ANSWERS_AFTER_VERIFIED
            if found:
                taking = trigger is Trigger.ANSWERS_AFTER_VERIFIED
                box.events.append(
                    AddressAnswers(answering=found, verified_before=verified, taking=taking, at=now)
                )
            return trigger
        if state is State.BLOCKED:
            if found and verified and cfg.take_answering:
                self.answering = found
                box.events.append(
                    AddressAnswers(answering=found, verified_before=True, taking=True, at=now)
                )
                return Trigger.ANSWERS_AFTER_VERIFIED
            if found:
                if _macs(found) - _macs(self.answering):
                    box.events.append(
                        AddressAnswers(
                            answering=found, verified_before=verified, taking=False, at=now
                        )
                    )
                self.answering = found
                self.block(now, cfg)
                return None
            self.answering = ()
            return Trigger.NO_ANSWER
        return None

    def claimed(self, now: float, address: str, mac: str, state: State, box: Outbox) -> None:
        """See ``Monitor.address_claimed``."""
        if state in (State.HOLDDOWN, State.HANDBACK):
            box.counters["claims.holddown"] += 1
            return
        if state is not State.ACTIVE:
            box.counters["claims.ignored"] += 1
            return
        box.counters["claims.active"] += 1
        ep = self.conflicts.get(address)
        if ep is None or now - ep.last > CONFLICT_QUIET:
            ep = self.conflicts[address] = Conflict(address=address, since=now, last=now)
            if len(self.conflicts) > MAX_CONFLICTS:
                self.conflicts.popitem(last=False)
        self.conflicts.move_to_end(address)
        ep.last = now
        ep.frames += 1
        if mac not in ep.macs and len(ep.macs) < MAX_CONFLICT_MACS:
            ep.macs.append(mac)
            box.events.append(AddressConflict(address=address, mac=mac, state=state, at=now))
        if ep.defended_at is None or now - ep.defended_at >= DEFEND_INTERVAL:
            ep.defended_at = now
            ep.defences += 1
            box.events.append(Defend(address=address, at=now))


def _answers(answers: Mapping[str, Iterable[str]]) -> Answers:
    """The shell's answers in canonical form: sorted, no address without a MAC."""
    out = []
    for address, macs in answers.items():
        unique = tuple(sorted(set(macs)))[:MAX_CONFLICT_MACS]
        if unique:
            out.append((str(address), unique))
    return tuple(sorted(out))


def _macs(answers: Answers) -> set[str]:
    return {mac for _, macs in answers for mac in macs}
