"""What a takeover or a release did, as it happened: the record the executor fills in, for the
log, the mail and the status command; and the environment its scripts run in."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ipfailover import mail
from ipfailover.shell import netif
from ipfailover.shell import scripts as hooks
from ipfailover.shell.scripts import Phase, ScriptResult
from ipfailover.shell.snapshot import Transition


class Action(enum.StrEnum):
    ACQUIRE = "acquire"
    RELEASE = "release"


class Outcome(enum.StrEnum):
    DONE = "done"  # every address changed
    PARTIAL = "partial"  # a takeover that added some addresses but not all
    DECLINED = "declined"  # Test said no: nothing changed
    FAILED = "failed"  # the address change failed (nothing added, or something not deleted)


def plain(a: netif.Assignment) -> str:
    """``interface:address/prefix``, IPv6 without brackets (easy to split in a shell script)."""
    return f"{a.ifname}:{a.address}/{a.prefixlen}"


@dataclass(frozen=True)
class Step:
    """One step of the timeline; times in seconds from the start of the transition."""

    name: str
    start: float
    duration: float
    detail: str = ""


@dataclass
class TransitionRecord:
    """One takeover or release as it happened."""

    action: Action
    reason: str  # peer-silent, peer-leaving, peer-heard, shutdown, manual
    addresses: tuple[str, ...]
    started: float  # loop time
    started_wall: float
    steps: list[Step] = field(default_factory=list)
    scripts: list[ScriptResult] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # netlink failures, one per address
    outcome: Outcome = Outcome.FAILED
    why: str = ""  # for DECLINED and FAILED: the reason in words
    changed_at: float | None = None  # seconds from the start when the addresses had changed
    duration: float = 0.0

    @property
    def ok(self) -> bool:
        """Whether the core should treat it as done (a partial takeover still holds some)."""
        if self.action is Action.ACQUIRE:
            return self.outcome in (Outcome.DONE, Outcome.PARTIAL)
        return self.outcome is Outcome.DONE

    @property
    def script_problems(self) -> list[ScriptResult]:
        """Scripts that failed, timed out, were refused or could not start.

        A Test that declined the transition is the outcome, not a problem of its own.
        """
        declined = self.outcome is Outcome.DECLINED
        return [s for s in self.scripts if not s.ok and not (declined and s.phase is Phase.TEST)]

    def summary(self) -> Transition:
        """A JSON-ready view for the status command (wall-clock start, seconds elsewhere)."""
        return {
            "started": self.started_wall,
            "action": str(self.action),
            "reason": self.reason,
            "outcome": str(self.outcome),
            "ok": self.ok,
            "vetoed": self.outcome is Outcome.DECLINED,
            "why": self.why,
            "duration": self.duration,
            "changed_at": self.changed_at,
            "steps": [
                {"step": st.name, "start": st.start, "duration": st.duration, "detail": st.detail}
                for st in self.steps
            ],
            "scripts": [
                {
                    "name": r.name,
                    "status": str(r.status),
                    "detail": r.detail,
                    "duration": r.duration,
                }
                for r in self.scripts
            ],
            "errors": list(self.errors),
        }


def script_env(
    *,
    action: Action,
    reason: str,
    phase: Phase,
    node: str,
    situation: mail.Situation,
    addresses: Iterable[netif.Assignment],
    folder: Path,
) -> dict[str, str]:
    """The whole environment of a transition script (nothing is inherited from the daemon)."""
    addresses = list(addresses)
    return {
        "PATH": hooks.SCRIPT_PATH,
        "IPFAILOVER_ACTION": str(action),
        "IPFAILOVER_REASON": reason,
        "IPFAILOVER_PHASE": str(phase),
        "IPFAILOVER_NODE": node,
        "IPFAILOVER_PEER": situation.peer,
        "IPFAILOVER_ADDRESSES": " ".join(plain(a) for a in addresses),
        "IPFAILOVER_IPS": " ".join(str(a.address) for a in addresses),
        "IPFAILOVER_SCRIPT_DIR": str(folder),
        # docs/safety.md: what the probe before a takeover found
        "IPFAILOVER_PROBE": situation.probe,
        "IPFAILOVER_ANSWERING": " ".join(
            f"{address}={mac}" for address, macs in situation.answering for mac in macs
        ),
        "IPFAILOVER_PEER_VERIFIED": {True: "yes", False: "no", None: ""}[situation.peer_verified],
    }
