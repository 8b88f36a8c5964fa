"""The validators: each turns one variable's unquoted, non-empty value into its typed value.

Each takes the text and returns the value or raises ValueError with a message that says what
is wrong and what is allowed (``config`` puts the file, line and variable in front). The
:data:`ipfailover.core.variables.TABLE` names one of these for every variable; the checks that
span variables are in :mod:`ipfailover.core.config`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeAlias, TypeVar

from ipfailover.core import wire

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address

T = TypeVar("T")

_IFNAME_MAX_BYTES = 15  # Linux IFNAMSIZ (16) minus the terminating NUL
_NAME_MAX_BYTES = 64

# --------------------------------------------------------------------------- model


@dataclass(frozen=True, kw_only=True)
class PeerPair:
    """One ``interface:address[/mask]`` entry of ``FAILOVER_PEER_IP_PAIRS``.

    The constructor validates, so a PeerPair is always usable: a valid Linux
    interface name, an address that can be assigned to an interface, and a
    prefix length in range (``None`` means "not given"; the consumer infers it
    from the interface's subnet, else uses /32 or /128).
    """

    interface: str
    address: IPAddress
    prefixlen: int | None

    def __post_init__(self) -> None:
        _check_interface(self.interface)
        _check_assignable(self.address)
        if self.prefixlen is not None:
            _check_prefix(self.address, self.prefixlen)

    def __str__(self) -> str:
        host = f"[{self.address}]" if self.address.version == 6 else str(self.address)
        mask = "" if self.prefixlen is None else f"/{self.prefixlen}"
        return f"{self.interface}:{host}{mask}"


def parse_peer_pair(text: str) -> PeerPair:
    """Parse ``interface:address[/mask]`` (IPv6 bare or in brackets); ValueError if invalid.

    The first colon ends the interface name, so ``eth0:2001:db8::10/64`` works.
    The mask is a prefix length or, for IPv4, a contiguous dotted netmask.
    """
    interface, colon, rest = text.partition(":")
    if not colon:
        raise ValueError("expected interface:address[/mask]")
    if rest.startswith("["):
        host, bracket, after = rest[1:].partition("]")
        if not bracket or after[:1] not in ("", "/"):
            raise ValueError("expected interface:[IPv6 address][/prefix]")
        address: IPAddress = _ipv6_literal(host)
        slash, mask = after[:1], after[1:]
    else:
        host, slash, mask = rest.partition("/")
        address = _ip_literal(host)
    prefixlen = _mask_to_prefix(address, mask) if slash else None
    return PeerPair(interface=interface, address=address, prefixlen=prefixlen)


def split_host_port(text: str, default_port: int | None) -> tuple[str, int]:
    """Split ``host[:port]`` / ``[v6][:port]`` into (host, port); ValueError if invalid.

    The host comes back without brackets, ready for a socket call.  A port is
    required when ``default_port`` is None.  Unbracketed IPv6 is refused because
    its last group would be indistinguishable from a port.
    """
    if text.startswith("["):
        host, bracket, after = text[1:].partition("]")
        if not bracket or after[:1] not in ("", ":"):
            raise ValueError("expected [IPv6 address]:port")
        return str(_ipv6_literal(host)), _port_part(after[1:] if after else None, default_port)
    if text.count(":") > 1:
        raise ValueError("put an IPv6 address in brackets: [2001:db8::1]:port")
    host, colon, port = text.partition(":")
    _check_host_name(host)
    return host, _port_part(port if colon else None, default_port)


# --------------------------------------------------------------------------- value converters

_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")
_INTEGER = re.compile(r"[+-]?[0-9]+")


@dataclass(frozen=True)
class Range:
    """A numeric range with its unit, which every error message spells out."""

    low: float
    high: float
    unit: str
    integer: bool = False
    low_open: bool = False  # True: the value must be strictly greater than low

    def describe(self) -> str:
        if self.low_open:
            return f"{self.unit} greater than {self.low:g} and at most {self.high:g}"
        return f"{self.unit} from {self.low:g} to {self.high:g}"

    def parse(self, text: str) -> float:
        pattern, kind = (_INTEGER, "a whole number") if self.integer else (_DECIMAL, "a number")
        if not pattern.fullmatch(text):
            raise ValueError(f"{text!r} is not {kind}; expected {self.describe()}")
        try:
            value: float = int(text) if self.integer else float(text)
        except ValueError:  # more digits than int() accepts
            value = float("inf")
        below = value <= self.low if self.low_open else value < self.low
        if below or value > self.high:
            raise ValueError(f"{text} is out of range; expected {self.describe()}")
        return value


@dataclass(frozen=True)
class IntRange:
    """An integer-valued :class:`Range` (kept separate so mypy sees ``int``)."""

    range: Range

    def parse(self, text: str) -> int:
        return int(self.range.parse(text))


PORT = IntRange(Range(1, 65535, "a port number", integer=True))
GARP_COUNT = IntRange(Range(1, 100, "a count", integer=True))
INTERVAL = Range(0.01, 60, "seconds")
DEADTIME = Range(0.01, 3600, "seconds")
FAILBACK = Range(0, 3600, "seconds")
GARP_INTERVAL = Range(0.001, 10, "seconds")
SCRIPT_TIMEOUT = Range(0, 3600, "seconds", low_open=True)

_TRUE = frozenset({"yes", "true", "1"})
_FALSE = frozenset({"no", "false", "0"})


def boolean(text: str) -> bool:
    word = text.lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError(f"{text!r} is not a yes/no value; expected yes/no, true/false or 1/0")


def absolute_path(text: str) -> str:
    if not text.startswith("/"):
        raise ValueError(f"{text!r} is not an absolute path; it must start with '/'")
    if not text.isprintable():
        raise ValueError(f"{text!r} contains control characters")
    return text


def node_name(text: str) -> str:
    # The name goes on the wire and from there into scripts' environments and mail subjects.
    if len(text) > _NAME_MAX_BYTES:
        raise ValueError(f"is longer than {_NAME_MAX_BYTES} characters")
    if not wire.NAME.fullmatch(text):
        raise ValueError(f"{text!r} has characters other than {wire.NAME_CHARS}")
    return text


def node_name_problem(name: str) -> str | None:
    """Why ``name`` (e.g. the host name, FAILOVER_NODE_NAME's default) cannot be a node name."""
    try:
        node_name(name)
    except ValueError as e:
        return str(e)
    return None


def _split_list(text: str, what: str, parse: Callable[[str], T]) -> tuple[T, ...]:
    """Parse each whitespace-separated token; report every bad token and every repeat."""
    items: list[T] = []
    seen: set[T] = set()  # a set: 40k targets took two minutes with ``item in items``
    problems: list[str] = []
    for token in text.split():
        try:
            item = parse(token)
        except ValueError as exc:
            problems.append(str(exc))
            continue
        if item in seen:
            problems.append(f"{token!r} is listed twice")
        seen.add(item)
        items.append(item)
    if problems:
        raise ValueError("; ".join(problems))
    if not items:
        raise ValueError(f"no {what} given")
    return tuple(items)


def targets(text: str) -> tuple[IPAddress, ...]:
    return _split_list(text, "address", _target)


def _target(token: str) -> IPAddress:
    hint = " (separate addresses with spaces)" if "," in token else ""
    address = _ip_literal(token, hint)
    if address.is_unspecified:
        raise ValueError(f"{token!r} is the unspecified address")
    return address


def peer_ip(text: str) -> IPAddress:
    if len(text.split()) != 1:
        raise ValueError(f"{text!r}: expected exactly one address")
    address = _ip_literal(text.strip())
    if address.is_unspecified or address.is_multicast:
        raise ValueError(f"{text!r} cannot be a peer's address")
    return address


def peer_pairs(text: str) -> tuple[PeerPair, ...]:
    pairs: list[PeerPair] = []
    problems: list[str] = []
    for token in text.split():
        try:
            pairs.append(parse_peer_pair(token))
        except ValueError as exc:
            problems.append(f"{token}: {exc}")
    seen: set[IPAddress] = set()
    for pair in pairs:
        if pair.address in seen:
            problems.append(f"{pair.address} appears in more than one pair")
        seen.add(pair.address)
    if problems:
        raise ValueError("; ".join(problems))
    if not pairs:
        raise ValueError("no interface:address pair given")
    return tuple(pairs)


def interfaces(text: str) -> tuple[str, ...]:
    def check(token: str) -> str:
        _check_interface(token)
        return token

    return _split_list(text, "interface", check)


_EMAIL = re.compile(r"[^@\s,]+@[^@\s,]+")


def recipients(text: str) -> tuple[str, ...]:
    items = [item for item in re.split(r"[\s,]+", text) if item]
    bad = [item for item in items if not _EMAIL.fullmatch(item) or not item.isprintable()]
    if bad:
        listed = ", ".join(repr(item) for item in bad)
        raise ValueError(f"{listed}: expected user@domain, separated by spaces or commas")
    if not items:
        raise ValueError("no address given")
    return tuple(items)


def smtp_server(text: str) -> str:
    return _join_host_port(*split_host_port(text, 25))


def metrics(text: str) -> str:
    if text.isdigit():
        raise ValueError(
            f"{text!r} is a port alone; expected host:port, e.g. 127.0.0.1:{text} or [::1]:{text}"
        )
    return _join_host_port(*split_host_port(text, None))


def _join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _port_part(text: str | None, default: int | None) -> int:
    if text is None:
        if default is None:
            raise ValueError("a port is required: host:port or [IPv6]:port")
        return default
    return PORT.parse(text)


_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


def _check_host_name(host: str) -> None:
    """Accept an IPv4 literal or a DNS name (labels of letters, digits, '-' and '_')."""
    if re.fullmatch(r"[0-9.]+", host):
        _ip_literal(host)  # all digits and dots: must be a valid IPv4 address
        return
    labels = host[:-1].split(".") if host.endswith(".") else host.split(".")
    if len(host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"{host!r} is not a host name or IP address")


# --------------------------------------------------------------------------- addresses


def _ip_literal(text: str, hint: str = "") -> IPAddress:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address{hint}") from None


def _ipv6_literal(text: str) -> ipaddress.IPv6Address:
    try:
        return ipaddress.IPv6Address(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an IPv6 address (brackets are for IPv6)") from None


def _mask_to_prefix(address: IPAddress, mask: str) -> int:
    """A prefix length from ``24``/``64`` or, for IPv4, a dotted netmask like ``255.255.255.0``."""
    if re.fullmatch(r"[0-9]{1,3}", mask):
        return int(mask)
    if address.version == 4 and "." in mask:
        try:
            bits = int(ipaddress.IPv4Address(mask))
        except ValueError:
            raise ValueError(f"mask {mask!r} is not a dotted netmask") from None
        host_bits = bits ^ 0xFFFFFFFF
        if host_bits & (host_bits + 1):
            raise ValueError(f"netmask {mask} is not contiguous")
        return 32 - host_bits.bit_length()
    expected = "a prefix length or dotted netmask" if address.version == 4 else "a prefix length"
    raise ValueError(f"mask {mask!r} is not {expected}")


def _check_prefix(address: IPAddress, prefixlen: int) -> None:
    """Prefix in 1..max, and for IPv4 subnets of 4+ addresses not the network/broadcast one."""
    top = address.max_prefixlen
    if not 1 <= prefixlen <= top:
        raise ValueError(f"prefix length /{prefixlen} is out of range; expected /1 to /{top}")
    if address.version == 4 and prefixlen <= 30:
        network = ipaddress.ip_network(f"{address}/{prefixlen}", strict=False)
        if address in (network.network_address, network.broadcast_address):
            kind = "network" if address == network.network_address else "broadcast"
            raise ValueError(f"{address} is the {kind} address of {network}")


def _check_assignable(address: IPAddress) -> None:
    """Refuse addresses that make no sense to move between hosts."""
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        raise ValueError(f"{address}: no %zone here; the interface comes before the colon")
    kinds = (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("multicast", address.is_multicast),
        ("link-local", address.is_link_local),
        ("reserved", address.is_reserved),
    )
    for kind, applies in kinds:
        if applies:
            raise ValueError(f"{address} is a {kind} address and cannot be taken over")


def _check_interface(name: str) -> None:
    """Linux's rules for interface names: 1..15 bytes, no '/', ':' or whitespace."""
    size = len(name.encode("utf-8", "surrogatepass"))
    if not 1 <= size <= _IFNAME_MAX_BYTES:
        raise ValueError(f"interface name {name!r} must be 1 to {_IFNAME_MAX_BYTES} bytes")
    if name in (".", ".."):
        raise ValueError(f"interface name {name!r} is not allowed")
    if any(char in "/:" or char.isspace() or not char.isprintable() for char in name):
        raise ValueError(
            f"interface name {name!r} contains '/', ':', whitespace or a control character"
        )
