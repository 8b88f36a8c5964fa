"""Announcing addresses: gratuitous ARP (IPv4) and unsolicited Neighbour Advertisement (IPv6).

Announcements make clients with a warm neighbour cache switch to this node at once instead of
after the entry goes stale. They are best effort: send errors are logged and counted, never raised.

Every frame goes out on one packet socket (the frames are built whole by
:mod:`ipfailover.core.packets`, so IPv6 needs no raw ICMPv6 socket bound to each address), and a
burst is paced: after BURST_BUDGET seconds of sending, the event loop gets a turn, so a
thousand announcements never hold a heartbeat or a challenge up by more than that.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import ipaddress
import logging
import socket
import struct
import time
from collections.abc import Iterable, Sequence
from typing import Any

from ipfailover.core import packets
from ipfailover.shell.netif import Assignment

log = logging.getLogger("ipfailover.netif")

BURST_BUDGET = 0.002  # seconds of sending before the event loop gets a turn
SIOCGIFHWADDR = 0x8927
SO_SNDBUFFORCE = 32
SNDBUF = 4 << 20
_IFREQ = struct.Struct("16sH14s")  # struct ifreq with a struct sockaddr: name, family, data


def interface_mac(ifname: str) -> bytes | None:
    """The Ethernet MAC of ``ifname`` (SIOCGIFHWADDR, no netlink round trip), or None if it
    has none (loopback, a tunnel, no such interface); the reason is logged."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            answer = fcntl.ioctl(sock, SIOCGIFHWADDR, _IFREQ.pack(ifname.encode(), 0, b""))
    except OSError as e:
        log.warning("not announcing on %s: %s", ifname, e.strerror or e)
        return None
    _, hatype, data = _IFREQ.unpack(answer)
    mac = bytes(data[: packets.ETH_ALEN])
    if hatype != packets.ARPHRD_ETHER or not any(mac):
        log.info("not announcing on %s: no Ethernet MAC address (link type %d)", ifname, hatype)
        return None
    return mac


Frame = tuple[bytes, tuple[Any, ...], Assignment]  # frame, packet-socket destination, address


def frame(a: Assignment, mac: bytes) -> Frame:
    """The announcement of ``a`` from ``mac``, and where the packet socket sends it."""
    if isinstance(a.address, ipaddress.IPv4Address):
        return packets.build_garp(mac, a.address), (a.ifname, packets.ETH_P_ARP), a
    return packets.build_na_frame(mac, a.address), (a.ifname, packets.ETH_P_IPV6), a


_SOCKET: socket.socket | None = None


def _packet_socket() -> socket.socket:
    """The process's one announcing socket (AF_PACKET, protocol 0: it never receives), kept
    open: closing a packet socket waits for an RCU grace period (5-20 ms), which a defence or a
    takeover must not pay each time."""
    global _SOCKET
    if _SOCKET is None:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)
        sock.setblocking(False)
        with contextlib.suppress(OSError):  # a burst of a thousand frames queues at once
            sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, SNDBUF)
        _SOCKET = sock
    return _SOCKET


class Announcer:
    """Sends the announcements of many addresses, ``count`` rounds ``interval`` apart, from one
    packet socket (protocol 0: it never receives), paced so the event loop keeps its schedule.
    Each address's frame is built once, when it is first sent."""

    def __init__(self, assignments: Sequence[Assignment]) -> None:
        self.assignments = tuple(assignments)
        self._frames: dict[Assignment, Frame | None] = {}
        self._macs: dict[str, bytes | None] = {}
        self.sent = 0
        self.failed = 0

    def _frame(self, a: Assignment) -> Frame | None:
        if a not in self._frames:
            if a.ifname not in self._macs:
                self._macs[a.ifname] = interface_mac(a.ifname)
            mac = self._macs[a.ifname]
            self._frames[a] = None if mac is None else frame(a, mac)
        return self._frames[a]

    async def round(self, number: int = 1, of: int = 1) -> int:
        """One announcement for every address; returns how many were sent."""
        return await self.send(self.assignments, number, of)

    async def send(self, assignments: Iterable[Assignment], number: int = 1, of: int = 1) -> int:
        """One announcement for each of ``assignments`` (a chunk just added, or all of them),
        the event loop getting a turn every BURST_BUDGET seconds; returns how many were sent."""
        sent = 0
        until = time.monotonic() + BURST_BUDGET
        for a in assignments:
            f = self._frame(a)
            if f is not None:
                try:
                    _packet_socket().sendto(f[0], f[1])
                except OSError as e:  # link down (ENETDOWN, ENXIO), a full queue (ENOBUFS)
                    self.failed += 1
                    log.warning("announcement %d/%d for %s not sent: %s", number, of, a, e)
                else:
                    sent += 1
            if time.monotonic() >= until:
                await asyncio.sleep(0)
                until = time.monotonic() + BURST_BUDGET
        self.sent += sent
        return sent

    async def rounds(self, count: int, interval: float, *, first: int = 1) -> int:
        """Rounds ``first`` to ``count``, ``interval`` apart (the first at once); returns how
        many announcements were sent."""
        if count < 0 or interval < 0:
            raise ValueError(f"count and interval must not be negative, got {count}, {interval}")
        sent = 0
        for i in range(first, count + 1):
            if i > first:
                await asyncio.sleep(interval)
            sent += await self.round(i, count)
        return sent


async def announce(a: Assignment, count: int, interval: float) -> int:
    """Tell the link that ``a.address`` is now at this interface's MAC address.

    Sends ``count`` announcements ``interval`` seconds apart, the first at once: a gratuitous
    ARP for IPv4, an unsolicited Neighbour Advertisement to ff02::1 for IPv6. Returns how many
    were sent. Never raises for network trouble: a missing interface, an interface without a
    MAC (loopback), or a failed send (link down: ENETDOWN, ENXIO) is logged and counted as not
    sent. Raises ValueError for a negative ``count`` or ``interval``.
    """
    if count < 0 or interval < 0:
        raise ValueError(f"count and interval must not be negative, got {count}, {interval}")
    if count == 0:
        return 0
    sent = await Announcer([a]).rounds(count, interval)
    log.info("announced %s: %d of %d sent", a, sent, count)
    return sent


async def announce_all(assignments: Sequence[Assignment], count: int, interval: float) -> int:
    """:func:`announce` for many addresses at once: each round sends one announcement for every
    address from one socket, paced; returns how many were sent."""
    if count == 0 or not assignments:
        return 0
    announcer = Announcer(assignments)
    sent = await announcer.rounds(count, interval)
    log.info(
        "announced %d addresses: %d of %d sent", len(assignments), sent, count * len(assignments)
    )
    return sent
