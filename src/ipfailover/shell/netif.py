"""Take over, release and announce failover addresses in the current network namespace.

This is the I/O shell the daemons (failoverd, heartbeatd) use to act on interfaces. They run
inside the namespace they manage (``ip netns exec``), so everything here works on the current
network namespace:

* address changes go through rtnetlink with pyroute2's ``AsyncIPRoute``; netlink errors are
  told apart by ``NetlinkError.code`` and turned into :class:`NetifError` with a message that
  names the interface and the address;
* announcements (gratuitous ARP for IPv4, unsolicited Neighbour Advertisement for IPv6) make
  clients with a warm neighbour cache switch to this node at once instead of after the entry
  goes stale. They are best effort: send errors are logged and counted, never raised;
* probes before a takeover (an RFC 5227 ARP probe, a Neighbour Solicitation) ask whether an
  address still answers on the link, and :class:`LinkWatch` reports every frame by which another
  MAC claims an address (ARP with it as sender, Neighbour Advertisement for it): evidence for
  the takeover decision and conflict detection while holding (docs/safety.md).

The packet builders are pure functions so their bytes can be unit-tested without sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
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
from pyroute2.netlink.rtnl import RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR, RTMGRP_LINK

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
ARPOP_REPLY = 2
ETH_P_IPV6 = 0x86DD
IPPROTO_ICMPV6 = 58
PACKET_OUTGOING = 4  # linux/if_packet.h: a frame we sent, looped back to packet sockets
ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_ALEN = 6
ETH_ZLEN = 60  # minimum frame length without FCS; short frames are zero-padded up to it
BROADCAST_MAC = b"\xff" * ETH_ALEN

# RFC 4861 section 4.4 (Neighbour Advertisement) and 4.6.1 (link-layer address option)
ND_NEIGHBOR_SOLICIT = 135
ND_NEIGHBOR_ADVERT = 136
ND_OPT_SOURCE_LL_ADDR = 1
ND_NA_FLAG_OVERRIDE = 0x20  # top three bits of the flags byte are R, S, O
ND_OPT_TARGET_LL_ADDR = 2
ND_HOP_LIMIT = 255  # receivers drop ND messages whose hop limit is not 255
ALL_NODES = "ff02::1"
UNSPECIFIED = ipaddress.IPv6Address("::")

# Probing before a takeover (docs/safety.md): PROBE_TRIES probes per address, spread over the
# wait, which is min(PROBE_WAIT_MAX, dead time / PROBE_WAIT_DIVISOR).
PROBE_WAIT_MAX = 0.03
PROBE_WAIT_DIVISOR = 10
PROBE_TRIES = 2
WATCH_BURST = 64  # frames read per wake-up of a LinkWatch socket (the rest wait for the next)

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
    if ip.version != 4:
        raise ValueError(f"gratuitous ARP is for IPv4 addresses, got {ip}")
    return _arp_request(mac, sender_ip=ip.packed, target_ip=ip.packed)


def _arp_request(mac: bytes, *, sender_ip: bytes, target_ip: bytes) -> bytes:
    """A broadcast Ethernet frame with an ARP request from ``mac`` (zero target MAC), padded to
    the 60-byte Ethernet minimum."""
    _check_mac(mac)
    ether = BROADCAST_MAC + mac + struct.pack("!H", ETH_P_ARP)
    arp = struct.pack(
        "!HHBBH6s4s6s4s",
        ARPHRD_ETHER,
        ETH_P_IP,
        ETH_ALEN,
        4,
        ARPOP_REQUEST,
        mac,
        sender_ip,
        bytes(ETH_ALEN),
        target_ip,
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


def build_arp_probe(mac: bytes, ip: ipaddress.IPv4Address) -> bytes:
    """An Ethernet frame with an RFC 5227 ARP probe for ``ip`` from ``mac``.

    An ARP request with sender IP 0.0.0.0 (so that no neighbour cache learns anything from it),
    sender MAC ``mac``, zero target MAC and target IP ``ip``, broadcast. A host that has ``ip``
    answers with an ARP reply to ``mac`` (Linux: ``arp_process``, the RFC 2131 DAD case).
    """
    if ip.version != 4:
        raise ValueError(f"an ARP probe is for IPv4 addresses, got {ip}")
    return _arp_request(mac, sender_ip=bytes(4), target_ip=ip.packed)


def solicited_node(ip: ipaddress.IPv6Address) -> ipaddress.IPv6Address:
    """The solicited-node multicast address of ``ip`` (RFC 4291 section 2.7.1)."""
    return ipaddress.IPv6Address(b"\xff\x02" + bytes(9) + b"\x01\xff" + ip.packed[13:])


def multicast_mac(group: ipaddress.IPv6Address) -> bytes:
    """The Ethernet address an IPv6 multicast group maps to (RFC 2464 section 7)."""
    return b"\x33\x33" + group.packed[12:]


def icmpv6_checksum(src: ipaddress.IPv6Address, dst: ipaddress.IPv6Address, body: bytes) -> int:
    """The ICMPv6 checksum of ``body`` (its checksum field zero) over the RFC 8200 pseudo-header."""
    data = src.packed + dst.packed + struct.pack("!I3xB", len(body), IPPROTO_ICMPV6) + body
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def build_neighbour_solicitation(
    mac: bytes, source: ipaddress.IPv6Address, target: ipaddress.IPv6Address
) -> bytes:
    """An Ethernet frame with an RFC 4861 Neighbour Solicitation for ``target``.

    Sent to the target's solicited-node multicast group, hop limit 255, from ``source``: our
    link-local address, with a Source Link-Layer Address option, so the owner answers with a
    solicited Neighbour Advertisement to us. (The unspecified source of duplicate address
    detection is allowed too, without the option, but a host that is itself just doing DAD for
    the address would then give it up as a duplicate; a link-local source is silently ignored
    by it instead, RFC 4862 section 5.4.3.)
    """
    _check_mac(mac)
    if target.version != 6 or source.version != 6:
        raise ValueError(f"a Neighbour Solicitation is for IPv6 addresses, got {target}")
    group = solicited_node(target)
    option = b"" if source == UNSPECIFIED else struct.pack("!BB6s", ND_OPT_SOURCE_LL_ADDR, 1, mac)
    body = struct.pack("!BBH4x16s", ND_NEIGHBOR_SOLICIT, 0, 0, target.packed) + option
    body = body[:2] + struct.pack("!H", icmpv6_checksum(source, group, body)) + body[4:]
    ipv6 = struct.pack(
        "!IHBB16s16s", 6 << 28, len(body), IPPROTO_ICMPV6, ND_HOP_LIMIT, source.packed, group.packed
    )
    return multicast_mac(group) + mac + struct.pack("!H", ETH_P_IPV6) + ipv6 + body


def _mac_text(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def parse_claim(frame: bytes) -> tuple[IPAddress, str] | None:
    """The address an Ethernet frame says its sender has, and the sender's MAC, or None.

    * an ARP request or reply whose sender IP is not 0.0.0.0: (sender IP, sender MAC). That is
      an answer to a probe, a gratuitous ARP or announcement, or the owner asking for someone;
      an ARP probe (sender IP 0.0.0.0) claims nothing;
    * a Neighbour Advertisement: (target, its Target Link-Layer Address option, or else the
      Ethernet source);
    * a Neighbour Solicitation from a unicast source with hop limit 255: (source, the Ethernet
      source): the owner of the source address asking for a neighbour.

    Anything else, malformed or truncated, is None; this never raises.
    """
    if len(frame) < 14:
        return None
    ether_src = frame[6:12]
    (ethertype,) = struct.unpack_from("!H", frame, 12)
    if ethertype == ETH_P_ARP:
        if len(frame) < 14 + 28:
            return None
        htype, ptype, hlen, plen, op, sha, spa = struct.unpack_from("!HHBBH6s4s", frame, 14)
        if (htype, ptype, hlen, plen) != (ARPHRD_ETHER, ETH_P_IP, ETH_ALEN, 4):
            return None
        if op not in (ARPOP_REQUEST, ARPOP_REPLY) or spa == bytes(4) or not any(sha):
            return None
        return ipaddress.IPv4Address(spa), _mac_text(sha)
    if ethertype != ETH_P_IPV6 or len(frame) < 14 + 40 + 24:
        return None
    version_etc, length, next_header, hops, src = struct.unpack_from("!IHBB16s", frame, 14)
    if version_etc >> 28 != 6 or next_header != IPPROTO_ICMPV6 or hops != ND_HOP_LIMIT:
        return None
    body = frame[54 : 54 + length]
    if len(body) < 24 or body[1] != 0:
        return None
    kind, target = body[0], ipaddress.IPv6Address(body[8:24])
    if kind == ND_NEIGHBOR_ADVERT:
        mac = ether_src
        for code, value in _nd_options(body[24:]):
            if code == ND_OPT_TARGET_LL_ADDR and len(value) >= ETH_ALEN:
                mac = value[:ETH_ALEN]
        return target, _mac_text(mac)
    source = ipaddress.IPv6Address(src)
    if kind == ND_NEIGHBOR_SOLICIT and source != UNSPECIFIED and not source.is_multicast:
        return source, _mac_text(ether_src)
    return None


def _nd_options(data: bytes) -> list[tuple[int, bytes]]:
    """The (type, value) of each Neighbour Discovery option; stops at a malformed one."""
    out = []
    for _ in range(16):
        if len(data) < 8 or data[1] == 0:
            break
        size = data[1] * 8
        out.append((data[0], data[2:size]))
        data = data[size:]
    return out


# A classic BPF program for the IPv6 packet socket: only ICMPv6 Neighbour Solicitations and
# Advertisements without extension headers reach user space, not every IPv6 packet.
_ND_FILTER = (
    (0x28, 0, 0, 12),  # ldh [12]: EtherType
    (0x15, 0, 6, ETH_P_IPV6),  # jeq IPv6, else drop
    (0x30, 0, 0, 20),  # ldb [20]: next header
    (0x15, 0, 4, IPPROTO_ICMPV6),  # jeq ICMPv6, else drop
    (0x30, 0, 0, 54),  # ldb [54]: ICMPv6 type
    (0x15, 1, 0, ND_NEIGHBOR_SOLICIT),  # jeq NS: accept
    (0x15, 0, 1, ND_NEIGHBOR_ADVERT),  # jeq NA: accept, else drop
    (0x06, 0, 0, 0x40000),  # ret: accept (up to 256 KiB)
    (0x06, 0, 0, 0),  # ret: drop
)
SO_ATTACH_FILTER = 26


def _attach_filter(sock: socket.socket, program: tuple[tuple[int, int, int, int], ...]) -> None:
    code = b"".join(struct.pack("HBBI", *insn) for insn in program)
    buf = ctypes.create_string_buffer(code)
    fprog = struct.pack("HP", len(program), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


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


# --- probing and watching -------------------------------------------------------------------


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
        for proto in (ETH_P_ARP, ETH_P_IPV6):
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            out.append(sock)
            sock.setblocking(False)
            if proto == ETH_P_IPV6:
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
    Discovery frame that :func:`parse_claim` understands, unless we sent it (packet type
    outgoing) or it comes from one of ``own_macs``. Raises OSError if the sockets cannot be
    opened (no CAP_NET_RAW, no such interface).
    """

    def __init__(
        self,
        ifname: str,
        own_macs: Iterable[bytes],
        on_claim: Callable[[IPAddress, str], None],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.ifname = ifname
        self.own = {_mac_text(m) for m in own_macs}
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
            claim = parse_claim(frame)
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
        return UNSPECIFIED
    for line in lines:
        fields = line.split()
        if len(fields) != 6 or fields[5] != ifname:
            continue
        address = ipaddress.IPv6Address(int(fields[0], 16))
        if address.is_link_local and not int(fields[4], 16) & (0x40 | 0x08):  # tentative, dadfailed
            return address
    return UNSPECIFIED


def _socket_mac(sock: socket.socket) -> bytes | None:
    """The Ethernet MAC of the interface a bound packet socket is on, or None if not Ethernet."""
    name = sock.getsockname()
    mac = name[4] if len(name) > 4 else b""
    if name[3] != ARPHRD_ETHER or len(mac) != ETH_ALEN or not any(mac):
        return None
    return bytes(mac)


async def probe(
    assignments: Iterable[Assignment], wait: float, tries: int = PROBE_TRIES
) -> tuple[dict[str, list[str]], bool]:
    """Ask the link whether each address still answers, before we take it.

    Per address ``tries`` probes are sent, spread evenly over ``wait`` seconds, the first at
    once: an RFC 5227 ARP probe for IPv4, a Neighbour Solicitation for IPv6. Every frame from
    another MAC that claims a probed address meanwhile counts as an answer (see
    :func:`parse_claim`). Returns ``({address: [MAC, ...]}, ok)`` as soon as every address has
    answered, else after ``wait``. ``ok`` is False if some address could not be probed at all
    (its interface is gone or has no Ethernet MAC, or a socket could not be opened): that is
    logged, and the caller treats it as no answer. Never raises for network trouble.
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
                        frame = build_arp_probe(mac, a.address)
                    else:
                        source = _link_local(ifname)
                        frame = build_neighbour_solicitation(mac, source, a.address)
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
    async for kind, ifname in link_events(addresses=False):
        if kind == "carrier-up":
            yield ifname


async def link_events(*, addresses: bool = True) -> AsyncIterator[tuple[str, str]]:
    """Yield ``("carrier-up", ifname)`` each time an interface's carrier comes back
    (IFF_LOWER_UP turns on) and, with ``addresses``, ``("addresses", "")`` after each batch of
    address changes (one for a burst, however many addresses it changed).

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
            if changed:
                yield "addresses", ""
