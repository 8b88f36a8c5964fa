"""failoverd's status snapshot (docs/status.md), built from its core and its records."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Mapping

from ipfailover import __version__
from ipfailover.core import config, episodes
from ipfailover.core.monitor import Monitor, State
from ipfailover.failover.record import Action, TransitionRecord
from ipfailover.shell import netif
from ipfailover.shell.clock import Clock
from ipfailover.shell.control import SCHEMA
from ipfailover.shell.eventlog import WallClock
from ipfailover.shell.snapshot import (
    Answering,
    Episode,
    FailoverdSnapshot,
    collision_status,
    rejected_counts,
)


def failoverd_snapshot(
    *,
    cfg: config.Config,
    core: Monitor,
    notices: episodes.NetworkNotices,
    history: Iterable[TransitionRecord],
    assignments: Iterable[netif.Assignment],
    blocked_why: str,
    mail_pending: int,
    counts: Counter[str],
    clock: Clock,
) -> FailoverdSnapshot:
    """The status failoverd reports (docs/status.md)."""
    now, wall = clock.monotonic(), WallClock.of(clock)
    det = core.detector
    peer_interval = core.peer_interval or cfg.interval
    history = list(history)
    takeovers = [r for r in history if r.action is Action.ACQUIRE and r.ok]
    return {
        "schema": SCHEMA,
        "role": "failoverd",
        "node": core.cfg.node,
        "pid": os.getpid(),
        "version": __version__,
        "config": cfg.path,
        "state": core.state.value,
        "since": wall(core.since),
        "holding": core.holding,
        "peer": {
            "name": core.peer_name,
            "ip": None if cfg.peer_ip is None else str(cfg.peer_ip),
            "interval": core.peer_interval,
            "verified": core.ever_verified,
        },
        "blocked": (
            {"why": blocked_why, "answering": answering(core)}
            if core.state is State.BLOCKED
            else None
        ),
        "probe": {
            "result": core.probe_result or None,
            "at": wall(core.probe_at),
            "answering": answering(core),
        },
        "conflicts": [
            {
                "address": c.address,
                "macs": list(c.macs),
                "since": wall(c.since),
                "last_seen": wall(c.last),
                "frames": c.frames,
                "defences": c.defences,
            }
            for c in core.conflicts(now)
        ],
        "deadtime": core.cfg.deadtime,
        "failback_delay": core.cfg.failback_delay,
        "holddown_until": wall(core.holddown_until),
        "networks": [
            {
                "name": name,
                "alive": det.alive(name, now),
                "anomaly": view.in_anomaly,
                "last_heard": wall(view.last_heard),
                "heartbeats": view.heartbeats,
                "loss_1m": det.loss(name, peer_interval, now),
                "episode": episode_status(notices.episode(name, now), wall),
            }
            for name, view in sorted(det.networks.items())
        ],
        "addresses": [{"address": str(a), "held": core.holding} for a in assignments],
        "transitions": [r.summary() for r in history[-10:]],
        "last_takeover_seconds": takeovers[-1].duration if takeovers else None,
        "mail": {"pending": mail_pending},
        "rejected": rejected_counts(core.counters),
        "name_collision": collision_status(core.collision, wall, now),
        "counts": {
            "transitions": transition_counts(counts),
            "script_runs": counts["script-runs"],
            "script_failures": counts["script-failures"],
        },
    }


def transition_counts(counts: Mapping[str, int]) -> dict[str, dict[str, int]]:
    """{action: {outcome: count}} since start-up."""
    out: dict[str, dict[str, int]] = {}
    for key, n in counts.items():
        kind, _, rest = key.partition(":")
        if kind == "transition":
            action, _, outcome = rest.partition(":")
            out.setdefault(action, {})[outcome] = n
    return out


def episode_status(e: episodes.Summary | None, wall: WallClock) -> Episode | None:
    """A network's open episode of anomalies (docs/status.md), or None."""
    if e is None:
        return None
    return {
        "since": wall(e.started),
        "last_change": wall(e.changed),
        "losses": e.anomalies,
        "returns": e.recoveries,
        "silent_seconds": e.silent_for,
    }


def answering(core: Monitor) -> list[Answering]:
    return [{"address": a, "macs": list(m)} for a, m in core.answering]
