"""Ethernet frames for announcing and probing addresses, and parsing other hosts' claims.

Pure functions of bytes and addresses (no sockets): a gratuitous ARP and an ARP probe (RFC 5227),
an unsolicited Neighbour Advertisement and a Neighbour Solicitation (RFC 4861), and
:func:`parse_claim`, which tells which address a received frame says its sender has. The shells
(``ipfailover.shell.announce``, ``ipfailover.shell.linkwatch``) send and receive them.
"""

from __future__ import annotations

import ipaddress
import struct

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# linux/if_arp.h, linux/if_ether.h
ARPHRD_ETHER = 1
ARPOP_REQUEST = 1
ARPOP_REPLY = 2
ETH_P_IPV6 = 0x86DD
IPPROTO_ICMPV6 = 58
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
ALL_NODES_ADDRESS = ipaddress.IPv6Address(ALL_NODES)
UNSPECIFIED = ipaddress.IPv6Address("::")


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


def mac_text(mac: bytes) -> str:
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
        return ipaddress.IPv4Address(spa), mac_text(sha)
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
        return target, mac_text(mac)
    source = ipaddress.IPv6Address(src)
    if kind == ND_NEIGHBOR_SOLICIT and source != UNSPECIFIED and not source.is_multicast:
        return source, mac_text(ether_src)
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


def build_na_frame(mac: bytes, ip: ipaddress.IPv6Address) -> bytes:
    """An Ethernet frame with the unsolicited Neighbour Advertisement of
    :func:`build_unsolicited_na` for ``ip``, from ``ip`` to all-nodes ff02::1, hop limit 255,
    with its checksum: sent on a packet socket, so one socket announces every address of every
    interface (no raw ICMPv6 socket bound to each address)."""
    body = build_unsolicited_na(mac, ip)
    body = body[:2] + struct.pack("!H", icmpv6_checksum(ip, ALL_NODES_ADDRESS, body)) + body[4:]
    ipv6 = struct.pack(
        "!IHBB16s16s",
        6 << 28,
        len(body),
        IPPROTO_ICMPV6,
        ND_HOP_LIMIT,
        ip.packed,
        ALL_NODES_ADDRESS.packed,
    )
    return multicast_mac(ALL_NODES_ADDRESS) + mac + struct.pack("!H", ETH_P_IPV6) + ipv6 + body
