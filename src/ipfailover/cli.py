"""ipfailover: the admin's command (keygen, lab, and the helpers Apple shipped as tools)."""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from collections.abc import Callable

from ipfailover import __version__
from ipfailover.core import auth

Handler = Callable[[argparse.Namespace], int]
EXIT_USAGE = 2  # a local problem: one line says what to fix


def keygen(args: argparse.Namespace) -> int:
    """Write a new 256-bit shared key, readable by its owner only."""
    path: str = args.path
    where = f"ipfailover keygen: {path}"
    if os.path.isdir(path):
        print(
            f"{where} is a directory; give a file name, e.g. {path.rstrip('/')}/key",
            file=sys.stderr,
        )
        return EXIT_USAGE
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_TRUNC if args.force else os.O_EXCL)
    parent = os.path.dirname(path)
    try:
        if parent and not os.path.isdir(parent):
            os.makedirs(parent, mode=0o700, exist_ok=True)
        fd = os.open(path, flags, 0o600)
    except FileExistsError as e:
        if e.filename is not None and os.path.normpath(e.filename) != os.path.normpath(path):
            print(f"{where}: {e.filename} is not a directory", file=sys.stderr)
        else:
            print(f"{where} exists; use --force to replace it", file=sys.stderr)
        return EXIT_USAGE
    except PermissionError as e:
        print(
            f"{where}: {e.filename or path}: permission denied (run as root, or pick a "
            "writable path)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    except OSError as e:
        print(f"{where}: {e.filename or path}: {e.strerror}", file=sys.stderr)
        return EXIT_USAGE
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(auth.format_key(secrets.token_bytes(32)))
    print(f"wrote {path}; copy it to the peer (mode 0600) and set FAILOVER_KEY_FILE to it")
    return 0


NOT_WRITTEN = (
    "nothing was written: the file exists (use --force), or the path is a directory or not writable"
)


class HelpFormatter(argparse.HelpFormatter):
    """Wraps one-paragraph text as usual; keeps text with line breaks (the epilogs) as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def exit_status(*codes: tuple[str, str]) -> str:
    """An ``exit status:`` epilog, one line per code, as every --help and man page lists them."""
    return "exit status:\n" + "".join(f"  {code:<3}  {text}\n" for code, text in codes)


def plain_text(rst: str) -> str:
    """A docstring paragraph for --help: RST's ``literal`` quotes dropped, lines re-flowed."""
    return " ".join(rst.replace("``", "").split())


def build_parser() -> argparse.ArgumentParser:
    from ipfailover.lab import cli as lab
    from ipfailover.tools import check, process, status, units

    p = argparse.ArgumentParser(
        prog="ipfailover",
        description="IP failover for Linux, in the manner of Mac OS X Server's IP Failover.",
        epilog="exit status: each command's --help lists its own; 2 is always a usage or\n"
        "configuration problem, reported in one line that says what to fix.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    k = sub.add_parser(
        "keygen",
        help="write a new shared key file",
        description=keygen.__doc__,
        epilog=exit_status(("0", "the key was written"), ("2", NOT_WRITTEN)),
        formatter_class=HelpFormatter,
    )
    k.add_argument("path", nargs="?", default="/etc/ipfailover/key", help="default: %(default)s")
    k.add_argument("--force", action="store_true", help="replace an existing file")
    k.set_defaults(handler=keygen)

    lb = sub.add_parser(
        "lab",
        help="run a live failover demo in throwaway network namespaces (root)",
        description="Build a lab of network namespaces (primary, secondary, client, two "
        "networks), run the real daemons, pull and restore the primary's cables, stop it "
        "gracefully, and print the measured failover and failback times.",
        epilog=exit_status(
            ("0", "every phase of every run was measured"),
            ("1", "a phase could not be measured (the timeline says why)"),
            ("2", "the lab cannot run: not root, a tool missing, a bad option"),
            ("130", "interrupted; the lab was torn down"),
        ),
        formatter_class=HelpFormatter,
    )
    lab.configure_parser(lb)
    lb.set_defaults(handler=lab.run)

    st = sub.add_parser(
        "status",
        help="show what the running daemons see (exit 3 if none is running)",
        description="Ask heartbeatd and failoverd over their control sockets and show role, "
        "state, per-network heartbeats and loss, addresses, transitions, pending mail and "
        "rejected datagrams. The --json form is documented in docs/status.md.",
        epilog=exit_status(
            ("0", "at least one daemon answered"),
            ("2", "the --config file has errors (its FAILOVER_RUN_DIR is unknown)"),
            ("3", "no daemon answered (none is running)"),
            ("4", "permission denied on the control sockets: run as root"),
        ),
        formatter_class=HelpFormatter,
    )
    status.configure_parser(st)
    st.set_defaults(handler=status.run)

    pr = sub.add_parser(
        "process",
        help="take addresses over or hand them back by hand (Apple's ProcessFailover)",
        epilog=exit_status(
            ("0", "done"),
            ("1", "the Test script declined, or an address change failed"),
            ("2", "bad arguments or configuration"),
            ("3", "a running failoverd (or another process run) manages those addresses"),
        ),
        formatter_class=HelpFormatter,
    )
    process.configure_process_parser(pr)
    pr.set_defaults(handler=process.run_process)

    nt = sub.add_parser(
        "notify",
        help="send a failover mail (Apple's NotifyFailover)",
        epilog=exit_status(
            ("0", "the mail server accepted the mail"),
            ("1", "it did not (nothing is spooled: retry if you want)"),
            ("2", "bad arguments or configuration"),
        ),
        formatter_class=HelpFormatter,
    )
    process.configure_notify_parser(nt)
    nt.set_defaults(handler=process.run_notify)

    ck = sub.add_parser(
        "check",
        help="validate the configuration, key, interfaces and scripts, touching nothing",
        description=plain_text(check.__doc__.split("\n\n")[0]) if check.__doc__ else None,
        epilog=exit_status(
            ("0", "nothing is wrong"),
            ("1", "warnings only: the daemons start, but something will misbehave"),
            ("2", "errors: a daemon would refuse to start (or the file cannot be read)"),
        ),
        formatter_class=HelpFormatter,
    )
    check.configure_parser(ck)
    ck.set_defaults(handler=check.run)

    cd = sub.add_parser(
        "condition",
        help="exit 0 if a daemon's FAILOVER_* variables are set (the units' ExecCondition)",
        formatter_class=HelpFormatter,
        epilog=exit_status(
            ("0", "ROLE's variables are set (or the file has errors: the daemon reports them)"),
            ("1", "they are not: systemd skips the unit"),
        ),
    )
    units.configure_condition_parser(cd)
    cd.set_defaults(handler=units.run_condition)

    iu = sub.add_parser(
        "install-units",
        help="install the systemd units for both daemons",
        formatter_class=HelpFormatter,
        epilog=exit_status(
            ("0", "the units are in place"),
            ("2", "a program is missing from --bin-dir, or --dest cannot be written"),
        ),
    )
    units.configure_install_parser(iu)
    iu.set_defaults(handler=units.run_install)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except BrokenPipeError:  # `ipfailover status | head`: the reader left; nothing to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
