"""Watching the link: probes before a takeover, other MACs claiming our addresses, and the
kernel's link and address notifications.

* probes before a takeover (an RFC 5227 ARP probe, a Neighbour Solicitation) ask whether an
  address still answers on the link, and :class:`LinkWatch` reports every frame by which another
  MAC claims an address (ARP with it as sender, Neighbour Advertisement for it): evidence for
  the takeover decision and conflict detection while holding (docs/safety.md);
* :func:`link_events` reports carrier losses, returns and address changes from one netlink
  subscription (nothing polled).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ipaddress
import logging
import socket
import struct
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any

from pyroute2.netlink.rtnl import RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR, RTMGRP_LINK

from ipfailover.core import packets
from ipfailover.core.packets import IPAddress
from ipfailover.shell.netif import IFF_LOWER_UP, Assignment, NetifError, _netlink

log = logging.getLogger("ipfailover.netif")

PACKET_OUTGOING = 4  # linux/if_packet.h: a frame we sent, looped back to packet sockets
# Probing before a takeover (docs/safety.md): PROBE_TRIES probes per address, spread over the
# wait, which is min(PROBE_WAIT_MAX, dead time / PROBE_WAIT_DIVISOR).
PROBE_WAIT_MAX = 0.03
PROBE_WAIT_DIVISOR = 10
PROBE_TRIES = 2
WATCH_BURST = 64  # frames read per wake-up of a LinkWatch socket (the rest wait for the next)


# A classic BPF program for the IPv6 packet socket: only ICMPv6 Neighbour Solicitations and
# Advertisements without extension headers reach user space, not every IPv6 packet.
_ND_FILTER = (
    (0x28, 0, 0, 12),  # ldh [12]: EtherType
    (0x15, 0, 6, packets.ETH_P_IPV6),  # jeq IPv6, else drop
    (0x30, 0, 0, 20),  # ldb [20]: next header
    (0x15, 0, 4, packets.IPPROTO_ICMPV6),  # jeq ICMPv6, else drop
    (0x30, 0, 0, 54),  # ldb [54]: ICMPv6 type
    (0x15, 1, 0, packets.ND_NEIGHBOR_SOLICIT),  # jeq NS: accept
    (0x15, 0, 1, packets.ND_NEIGHBOR_ADVERT),  # jeq NA: accept, else drop
    (0x06, 0, 0, 0x40000),  # ret: accept (up to 256 KiB)
    (0x06, 0, 0, 0),  # ret: drop
)
SO_ATTACH_FILTER = 26


def _attach_filter(sock: socket.socket, program: tuple[tuple[int, int, int, int], ...]) -> None:
    code = b"".join(struct.pack("HBBI", *insn) for insn in program)
    buf = ctypes.create_string_buffer(code)
    fprog = struct.pack("HP", len(program), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def probe_wait(deadtime: float) -> float:
    """How long a probe before a takeover waits for answers (docs/safety.md)."""
    return min(PROBE_WAIT_MAX, deadtime / PROBE_WAIT_DIVISOR)


def _open_watch_sockets(ifname: str) -> list[socket.socket]:
    """Non-blocking packet sockets that receive ARP, and ICMPv6 NS/NA, arriving on ``ifname``.

    Each is created with protocol 0 (it receives nothing), given its filter, and only then bound
    to the interface and its protocol, so no unfiltered frame is ever queued.
    """
    out = []
    try:
        for proto in (packets.ETH_P_ARP, packets.ETH_P_IPV6):
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            out.append(sock)
            sock.setblocking(False)
            if proto == packets.ETH_P_IPV6:
                _attach_filter(sock, _ND_FILTER)
            sock.bind((ifname, proto))
    except OSError:
        for sock in out:
            sock.close()
        raise
    return out


class LinkWatch:
    """Reports frames on one interface by which another MAC claims an address.

    ``on_claim(address, mac)`` is called from the event loop for every ARP or Neighbour
    Discovery frame that :func:`~ipfailover.core.packets.parse_claim` understands, unless we
    sent it (packet type outgoing) or it comes from one of ``own_macs``. Raises OSError if the
    sockets cannot be opened (no CAP_NET_RAW, no such interface).
    """

    def __init__(
        self,
        ifname: str,
        own_macs: Iterable[bytes],
        on_claim: Callable[[IPAddress, str], None],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.ifname = ifname
        self.own = {packets.mac_text(m) for m in own_macs}
        self.on_claim = on_claim
        self.loop = loop
        self.frames = 0
        self._socks = _open_watch_sockets(ifname)
        for sock in self._socks:
            loop.add_reader(sock.fileno(), self._read, sock)

    def _read(self, sock: socket.socket) -> None:
        for _ in range(WATCH_BURST):
            try:
                frame, addr = sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # e.g. ENETDOWN while the cable is out: keep watching
                log.debug("watching %s: %s", self.ifname, e)
                return
            if len(addr) > 2 and addr[2] == PACKET_OUTGOING:
                continue
            claim = packets.parse_claim(frame)
            if claim is None or claim[1] in self.own:
                continue
            self.frames += 1
            self.on_claim(*claim)

    def close(self) -> None:
        """Stop reporting at once; the sockets are closed in a worker thread (see below)."""
        for sock in self._socks:
            with contextlib.suppress(ValueError, OSError):
                self.loop.remove_reader(sock.fileno())
        close_in_background(self.loop, self._socks)
        self._socks = []


def close_in_background(loop: asyncio.AbstractEventLoop, socks: list[socket.socket]) -> None:
    """Close packet sockets off the event loop: the kernel waits for an RCU grace period when
    one is released (``synchronize_net``), 10-20 ms each, which must not delay a takeover."""

    def close_all() -> None:
        for sock in socks:
            sock.close()

    if socks:
        loop.run_in_executor(None, close_all)


def _link_local(ifname: str) -> ipaddress.IPv6Address:
    """A link-local address of ``ifname`` to send solicitations from, or :: if it has none.

    Read from /proc/net/if_inet6 (this namespace's), which is much quicker than a netlink
    round trip on the takeover path. Tentative or failed addresses (DAD) are skipped.
    """
    try:
        lines = Path("/proc/net/if_inet6").read_text().splitlines()
    except OSError:
        return packets.UNSPECIFIED
    for line in lines:
        fields = line.split()
        if len(fields) != 6 or fields[5] != ifname:
            continue
        address = ipaddress.IPv6Address(int(fields[0], 16))
        if address.is_link_local and not int(fields[4], 16) & (0x40 | 0x08):  # tentative, dadfailed
            return address
    return packets.UNSPECIFIED


def _socket_mac(sock: socket.socket) -> bytes | None:
    """The Ethernet MAC of the interface a bound packet socket is on, or None if not Ethernet."""
    name = sock.getsockname()
    mac = name[4] if len(name) > 4 else b""
    if name[3] != packets.ARPHRD_ETHER or len(mac) != packets.ETH_ALEN or not any(mac):
        return None
    return bytes(mac)


async def probe(
    assignments: Iterable[Assignment], wait: float, tries: int = PROBE_TRIES
) -> tuple[dict[str, list[str]], bool]:
    """Ask the link whether each address still answers, before we take it.

    Per address ``tries`` probes are sent, spread evenly over ``wait`` seconds, the first at
    once: an RFC 5227 ARP probe for IPv4, a Neighbour Solicitation for IPv6. Every frame from
    another MAC that claims a probed address meanwhile counts as an answer (see
    :func:`~ipfailover.core.packets.parse_claim`). Returns ``({address: [MAC, ...]}, ok)`` as
    soon as every address has answered, else after ``wait``. ``ok`` is False if some address
    could not be probed at all (its interface is gone or has no Ethernet MAC, or a socket could
    not be opened): that is logged, and the caller treats it as no answer. Never raises for
    network trouble.
    """
    wanted = list(assignments)
    loop = asyncio.get_running_loop()
    answers: dict[str, list[str]] = {}
    done = asyncio.Event()
    ok = True
    watches: list[LinkWatch] = []
    senders: list[socket.socket] = []
    sends: list[tuple[socket.socket, bytes, tuple[Any, ...]]] = []
    targets = {a.address for a in wanted}

    def claimed(address: IPAddress, mac: str) -> None:
        if address in targets:
            macs = answers.setdefault(str(address), [])
            if mac not in macs:
                macs.append(mac)
            if len(answers) == len(targets):
                done.set()

    try:
        for ifname in sorted({a.ifname for a in wanted}):
            mine = [a for a in wanted if a.ifname == ifname]
            try:
                out = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
                senders.append(out)
                out.bind((ifname, 0))
                mac = _socket_mac(out)
                if mac is None:
                    raise NetifError(f"{ifname} has no Ethernet MAC address")
                watches.append(LinkWatch(ifname, [mac], claimed, loop))
                for a in mine:
                    if isinstance(a.address, ipaddress.IPv4Address):
                        frame = packets.build_arp_probe(mac, a.address)
                    else:
                        source = _link_local(ifname)
                        frame = packets.build_neighbour_solicitation(mac, source, a.address)
                    sends.append((out, frame, (ifname, 0)))
            except (NetifError, OSError) as e:
                ok = False
                log.warning("cannot probe the addresses on %s before taking them: %s", ifname, e)
        for i in range(max(1, tries) if sends else 0):
            if i:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), wait / tries)
                if done.is_set():
                    break
            for sock, frame, destination in sends:
                try:
                    sock.sendto(frame, destination)
                except OSError as e:
                    log.warning("probe on %s not sent: %s", destination[0], e)
        if sends and not done.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), wait / max(1, tries))
    finally:
        for watch in watches:
            watch.close()
        close_in_background(loop, senders)
    return answers, ok


async def carrier_up() -> AsyncIterator[str]:
    """Yield an interface's name each time its carrier comes back (IFF_LOWER_UP turns on).

    Listens to the kernel's link notifications (RTMGRP_LINK); runs until cancelled.
    """
    async for kind, ifname in link_events(addresses=False):
        if kind == "carrier-up":
            yield ifname


async def link_events(*, addresses: bool = True) -> AsyncIterator[tuple[str, str]]:
    """Yield ``("carrier-up", ifname)`` each time an interface's carrier comes back
    (IFF_LOWER_UP turns on), ``("carrier-down", ifname)`` each time it goes and, with
    ``addresses``, ``("addresses", "")`` after each batch of address changes (one for a burst,
    however many addresses it changed).

    One netlink socket subscribed to the kernel's notifications (RTMGRP_LINK, and the address
    groups): nothing is polled, so an idle daemon spends nothing here. Runs until cancelled.
    """
    seen: dict[int, bool] = {}
    groups = RTMGRP_LINK | (RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR if addresses else 0)
    async with _netlink() as ipr:
        await ipr.bind(groups=groups)
        async for link in await ipr.link("dump"):
            seen[link["index"]] = bool(link["flags"] & IFF_LOWER_UP)
        while True:
            changed = False
            async for msg in ipr.get():
                event = msg.get("event")
                if event in ("RTM_NEWADDR", "RTM_DELADDR"):
                    changed = True
                if event != "RTM_NEWLINK":
                    continue
                up = bool(msg["flags"] & IFF_LOWER_UP)
                was = seen.get(msg["index"])
                seen[msg["index"]] = up
                if up and was is False:
                    yield "carrier-up", str(msg.get_attr("IFLA_IFNAME"))
                elif was and not up:
                    yield "carrier-down", str(msg.get_attr("IFLA_IFNAME"))
            if changed:
                yield "addresses", ""
