"""Network notices without a mail storm: one mail when an episode starts, a summary when it ends.

Apple's one-network rule mails ``anomaly`` when heartbeats stop on one network while another
still hears the primary, and ``recovered`` when they come back. A network that flaps (a bad
cable, a switch port going up and down every few seconds) used to send both for every flap:
899 mails in an hour for a 4 s flap. Here the notices of one network are grouped into
*episodes*:

* an episode starts with an ``anomaly`` on a network that has none open: mailed at once, as
  before, since the admin should know now;
* every later ``anomaly`` and ``recovered`` of that network is counted, not mailed;
* the network has *settled* when it has not changed for ``settle`` seconds (failoverd uses
  the longer of 60 s and 10 dead times). Settled with heartbeats back: one ``recovered`` mail
  with the episode's counts, and the episode ends. Settled silent after it had come back at
  least once since the last mail: one ``anomaly`` mail with the counts (it flapped, and is now
  down); the episode stays open until heartbeats return and settle;
* an episode that never settles gets one reminder per ``remind`` seconds (1 h), with counts.

So a network mails at most twice per episode plus once an hour while it flaps. Transitions
(takeover, release, ...) are not affected: they are mailed every time.

A pure policy: time comes in as ``now``; failoverd turns what it returns into mails.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SETTLE_MIN = 60.0  # seconds without a change before an episode has settled, at least
SETTLE_DEADTIMES = 10  # ... or this many dead times, if longer
REMIND = 3600.0  # seconds between reminders while an episode has not settled


def settle_time(deadtime: float) -> float:
    """How long a network must stay unchanged to have settled."""
    return max(SETTLE_MIN, SETTLE_DEADTIMES * deadtime)


@dataclass(frozen=True)
class Summary:
    """One mail to send about a network: ``kind`` is its event (``anomaly`` or ``recovered``);
    ``reason`` says why now: ``start`` (the first anomaly), ``settled`` or ``reminder``."""

    kind: str
    reason: str
    network: str
    started: float  # the episode's first anomaly (``now``'s clock)
    changed: float  # its last change
    anomalies: int  # times the heartbeats stopped in the episode
    recoveries: int  # times they came back
    silent_for: float  # seconds without heartbeats in the episode, up to ``at``
    at: float  # when this summary was made


@dataclass
class _Episode:
    network: str
    started: float
    changed: float
    anomalies: int = 1
    recoveries: int = 0
    silent: bool = True
    silent_total: float = 0.0  # seconds silent before the current silence began
    last_mail: float = 0.0
    recoveries_mailed: int = 0  # recoveries already told in a mail
    settled: bool = False  # settled silent and mailed: nothing to do until the next change

    def silent_for(self, now: float) -> float:
        return self.silent_total + (now - self.changed if self.silent else 0.0)

    def summary(self, kind: str, reason: str, now: float) -> Summary:
        return Summary(
            kind=kind,
            reason=reason,
            network=self.network,
            started=self.started,
            changed=self.changed,
            anomalies=self.anomalies,
            recoveries=self.recoveries,
            silent_for=self.silent_for(now),
            at=now,
        )


@dataclass
class NetworkNotices:
    """Groups ``anomaly``/``recovered`` notices into episodes; see the module docstring.

    ``event`` and ``handle_timer`` return the summaries to mail now; ``get_timer`` says when
    ``handle_timer`` is next due (None: nothing pending).
    """

    settle: float = SETTLE_MIN
    remind: float = REMIND
    _open: dict[str, _Episode] = field(default_factory=dict)

    def event(self, kind: str, network: str, now: float) -> list[Summary]:
        ep = self._open.get(network)
        if kind == "anomaly":
            if ep is None:
                ep = self._open[network] = _Episode(network, started=now, changed=now)
                ep.last_mail = now
                return [ep.summary("anomaly", "start", now)]
            if not ep.silent:
                ep.anomalies += 1
                ep.silent, ep.changed, ep.settled = True, now, False
            return []
        if kind != "recovered":
            raise ValueError(f"not a network notice: {kind}")
        if ep is None:  # no episode seen (it began before a restart): say so as before
            return [
                _Episode(network, now, now, anomalies=0, silent=False).summary(kind, "start", now)
            ]
        if ep.silent:
            ep.recoveries += 1
            ep.silent_total += now - ep.changed
            ep.silent, ep.changed, ep.settled = False, now, False
        return []

    def get_timer(self) -> float | None:
        due = [self._due(ep) for ep in self._open.values()]
        return min((t for t in due if t is not None), default=None)

    def handle_timer(self, now: float) -> list[Summary]:
        out: list[Summary] = []
        for name, ep in list(self._open.items()):
            if ep.settled:
                continue
            if now >= ep.changed + self.settle:
                if not ep.silent:
                    out.append(ep.summary("recovered", "settled", now))
                    del self._open[name]
                    continue
                ep.settled = True  # silent and steady: say so if it flapped since the last mail
                if ep.recoveries > ep.recoveries_mailed:
                    out.append(self._mailed(ep, ep.summary("anomaly", "settled", now), now))
            elif now >= ep.last_mail + self.remind:
                kind = "anomaly" if ep.silent else "recovered"
                out.append(self._mailed(ep, ep.summary(kind, "reminder", now), now))
        return out

    def episode(self, network: str, now: float) -> Summary | None:
        """The open episode of ``network`` as it stands at ``now`` (for status), or None."""
        ep = self._open.get(network)
        if ep is None:
            return None
        return ep.summary("anomaly" if ep.silent else "recovered", "open", now)

    def _due(self, ep: _Episode) -> float | None:
        if ep.settled:
            return None
        return min(ep.changed + self.settle, ep.last_mail + self.remind)

    @staticmethod
    def _mailed(ep: _Episode, summary: Summary, now: float) -> Summary:
        ep.last_mail = now
        ep.recoveries_mailed = ep.recoveries
        return summary
