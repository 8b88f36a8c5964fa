"""A bounded flood of forged heartbeat datagrams, for the fault lab (issue 8, case 10).

Run it inside a lab namespace::

    ip netns exec NS python -m ipfailover.lab.flood --target 203.0.113.20 --seconds 10

It sends forged HEARTBEATs (a valid header naming ``--name``, random boot id, sequence number
and echoes, and a random 32-byte tag, so every one costs the receiver a full HMAC check) to
``--target``:``--port`` over plain UDP from ``--procs`` processes, for at most ``--seconds``
and at most ``--count`` datagrams in all, at most ``--rate`` per second in all (0: as fast as
it can). At the end it prints one line: datagrams sent, send errors, seconds, and the rate
achieved, as ``event=flood-done sent=N errors=N seconds=S rate=R procs=N`` (the lab's
``key=value`` log format). From Python, :func:`start` runs it in a lab node and :func:`result`
waits for those figures.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import socket
import struct
import sys
import time
from dataclasses import dataclass

from ipfailover.core import auth, wire
from ipfailover.lab.processes import LabProcess
from ipfailover.lab.testbed import Lab
from ipfailover.lab.topology import HEARTBEAT_PORT, Node

_HEADER = struct.Struct("!4sBBBB8sQI")
BATCH = 256  # datagrams between clock reads


def forged(name: str, count: int, seed: int) -> list[bytes]:
    """``count`` distinct forged heartbeats naming ``name``, with random tags."""
    rnd = __import__("random").Random(seed)
    raw = name.encode()
    out = []
    for _ in range(count):
        echoes = rnd.randrange(0, 4)
        head = _HEADER.pack(
            wire.MAGIC,
            wire.VERSION,
            wire.MsgType.HEARTBEAT,
            0,
            len(raw),
            rnd.randbytes(8),
            rnd.randrange(1, 2**63),
            1_000_000,
        )
        body = bytes([echoes]) + rnd.randbytes(8 * echoes)
        out.append(head + raw + body + rnd.randbytes(auth.TAG_SIZE))
    return out


def _sender(
    target: str, port: int, name: str, seconds: float, count: int, rate: float, seed: int, q: object
) -> None:
    """One sending process: at most ``count`` datagrams, ``seconds`` long, ``rate`` per second."""
    family = socket.AF_INET6 if ":" in target else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    payloads = forged(name, 1024, seed)
    n = len(payloads)
    dest = (target, port)
    sent = errors = 0
    began = time.monotonic()
    deadline = began + seconds
    while sent + errors < count:
        now = time.monotonic()
        if now >= deadline:
            break
        if rate > 0 and sent + errors >= rate * (now - began):
            time.sleep(min(0.001, deadline - now))
            continue
        for i in range(min(BATCH, count - sent - errors)):
            try:
                sock.sendto(payloads[i % n], dest)
                sent += 1
            except OSError:  # ENOBUFS and the like: count it and go on
                errors += 1
    sock.close()
    q.put((sent, errors, time.monotonic() - began))  # type: ignore[attr-defined]


@dataclass
class FloodResult:
    """What a flood achieved: datagrams sent, send errors, seconds it lasted."""

    sent: int
    errors: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0


def start(
    lab: Lab,
    node: Node,
    target: str,
    *,
    seconds: float,
    rate: float = 0.0,
    procs: int = 1,
    port: int = HEARTBEAT_PORT,
    name: str = "primary",
    log_name: str = "flood",
) -> LabProcess:
    """Start a flood from ``node`` of the lab at ``target``:``port`` and wait until it runs.

    The lab tracks the process (teardown stops it); :func:`result` waits for its figures.
    """
    argv = [sys.executable, "-m", "ipfailover.lab.flood", "--target", target,
            "--port", str(port), "--name", name, "--seconds", str(seconds),
            "--rate", str(rate), "--procs", str(procs)]  # fmt: skip
    proc = lab.spawn(node, argv, log_name)
    proc.wait_event("flood-start", timeout=10.0)
    return proc


def result(proc: LabProcess, timeout: float) -> FloodResult:
    """Wait (at most ``timeout`` s) for a flood started by :func:`start` to end; its figures."""
    done = proc.wait_event("flood-done", timeout=timeout)
    return FloodResult(
        int(done.fields["sent"]), int(done.fields["errors"]), float(done.fields["seconds"])
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ipfailover.lab.flood", description=__doc__)
    ap.add_argument("--target", required=True)
    ap.add_argument("--port", type=int, default=1694)
    ap.add_argument("--name", default="primary", help="the sender name the forgeries carry")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--count", type=int, default=100_000_000)
    ap.add_argument("--rate", type=float, default=0.0, help="datagrams per second in all; 0: max")
    ap.add_argument("--procs", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    if not 0 < args.seconds <= 3600 or args.procs < 1 or args.procs > 16:
        print("labflood: --seconds must be in (0, 3600] and --procs in 1..16", file=sys.stderr)
        return 2
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    share = args.count // args.procs
    procs = [
        ctx.Process(
            target=_sender,
            args=(
                args.target,
                args.port,
                args.name,
                args.seconds,
                share,
                args.rate / args.procs,
                args.seed + i,
                q,
            ),
            daemon=True,
        )
        for i in range(args.procs)
    ]
    print(f"event=flood-start pid={os.getpid()}", flush=True)
    for p in procs:
        p.start()
    results = [q.get(timeout=args.seconds + 30) for _ in procs]
    for p in procs:
        p.join(5)
    sent = sum(r[0] for r in results)
    errors = sum(r[1] for r in results)
    seconds = max(r[2] for r in results)
    rate = round(sent / seconds) if seconds else 0
    print(
        f"event=flood-done sent={sent} errors={errors} seconds={seconds:.3f} rate={rate} "
        f"procs={args.procs}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
