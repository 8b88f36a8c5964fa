"""ipfailover.shell.netif against real network namespaces (run as root).

Topology, built fresh for every test with a random suffix::

    ipfoA-<r> (node)        n0 203.0.113.20/24   2001:db8:1::20/64  --+
    ipfoC-<r> (client)      c0 203.0.113.100/24  2001:db8:1::100/64 --+-- br0 in ipfoB-<r>
    ipfoX-<r> (old owner)   x0 203.0.113.50/24   2001:db8:1::50/64  --+

The netif code uses the current namespace, so it runs in a Python subprocess started with
``ip netns exec <node>``; only the topology itself is set up with ``ip`` commands.

Neighbour-cache findings behind the warm-cache tests (measured on Linux 6.18 with this
topology): an ARP packet updates an existing entry's MAC only if the entry's last update is
older than ``net.ipv4.neigh.<dev>.locktime`` (default 100 centiseconds = 1 s). An unsolicited
ARP reply sent 0.0/0.3/0.6/0.9 s after the client refreshed its entry was ignored, at 1.1 s and
later it was accepted; the same held for a reply with sender IP = target IP but a zero target
MAC. A gratuitous ARP *request* (sender IP = target IP, unicast for the receiver; by the kernel
source also a reply whose target MAC equals its sender MAC) is exempt (``is_garp`` in
arp_process): the first announcement switched the entry at every delay, including 0.01 s. The
test raises the client's locktime to 10 s to prove that. Kernels older than the 2017 change that
made every GARP override (about 4.12/4.13) only exempt GARPs with arp_accept=1; there an
announcement that lands within locktime of the last update is dropped, so send at least two,
spaced more than locktime (1 s) apart. IPv6 has no locktime for Neighbour Advertisements (its
default is 0, and 10 s makes no difference): one unsolicited NA with Override=1 replaces the MAC
at once. Without any announcement the client kept the old MAC (checked after 0.3 s here and 1.5
s by hand): adding an address does not make the kernel announce it.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import secrets
import socket
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from ipfailover.core.packets import build_garp, build_unsolicited_na

NODE_V4 = "203.0.113.20"
NODE_V6 = "2001:db8:1::20"
CLIENT_V4 = "203.0.113.100"
CLIENT_V6 = "2001:db8:1::100"
VIP_V4 = "203.0.113.50"
VIP_V6 = "2001:db8:1::50"
COMMAND_TIMEOUT = 30.0


def run(*argv: str) -> str:
    """Run a command, fail the test with its stderr if it fails, return its stdout."""
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    assert proc.returncode == 0, f"{' '.join(argv)} failed: {proc.stderr.strip()}"
    return proc.stdout


def ip(ns: str, *args: str) -> str:
    return run("ip", "-n", ns, *args)


def ip_json(ns: str, *args: str) -> Any:
    return json.loads(ip(ns, "-j", *args) or "[]")


@dataclass(frozen=True)
class Topology:
    """Namespace names of one test's topology; interface names are fixed inside them."""

    node: str
    client: str
    old_owner: str
    bridge: str

    def namespaces(self) -> list[str]:
        return [self.node, self.client, self.old_owner, self.bridge]

    def mac(self, ns: str, ifname: str) -> str:
        return str(ip_json(ns, "link", "show", "dev", ifname)[0]["address"])


def _attach(topo: Topology, ns: str, ifname: str, addresses: tuple[str, ...]) -> None:
    """Give ``ns`` an interface ``ifname`` on the bridge, up, with ``addresses`` (no DAD)."""
    port = "p" + ifname
    ip(topo.bridge, "link", "add", port, "type", "veth", "peer", "name", ifname, "netns", ns)
    ip(topo.bridge, "link", "set", port, "master", "br0", "up")
    for address in addresses:
        extra = ("nodad",) if ":" in address else ()
        ip(ns, "addr", "add", address, "dev", ifname, *extra)
    ip(ns, "link", "set", ifname, "up")


@pytest.fixture
def topo() -> Iterator[Topology]:
    suffix = secrets.token_hex(3)
    topo = Topology(
        node=f"ipfoA-{suffix}",
        client=f"ipfoC-{suffix}",
        old_owner=f"ipfoX-{suffix}",
        bridge=f"ipfoB-{suffix}",
    )
    created: list[str] = []
    try:
        for ns in topo.namespaces():
            run("ip", "netns", "add", ns)
            created.append(ns)
        ip(topo.bridge, "link", "add", "br0", "type", "bridge")
        ip(topo.bridge, "link", "set", "br0", "up")
        _attach(topo, topo.node, "n0", (f"{NODE_V4}/24", f"{NODE_V6}/64"))
        _attach(topo, topo.client, "c0", (f"{CLIENT_V4}/24", f"{CLIENT_V6}/64"))
        _attach(topo, topo.old_owner, "x0", (f"{VIP_V4}/24", f"{VIP_V6}/64"))
        yield topo
    finally:
        for ns in created:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=COMMAND_TIMEOUT)


@dataclass(frozen=True)
class Outcome:
    """What a snippet of netif code returned (or raised) inside a namespace, and what it logged."""

    value: Any
    error: str | None
    message: str
    log: str


_RUNNER = """\
import asyncio, json, logging, sys
from ipaddress import ip_address as ip
from ipfailover.shell import announce, netbatch, netif
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(message)s")
async def main():
{body}
try:
    result = {{"value": asyncio.run(main()), "error": None, "message": ""}}
except Exception as e:
    result = {{"value": None, "error": type(e).__name__, "message": str(e)}}
print(json.dumps(result, default=str))
"""


def netif_in(ns: str, body: str) -> Outcome:
    """Run ``body`` (the body of an async function; ``netif`` and ``ip`` are in scope) in ``ns``."""
    script = _RUNNER.format(body=textwrap.indent(textwrap.dedent(body), "    "))
    proc = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    return Outcome(result["value"], result["error"], result["message"], proc.stderr)


def ok(outcome: Outcome) -> Any:
    assert outcome.error is None, f"{outcome.error}: {outcome.message}\n{outcome.log}"
    return outcome.value


def netif_add(ns: str, address: str, prefixlen: int | None = None) -> bool:
    """netif.add() of ``address`` on n0 in ``ns``, prefix resolved by netif.resolve()."""
    body = f'return await netif.add(await netif.resolve("n0", ip({address!r}), {prefixlen!r}))'
    return bool(ok(netif_in(ns, body)))


def node_addresses(topo: Topology) -> set[tuple[str, int]]:
    """(address, prefixlen) of every address on the node's n0, read with ``ip``."""
    (link,) = ip_json(topo.node, "addr", "show", "dev", "n0")
    return {(x["local"], x["prefixlen"]) for x in link["addr_info"]}


def neighbour(ns: str, ifname: str, address: str) -> dict[str, Any] | None:
    entries = ip_json(ns, "neigh", "show", "to", address, "dev", ifname)
    return entries[0] if entries else None


def wait_for_neighbour(
    ns: str, ifname: str, address: str, lladdr: str, timeout: float = 5.0
) -> dict[str, Any] | None:
    """Poll (bounded) until ``address`` resolves to ``lladdr`` in ``ns``; return the last entry."""
    deadline = time.monotonic() + timeout
    entry = neighbour(ns, ifname, address)
    while time.monotonic() < deadline and (entry or {}).get("lladdr") != lladdr:
        time.sleep(0.05)
        entry = neighbour(ns, ifname, address)
    return entry


def warm_client_cache(topo: Topology, address: str) -> dict[str, Any]:
    """Make the client resolve ``address`` (held by the old owner) by sending it a datagram."""
    family = "AF_INET6" if ":" in address else "AF_INET"
    send = (
        f"import socket; s = socket.socket(socket.{family}, socket.SOCK_DGRAM);"
        f" s.sendto(b'warm', ({address!r}, 9))"
    )
    run("ip", "netns", "exec", topo.client, sys.executable, "-c", send)
    old_mac = topo.mac(topo.old_owner, "x0")
    entry = wait_for_neighbour(topo.client, "c0", address, old_mac)
    assert entry is not None and entry.get("lladdr") == old_mac, entry
    return entry


# --- 1. prefix inference ---------------------------------------------------------------------


def test_resolve_infers_prefix_from_the_interface(topo: Topology) -> None:
    result = ok(
        netif_in(
            topo.node,
            f"""
            cases = [
                ({VIP_V4!r}, None), ("192.0.2.50", None), ({VIP_V4!r}, 28),
                ({VIP_V6!r}, None), ("2001:db8:2::50", None), ({VIP_V6!r}, 120),
            ]
            out = []
            for address, prefixlen in cases:
                a = await netif.resolve("n0", ip(address), prefixlen)
                out.append([str(a), a.ifindex])
            return out
            """,
        )
    )
    ifindex = ip_json(topo.node, "link", "show", "dev", "n0")[0]["ifindex"]
    assert result == [
        ["n0:203.0.113.50/24", ifindex],
        ["n0:192.0.2.50/32", ifindex],
        ["n0:203.0.113.50/28", ifindex],
        ["n0:[2001:db8:1::50]/64", ifindex],
        ["n0:[2001:db8:2::50]/128", ifindex],
        ["n0:[2001:db8:1::50]/120", ifindex],
    ]


def test_missing_interfaces_are_reported(topo: Topology) -> None:
    outcome = netif_in(
        topo.node,
        """
        missing = await netif.missing_interfaces(["n0", "nope0", "lo", "x" * 20])
        try:
            await netif.resolve("nope0", ip("203.0.113.50"), None)
        except netif.NetifError as e:
            return [missing, str(e)]
        """,
    )
    missing, error = ok(outcome)
    assert missing == ["nope0", "x" * 20]
    assert "nope0" in error and "does not exist" in error


# --- 2. add / present / delete ---------------------------------------------------------------


@pytest.mark.parametrize("vip", [VIP_V4, VIP_V6])
def test_add_and_delete_are_idempotent_and_exact(topo: Topology, vip: str) -> None:
    steps = ok(
        netif_in(
            topo.node,
            f"""
            a = await netif.resolve("n0", ip({vip!r}), None)
            steps = [await netif.present(a), await netif.add(a), await netif.present(a)]
            steps += [await netif.add(a), await netif.delete(a), await netif.present(a)]
            steps += [await netif.delete(a)]
            steps += [sorted(str(x) for x in await netif.interface_addresses("n0"))]
            return steps
            """,
        )
    )
    assert steps[:7] == [False, True, True, False, True, False, False]
    assert steps[7] == sorted(["n0:203.0.113.20/24", "n0:[2001:db8:1::20]/64"])
    shown = node_addresses(topo)
    assert {(NODE_V4, 24), (NODE_V6, 64)} <= shown
    assert all(local != vip for local, _ in shown)


def test_operations_on_a_missing_interface_raise_netif_error(topo: Topology) -> None:
    errors = ok(
        netif_in(
            topo.node,
            """
            a = netif.Assignment(
                ifname="nope0", ifindex=999, address=ip("203.0.113.50"), prefixlen=24
            )
            errors = []
            for op in (netif.add, netif.delete, netif.present):
                try:
                    await op(a)
                except netif.NetifError as e:
                    errors.append(str(e))
            return errors
            """,
        )
    )
    assert len(errors) == 3
    assert all("nope0" in e and "does not exist" in e for e in errors)


def test_stale_ifindex_raises_netif_error(topo: Topology) -> None:
    outcome = netif_in(
        topo.node,
        """
        a = await netif.resolve("n0", ip("203.0.113.50"), None)
        stale = netif.Assignment(
            ifname="n0", ifindex=a.ifindex + 100, address=a.address, prefixlen=24
        )
        await netif.add(stale)
        """,
    )
    assert outcome.error == "NetifError" and "resolve 203.0.113.50 again" in outcome.message


def test_ipv6_add_with_other_prefix_is_an_error_not_a_noop(topo: Topology) -> None:
    outcome = netif_in(
        topo.node,
        f"""
        assert await netif.add(await netif.resolve("n0", ip({VIP_V6!r}), 64))
        await netif.add(await netif.resolve("n0", ip({VIP_V6!r}), 128))
        """,
    )
    assert outcome.error == "NetifError" and "another prefix length" in outcome.message


def test_deleting_a_primary_keeps_its_secondaries(topo: Topology) -> None:
    # 198.51.100.10 is the first address of its subnet on n0, so the kernel makes it primary
    # and the administrator's 198.51.100.11 secondary; deleting a primary deletes secondaries
    # too unless promote_secondaries is on.
    assert netif_add(topo.node, "198.51.100.10", 24)
    ip(topo.node, "addr", "add", "198.51.100.11/24", "dev", "n0")
    body = 'return await netif.delete(await netif.resolve("n0", ip("198.51.100.10"), 24))'
    assert ok(netif_in(topo.node, body)) is True
    remaining = node_addresses(topo)
    assert {("198.51.100.11", 24), (NODE_V4, 24)} <= remaining
    assert ("198.51.100.10", 24) not in remaining


def test_a_batch_reports_each_address_as_one_at_a_time_would(topo: Topology) -> None:
    """netbatch.AddressBatch (a takeover of many addresses: one netlink socket, requests
    pipelined) tells added / already there / refused / stale interface apart per address, and
    its delete keeps a deleted primary's secondaries, like netif.add and netif.delete."""
    ip(topo.node, "addr", "add", "203.0.113.30/24", "dev", "n0")  # already there, exactly
    ip(topo.node, "-6", "addr", "add", "2001:db8:9::1/64", "dev", "n0", "nodad")  # other prefix
    body = """
    pairs = [("n0", ip(a), p) for a, p in (("198.51.100.10", 24), ("2001:db8:1::60", 64),
             ("203.0.113.30", 24), ("2001:db8:9::1", 48))]
    got = await netif.resolve_all(pairs)
    stale = netif.Assignment(ifname="n0", ifindex=got[0].ifindex + 1000,
                             address=ip("203.0.113.77"), prefixlen=24)
    batch = netbatch.AddressBatch([*got, stale])
    added = await batch.add()
    return [r if isinstance(r, bool) else type(r).__name__ + ": " + str(r) for r in added]
    """
    added = ok(netif_in(topo.node, body))
    assert added[:3] == [True, True, False]
    assert added[3].startswith("NetifError") and "another prefix length" in added[3]
    assert added[4].startswith("NetifError") and "re-created" in added[4]
    there = node_addresses(topo)
    assert {("198.51.100.10", 24), ("2001:db8:1::60", 64), ("203.0.113.30", 24)} <= there
    assert ("203.0.113.77", 24) not in there
    # 198.51.100.10 is its subnet's primary address: the administrator's .11 is a secondary,
    # which the kernel deletes with it unless promote_secondaries is on (off here, whatever the
    # host's default that the namespace inherited)
    ip(topo.node, "addr", "add", "198.51.100.11/24", "dev", "n0")
    for scope in ("all", "n0"):
        run("ip", "netns", "exec", topo.node, "sysctl", "-qw",
            f"net.ipv4.conf.{scope}.promote_secondaries=0")  # fmt: skip
    body = """
    pairs = [("n0", ip(a), p) for a, p in (("198.51.100.10", 24), ("2001:db8:1::60", 64),
             ("2001:db8:1::61", 64))]
    deleted = await netbatch.AddressBatch(await netif.resolve_all(pairs)).delete()
    return [r if isinstance(r, bool) else type(r).__name__ for r in deleted]
    """
    assert ok(netif_in(topo.node, body)) == [True, True, False]
    there = node_addresses(topo)
    assert ("198.51.100.10", 24) not in there and ("2001:db8:1::60", 64) not in there
    assert {("198.51.100.11", 24), ("203.0.113.30", 24), (NODE_V4, 24)} <= there


# --- 3. IPv6 without DAD -----------------------------------------------------------------------


def test_ipv6_address_is_usable_at_once(topo: Topology) -> None:
    assert netif_add(topo.node, VIP_V6)
    infos = ip_json(topo.node, "addr", "show", "dev", "n0")[0]["addr_info"]
    (info,) = [x for x in infos if x["local"] == VIP_V6]
    assert info["prefixlen"] == 64
    assert info.get("nodad") is True
    assert not info.get("tentative") and not info.get("dadfailed")


# --- 4. warm-cache switch --------------------------------------------------------------------


def _take_over_and_announce(topo: Topology, vip: str, prefixlen: int) -> int:
    """The old owner loses ``vip``; the node adds it and then announces it once.

    Between the two, the client must still point at the old owner: adding the address alone
    does not make the kernel tell anyone (arp_notify/ndisc_notify only act on link events).
    """
    old_mac = topo.mac(topo.old_owner, "x0")
    ip(topo.old_owner, "addr", "del", f"{vip}/{prefixlen}", "dev", "x0")
    assert netif_add(topo.node, vip)
    time.sleep(0.3)
    assert (neighbour(topo.client, "c0", vip) or {}).get("lladdr") == old_mac
    body = f'return await announce.announce(await netif.resolve("n0", ip({vip!r}), None), 1, 0.0)'
    return int(ok(netif_in(topo.node, body)))


def test_gratuitous_arp_switches_a_warm_client_within_locktime(topo: Topology) -> None:
    # 10 s locktime (in centiseconds): the switch below happens well within it, so only the
    # kernel's gratuitous-ARP exemption can explain the update.
    run("ip", "netns", "exec", topo.client, "sysctl", "-qw", "net.ipv4.neigh.c0.locktime=1000")
    warm_client_cache(topo, VIP_V4)
    node_mac = topo.mac(topo.node, "n0")

    assert _take_over_and_announce(topo, VIP_V4, 24) == 1

    entry = wait_for_neighbour(topo.client, "c0", VIP_V4, node_mac, timeout=1.0)
    assert entry is not None and entry["lladdr"] == node_mac, entry


def test_unsolicited_na_switches_a_warm_client(topo: Topology) -> None:
    # IPv6 defaults to locktime 0; 10 s shows Neighbour Advertisements ignore it anyway.
    run("ip", "netns", "exec", topo.client, "sysctl", "-qw", "net.ipv6.neigh.c0.locktime=1000")
    warm_client_cache(topo, VIP_V6)
    node_mac = topo.mac(topo.node, "n0")

    assert _take_over_and_announce(topo, VIP_V6, 64) == 1

    entry = wait_for_neighbour(topo.client, "c0", VIP_V6, node_mac, timeout=1.0)
    assert entry is not None and entry["lladdr"] == node_mac, entry


_CAPTURE = """\
import json, socket, sys, time
ifname, marker = sys.argv[1], bytes.fromhex(sys.argv[2])
ethertype, count, timeout = int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ethertype))
s.bind((ifname, ethertype))
print("ready", flush=True)
frames, deadline = [], time.monotonic() + timeout
while len(frames) < count and time.monotonic() < deadline:
    s.settimeout(max(0.01, deadline - time.monotonic()))
    try:
        frame = s.recv(2048)
    except TimeoutError:
        break
    if marker in frame:
        frames.append([time.monotonic(), frame.hex()])
print(json.dumps(frames))
"""


def capture(ns: str, ethertype: int, marker: bytes, count: int) -> subprocess.Popen[str]:
    """Start collecting up to ``count`` frames containing ``marker`` on c0 in ``ns`` (5 s max)."""
    argv = ["ip", "netns", "exec", ns, sys.executable, "-c", _CAPTURE, "c0", marker.hex()]
    proc = subprocess.Popen(
        [*argv, str(ethertype), str(count), "5"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def captured(proc: subprocess.Popen[str]) -> list[tuple[float, bytes]]:
    out, _ = proc.communicate(timeout=COMMAND_TIMEOUT)
    return [(t, bytes.fromhex(frame)) for t, frame in json.loads(out)]


def icmpv6_checksum(src: bytes, dst: bytes, body: bytes) -> int:
    """RFC 4443 checksum over the IPv6 pseudo-header and ``body`` (checksum field zeroed)."""
    data = src + dst + struct.pack("!I3xB", len(body), socket.IPPROTO_ICMPV6) + body
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


@pytest.mark.parametrize("vip", [VIP_V4, VIP_V6])
def test_announcements_on_the_wire(topo: Topology, vip: str) -> None:
    address = ipaddress.ip_address(vip)
    node_mac = bytes.fromhex(topo.mac(topo.node, "n0").replace(":", ""))
    assert netif_add(topo.node, vip)
    ethertype = 0x0806 if address.version == 4 else 0x86DD
    receiver = capture(topo.client, ethertype, address.packed, 3)
    try:
        sent, elapsed = ok(
            netif_in(
                topo.node,
                f"""
                import time
                a = await netif.resolve("n0", ip({vip!r}), None)
                started = time.monotonic()
                sent = await announce.announce(a, 3, 0.2)
                return [sent, time.monotonic() - started]
                """,
            )
        )
    finally:
        frames = captured(receiver)
    assert sent == 3 and 0.4 <= elapsed < 2.0
    assert len(frames) == 3
    gaps = [later - earlier for (earlier, _), (later, _) in itertools.pairwise(frames)]
    assert all(0.15 <= gap < 1.0 for gap in gaps), gaps
    for _, frame in frames:
        if isinstance(address, ipaddress.IPv4Address):
            assert frame == build_garp(node_mac, address)
        else:
            assert_unsolicited_na(frame, node_mac, address)


def assert_unsolicited_na(frame: bytes, node_mac: bytes, address: ipaddress.IPv6Address) -> None:
    """``frame`` is our NA for ``address``: right Ethernet/IPv6 headers and a valid checksum."""
    dst_mac, src_mac = frame[0:6], frame[6:12]
    assert (dst_mac, src_mac) == (bytes.fromhex("333300000001"), node_mac)
    payload_len, next_header, hop_limit = struct.unpack_from("!HBB", frame, 18)
    src, dst = frame[22:38], frame[38:54]
    body = frame[54 : 54 + payload_len]
    assert (next_header, hop_limit) == (socket.IPPROTO_ICMPV6, 255)
    assert (src, dst) == (address.packed, ipaddress.IPv6Address("ff02::1").packed)
    unsummed = body[:2] + b"\0\0" + body[4:]
    assert unsummed == build_unsolicited_na(node_mac, address)
    assert struct.unpack_from("!H", body, 2)[0] == icmpv6_checksum(src, dst, unsummed)


# --- 5. announcing where it cannot work ------------------------------------------------------


@pytest.mark.parametrize("vip", [VIP_V4, VIP_V6])
def test_announce_on_a_down_link_returns_zero(topo: Topology, vip: str) -> None:
    assert netif_add(topo.node, vip)
    ip(topo.node, "link", "set", "n0", "down")
    outcome = netif_in(
        topo.node,
        f"""
        a = await netif.resolve("n0", ip({vip!r}), None)
        return await announce.announce(a, 2, 0.05)
        """,
    )
    assert ok(outcome) == 0
    assert "ipfailover.netif" in outcome.log and "not" in outcome.log


def test_announce_skips_loopback(topo: Topology) -> None:
    outcome = netif_in(
        topo.node,
        """
        a = await netif.resolve("lo", ip("127.0.0.1"), None)
        return await announce.announce(a, 3, 0.0)
        """,
    )
    assert ok(outcome) == 0
    assert "no Ethernet MAC address" in outcome.log
