"""The systemd notification protocol (sd_notify(3)), with the standard library only.

Under a ``Type=notify`` unit, systemd passes the path of a Unix datagram socket in
``$NOTIFY_SOCKET``; a daemon reports its state by sending newline-separated ``KEY=value``
assignments to it: ``READY=1`` once it serves, ``RELOADING=1`` when a reload starts (then
``READY=1`` when it is done), ``STOPPING=1`` when it shuts down, ``WATCHDOG=1`` as a keep-alive,
``STATUS=...`` as a line for ``systemctl status``. A path starting with ``@`` names a socket in the
abstract namespace. The kernel attaches the sender's credentials, which is how systemd checks
``NotifyAccess=main``.

Everything here is a no-op outside systemd (no ``$NOTIFY_SOCKET``), so the daemons call it
unconditionally. A send never raises for trouble on the socket: it returns False, and a daemon
keeps running whether or not the service manager heard it.
"""

from __future__ import annotations

import os
import re
import socket
import time

SEND_TIMEOUT = 0.5  # seconds a send may block if systemd's queue is full; never hangs the loop
_KEY = re.compile(r"[A-Z][A-Z0-9_]*")


def _address(value: str) -> str | None:
    """The socket address for a ``$NOTIFY_SOCKET`` value, or None if it is not a Unix socket."""
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None  # e.g. systemd's "vsock:" form, which this module does not speak


def _format(fields: dict[str, object]) -> bytes:
    """``KEY=value`` lines; a key or value that would corrupt the message is a caller's bug."""
    lines = []
    for key, value in fields.items():
        if not _KEY.fullmatch(key):
            raise ValueError(f"sd_notify field name {key!r} must be upper case, like READY")
        text = str(int(value)) if isinstance(value, bool) else str(value)
        if "\n" in text:
            raise ValueError(f"sd_notify field {key} must be one line, got {text!r}")
        lines.append(f"{key}={text}")
    return ("\n".join(lines) + "\n").encode()


def notify(**fields: object) -> bool:
    """Send ``KEY=value`` fields to systemd; True if the datagram was sent.

    Examples: ``notify(READY=1, STATUS="holding 192.0.2.10")``, ``notify(RELOADING=1)``,
    ``notify(STOPPING=1)``, ``notify(WATCHDOG=1)``. ``RELOADING=1`` gets ``MONOTONIC_USEC`` (the
    CLOCK_MONOTONIC time in microseconds) added unless given, as systemd 253 and later expect.
    Booleans are sent as 1/0. Returns False, without raising, when not under systemd, when
    ``$NOTIFY_SOCKET`` is not a Unix socket address, or when the send fails.
    """
    address = _address(os.environ.get("NOTIFY_SOCKET", ""))
    if address is None:
        return False
    if fields.get("RELOADING") and "MONOTONIC_USEC" not in fields:
        fields["MONOTONIC_USEC"] = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    message = _format(fields)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.settimeout(SEND_TIMEOUT)
            sock.sendto(message, address)
    except OSError:
        return False
    return True


def watchdog_interval() -> float | None:
    """The watchdog timeout systemd expects keep-alives within, in seconds; None if off.

    From ``$WATCHDOG_USEC``, honoured only if ``$WATCHDOG_PID`` is unset or is this process
    (a child that inherited the environment must not feed its parent's watchdog). Send
    ``WATCHDOG=1`` at least twice per interval, as sd_watchdog_enabled(3) advises.
    """
    pid = os.environ.get("WATCHDOG_PID")
    if pid is not None and pid != str(os.getpid()):
        return None
    usec = os.environ.get("WATCHDOG_USEC", "")
    if not re.fullmatch(r"[0-9]+", usec) or int(usec) == 0:
        return None
    return int(usec) / 1_000_000
