"""What the fuzz harness compares around each input: plain-data snapshots of a core.

:func:`whole` pickles every attribute of a core but its counters, queues, clock and settings;
:func:`changed` names the attributes that differ from such a pickle (what an unauthentic input
must not touch: nothing). :func:`monitor_core` and :func:`sender_core` keep only what a fresh
heartbeat relies on (what an authentic but not fresh input must not touch; for the monitor also
its hand-back's bookkeeping, for the sender its hand-backs and retired listeners), and
:func:`diff` compares two of those. :func:`freeze` makes any object comparable.
"""

from __future__ import annotations

import enum
import pickle
from dataclasses import fields, is_dataclass
from typing import Any

from ipfailover.core.monitor import Monitor
from ipfailover.core.sender import Sender


def freeze(obj: Any, depth: int = 0) -> Any:
    """A comparable, plain-data copy of ``obj`` (objects by their attributes, in order)."""
    if depth > 8:
        return "..."
    if obj is None or isinstance(obj, bool | int | float | str | bytes | enum.Enum):
        return obj
    if isinstance(obj, dict):
        return tuple((freeze(k, depth + 1), freeze(v, depth + 1)) for k, v in obj.items())
    if isinstance(obj, list | tuple):
        return tuple(freeze(v, depth + 1) for v in obj)
    if isinstance(obj, set | frozenset):
        return tuple(sorted(repr(freeze(v, depth + 1)) for v in obj))
    if callable(obj) and not is_dataclass(obj):
        return "<callable>"
    if is_dataclass(obj):
        attrs = tuple((f.name, freeze(getattr(obj, f.name), depth + 1)) for f in fields(obj))
        return (type(obj).__name__, *attrs)
    if hasattr(obj, "__dict__"):
        attrs = tuple((k, freeze(v, depth + 1)) for k, v in sorted(vars(obj).items()))
        return (type(obj).__name__, *attrs)
    if hasattr(obj, "__iter__"):  # deque and the like
        return tuple(freeze(v, depth + 1) for v in obj)
    return repr(obj)


_VOLATILE = {"counters", "_events", "_out", "_now", "_rng", "cfg"}
MONITOR_CORE = (
    "state",
    "since",
    "detector",
    "peer_name",
    "peer_boot",
    "peer_seq",
    "peer_interval",
    "_holddown_until",
    "_retry_at",
    "_probe_out",
    "_left_boots",
    "_warned_boots",
    "_stop_pending",
)
# the hold-down's rounds, the hand-back under way and the RELEASED notices due (monitor.handback)
HANDBACK_CORE = (
    "rounds_heard",
    "round_heard",
    "round_issued",
    "echo_issued",
    "released_due",
    "release_id",
    "handback_id",
    "handback_until",
)
SENDER_CORE = (
    "state",
    "boot_id",
    "seq",
    "_next_beat",
    "_listeners",
    "_release_ids",
    "_pending_announce",
    "_cut_since",
    "_cut_flag_until",
    "_cuts",
    "_replies",
)


def whole(core: object) -> bytes:
    """Every attribute but the volatile ones, pickled in one go (fast; see :func:`changed`)."""
    return pickle.dumps({k: v for k, v in vars(core).items() if k not in _VOLATILE}, 4)


def changed(before: bytes, core: object) -> list[str]:
    """The attributes of ``core`` that differ from the pickle ``before``. Pickles that differ
    are compared again by value, attribute by attribute (equal values may pickle differently)."""
    if whole(core) == before:
        return []
    old: dict[str, Any] = pickle.loads(before)
    new = {k: v for k, v in vars(core).items() if k not in _VOLATILE}
    return sorted(k for k in old.keys() | new.keys() if freeze(old.get(k)) != freeze(new.get(k)))


def rejected(core: Monitor | Sender) -> int:
    return sum(v for k, v in core.counters.items() if k.startswith("rejected."))


def monitor_core(m: Monitor) -> dict[str, Any]:
    snap = {k: freeze(getattr(m, k)) for k in MONITOR_CORE}
    snap["verified"] = freeze({n: p.verified for n, p in m._peers.items()})
    snap["handback"] = tuple(freeze(getattr(m.handback, k)) for k in HANDBACK_CORE)
    pinned = m.challenger.peer_window  # the verified primary's replay window
    snap["peer_window"] = pinned and (pinned[0], pinned[1].highest, pinned[1]._bits)
    return snap


def sender_core(s: Sender, handback_copy: bytes | None = None) -> dict[str, Any]:
    """What a fresh datagram to the sender relies on. ``handback_copy``: the id of a hand-back
    whose copy is being delivered, which may add to that hand-back's addresses (and take a
    sequence number to confirm there): those two are left out, and the harness checks them."""
    snap = {k: freeze(getattr(s, k)) for k in SENDER_CORE}
    snap["retired"] = freeze(s.roster.retired)
    snap["handbacks"] = tuple(
        (n, h.listener, h.seq, h.confirmed, None if n == handback_copy else tuple(h.addrs))
        for n, h in s._handbacks.items()
    )
    if handback_copy is not None:
        del snap["seq"]
    return snap


def diff(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
