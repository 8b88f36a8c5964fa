"""Byte-exact tests of the announcement packets that ipfailover.shell.netif sends."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ipfailover.core.packets import (
    build_arp_probe,
    build_garp,
    build_neighbour_solicitation,
    build_unsolicited_na,
    icmpv6_checksum,
    multicast_mac,
    parse_claim,
    solicited_node,
)
from ipfailover.shell.linkwatch import probe_wait
from ipfailover.shell.netif import Assignment

MAC = bytes.fromhex("020000a1b2c3")


def test_garp_bytes() -> None:
    frame = build_garp(MAC, IPv4Address("203.0.113.50"))
    assert frame == bytes.fromhex(
        "ffffffffffff"  # Ethernet destination: broadcast
        "020000a1b2c3"  # Ethernet source: our MAC
        "0806"  # EtherType ARP
        "0001"  # hardware type Ethernet
        "0800"  # protocol type IPv4
        "06"  # hardware address length
        "04"  # protocol address length
        "0001"  # operation: request (RFC 5227 ARP announcement)
        "020000a1b2c3"  # sender MAC
        "cb007132"  # sender IP 203.0.113.50
        "000000000000"  # target MAC: zero
        "cb007132"  # target IP = sender IP
    ) + bytes(18)  # padding to the 60-byte Ethernet minimum


def test_unsolicited_na_bytes() -> None:
    packet = build_unsolicited_na(MAC, IPv6Address("2001:db8:1::50"))
    assert packet == bytes.fromhex(
        "88"  # type 136: Neighbour Advertisement
        "00"  # code
        "0000"  # checksum, filled in by the kernel
        "20000000"  # R=0 S=0 O=1, reserved
        "20010db8000100000000000000000050"  # target address
        "02"  # option: Target Link-Layer Address
        "01"  # option length: 1 x 8 bytes
        "020000a1b2c3"  # our MAC
    )


@given(mac=st.binary(min_size=6, max_size=6), ip=st.ip_addresses(v=4))
def test_garp_announces_ip_at_mac(mac: bytes, ip: IPv4Address) -> None:
    frame = build_garp(mac, ip)
    assert len(frame) == 60
    dst, src, ethertype = struct.unpack_from("!6s6sH", frame)
    assert (dst, src, ethertype) == (b"\xff" * 6, mac, 0x0806)
    op, sha, spa, tha, tpa = struct.unpack_from("!6xH6s4s6s4s", frame, 14)
    assert (op, sha, spa, tha, tpa) == (1, mac, ip.packed, bytes(6), ip.packed)


@given(mac=st.binary(min_size=6, max_size=6), ip=st.ip_addresses(v=6))
def test_unsolicited_na_advertises_ip_at_mac(mac: bytes, ip: IPv6Address) -> None:
    packet = build_unsolicited_na(mac, ip)
    assert len(packet) == 32
    kind, code, flags, target = struct.unpack_from("!BB2xB3x16s", packet)
    assert (kind, code, flags, target) == (136, 0, 0x20, ip.packed)
    assert packet[24:] == b"\x02\x01" + mac


@pytest.mark.parametrize("mac", [b"", b"\x02" * 5, b"\x02" * 7, b"\x02" * 20])
def test_builders_reject_non_ethernet_mac(mac: bytes) -> None:
    with pytest.raises(ValueError, match="6 bytes"):
        build_garp(mac, IPv4Address("192.0.2.1"))
    with pytest.raises(ValueError, match="6 bytes"):
        build_unsolicited_na(mac, IPv6Address("2001:db8::1"))


def test_builders_reject_the_wrong_family() -> None:
    with pytest.raises(ValueError, match="IPv4"):
        build_garp(MAC, IPv6Address("2001:db8::1"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="IPv6"):
        build_unsolicited_na(MAC, IPv4Address("192.0.2.1"))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("address", "prefixlen", "text"),
    [
        (IPv4Address("203.0.113.10"), 24, "eth0:203.0.113.10/24"),
        (IPv6Address("2001:db8::10"), 64, "eth0:[2001:db8::10]/64"),
    ],
)
def test_assignment_str(address: IPv4Address | IPv6Address, prefixlen: int, text: str) -> None:
    assert str(Assignment(ifname="eth0", ifindex=2, address=address, prefixlen=prefixlen)) == text


@pytest.mark.parametrize(
    ("address", "prefixlen"),
    [
        (IPv4Address("192.0.2.1"), 33),
        (IPv6Address("2001:db8::1"), 129),
        (IPv4Address("192.0.2.1"), -1),
    ],
)
def test_assignment_rejects_impossible_prefix(
    address: IPv4Address | IPv6Address, prefixlen: int
) -> None:
    with pytest.raises(ValueError, match="out of range"):
        Assignment(ifname="eth0", ifindex=2, address=address, prefixlen=prefixlen)


# Probes and claims (docs/safety.md) ----------------------------------------------------------

OTHER = bytes.fromhex("02000000beef")


def test_arp_probe_bytes() -> None:
    frame = build_arp_probe(MAC, IPv4Address("203.0.113.10"))
    assert frame == bytes.fromhex(
        "ffffffffffff"  # broadcast
        "020000a1b2c3"  # our MAC
        "0806"  # ARP
        "0001"
        "0800"
        "06"
        "04"  # Ethernet, IPv4, lengths
        "0001"  # request
        "020000a1b2c3"  # sender MAC: ours
        "00000000"  # sender IP 0.0.0.0: a probe (RFC 5227 section 2.1.1)
        "000000000000"  # target MAC zero
        "cb00710a"  # target IP: the address probed
    ) + bytes(18)


def test_an_arp_probe_claims_nothing_and_a_reply_claims_its_sender_address() -> None:
    ip = IPv4Address("203.0.113.10")
    assert parse_claim(build_arp_probe(OTHER, ip)) is None  # another prober: not an owner
    assert parse_claim(build_garp(OTHER, ip)) == (ip, "02:00:00:00:be:ef")
    reply = bytearray(build_garp(OTHER, ip))
    reply[21] = 2  # op: reply
    assert parse_claim(bytes(reply)) == (ip, "02:00:00:00:be:ef")


def test_solicited_node_group_and_its_mac() -> None:
    group = solicited_node(IPv6Address("2001:db8:1::12:3456"))
    assert group == IPv6Address("ff02::1:ff12:3456")
    assert multicast_mac(group) == bytes.fromhex("3333ff123456")


def test_neighbour_solicitation_bytes_and_checksum() -> None:
    src, target = IPv6Address("fe80::1"), IPv6Address("2001:db8:1::10")
    frame = build_neighbour_solicitation(MAC, src, target)
    assert frame[:14] == bytes.fromhex("3333ff000010020000a1b2c386dd")
    version, length, nh, hops, s, d = struct.unpack_from("!IHBB16s16s", frame, 14)
    assert (version >> 28, length, nh, hops) == (6, 32, 58, 255)
    assert (IPv6Address(s), IPv6Address(d)) == (src, IPv6Address("ff02::1:ff00:10"))
    body = frame[54:]
    assert body[0] == 135 and body[8:24] == target.packed
    assert body[24:] == bytes.fromhex("0101020000a1b2c3")  # source link-layer address
    # the checksum over the pseudo-header and the body sums to zero (RFC 1071)
    assert icmpv6_checksum(src, IPv6Address(d), body) == 0
    # from ::, as duplicate address detection, no option is allowed (RFC 4861 section 7.1.1)
    dad = build_neighbour_solicitation(MAC, IPv6Address("::"), target)
    assert len(dad) == 14 + 40 + 24


def _na_frame(src_mac: bytes, target: IPv6Address, option_mac: bytes | None) -> bytes:
    body = struct.pack("!BBHB3x16s", 136, 0, 0, 0x60, target.packed)
    if option_mac is not None:
        body += struct.pack("!BB6s", 2, 1, option_mac)
    src, dst = IPv6Address("fe80::99"), IPv6Address("fe80::1")
    ipv6 = struct.pack("!IHBB16s16s", 6 << 28, len(body), 58, 255, src.packed, dst.packed)
    return MAC + src_mac + b"\x86\xdd" + ipv6 + body


def test_a_neighbour_advertisement_claims_its_target() -> None:
    target = IPv6Address("2001:db8:1::10")
    assert parse_claim(_na_frame(OTHER, target, OTHER)) == (target, "02:00:00:00:be:ef")
    # the option names the owner even if another MAC relayed the frame
    assert parse_claim(_na_frame(MAC, target, OTHER)) == (target, "02:00:00:00:be:ef")
    assert parse_claim(_na_frame(OTHER, target, None)) == (target, "02:00:00:00:be:ef")
    hops_254 = bytearray(_na_frame(OTHER, target, OTHER))
    hops_254[21] = 254  # not from the link: ignored, as the kernel does
    assert parse_claim(bytes(hops_254)) is None


def test_a_solicitation_claims_its_source_but_not_from_unspecified() -> None:
    src, target = IPv6Address("2001:db8:1::10"), IPv6Address("2001:db8:1::100")
    assert parse_claim(build_neighbour_solicitation(OTHER, src, target)) == (
        src,
        "02:00:00:00:be:ef",
    )
    assert parse_claim(build_neighbour_solicitation(OTHER, IPv6Address("::"), target)) is None


@given(frame=st.binary(max_size=200))
def test_parse_claim_never_raises(frame: bytes) -> None:
    parse_claim(frame)  # None or a claim, whatever the bytes


@given(
    frame=st.sampled_from(
        [
            build_garp(OTHER, IPv4Address("203.0.113.10")),
            build_neighbour_solicitation(
                OTHER, IPv6Address("fe80::1"), IPv6Address("2001:db8:1::10")
            ),
            _na_frame(OTHER, IPv6Address("2001:db8:1::10"), OTHER),
        ]
    ),
    cut=st.integers(0, 90),
)
def test_truncated_frames_claim_nothing_or_the_same(frame: bytes, cut: int) -> None:
    whole = parse_claim(frame)
    assert parse_claim(frame[:cut]) in (None, whole)


def test_probe_wait_is_small_against_the_dead_time() -> None:
    assert probe_wait(3.0) == pytest.approx(0.03)
    assert probe_wait(0.15) == pytest.approx(0.015)
