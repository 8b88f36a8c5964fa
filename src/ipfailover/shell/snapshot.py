"""The status snapshot: what ``snapshot()`` of each daemon returns, which goes as JSON over the
control socket (shell/control.py), into ``ipfailover status`` and into the metrics."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ipfailover.core import auth, wire
from ipfailover.shell.eventlog import WallClock


def collision_status(
    c: auth.Collision | None, wall: WallClock, now: float
) -> dict[str, Any] | None:
    """The ``name_collision`` object of the status (docs/status.md)."""
    if c is None:
        return None
    return {
        "name": c.name,
        "source": f"{c.addr[0]}:{c.addr[1]}",
        "boot": c.boot.hex(),
        "network": c.network or None,
        "first": wall(c.first),
        "last": wall(c.last),
        "datagrams": c.count,
        "episodes": c.episodes,
        "active": now - c.last <= auth.COLLISION_QUIET,
    }


def rejected_counts(counters: Mapping[str, int]) -> dict[str, int]:
    """``rejected.<reason>`` counters as {reason: count}, with every reason present."""
    return {r.value: counters.get(f"rejected.{r.value}", 0) for r in wire.Reason}
