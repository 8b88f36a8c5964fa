"""Adding and deleting many addresses at once: one netlink socket, requests pipelined.

A takeover of 1,024 addresses must not cost 1,024 netlink sessions and round trips. An
:class:`AddressBatch` encodes the RTM_NEWADDR and RTM_DELADDR requests of its addresses once, with
pyroute2's ``ifaddrmsg`` (about 70 us each, when the batch is first used or ``prepare()`` is
called), and a change sends them CHUNK at a time on one netlink socket: the kernel carries a
chunk out within the send, the acknowledgements are then read back (one per request, matched by
sequence number) and the event loop gets a turn before the next chunk, so heartbeats and
challenges keep their schedule during the burst.

The outcome per address is what :func:`ipfailover.shell.netif.add` and ``delete`` report: True
(changed), False (already so), or a :class:`~ipfailover.shell.netif.NetifError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from ipfailover.shell import netif
from ipfailover.shell.netif import Assignment, NetifError

log = logging.getLogger("ipfailover.netif")

CHUNK = 64  # requests per send (a few milliseconds of kernel work), then the loop gets a turn
NETLINK_ROUTE = 0
NETLINK_CAP_ACK = 10  # acknowledgements without a copy of the request
NLMSG_ERROR = 2
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400
RTM_NEWADDR, RTM_DELADDR = 20, 21
_HEADER = struct.Struct("=IHHII")  # struct nlmsghdr: length, type, flags, seq, pid
_SEQ = itertools.count(1)
RCVBUF = 1 << 20


Outcome = bool | NetifError
OnChunk = Callable[[list[Assignment]], Awaitable[object]]


def _encode(a: Assignment, kind: int) -> bytes:
    """One RTM_NEWADDR or RTM_DELADDR request for ``a`` (sequence number patched in at send)."""
    from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg

    request = netif._add_request(a)
    msg = ifaddrmsg()
    msg["family"] = socket.AF_INET6 if a.address.version == 6 else socket.AF_INET
    msg["prefixlen"] = a.prefixlen
    msg["index"] = a.ifindex
    msg["flags"] = request.get("flags", 0) if kind == RTM_NEWADDR else 0
    msg["scope"] = 0
    attrs = [("IFA_ADDRESS", str(a.address))]
    if a.address.version == 4:
        attrs.insert(0, ("IFA_LOCAL", str(a.address)))
        if kind == RTM_NEWADDR and "broadcast" in request:
            attrs.append(("IFA_BROADCAST", request["broadcast"]))
    msg["attrs"] = attrs
    msg["header"]["type"] = kind
    flags = NLM_F_REQUEST | NLM_F_ACK
    if kind == RTM_NEWADDR:
        flags |= NLM_F_CREATE | NLM_F_EXCL
    msg["header"]["flags"] = flags
    msg.encode()
    return bytes(msg.data)


class AddressBatch:
    """The add and delete requests of a fixed list of addresses, ready to send."""

    def __init__(self, assignments: Sequence[Assignment]) -> None:
        self.assignments = tuple(assignments)
        self._requests: dict[int, list[bytes]] = {}

    def prepare(self) -> None:
        """Encode every request now (else on first use)."""
        for kind in (RTM_NEWADDR, RTM_DELADDR):
            self._encoded(kind)

    def _encoded(self, kind: int) -> list[bytes]:
        if kind not in self._requests:
            self._requests[kind] = [_encode(a, kind) for a in self.assignments]
        return self._requests[kind]

    async def add(self, on_chunk: OnChunk | None = None) -> list[Outcome]:
        """Add every address; per address True (added), False (exactly it was there already),
        or a NetifError (the interface is gone or re-created, or the kernel refused).
        ``on_chunk`` is awaited after each chunk with the addresses it added (the takeover
        announces them at once, while the next chunks are still being added)."""
        out = await self._send(RTM_NEWADDR, self._indexes_ok(), on_chunk)
        exists = [i for i, r in enumerate(out) if r is _EXISTS]
        for i in exists:  # rare (adopting after a restart): tell "there" from "another prefix"
            a = self.assignments[i]
            try:
                there = await netif.present(a)
            except NetifError as e:
                out[i] = e
                continue
            out[i] = (
                False
                if there
                else NetifError(
                    f"cannot add {a}: {a.address} is already on {a.ifname} with another "
                    "prefix length"
                )
            )
        for a, r in zip(self.assignments, out, strict=True):
            if r is True:
                log.debug("added %s", a)
        log.info("added %d of %d addresses", sum(r is True for r in out), len(out))
        return [_final(r) for r in out]

    async def delete(self) -> list[Outcome]:
        """Delete every address; per address True (deleted), False (it was not there), or a
        NetifError. Other addresses are never removed (see :func:`keep_secondaries`)."""
        ok = self._indexes_ok()
        for ifname in sorted({a.ifname for a in self.assignments if a.address.version == 4}):
            problem = keep_secondaries(ifname)
            if problem is not None:  # fall back to one at a time, each checked
                for i, a in enumerate(self.assignments):
                    if a.ifname == ifname and a.address.version == 4 and ok[i] is None:
                        ok[i] = _ONE_BY_ONE
        out = await self._send(RTM_DELADDR, ok)
        for i, r in enumerate(out):
            if r is _ONE_BY_ONE:
                try:
                    out[i] = await netif.delete(self.assignments[i])
                except NetifError as e:
                    out[i] = e
        log.info("deleted %d of %d addresses", sum(r is True for r in out), len(out))
        return [_final(r) for r in out]

    def _indexes_ok(self) -> list[Any]:
        """None for each address whose interface still has its index, else a NetifError."""
        out: list[Any] = []
        names: dict[str, int | None] = {}
        for a in self.assignments:
            if a.ifname not in names:
                try:
                    names[a.ifname] = socket.if_nametoindex(a.ifname)
                except OSError:
                    names[a.ifname] = None
            index = names[a.ifname]
            if index is None:
                out.append(NetifError(f"interface {a.ifname} does not exist (needed for {a})"))
            elif index != a.ifindex:
                out.append(
                    NetifError(
                        f"interface {a.ifname} now has index {index}, not {a.ifindex}"
                        f" (re-created?); resolve {a.address} again"
                    )
                )
            else:
                out.append(None)
        return out

    async def _send(self, kind: int, todo: list[Any], on_chunk: OnChunk | None = None) -> list[Any]:
        """Send the requests of the addresses whose entry in ``todo`` is None; fill in each
        one's outcome. Errors of the socket itself become a NetifError for those addresses."""
        requests = self._encoded(kind)
        wanted = [i for i, t in enumerate(todo) if t is None]
        out = list(todo)
        if not wanted:
            return out
        loop = asyncio.get_running_loop()
        try:
            with _socket() as sock:
                for start in range(0, len(wanted), CHUNK):
                    chunk = wanted[start : start + CHUNK]
                    seqs = {}
                    parts = []
                    for i in chunk:
                        seq = next(_SEQ) & 0xFFFFFFFF
                        seqs[seq] = i
                        data = bytearray(requests[i])
                        struct.pack_into("=I", data, 8, seq)
                        parts.append(bytes(data))
                    sock.send(b"".join(parts))
                    await _read_acks(loop, sock, seqs, out, kind, self.assignments)
                    if on_chunk is not None:
                        await on_chunk([self.assignments[i] for i in chunk if out[i] is True])
                    await asyncio.sleep(0)  # the loop's turn: timers, datagrams
        except OSError as e:
            for i in wanted:
                if out[i] is None:
                    out[i] = NetifError(f"cannot change {self.assignments[i]}: netlink: {e}")
        return out


class _Sentinel:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


def _final(r: Any) -> Outcome:
    return r if isinstance(r, bool | NetifError) else NetifError("netlink: no acknowledgement")


_EXISTS = _Sentinel("exists")
_ONE_BY_ONE = _Sentinel("one-by-one")


def _socket() -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, 33, RCVBUF)  # SO_RCVBUFFORCE
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
    with contextlib.suppress(OSError):
        sock.setsockopt(270, NETLINK_CAP_ACK, 1)  # SOL_NETLINK
    sock.bind((0, 0))
    return sock


async def _read_acks(
    loop: asyncio.AbstractEventLoop,
    sock: socket.socket,
    seqs: dict[int, int],
    out: list[Any],
    kind: int,
    assignments: Sequence[Assignment],
) -> None:
    """Read the acknowledgements of the requests in ``seqs`` (seq -> index) into ``out``."""
    action = "add" if kind == RTM_NEWADDR else "delete"
    deadline = loop.time() + 5.0
    while seqs:
        try:
            data = sock.recv(1 << 16)
        except BlockingIOError:
            if loop.time() > deadline:
                raise TimeoutError("no netlink acknowledgement within 5 s") from None
            ready = loop.create_future()
            loop.add_reader(sock.fileno(), ready.set_result, None)
            try:
                await asyncio.wait_for(ready, max(0.0, deadline - loop.time()))
            finally:
                loop.remove_reader(sock.fileno())
            continue
        offset = 0
        while offset + _HEADER.size <= len(data):
            length, mtype, _flags, seq, _pid = _HEADER.unpack_from(data, offset)
            if length < _HEADER.size:
                break
            if mtype == NLMSG_ERROR and seq in seqs:
                (code,) = struct.unpack_from("=i", data, offset + _HEADER.size)
                i = seqs.pop(seq)
                out[i] = _outcome(-code, action, assignments[i])
            offset += (length + 3) & ~3


def _outcome(code: int, action: str, a: Assignment) -> Any:
    if code == 0:
        return True
    if action == "add" and code == errno.EEXIST:
        return _EXISTS
    if action == "delete" and code == errno.EADDRNOTAVAIL:
        return False
    return NetifError(f"cannot {action} {a}: {os.strerror(code)} (errno {code})")


def keep_secondaries(ifname: str) -> str | None:
    """Before deleting IPv4 addresses on ``ifname`` in a batch: make sure deleting a subnet's
    primary address promotes its secondaries instead of deleting them too (Linux does the latter
    unless ``promote_secondaries`` is set). Enabled if needed and logged; returns a problem
    (then the caller deletes one address at a time, checking each) or None."""
    conf = Path("/proc/sys/net/ipv4/conf")
    knob = conf / ifname / "promote_secondaries"
    try:
        if "1" in (p.read_text().strip() for p in (knob, conf / "all" / "promote_secondaries")):
            return None
        knob.write_text("1\n")
    except OSError as e:
        return f"{knob}: {e}"
    log.warning("enabled %s so that deleting addresses on it keeps their secondaries", knob)
    return None
