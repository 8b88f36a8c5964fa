"""Per-network failure detector (sans-I/O).

A network is *alive* while the primary has been heard on it within the dead time (plus a small
*allowance*, see :class:`Detector`). "Heard" means a verified heartbeat (see
:mod:`ipfailover.core.monitor` for what verifies one); the time recorded is the *evidence time* the
monitor computes, never later than the arrival time.

The detector also decides Apple's one-network rule: when some networks are alive and another falls
silent, that network is in *anomaly*; when it is heard again it has *recovered*. Silence on every
network is the monitor's business (takeover), not an anomaly.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

LOSS_WINDOW = 60.0  # seconds over which per-network loss is reported


class Change(enum.Enum):
    ANOMALY = "anomaly"
    RECOVERED = "recovered"


@dataclass
class NetworkView:
    """What one network has seen of the primary."""

    name: str
    last_heard: float | None = None
    heartbeats: int = 0
    in_anomaly: bool = False
    arrivals: deque[float] = field(default_factory=deque)  # arrival times in the loss window


class Detector:
    """Tracks when each network last heard the primary; all times are caller-supplied floats.

    ``allowance`` is how late the heartbeat due at the very end of the dead time may arrive and
    still count. With the default dead time of three intervals, the third heartbeat after the
    last one heard is due exactly when the dead time runs out; timers and networks are never
    exact, so without it that heartbeat loses the race about half of the time, and two lost
    rounds (not three) would make a takeover.
    """

    def __init__(
        self, networks: Iterable[str], deadtime: float, now: float, allowance: float = 0.0
    ) -> None:
        if deadtime <= 0:
            raise ValueError("deadtime must be positive")
        self.deadtime = deadtime
        self.allowance = allowance
        self.started = now
        self.networks: dict[str, NetworkView] = {n: NetworkView(n) for n in networks}
        self._any_alive_before = True  # start-up counts as "was alive": the grace covers it
        self._quiet_until = now
        # (since, interval): the peer's announced interval from each change on, for loss()
        self._intervals: deque[tuple[float, float]] = deque()

    def heard(
        self, network: str, evidence: float, now: float, interval: float | None = None
    ) -> None:
        """A verified heartbeat on ``network`` (learned if new) proved life at ``evidence``;
        ``interval`` is the one it announces, which loss() counts against from now on."""
        if interval is not None and (not self._intervals or self._intervals[-1][1] != interval):
            self._intervals.append((now, interval))
            while len(self._intervals) > 1 and self._intervals[1][0] <= now - LOSS_WINDOW:
                self._intervals.popleft()
        view = self.networks.setdefault(network, NetworkView(network))
        view.heartbeats += 1
        view.arrivals.append(now)
        while view.arrivals and view.arrivals[0] <= now - LOSS_WINDOW:
            view.arrivals.popleft()
        if view.last_heard is None or evidence > view.last_heard:
            view.last_heard = evidence

    def loss(self, network: str, interval: float, now: float) -> float | None:
        """The fraction of the peer's heartbeats that did not arrive on ``network`` over the last
        minute, or since start-up if that is shorter; None before a whole interval has passed.

        Each stretch of time counts against the interval the peer announced then (heard()'s
        ``interval``), so a change of interval does not show as loss; ``interval`` is used for
        the time before any was announced."""
        span = min(LOSS_WINDOW, now - self.started)
        if span < interval:
            return None
        arrivals = self.networks[network].arrivals
        received = sum(1 for t in arrivals if t > now - span)
        return max(0.0, 1.0 - received / self._expected(now - span, now, interval))

    def _expected(self, start: float, end: float, interval: float) -> float:
        """How many heartbeats the announced intervals promise between ``start`` and ``end``."""
        changes = [(start, interval), *((t, i) for t, i in self._intervals if t > start)]
        in_force = [i for t, i in self._intervals if t <= start]
        if in_force:
            changes[0] = (start, in_force[-1])
        total = 0.0
        for (since, every), (until, _) in zip(changes, [*changes[1:], (end, 0.0)], strict=True):
            total += max(0.0, min(until, end) - since) / every
        return total

    def forget(self) -> None:
        """The primary said it is leaving: nothing heard so far counts any more."""
        for view in self.networks.values():
            view.last_heard = None
            view.in_anomaly = False

    def alive(self, network: str, now: float) -> bool:
        """Heard on ``network`` within the dead time."""
        last = self.networks[network].last_heard
        return last is not None and now < last + self.deadtime + self.allowance

    def any_alive(self, now: float) -> bool:
        return any(self.alive(n, now) for n in self.networks)

    def in_grace(self, now: float) -> bool:
        """The first dead time after start-up, when silence is not yet evidence of anything."""
        return now < self.started + self.deadtime

    def all_silent(self, now: float) -> bool:
        """Silent on every network for at least the dead time (never during the start-up grace)."""
        return not self.in_grace(now) and not self.any_alive(now)

    def changes(self, now: float) -> list[tuple[Change, str]]:
        """Anomaly and recovery transitions since the last call, in network order.

        A network enters anomaly when it is silent while another is alive and has heard the
        primary since this one fell silent, and recovers when it is heard again. Nothing is
        reported while every network is silent, nor for one dead time after start-up or after
        the primary is heard again following silence on every network (the other networks get
        as long to come back as the first one did).
        """
        out: list[tuple[Change, str]] = []
        others_alive = self.any_alive(now)
        if others_alive and not self._any_alive_before:
            self._quiet_until = now + self.deadtime
        self._any_alive_before = others_alive
        quiet = self.in_grace(now) or now < self._quiet_until
        newest = self.last_evidence()
        for name, view in sorted(self.networks.items()):
            up = self.alive(name, now)
            # Silent here, and heard elsewhere *after* this network fell silent: not just the
            # last heartbeats of a dying primary arriving a little apart on two networks.
            fell_silent = (
                (self.started if view.last_heard is None else view.last_heard)
                + self.deadtime
                + self.allowance
            )
            heard_after = newest is not None and newest > fell_silent
            if view.in_anomaly and up:
                view.in_anomaly = False
                out.append((Change.RECOVERED, name))
            elif not view.in_anomaly and not up and others_alive and heard_after and not quiet:
                view.in_anomaly = True
                out.append((Change.ANOMALY, name))
        return out

    def next_deadline(self, now: float) -> float | None:
        """The next instant at which some answer above can change without new input."""
        limit = self.deadtime + self.allowance
        times = [
            v.last_heard + limit
            for v in self.networks.values()
            if v.last_heard is not None and v.last_heard + limit > now
        ]
        if self.in_grace(now):
            times.append(self.started + self.deadtime)
        if self._quiet_until > now:
            times.append(self._quiet_until)
        return min(times, default=None)

    def last_evidence(self) -> float | None:
        """The latest evidence of life on any network."""
        return max((v.last_heard for v in self.networks.values() if v.last_heard), default=None)
