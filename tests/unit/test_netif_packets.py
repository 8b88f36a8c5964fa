"""Byte-exact tests of the announcement packets that ipfailover.netif sends."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ipfailover.netif import Assignment, build_garp, build_unsolicited_na

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
