"""The daemons' UDP endpoint: an IPv4 and an IPv6 socket on one port that report the interface
each datagram came in on, with receiving sockets per watched interface (failoverd)."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import logging
import socket
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ipfailover.core import wire

log = logging.getLogger("ipfailover.daemon")

_IN_PKTINFO = struct.Struct("@i4s4s")  # struct in_pktinfo: ifindex, spec_dst, addr
_IN6_PKTINFO = struct.Struct("@16sI")  # struct in6_pktinfo: addr, ifindex
IPV6_RECVPKTINFO = getattr(socket, "IPV6_RECVPKTINFO", 49)
IPV6_PKTINFO = getattr(socket, "IPV6_PKTINFO", 50)
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)


@dataclass
class Datagram:
    data: bytes
    addr: wire.Addr
    ifname: str


RCVBUF = 1 << 20  # bytes of receive buffer per socket: about 1000 queued datagrams
DRAIN_BATCH = 64  # datagrams read from one socket per event-loop iteration


class UdpEndpoint:
    """An IPv4 and an IPv6 UDP socket on one port, reporting the interface each datagram came in on.

    The receiving interface is what names a network: it comes from the kernel (IP_PKTINFO /
    IPV6_PKTINFO), never from the payload.

    With ``per_device`` and :meth:`bind_devices` (failoverd, for the networks it watches), each
    of those interfaces also gets receiving sockets of its own (SO_BINDTODEVICE): the kernel
    queues each network's datagrams apart, and the event loop reads at most DRAIN_BATCH from
    each socket per turn. So
    a flood on one network cannot push the other networks' heartbeats out of a shared queue,
    nor keep them from being read. Unicast to such an interface reaches only its own socket;
    a broadcast reaches the wildcard socket too, which then ignores it. Sending always goes
    through the wildcard sockets.
    """

    def __init__(
        self,
        port: int,
        *,
        broadcast: bool = False,
        families: Iterable[int] = (),
        per_device: bool = False,
    ) -> None:
        self.socks: dict[int, socket.socket] = {}
        for family in families or (socket.AF_INET, socket.AF_INET6):
            try:
                sock = socket.socket(family, socket.SOCK_DGRAM)
            except OSError as e:
                if family == socket.AF_INET6 and e.errno == errno.EAFNOSUPPORT:
                    log.warning("IPv6 is disabled on this host: listening on IPv4 only")
                    continue
                raise
            try:
                _prepare(sock, family, port, broadcast, reuse_port=per_device)
            except OSError:
                sock.close()
                raise
            self.socks[family] = sock
        self.port = port
        self._names: dict[int, str] = {}
        self.send_errors = 0
        self.last_send_error = ""  # strerror of the latest failed send
        # destination IP -> where to send instead, as a socket address without the port;
        # see netif.unicast_substitute
        self.redirects: dict[str, tuple[Any, ...]] = {}
        self.devices: dict[tuple[int, str], socket.socket] = {}  # (family, ifname) -> socket
        self._bound: set[int] = set()  # ifindexes with sockets of their own
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_datagram: Callable[[Datagram], None] | None = None

    def start(
        self, loop: asyncio.AbstractEventLoop, on_datagram: Callable[[Datagram], None]
    ) -> None:
        self._loop, self._on_datagram = loop, on_datagram
        for sock in [*self.socks.values(), *self.devices.values()]:
            loop.add_reader(sock.fileno(), self._drain, sock, on_datagram)

    def close(self) -> None:
        for sock in [*self.socks.values(), *self.devices.values()]:
            self._forget(sock)
        self.devices.clear()

    def _forget(self, sock: socket.socket) -> None:
        if self._loop is not None:
            with contextlib.suppress(RuntimeError, ValueError):
                self._loop.remove_reader(sock.fileno())
        sock.close()

    def bind_devices(self, ifnames: Iterable[str]) -> list[str]:
        """Give each of these interfaces receiving sockets of its own (and drop those of
        interfaces no longer listed). Returns the problems, one line each: an interface that
        cannot have its own socket is still read through the wildcard socket."""
        wanted = set(ifnames)
        for key in [k for k in self.devices if k[1] not in wanted]:
            self._forget(self.devices.pop(key))
        problems = []
        for family in self.socks:
            for name in sorted(wanted):
                if (family, name) in self.devices:
                    continue
                sock = socket.socket(family, socket.SOCK_DGRAM)
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, name.encode())
                    _prepare(sock, family, self.port, broadcast=False, reuse_port=True)
                except OSError as e:
                    sock.close()
                    problems.append(f"{name}: {e.strerror or e}")
                    continue
                self.devices[(family, name)] = sock
                if self._loop is not None and self._on_datagram is not None:
                    self._loop.add_reader(sock.fileno(), self._drain, sock, self._on_datagram)
        bound = set()
        for name in {n for _, n in self.devices}:
            with contextlib.suppress(OSError):
                bound.add(socket.if_nametoindex(name))
        if bound != self._bound:
            for sock in self.socks.values():
                _drop_from(sock, bound)
        self._bound = bound
        return problems

    def _ifname(self, index: int) -> str:
        if index not in self._names:
            try:
                self._names[index] = socket.if_indextoname(index)
            except OSError:
                return f"if{index}"
        return self._names[index]

    def _drain(self, sock: socket.socket, on_datagram: Callable[[Datagram], None]) -> None:
        wildcard = sock in self.socks.values()
        for _ in range(DRAIN_BATCH):  # bounded per wake-up so timers are never starved
            try:
                data, anc, _flags, addr = sock.recvmsg(wire.MAX_SIZE + 1, 256)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # e.g. ICMP port unreachable reported on the socket; nothing to read
            index = 0
            for level, kind, payload in anc:
                if level == socket.IPPROTO_IP and kind == IP_PKTINFO:
                    index = _IN_PKTINFO.unpack_from(payload)[0]
                elif level == socket.IPPROTO_IPV6 and kind == IPV6_PKTINFO:
                    index = _IN6_PKTINFO.unpack_from(payload)[1]
            if wildcard and index in self._bound:
                continue  # a broadcast copy: that interface's own socket has it too
            on_datagram(Datagram(data, (addr[0], addr[1]), self._ifname(index)))

    def sendto(self, data: bytes, addr: wire.Addr) -> bool:
        family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
        sock = self.socks.get(family)
        if sock is None:
            self.send_errors += 1
            return False
        sub = self.redirects.get(addr[0])
        dest: tuple[Any, ...] = addr if sub is None else (sub[0], addr[1], *sub[1:])
        try:
            sock.sendto(data, dest)
            return True
        except OSError as e:
            self.send_errors += 1  # link down, no route: the peer will notice the silence
            self.last_send_error = e.strerror or str(e)
            return False


SO_ATTACH_FILTER = 26
SO_DETACH_FILTER = 27
SKF_AD_IFINDEX = -0x1000 + 8  # classic BPF: load the receiving interface's index


def _drop_from(sock: socket.socket, ifindexes: Iterable[int]) -> None:
    """Have the kernel drop, on a wildcard socket, what arrives on these interfaces (they have
    sockets of their own, which get a copy): without it every broadcast heartbeat is read twice,
    once only to be ignored. _drain still ignores such a copy should the filter be missing."""
    indexes = sorted(ifindexes)[:64]
    if not indexes:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, SO_DETACH_FILTER, 0)
        return
    n = len(indexes)
    program = [(0x20, 0, 0, SKF_AD_IFINDEX & 0xFFFFFFFF)]  # ld ifindex
    for i, index in enumerate(indexes):  # jeq index: drop, else next
        program.append((0x15, n - i, 0, index))
    program += [(0x06, 0, 0, 0xFFFF), (0x06, 0, 0, 0)]  # accept; drop
    code = b"".join(struct.pack("HBBI", *insn) for insn in program)
    buf = ctypes.create_string_buffer(code)
    fprog = struct.pack("HP", len(program), ctypes.addressof(buf))
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
    except OSError as e:
        log.warning("cannot filter the wildcard socket (%s): copies are ignored instead", e)


def _prepare(
    sock: socket.socket, family: int, port: int, broadcast: bool, *, reuse_port: bool = False
) -> None:
    """Non-blocking, packet info on, a large receive buffer, bound to the wildcard address."""
    sock.setblocking(False)
    # No SO_REUSEADDR: with it, any local user could bind the same port on a specific
    # address and receive the unicast heartbeats (or challenges) instead of us. SO_REUSEPORT,
    # which the per-interface sockets need to share the port with the wildcard one, lets only
    # sockets of the same user (root) share it, and the kernel groups them per interface, so
    # each datagram still reaches exactly one of them (a broadcast: one per interface).
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:  # as root, past net.core.rmem_max; else as much of it as the limit allows
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
    if family == socket.AF_INET:
        sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        if broadcast:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        sock.bind(("0.0.0.0", port))
    else:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
        sock.bind(("::", port))
