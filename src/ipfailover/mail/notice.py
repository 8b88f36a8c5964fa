"""What failoverd tells the admin: a :class:`Notice` (subject, body, Apple's arguments).

Apple's failoverd called ``NotifyFailover {up|down} ip...``, which mailed
``FAILOVER_EMAIL_RECIPIENT``; admins could replace the program. A notice carries that
direction and those addresses, and the text: :class:`Situation` holds the facts every mail
states (who, about whom, which addresses, when each network last heard the primary), and the
``*_notice`` functions write the mails of a one-network anomaly, of ``ipfailover notify`` and
of a node-name collision. The transitions' own mails are written by
:mod:`ipfailover.failover.executor`. :mod:`ipfailover.mail.message` turns a notice into the
message that is spooled and delivered.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ipfailover.core import auth, episodes


@dataclass(frozen=True)
class Notice:
    """What to tell the admin. ``direction`` and ``ips`` are Apple's NotifyFailover arguments."""

    event: str  # takeover, release, anomaly, recovered, declined, failed, manual, notify
    direction: str  # "down": the primary failed (or looks failing); "up": it is back
    ips: tuple[str, ...]
    subject: str
    body: str


@dataclass(frozen=True)
class Situation:
    """The facts every failoverd mail states: who, about whom, which addresses, last heard."""

    node: str  # this node's name (FAILOVER_NODE_NAME or the host name)
    host: str  # this machine's host name
    peer: str  # the primary's node name, or what we know of it
    addresses: tuple[str, ...]  # interface:address/prefix
    heard: tuple[tuple[str, float | None], ...] = ()  # (network, wall time last heard or None)
    watched: bool = True  # False for a transition by hand: nothing was listening
    # What the probe before a takeover found (docs/safety.md): "answered", "silent", "failed",
    # or "" (no probe: a release, a graceful handover, a transition by hand)
    probe: str = ""
    answering: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (address, MACs that answered)
    peer_verified: bool | None = None  # the primary was verified since failoverd started


def format_time(wall: float) -> str:
    """A wall-clock time as UTC with milliseconds: 2024-05-01 12:00:03.123Z."""
    whole = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(wall))
    return f"{whole}.{int((wall % 1) * 1000):03d}Z"


def situation_text(s: Situation, now: float) -> str:
    """The common head of every mail body (``now`` is wall-clock time)."""
    lines = [
        f"Host:      {s.host} (node {s.node})",
        f"Peer:      {s.peer}",
        f"Addresses: {' '.join(s.addresses) or '-'}",
        f"Time:      {format_time(now)}",
        "",
    ]
    if not s.watched:
        lines.append("Heartbeats: not watched (a transition by hand)")
        return "\n".join(lines)
    lines.append("Last heard the primary, per network:")
    for network, wall in s.heard:
        when = "never" if wall is None else f"{format_time(wall)} ({now - wall:.1f} s ago)"
        lines.append(f"  {network:<12} {when}")
    if s.answering:
        lines += ["", "STILL ANSWERING on the link when probed before the takeover:"]
        lines += [f"  {address:<24} from {' '.join(macs)}" for address, macs in s.answering]
    elif s.probe:
        lines += ["", f"Probe before the takeover: {s.probe} (no address answered)"]
    return "\n".join(lines)


def network_notice(
    kind: str,
    network: str,
    s: Situation,
    now: float,
    episode: episodes.Summary | None = None,
    wall: Callable[[float], float] = lambda t: t,
    settle: float = episodes.SETTLE_MIN,
) -> Notice:
    """Apple's one-network rule: heartbeats lost (``anomaly``) or back (``recovered``) on one.

    One mail per episode (:mod:`ipfailover.core.episodes`): ``episode`` is the policy's summary,
    with its times on the clock ``wall`` turns into wall-clock time; ``settle`` is how long the
    network must stay unchanged before the summary goes out.
    """
    ips = tuple(a.split(":", 1)[1].rsplit("/", 1)[0] for a in s.addresses)
    reason = episode.reason if episode is not None else "start"
    losses = episode.anomalies if episode is not None else 1
    if kind == "anomaly" and reason == "start":
        subject = (
            f"[ipfailover] {s.node}: no heartbeats from {s.peer} on {network}; nothing taken over"
        )
        intro = (
            f"Heartbeats from {s.peer} stopped on network {network} but still arrive on another.\n"
            "This is a network anomaly, not a failure of the primary: nothing was taken over.\n"
            "Check the cabling and switches of that network.\n\n"
            "If the network flaps, its changes are not mailed one by one: one mail sums them up\n"
            f"when it has not changed for {settle:g} s, and one an hour while it goes on."
        )
    elif kind == "anomaly" and reason == "settled":
        subject = (
            f"[ipfailover] {s.node}: no heartbeats from {s.peer} on {network} after {losses} "
            "losses; nothing taken over"
        )
        intro = (
            f"Network {network} flapped and has now been silent for {settle:g} s, while another\n"
            f"network still hears {s.peer}: nothing was taken over. Check its cabling and switches."
        )
    elif reason == "reminder":
        subject = (
            f"[ipfailover] {s.node}: heartbeats from {s.peer} on {network} still flapping "
            f"({losses} losses so far)"
        )
        intro = (
            f"Heartbeats from {s.peer} on network {network} keep stopping and coming back.\n"
            "Nothing was taken over. Check the cabling and switches of that network."
        )
    elif reason == "settled":
        subject = f"[ipfailover] {s.node}: heartbeats from {s.peer} on {network} again"
        if losses > 1:
            subject += f" (after {losses} losses)"
        intro = (
            f"Heartbeats from {s.peer} arrive on network {network} again, steadily for "
            f"{settle:g} s; the anomaly is over."
        )
    else:
        subject = f"[ipfailover] {s.node}: heartbeats from {s.peer} on {network} again"
        intro = f"Heartbeats from {s.peer} arrive on network {network} again; the anomaly is over."
    direction = "down" if kind == "anomaly" else "up"
    body = f"{intro}\n\n"
    if episode is not None and reason != "start":
        body += episode_text(episode, wall) + "\n"
    return Notice(kind, direction, ips, subject, f"{body}{situation_text(s, now)}\n")


def episode_text(e: episodes.Summary, wall: Callable[[float], float]) -> str:
    """What happened on the network since the episode began, for a summary mail."""
    return "\n".join(
        [
            f"Episode on {e.network}:",
            f"  started      {format_time(wall(e.started))} (first loss)",
            f"  last change  {format_time(wall(e.changed))}",
            f"  heartbeats lost {e.anomalies} time(s), back {e.recoveries} time(s)",
            f"  declared silent for {e.silent_for:.1f} s in all (from each loss to its return)",
            "",
        ]
    )


def command_notice(direction: str, ips: Sequence[str], host: str) -> Notice:
    """What ``ipfailover notify up|down ip...`` says when it gets no message on stdin."""
    listed = " ".join(ips)
    if direction == "down":
        text = f"The primary's addresses {listed} are down; {host} is taking them over."
    else:
        text = f"The primary's addresses {listed} are up again; {host} is handing them back."
    subject = f"[ipfailover] {host}: failover {direction} {listed}"
    return Notice("notify", direction, tuple(ips), subject, text + "\n")


def collision_notice(ev: auth.NameCollision, s: Situation, now: float) -> Notice:
    """Another machine sends authentic heartbeats under our own node name (issue 7: clones)."""
    ips = tuple(a.split(":", 1)[1].rsplit("/", 1)[0] for a in s.addresses)
    where = f"{ev.addr[0]} port {ev.addr[1]}" + (f" on {ev.network}" if ev.network else "")
    subject = f"[ipfailover] {s.node}: another machine uses this node name ({ev.addr[0]})"
    intro = (
        f"Authentic, fresh heartbeats carrying this machine's own node name {ev.name!r} arrive\n"
        f"from {where} (boot id {ev.boot.hex()}), which is not a daemon of this host.\n"
        "Two machines share one name: most likely a cloned host name with FAILOVER_NODE_NAME\n"
        "unset. The pair still works (that sender is treated as the primary), but give each\n"
        "machine its own FAILOVER_NODE_NAME and restart both daemons. This mail is sent once\n"
        "per episode; `ipfailover status` shows whether it goes on."
    )
    return Notice("name-collision", "down", ips, subject, f"{intro}\n\n{situation_text(s, now)}\n")
