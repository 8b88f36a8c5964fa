"""Probe agents for the failover lab: who answers the service address, and when.

Two small programs, run inside the lab's network namespaces with
``python -m ipfailover.lab.probe responder|client ...``:

* ``responder`` runs on the primary and the secondary.  It answers every UDP
  probe with the node's name and the probe's sequence number.  The reply leaves
  from the address the probe was sent to (IP_PKTINFO / IPV6_PKTINFO), so a
  client talking to the service address always sees the service address answer,
  whichever node holds it.
* ``client`` runs on the client node.  It sends a probe every few milliseconds to
  one address and prints one JSON line per probe outcome on stdout, flushed::

      {"seq": 17, "sent": 12345.678, "who": "primary", "rtt": 0.0004, "src": "203.0.113.10"}

  ``who`` is null when no reply came within the reply timeout.  ``sent`` is
  ``time.monotonic()``: CLOCK_MONOTONIC is shared by all network namespaces, so
  the orchestrator can put these times on one axis with its own actions.
  Outcomes are printed when known, so a lost probe appears one reply timeout
  after later answered ones; readers sort by ``sent`` when order matters.

The wire format is one small JSON object per datagram; this is a test tool, not
part of the product.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import selectors
import signal
import socket
import struct
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import FrameType
from typing import TextIO

PROBE_PORT = 7007
"""UDP port the responders listen on by default."""

# Linux's IP_PKTINFO; Python 3.11's socket module does not export it.
_IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
_MAX_DATAGRAM = 2048
_ANC_SPACE = socket.CMSG_SPACE(64)


@dataclass(frozen=True, slots=True)
class Probe:
    """One probe outcome as printed by the client (one JSON line)."""

    seq: int
    sent: float
    who: str | None
    rtt: float | None
    src: str | None = None
    error: str | None = None

    def to_json(self) -> str:
        """Serialise as the client's output line (without the newline)."""
        record: dict[str, object] = {
            "seq": self.seq,
            "sent": round(self.sent, 6),
            "who": self.who,
            "rtt": None if self.rtt is None else round(self.rtt, 6),
        }
        if self.src is not None:
            record["src"] = self.src
        if self.error is not None:
            record["error"] = self.error
        return json.dumps(record, separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str) -> Probe:
        """Parse one client output line; raises ValueError on a malformed one."""
        try:
            record = json.loads(line)
            return cls(
                seq=int(record["seq"]),
                sent=float(record["sent"]),
                who=None if record["who"] is None else str(record["who"]),
                rtt=None if record.get("rtt") is None else float(record["rtt"]),
                src=record.get("src"),
                error=record.get("error"),
            )
        except (KeyError, TypeError, json.JSONDecodeError) as exc:
            raise ValueError(f"not a probe record: {line!r}") from exc


class _Stop:
    """A flag set by SIGTERM/SIGINT so the agents' loops end cleanly."""

    def __init__(self) -> None:
        self.requested = False
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True


# --- responder -------------------------------------------------------------


def _responder_sockets(ports: Sequence[int]) -> list[socket.socket]:
    """Bind one IPv4 and one IPv6-only socket per port, both asking for pktinfo."""
    socks: list[socket.socket] = []
    for port in ports:
        v4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        v4.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        v4.setsockopt(socket.IPPROTO_IP, _IP_PKTINFO, 1)
        v4.bind(("0.0.0.0", port))
        v6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        v6.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
        v6.bind(("::", port))
        socks += [v4, v6]
    return socks


def _reply_ancillary(
    ancdata: list[tuple[int, int, bytes]],
) -> list[tuple[int, int, bytes]]:
    """Turn the received pktinfo into the ancillary data that sets the reply's source.

    The reply must come from the address the probe was sent to (the service
    address), not from whatever source address routing would pick.
    """
    for level, kind, data in ancdata:
        if level == socket.IPPROTO_IP and kind == _IP_PKTINFO and len(data) >= 12:
            _ifindex, _spec_dst, dst = struct.unpack("@i4s4s", data[:12])
            return [(socket.IPPROTO_IP, _IP_PKTINFO, struct.pack("@i4s4s", 0, dst, bytes(4)))]
        if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO and len(data) >= 20:
            dst6, ifindex = struct.unpack("@16sI", data[:20])
            return [(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, struct.pack("@16sI", dst6, ifindex))]
    return []


def _answer(sock: socket.socket, name: str) -> None:
    """Read one probe from sock and answer it; malformed probes are ignored."""
    try:
        data, ancdata, _flags, addr = sock.recvmsg(_MAX_DATAGRAM, _ANC_SPACE)
        request = json.loads(data)
        reply = {"seq": int(request["seq"]), "c": request.get("c"), "who": name}
    except (OSError, ValueError, KeyError, TypeError):
        return
    payload = json.dumps(reply, separators=(",", ":")).encode()
    try:
        sock.sendmsg([payload], _reply_ancillary(ancdata), 0, addr)
    except OSError as exc:  # e.g. the address was just released; the probe is lost
        print(f"labprobe: event=reply-failed error={exc.strerror!r}", file=sys.stderr, flush=True)


def run_responder(name: str, ports: Sequence[int]) -> int:
    """Answer probes on every port until SIGTERM/SIGINT."""
    stop = _Stop()
    socks = _responder_sockets(ports)
    sel = selectors.DefaultSelector()
    for sock in socks:
        sel.register(sock, selectors.EVENT_READ)
    print(
        f"labprobe: event=start role=responder name={name} ports={','.join(map(str, ports))}",
        file=sys.stderr,
        flush=True,
    )
    while not stop.requested:
        for key, _mask in sel.select(timeout=0.5):
            _answer(key.fileobj, name)  # type: ignore[arg-type]
    for sock in socks:
        sock.close()
    return 0


# --- client ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClientOptions:
    """What the client probes, how often, and for how long."""

    target: str
    port: int = PROBE_PORT
    interval: float = 0.01  # seconds between probes
    reply_timeout: float = 0.5  # a probe without a reply by then counts as lost
    duration: float = 600.0  # upper bound on the run, in seconds
    watch_stdin: bool = False  # stop when stdin reaches EOF


class ProbeClient:
    """Send numbered probes on a schedule and report each one's outcome."""

    def __init__(self, options: ClientOptions, out: TextIO) -> None:
        self.options = options
        self.out = out
        family = (
            socket.AF_INET6 if ipaddress.ip_address(options.target).version == 6 else socket.AF_INET
        )
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.token = f"{time.monotonic_ns():x}"
        self.pending: dict[int, float] = {}
        self.seq = 0

    def send_next(self) -> None:
        """Send the next probe; a send error is reported at once as a lost probe."""
        seq, now = self.seq, time.monotonic()
        self.seq += 1
        payload = json.dumps({"seq": seq, "c": self.token}, separators=(",", ":")).encode()
        try:
            self.sock.sendto(payload, (self.options.target, self.options.port))
        except OSError as exc:
            self.emit(Probe(seq, now, None, None, error=exc.strerror or str(exc)))
            return
        self.pending[seq] = now

    def receive(self) -> None:
        """Drain every queued reply and report the ones that match a pending probe."""
        while True:
            try:
                data, addr = self.sock.recvfrom(_MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # an ICMP error queued on the socket; the probe will time out
                continue
            now = time.monotonic()
            try:
                reply = json.loads(data)
                seq, who = int(reply["seq"]), str(reply["who"])
            except (ValueError, KeyError, TypeError):
                continue
            if reply.get("c") != self.token or seq not in self.pending:
                continue  # late (already reported lost) or not ours
            sent = self.pending.pop(seq)
            self.emit(Probe(seq, sent, who, now - sent, src=addr[0]))

    def expire(self, now: float) -> None:
        """Report every probe whose reply timeout has passed as lost."""
        limit = now - self.options.reply_timeout
        for seq, sent in sorted(self.pending.items()):
            if sent <= limit:
                del self.pending[seq]
                self.emit(Probe(seq, sent, None, None))

    def emit(self, probe: Probe) -> None:
        """Write one outcome line and flush: the orchestrator reads live."""
        self.out.write(probe.to_json() + "\n")
        self.out.flush()

    def run(self, stop: _Stop) -> int:
        """Probe until the duration ends, a signal arrives or stdin closes."""
        opts = self.options
        sel = selectors.DefaultSelector()
        sel.register(self.sock, selectors.EVENT_READ)
        if opts.watch_stdin:
            sel.register(sys.stdin, selectors.EVENT_READ)
        start = time.monotonic()
        next_send = start
        while not stop.requested and time.monotonic() - start < opts.duration:
            now = time.monotonic()
            if now >= next_send:
                self.send_next()
                # keep the schedule, but never burst to catch up after a stall
                next_send = max(next_send + opts.interval, now)
            for key, _mask in sel.select(timeout=max(0.0, next_send - time.monotonic())):
                if key.fileobj is self.sock:
                    self.receive()
                elif not os.read(sys.stdin.fileno(), 4096):
                    stop.requested = True
            self.expire(time.monotonic())
        self._drain()
        return 0

    def _drain(self) -> None:
        """Give outstanding probes their full reply timeout, then report the rest."""
        deadline = time.monotonic() + self.options.reply_timeout
        while self.pending and time.monotonic() < deadline:
            if select_ready(self.sock, deadline - time.monotonic()):
                self.receive()
        self.expire(float("inf"))


def select_ready(sock: socket.socket, timeout: float) -> bool:
    """True if sock becomes readable within timeout seconds."""
    with selectors.DefaultSelector() as sel:
        sel.register(sock, selectors.EVENT_READ)
        return bool(sel.select(timeout=max(0.0, timeout)))


# --- command line ----------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ipfailover.lab.probe", description=__doc__)
    sub = parser.add_subparsers(dest="role", required=True)
    resp = sub.add_parser("responder", help="answer probes with this node's name")
    resp.add_argument("--name", required=True, help="name to answer with, e.g. primary")
    resp.add_argument(
        "--port", type=int, action="append", help=f"UDP port (repeatable; default {PROBE_PORT})"
    )
    client = sub.add_parser("client", help="probe an address and print outcomes as JSON lines")
    client.add_argument("--target", required=True, help="address to probe (IPv4 or IPv6)")
    client.add_argument("--port", type=int, default=PROBE_PORT)
    client.add_argument("--interval", type=float, default=0.01, help="seconds between probes")
    client.add_argument("--timeout", type=float, default=0.5, help="reply timeout in seconds")
    client.add_argument("--duration", type=float, default=600.0, help="stop after this long")
    client.add_argument("--watch-stdin", action="store_true", help="stop when stdin closes")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point for ``python -m ipfailover.lab.probe``."""
    args = _parser().parse_args(argv)
    if args.role == "responder":
        return run_responder(args.name, args.port or [PROBE_PORT])
    options = ClientOptions(
        target=args.target,
        port=args.port,
        interval=args.interval,
        reply_timeout=args.timeout,
        duration=args.duration,
        watch_stdin=args.watch_stdin,
    )
    stop = _Stop()
    return ProbeClient(options, sys.stdout).run(stop)


if __name__ == "__main__":
    sys.exit(main())
