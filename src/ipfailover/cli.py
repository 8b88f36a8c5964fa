"""ipfailover: the admin's command (keygen, lab, and the helpers Apple shipped as tools)."""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from collections.abc import Callable

from . import __version__, auth

Handler = Callable[[argparse.Namespace], int]


def keygen(args: argparse.Namespace) -> int:
    """Write a new 256-bit shared key, readable by its owner only."""
    path: str = args.path
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if args.force else os.O_EXCL)
    parent = os.path.dirname(path)
    if parent and not os.path.isdir(parent):
        os.makedirs(parent, mode=0o700, exist_ok=True)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        print(f"ipfailover keygen: {path} exists; use --force to replace it", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"ipfailover keygen: {path}: {e.strerror}", file=sys.stderr)
        return 1
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(auth.format_key(secrets.token_bytes(32)))
    print(f"wrote {path}; copy it to the peer (mode 0600) and set FAILOVER_KEY_FILE to it")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import check, lab, process, status, units

    p = argparse.ArgumentParser(
        prog="ipfailover",
        description="IP failover for Linux, in the manner of Mac OS X Server's IP Failover.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    k = sub.add_parser("keygen", help="write a new shared key file", description=keygen.__doc__)
    k.add_argument("path", nargs="?", default="/etc/ipfailover/key", help="default: %(default)s")
    k.add_argument("--force", action="store_true", help="replace an existing file")
    k.set_defaults(handler=keygen)

    lb = sub.add_parser(
        "lab",
        help="run a live failover demo in throwaway network namespaces (root)",
        description="Build a lab of network namespaces (primary, secondary, client, two "
        "networks), run the real daemons, pull and restore the primary's cables, stop it "
        "gracefully, and print the measured failover and failback times.",
    )
    lab.configure_parser(lb)
    lb.set_defaults(handler=lab.run)

    st = sub.add_parser(
        "status",
        help="show what the running daemons see (exit 3 if none is running)",
        description="Ask heartbeatd and failoverd over their control sockets and show role, "
        "state, per-network heartbeats and loss, addresses, transitions, pending mail and "
        "rejected datagrams. The --json form is documented in docs/status.md.",
    )
    status.configure_parser(st)
    st.set_defaults(handler=status.run)

    pr = sub.add_parser(
        "process", help="take addresses over or hand them back by hand (Apple's ProcessFailover)"
    )
    process.configure_process_parser(pr)
    pr.set_defaults(handler=process.run_process)

    nt = sub.add_parser("notify", help="send a failover mail (Apple's NotifyFailover)")
    process.configure_notify_parser(nt)
    nt.set_defaults(handler=process.run_notify)

    ck = sub.add_parser(
        "check",
        help="validate the configuration, key, interfaces and scripts, touching nothing",
        description=check.__doc__.split("\n\n")[0] if check.__doc__ else None,
    )
    check.configure_parser(ck)
    ck.set_defaults(handler=check.run)

    cd = sub.add_parser(
        "condition",
        help="exit 0 if a daemon's FAILOVER_* variables are set (the units' ExecCondition)",
    )
    units.configure_condition_parser(cd)
    cd.set_defaults(handler=units.run_condition)

    iu = sub.add_parser("install-units", help="install the systemd units for both daemons")
    units.configure_install_parser(iu)
    iu.set_defaults(handler=units.run_install)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
