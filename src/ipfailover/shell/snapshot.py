"""The status snapshot, typed once: what each daemon's ``snapshot()`` returns.

It goes as JSON over the control socket (shell/control.py), into ``ipfailover status``
(tools/status.py) and into the metrics (shell/metrics.py); docs/status.md describes every field.
TypedDicts, because it is JSON: the dicts are the wire format, and these types only name their
keys. Times are wall-clock seconds (None: never), durations seconds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, TypedDict

from ipfailover.core import auth, wire
from ipfailover.shell.eventlog import WallClock


class NameCollision(TypedDict):
    """``name_collision``: another machine sending under this node name."""

    name: str
    source: str  # host:port
    boot: str  # hex
    network: str | None
    first: float | None
    last: float | None
    datagrams: int
    episodes: int
    active: bool


class _Common(TypedDict):
    schema: int
    node: str
    pid: int
    version: str
    config: str
    rejected: dict[str, int]  # every wire.Reason, dropped datagrams by reason
    name_collision: NameCollision | None


class Listener(TypedDict):
    name: str
    holding: bool
    last_challenge: float | None


class HeartbeatdSnapshot(_Common):
    role: Literal["heartbeatd"]
    interval: float
    targets: list[str]  # host:port
    sent: int
    seq: int
    send_errors: int
    listeners: list[Listener]


class Peer(TypedDict):
    name: str | None
    ip: str | None
    interval: float | None
    verified: bool


class Answering(TypedDict):
    address: str
    macs: list[str]


class Blocked(TypedDict):
    why: str
    answering: list[Answering]


class Probe(TypedDict):
    result: str | None
    at: float | None
    answering: list[Answering]


class Conflict(TypedDict):
    address: str
    macs: list[str]
    since: float | None
    last_seen: float | None
    frames: int
    defences: int


class Episode(TypedDict):
    since: float | None
    last_change: float | None
    losses: int
    returns: int
    silent_seconds: float


class Network(TypedDict):
    name: str
    alive: bool
    anomaly: bool
    last_heard: float | None
    heartbeats: int
    loss_1m: float | None
    episode: Episode | None


class Address(TypedDict):
    address: str
    held: bool


class TransitionStep(TypedDict):
    step: str
    start: float
    duration: float
    detail: str


class TransitionScript(TypedDict):
    name: str
    status: str
    detail: str
    duration: float


class Transition(TypedDict):
    """One takeover or release (failover/record.py ``TransitionRecord.summary``)."""

    started: float
    action: str
    reason: str
    outcome: str
    ok: bool
    vetoed: bool
    why: str
    duration: float
    changed_at: float | None
    steps: list[TransitionStep]
    scripts: list[TransitionScript]
    errors: list[str]


class Mail(TypedDict):
    pending: int


class Counts(TypedDict):
    transitions: dict[str, dict[str, int]]  # {action: {outcome: count}}
    script_runs: int
    script_failures: int


class FailoverdSnapshot(_Common):
    role: Literal["failoverd"]
    state: str
    since: float | None
    holding: bool
    peer: Peer
    blocked: Blocked | None
    probe: Probe
    conflicts: list[Conflict]
    deadtime: float
    failback_delay: float
    holddown_until: float | None
    networks: list[Network]
    addresses: list[Address]
    transitions: list[Transition]  # the last ten
    last_takeover_seconds: float | None
    mail: Mail
    counts: Counts


Snapshot = FailoverdSnapshot | HeartbeatdSnapshot


def collision_status(c: auth.Collision | None, wall: WallClock, now: float) -> NameCollision | None:
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
