"""Take over, release and announce failover addresses in the current network namespace.

This is the I/O shell the daemons (failoverd, heartbeatd) use to act on interfaces. They run
inside the namespace they manage (``ip netns exec``), so everything here works on the current
network namespace:

* address changes go through rtnetlink with pyroute2's ``AsyncIPRoute``; netlink errors are
  told apart by ``NetlinkError.code`` and turned into :class:`NetifError` with a message that
  names the interface and the address;
* announcements (gratuitous ARP for IPv4, unsolicited Neighbour Advertisement for IPv6) make
  clients with a warm neighbour cache switch to this node at once instead of after the entry
  goes stale. They are best effort: send errors are logged and counted, never raised.

The packet builders are pure functions so their bytes can be unit-tested without sockets.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import ipaddress
import logging
import socket
import struct
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, ParamSpec, TypeVar

from pyroute2 import AsyncIPRoute, NetlinkError
from pyroute2.netlink.rtnl import RTMGRP_LINK

log = logging.getLogger("ipfailover.netif")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# linux/if_addr.h, linux/rtnetlink.h, linux/if_arp.h, linux/if_ether.h
IFA_F_SECONDARY = 0x01
IFA_F_NODAD = 0x02
IFF_LOWER_UP = 0x10000  # the link has carrier
P = ParamSpec("P")
R = TypeVar("R")
RT_SCOPE_UNIVERSE = 0
ARPHRD_ETHER = 1
ARPOP_REQUEST = 1
ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_ALEN = 6
ETH_ZLEN = 60  # minimum frame length without FCS; short frames are zero-padded up to it
BROADCAST_MAC = b"\xff" * ETH_ALEN

# RFC 4861 section 4.4 (Neighbour Advertisement) and 4.6.1 (link-layer address option)
ND_NEIGHBOR_ADVERT = 136
ND_NA_FLAG_OVERRIDE = 0x20  # top three bits of the flags byte are R, S, O
ND_OPT_TARGET_LL_ADDR = 2
ND_HOP_LIMIT = 255  # receivers drop ND messages whose hop limit is not 255
ALL_NODES = "ff02::1"

# Link lookups that fail with these codes mean "no such interface" (ERANGE: name too long).
_NO_SUCH_LINK = (errno.ENODEV, errno.ERANGE)


@dataclass(frozen=True, kw_only=True)
class Assignment:
    """One address with its prefix length on one interface: the unit we take over or release."""

    ifname: str
    ifindex: int
    address: IPAddress
    prefixlen: int

    def __post_init__(self) -> None:
        if not 0 <= self.prefixlen <= self.address.max_prefixlen:
            raise ValueError(
                f"prefix length /{self.prefixlen} is out of range for {self.address}"
                f" (0..{self.address.max_prefixlen})"
            )

    def __str__(self) -> str:
        host = f"[{self.address}]" if self.address.version == 6 else str(self.address)
        return f"{self.ifname}:{host}/{self.prefixlen}"


class NetifError(Exception):
    """A local problem acting on an interface; the message names the interface and address."""


class _Addr(NamedTuple):
    """The fields of one RTM_NEWADDR dump message that this module looks at."""

    address: IPAddress
    prefixlen: int
    flags: int
    scope: int

    @classmethod
    def from_msg(cls, msg: Any) -> _Addr:
        # IFA_LOCAL is the local address when present (IPv4 always, point-to-point IPv6);
        # otherwise IFA_ADDRESS is. IFA_FLAGS is the 32-bit superset of the header's u8 flags.
        local = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
        flags = msg.get_attr("IFA_FLAGS")
        return cls(
            address=ipaddress.ip_address(local),
            prefixlen=msg["prefixlen"],
            flags=msg["flags"] if flags is None else flags,
            scope=msg["scope"],
        )

    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        return ipaddress.ip_network((self.address, self.prefixlen), strict=False)


# --- netlink helpers -------------------------------------------------------------------------


def _netlink() -> AsyncIPRoute:
    """A fresh rtnetlink socket with extended acks (error text) and strict request checking."""
    return AsyncIPRoute(ext_ack=True, strict_check=True)


async def _link(ipr: AsyncIPRoute, ifname: str) -> Any | None:
    """The RTM_NEWLINK message of interface ``ifname``, or None if there is no such interface."""
    try:
        links = await ipr.link("get", ifname=ifname)
    except NetlinkError as e:
        if e.code in _NO_SUCH_LINK:
            return None
        raise NetifError(f"cannot look up interface {ifname}: {e}") from e
    return links[0] if links else None


async def _require_link(ipr: AsyncIPRoute, ifname: str, purpose: str) -> Any:
    link = await _link(ipr, ifname)
    if link is None:
        raise NetifError(f"interface {ifname} does not exist ({purpose})")
    return link


async def _check_link(ipr: AsyncIPRoute, a: Assignment) -> Any:
    """The link message of ``a.ifname``, after making sure it still has ``a.ifindex``.

    A re-created interface gets a new index; acting on the old index could hit another device.
    """
    link = await _require_link(ipr, a.ifname, f"needed for {a}")
    if link["index"] != a.ifindex:
        raise NetifError(
            f"interface {a.ifname} now has index {link['index']}, not {a.ifindex}"
            f" (re-created?); resolve {a.address} again"
        )
    return link


async def _addresses(ipr: AsyncIPRoute, ifindex: int) -> list[_Addr]:
    """All addresses (any family, any scope) on the interface with index ``ifindex``."""
    return [_Addr.from_msg(msg) async for msg in await ipr.addr("dump", index=ifindex)]


def _is_exactly(x: _Addr, a: Assignment) -> bool:
    return x.address == a.address and x.prefixlen == a.prefixlen


def _infer_prefixlen(address: IPAddress, existing: Iterable[_Addr]) -> int:
    """The longest prefix on ``existing`` whose network holds ``address``, else /32 or /128."""
    on_link = [
        x.prefixlen
        for x in existing
        if x.address.version == address.version and address in x.network()
    ]
    return max(on_link, default=address.max_prefixlen)


def _add_request(a: Assignment) -> dict[str, Any]:
    """The RTM_NEWADDR arguments for ``a``.

    IPv4 gets the subnet's broadcast address (as ``ip addr add ... brd +`` would). IPv6 gets
    IFA_F_NODAD so the address is usable at once: a tentative address cannot be a source and
    would make the takeover wait a second or more for duplicate address detection.
    """
    request: dict[str, Any] = {
        "index": a.ifindex,
        "address": str(a.address),
        "prefixlen": a.prefixlen,
    }
    if a.address.version == 6:
        request["flags"] = IFA_F_NODAD
    elif a.prefixlen <= 30:
        network = ipaddress.ip_network((a.address, a.prefixlen), strict=False)
        request["broadcast"] = str(network.broadcast_address)
    return request


def _netlink_failure(action: str, a: Assignment, e: NetlinkError) -> NetifError:
    return NetifError(f"cannot {action} {a}: {e.args[-1]} (errno {e.code})")


def _netlink_errors(
    fn: Callable[P, Coroutine[Any, Any, R]],
) -> Callable[P, Coroutine[Any, Any, R]]:
    """Every failure of a public call is a NetifError: callers handle one exception type and
    never mistake an unexpected netlink or socket error for a bug (and lose track of state)."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except NetifError:
            raise
        except (NetlinkError, OSError) as e:
            raise NetifError(f"{fn.__name__}: netlink failed: {e}") from e

    return wrapper


# --- public address API ----------------------------------------------------------------------


@_netlink_errors
async def missing_interfaces(names: Iterable[str]) -> list[str]:
    """The names in ``names`` (in order) that are not interfaces of this namespace."""
    async with _netlink() as ipr:
        return [name for name in names if await _link(ipr, name) is None]


@_netlink_errors
async def resolve(ifname: str, address: IPAddress, prefixlen: int | None) -> Assignment:
    """Bind ``address`` to interface ``ifname`` with a prefix length.

    A given ``prefixlen`` wins. Otherwise the prefix of an address already on that interface
    whose network contains ``address`` is used (the longest one if several do), so a service
    address joins the subnet it lives in; with no such network it is a host address (/32 or
    /128). Raises NetifError if the interface does not exist, ValueError if ``prefixlen`` is
    out of range for the address family.
    """
    async with _netlink() as ipr:
        ifindex = int((await _require_link(ipr, ifname, f"needed for {address}"))["index"])
        if prefixlen is None:
            prefixlen = _infer_prefixlen(address, await _addresses(ipr, ifindex))
    return Assignment(ifname=ifname, ifindex=ifindex, address=address, prefixlen=prefixlen)


@_netlink_errors
async def present(a: Assignment) -> bool:
    """Is exactly this address, with this prefix length, on that interface?"""
    async with _netlink() as ipr:
        await _check_link(ipr, a)
        return any(_is_exactly(x, a) for x in await _addresses(ipr, a.ifindex))


@_netlink_errors
async def add(a: Assignment) -> bool:
    """Add the address; True if we added it, False if exactly it was already there.

    Raises NetifError if the interface is gone, or if the kernel refuses the address, e.g.
    because the same IPv6 address is already there with another prefix length.
    """
    async with _netlink() as ipr:
        await _check_link(ipr, a)
        try:
            await ipr.addr("add", **_add_request(a))
        except NetlinkError as e:
            if e.code != errno.EEXIST:
                raise _netlink_failure("add", a, e) from e
            if any(_is_exactly(x, a) for x in await _addresses(ipr, a.ifindex)):
                return False
            raise NetifError(
                f"cannot add {a}: {a.address} is already on {a.ifname} with another prefix length"
            ) from e
    log.info("added %s", a)
    return True


@_netlink_errors
async def delete(a: Assignment) -> bool:
    """Delete exactly this address; True if deleted, False if it was not there.

    Other addresses are never removed. Linux deletes all secondary IPv4 addresses of a subnet
    together with its primary address unless ``promote_secondaries`` is set on the interface;
    when ``a`` is such a primary with secondaries, this enables promote_secondaries first.
    """
    async with _netlink() as ipr:
        await _check_link(ipr, a)
        if a.address.version == 4:
            _keep_secondaries(a, await _addresses(ipr, a.ifindex))
        try:
            await ipr.addr("del", index=a.ifindex, address=str(a.address), prefixlen=a.prefixlen)
        except NetlinkError as e:
            if e.code == errno.EADDRNOTAVAIL:
                return False
            raise _netlink_failure("delete", a, e) from e
    log.info("deleted %s", a)
    return True


def _keep_secondaries(a: Assignment, existing: list[_Addr]) -> None:
    """Enable promote_secondaries if deleting ``a`` would otherwise delete secondaries too."""
    mine = next((x for x in existing if _is_exactly(x, a)), None)
    if mine is None or mine.flags & IFA_F_SECONDARY:
        return
    secondaries = [
        x
        for x in existing
        if x.flags & IFA_F_SECONDARY
        and x.prefixlen == a.prefixlen
        and x.address.version == 4
        and x.network() == mine.network()
    ]
    if not secondaries:
        return
    conf = Path("/proc/sys/net/ipv4/conf")
    knob = conf / a.ifname / "promote_secondaries"
    try:
        # The kernel honours the interface's value OR the "all" value.
        if "1" in (p.read_text().strip() for p in (knob, conf / "all" / "promote_secondaries")):
            return
        knob.write_text("1\n")
    except OSError as e:
        raise NetifError(
            f"refusing to delete {a}: it is the primary address of its subnet, the kernel would"
            f" also delete {', '.join(str(x.address) for x in secondaries)}, and {knob} could"
            f" not be enabled: {e}"
        ) from e
    log.warning("enabled %s so that deleting %s keeps its secondary addresses", knob, a)


@_netlink_errors
async def interface_addresses(ifname: str) -> list[Assignment]:
    """The global-scope addresses on interface ``ifname``; NetifError if it does not exist."""
    async with _netlink() as ipr:
        ifindex = int((await _require_link(ipr, ifname, "listing its addresses"))["index"])
        existing = await _addresses(ipr, ifindex)
    return [
        Assignment(ifname=ifname, ifindex=ifindex, address=x.address, prefixlen=x.prefixlen)
        for x in existing
        if x.scope == RT_SCOPE_UNIVERSE
    ]


async def addresses_on_subnets_of(targets: Iterable[IPAddress]) -> list[Assignment]:
    """Every global address of each interface one of whose subnets contains a target.

    One dump of links and one of addresses, so an interface that comes or goes meanwhile is
    simply in the answer or not; NetifError only if netlink itself fails.
    """
    wanted = list(targets)
    try:
        async with _netlink() as ipr:
            names = {
                link["index"]: str(link.get_attr("IFLA_IFNAME"))
                async for link in await ipr.link("dump")
            }
            found = [(msg["index"], _Addr.from_msg(msg)) async for msg in await ipr.addr("dump")]
    except (NetlinkError, OSError) as e:
        raise NetifError(f"cannot list addresses: {e}") from e
    carriers = {i for i, x in found if any(t in x.network() for t in wanted)}
    return [
        Assignment(ifname=names[i], ifindex=i, address=x.address, prefixlen=x.prefixlen)
        for i, x in found
        if i in carriers and i in names and x.scope == RT_SCOPE_UNIVERSE
    ]


# --- announcements ---------------------------------------------------------------------------


def _check_mac(mac: bytes) -> None:
    if len(mac) != ETH_ALEN:
        raise ValueError(f"an Ethernet MAC address has {ETH_ALEN} bytes, got {len(mac)}")


def build_garp(mac: bytes, ip: ipaddress.IPv4Address) -> bytes:
    """An Ethernet frame with an RFC 5227 ARP announcement for ``ip`` from ``mac``.

    It is an ARP request with sender IP = target IP = ``ip``, sender MAC = ``mac`` and a zero
    target MAC, broadcast, zero-padded to the 60-byte Ethernet minimum. Linux receivers update
    an existing neighbour entry from such a request even within its locktime (``is_garp``).
    """
    _check_mac(mac)
    if ip.version != 4:
        raise ValueError(f"gratuitous ARP is for IPv4 addresses, got {ip}")
    ether = BROADCAST_MAC + mac + struct.pack("!H", ETH_P_ARP)
    arp = struct.pack(
        "!HHBBH6s4s6s4s",
        ARPHRD_ETHER,
        ETH_P_IP,
        ETH_ALEN,
        4,
        ARPOP_REQUEST,
        mac,
        ip.packed,
        bytes(ETH_ALEN),
        ip.packed,
    )
    return (ether + arp).ljust(ETH_ZLEN, b"\0")


def build_unsolicited_na(mac: bytes, ip: ipaddress.IPv6Address) -> bytes:
    """The ICMPv6 body of an RFC 4861 section 7.2.6 unsolicited Neighbour Advertisement.

    Type 136, Override=1, Solicited=0, Router=0, target ``ip``, and a Target Link-Layer
    Address option carrying ``mac``. The checksum is left zero: on a raw ICMPv6 socket the
    kernel always computes it (RFC 3542), because it needs the IPv6 pseudo-header.
    """
    _check_mac(mac)
    if ip.version != 6:
        raise ValueError(f"a Neighbour Advertisement is for IPv6 addresses, got {ip}")
    header = struct.pack("!BBHB3x16s", ND_NEIGHBOR_ADVERT, 0, 0, ND_NA_FLAG_OVERRIDE, ip.packed)
    option = struct.pack("!BB6s", ND_OPT_TARGET_LL_ADDR, 1, mac)  # length in units of 8 bytes
    return header + option


async def _ethernet_mac(a: Assignment) -> bytes | None:
    """The MAC address to announce ``a`` with, or None (logged) if it cannot be announced."""
    async with _netlink() as ipr:
        try:
            link = await _check_link(ipr, a)
        except NetifError as e:
            log.warning("not announcing %s: %s", a, e)
            return None
    mac_text = link.get_attr("IFLA_ADDRESS")
    mac = bytes.fromhex(mac_text.replace(":", "")) if mac_text else b""
    if link["ifi_type"] != ARPHRD_ETHER or len(mac) != ETH_ALEN or not any(mac):
        log.info(
            "not announcing %s: %s has no Ethernet MAC address (link type %d)",
            a,
            a.ifname,
            link["ifi_type"],
        )
        return None
    return mac


def _open_announce_socket(a: Assignment) -> socket.socket:
    """A non-blocking socket to send announcements for ``a`` on its interface.

    IPv4: an AF_PACKET socket with protocol 0, so it never receives; the frame is addressed to
    the interface in sendto(). IPv6: a raw ICMPv6 socket bound to the interface and to the
    address itself (the NA's source), hop limit 255, not looped back to our own stack.
    """
    if a.address.version == 4:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    else:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    try:
        sock.setblocking(False)
        if a.address.version == 6:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, a.ifname.encode())
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, ND_HOP_LIMIT)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
            sock.bind((str(a.address), 0, 0, a.ifindex))
    except OSError:
        sock.close()
        raise
    return sock


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
    mac = await _ethernet_mac(a)
    if mac is None:
        return 0
    if isinstance(a.address, ipaddress.IPv4Address):
        packet = build_garp(mac, a.address)
        destination: tuple[Any, ...] = (a.ifname, ETH_P_ARP)
    else:
        packet = build_unsolicited_na(mac, a.address)
        destination = (ALL_NODES, 0, 0, a.ifindex)
    try:
        sock = _open_announce_socket(a)
    except OSError as e:
        log.warning("not announcing %s: cannot open a socket: %s", a, e)
        return 0
    with sock:
        return await _send_repeatedly(sock, packet, destination, a, count, interval)


async def _send_repeatedly(
    sock: socket.socket,
    packet: bytes,
    destination: tuple[Any, ...],
    a: Assignment,
    count: int,
    interval: float,
) -> int:
    """Send ``packet`` ``count`` times, ``interval`` apart; return how many sends succeeded."""
    sent = 0
    for i in range(count):
        if i:
            await asyncio.sleep(interval)
        try:
            sock.sendto(packet, destination)
        except OSError as e:
            log.warning("announcement %d/%d for %s not sent: %s", i + 1, count, a, e)
        else:
            sent += 1
    log.info("announced %s: %d of %d sent", a, sent, count)
    return sent


def unicast_substitute(a: Assignment) -> tuple[Any, ...] | None:
    """Where to send a datagram meant for the primary at ``a.address``, a held address.

    While we hold that address a unicast to it never leaves this host, so failoverd sends to the
    link instead: the subnet's broadcast address (IPv4) or all-nodes ff02::1 on the interface
    (IPv6); heartbeatd's wildcard-bound socket receives either. None for a host route (/31, /32,
    /128), where there is no such link-wide address.
    """
    if a.address.version == 4:
        if a.prefixlen >= 31:
            return None
        net = ipaddress.ip_network(f"{a.address}/{a.prefixlen}", strict=False)
        return (str(net.broadcast_address),)
    if a.prefixlen >= 127:
        return None
    return (ALL_NODES, 0, 0, a.ifindex)


async def carrier_up() -> AsyncIterator[str]:
    """Yield an interface's name each time its carrier comes back (IFF_LOWER_UP turns on).

    Listens to the kernel's link notifications (RTMGRP_LINK); runs until cancelled.
    """
    seen: dict[int, bool] = {}
    async with _netlink() as ipr:
        await ipr.bind(groups=RTMGRP_LINK)
        async for link in await ipr.link("dump"):
            seen[link["index"]] = bool(link["flags"] & IFF_LOWER_UP)
        while True:
            async for msg in ipr.get():
                if msg.get("event") != "RTM_NEWLINK":
                    continue
                up = bool(msg["flags"] & IFF_LOWER_UP)
                was = seen.get(msg["index"])
                seen[msg["index"]] = up
                if up and was is False:
                    yield str(msg.get_attr("IFLA_IFNAME"))
