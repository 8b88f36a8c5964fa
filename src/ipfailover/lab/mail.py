"""The lab's mail sink: a local SMTP server (aiosmtpd) in the secondary's namespace.

failoverd mails every takeover, hand-back and anomaly to ``FAILOVER_SMTP_SERVER``, localhost:25
by default. In the lab nothing listened there, and the timeline filled with "connection refused"
retries. ``python -m ipfailover.lab.mail`` listens on 127.0.0.1 and ::1, port 25, accepts every
mail, and logs one ``event=mail-received`` line per mail (sender, recipients, subject), which the
lab shows in its timeline like the daemons' own events.

aiosmtpd is the ``lab`` extra (``pip install 'ipfailover[lab]'``, Debian's python3-aiosmtpd).
Without it the lab runs as before, and says the mails stay spooled.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email
import email.policy
import signal
import sys
from typing import Any

from ipfailover.shell.runtime import format_event

READY = "smtp-sink-ready"


class _Handler:
    """aiosmtpd handler: log the mail, accept it."""

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        line = format_event(
            "mail-received",
            sender=envelope.mail_from,
            to=" ".join(envelope.rcpt_tos),
            subject=str(message.get("Subject", "")),
        )
        print(line, flush=True)
        return "250 OK"


async def serve(port: int) -> int:
    from aiosmtpd.smtp import SMTP

    loop = asyncio.get_running_loop()
    handler = _Handler()
    servers = []
    for host in ("127.0.0.1", "::1"):
        with contextlib.suppress(OSError):  # no IPv6 in this namespace: IPv4 alone will do
            servers.append(
                await loop.create_server(lambda: SMTP(handler, hostname="lab-sink"), host, port)
            )
    if not servers:
        print(format_event("smtp-sink-error", error=f"cannot listen on port {port}"), flush=True)
        return 2
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(format_event(READY, port=port), flush=True)
    await stop.wait()
    for server in servers:
        server.close()
    return 0


def available() -> bool:
    """Whether aiosmtpd is installed (the sink can run)."""
    try:
        import aiosmtpd.smtp  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ipfailover.lab.mail", description=__doc__)
    p.add_argument("--port", type=int, default=25)
    args = p.parse_args(argv)
    if not available():
        print("labmail: aiosmtpd is not installed (pip install 'ipfailover[lab]')", file=sys.stderr)
        return 2
    return asyncio.run(serve(args.port))


if __name__ == "__main__":
    sys.exit(main())
