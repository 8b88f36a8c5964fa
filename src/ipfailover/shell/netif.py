"""Take over and release failover addresses in the current network namespace (rtnetlink).

This is the I/O shell the daemons (failoverd, heartbeatd) use to act on interfaces. They run
inside the namespace they manage (``ip netns exec``), so everything here works on the current
network namespace. Address changes go through rtnetlink with pyroute2's ``AsyncIPRoute``;
netlink errors are told apart by ``NetlinkError.code`` and turned into :class:`NetifError` with a
message that names the interface and the address.

The neighbours: :mod:`ipfailover.shell.netbatch` adds and deletes many addresses at once over one
netlink socket, :mod:`ipfailover.shell.announce` announces them (gratuitous ARP, unsolicited
Neighbour Advertisement), :mod:`ipfailover.shell.linkwatch` probes and watches the link, and
:mod:`ipfailover.core.packets` builds and parses the frames.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import ipaddress
import logging
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, ParamSpec, TypeVar

# (ipfailover.shell, imported first, made `pyroute2` the light package: see its __init__)
from pyroute2.iproute.linux import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ipfailover.core.packets import ALL_NODES, IPAddress

log = logging.getLogger("ipfailover.netif")

# linux/if_addr.h, linux/rtnetlink.h
IFA_F_SECONDARY = 0x01
IFA_F_NODAD = 0x02
IFF_LOWER_UP = 0x10000  # the link has carrier
P = ParamSpec("P")
R = TypeVar("R")
RT_SCOPE_UNIVERSE = 0

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
async def resolve_all(
    pairs: Iterable[tuple[str, IPAddress, int | None]],
) -> list[Assignment]:
    """:func:`resolve` for many (interface, address, prefix) pairs in one netlink session: each
    interface is looked up, and its addresses dumped, once (a thousand pairs start in
    milliseconds, not a thousand sessions)."""
    out = []
    async with _netlink() as ipr:
        links: dict[str, int] = {}
        existing: dict[int, list[_Addr]] = {}
        for ifname, address, prefixlen in pairs:
            if ifname not in links:
                link = await _require_link(ipr, ifname, f"needed for {address}")
                links[ifname] = int(link["index"])
            ifindex = links[ifname]
            if prefixlen is None:
                if ifindex not in existing:
                    existing[ifindex] = await _addresses(ipr, ifindex)
                prefixlen = _infer_prefixlen(address, existing[ifindex])
            out.append(
                Assignment(ifname=ifname, ifindex=ifindex, address=address, prefixlen=prefixlen)
            )
    return out


@_netlink_errors
async def present_all(assignments: Iterable[Assignment]) -> list[bool]:
    """:func:`present` for many addresses in one netlink session (one dump per interface); an
    address whose interface is gone or re-created is not present."""
    out = []
    async with _netlink() as ipr:
        exact: dict[str, set[tuple[IPAddress, int]] | None] = {}
        for a in assignments:
            key = f"{a.ifname}/{a.ifindex}"
            if key not in exact:
                try:
                    await _check_link(ipr, a)
                except NetifError:
                    exact[key] = None
                else:
                    exact[key] = {
                        (x.address, x.prefixlen) for x in await _addresses(ipr, a.ifindex)
                    }
            found = exact[key]
            out.append(found is not None and (a.address, a.prefixlen) in found)
    return out


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
    simply in the answer or not; NetifError only if netlink itself fails. The dump is read and
    parsed in a worker thread (pyroute2's synchronous IPRoute): with a thousand addresses that
    is tens of milliseconds of Python, which would otherwise hold the event loop up in one
    piece; in a thread the loop gets the interpreter back every few milliseconds.
    """
    return await asyncio.to_thread(_addresses_on_subnets_of, list(targets))


def _addresses_on_subnets_of(wanted: list[IPAddress]) -> list[Assignment]:
    from pyroute2.iproute.linux import IPRoute

    try:
        with IPRoute(ext_ack=True, strict_check=True) as ipr:
            names = {link["index"]: str(link.get_attr("IFLA_IFNAME")) for link in ipr.link("dump")}
            found = [(msg["index"], _Addr.from_msg(msg)) for msg in ipr.addr("dump")]
    except (NetlinkError, OSError) as e:
        raise NetifError(f"cannot list addresses: {e}") from e
    carriers: set[int] = set()
    for i, x in found:  # an interface is a carrier once: no network built for the rest
        if i not in carriers and any(t in x.network() for t in wanted):
            carriers.add(i)
    return [
        Assignment(ifname=names[i], ifindex=i, address=x.address, prefixlen=x.prefixlen)
        for i, x in found
        if i in carriers and i in names and x.scope == RT_SCOPE_UNIVERSE
    ]


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
