"""The systemd side of ipfailover: the units' start condition, and installing the units.

``ipfailover condition ROLE`` is the units' ``ExecCondition=``. It applies the rule of Apple's
``IPFailover`` StartupItem, which started heartbeatd only if ``FAILOVER_BCAST_IPS`` was set in
``/etc/hostconfig``, and failoverd only if ``FAILOVER_PEER_IP`` and ``FAILOVER_PEER_IP_PAIRS``
were. systemd skips a unit cleanly, without marking it failed, when its condition exits 1..254.

``ipfailover install-units`` writes ``heartbeatd.service`` and ``failoverd.service`` to
``/etc/systemd/system`` with their programs pointing at this installation's console scripts.
The unit texts ship inside the package (``ipfailover/systemd/``, the same files as
``packaging/systemd/`` in the source tree), where they name ``/usr/local/bin/``.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import get_args

from ipfailover.core import config

UNIT_NAMES = ("heartbeatd.service", "failoverd.service")
PROGRAMS = ("heartbeatd", "failoverd", "ipfailover")
SHIPPED_BIN = "/usr/local/bin"  # the directory the shipped unit files name
DEFAULT_DEST = Path("/etc/systemd/system")

RUN = 0  # the role is configured: start the daemon
SKIP = 1  # the role is not configured: systemd skips the unit without an error

# An Exec*= line's program, after systemd's optional prefixes (-, +, !, !!, @, :).
_EXEC_PROGRAM = re.compile(
    rf"^(Exec[A-Za-z]+=[-+!@:]*){re.escape(SHIPPED_BIN)}/({'|'.join(PROGRAMS)})(?=\s|$)",
    re.MULTILINE,
)
# Characters that systemd would expand or split in an Exec line (%, $, quotes, whitespace).
_UNSAFE_PATH = re.compile(r"[\s%$\"'\\;]")


# The start condition ----------------------------------------------------------------------------


def condition(role: config.Role, config_path: str) -> int:
    """RUN if ``role``'s variables are set in the config, SKIP if not.

    A config that does not parse (a typo, an unreadable file) also gives RUN: the daemon then
    starts, reports every error and exits 2, so the unit shows as failed. Skipping it would hide
    a broken failover setup behind an inactive unit.
    """
    try:
        cfg = config.load_config(config_path)
    except config.ConfigErrors:
        print(
            f"{config_path} has errors; starting {role} so that it reports them",
            file=sys.stderr,
        )
        return RUN
    problems = config.role_problems(cfg, role)
    if problems:
        missing = " and ".join(p.variable for p in problems)
        print(f"{role} not started: {missing} not set in {config_path}", file=sys.stderr)
        return SKIP
    return RUN


def configure_condition_parser(p: argparse.ArgumentParser) -> None:
    """Add the ``ipfailover condition`` arguments to a (sub)parser."""
    p.description = (
        "Exit 0 if ROLE's variables are set in the config (heartbeatd: FAILOVER_BCAST_IPS; "
        "failoverd: FAILOVER_PEER_IP and FAILOVER_PEER_IP_PAIRS), 1 if not, as Apple's "
        "StartupItem decided. The systemd units run this as ExecCondition=, so an unconfigured "
        "role is skipped without an error. A config with errors exits 0, so that the daemon "
        "starts and reports them."
    )
    p.add_argument(
        "role", choices=get_args(config.Role), metavar="ROLE", help="heartbeatd or failoverd"
    )
    config.add_path_argument(p)


def run_condition(args: argparse.Namespace) -> int:
    """``ipfailover condition``: the exit status is the answer."""
    return condition(args.role, args.config)


# Installing the units ---------------------------------------------------------------------------


class InstallError(Exception):
    """A local problem installing the units; the message says what to fix."""


@dataclass(frozen=True)
class Written:
    """One unit file as install_units handled it."""

    path: Path
    text: str  # the unit as written (or as it would be, in a dry run)
    changed: bool  # False: the file already had exactly this content


def shipped_unit(name: str) -> str:
    """The text of a unit file as shipped, naming programs in /usr/local/bin."""
    return (resources.files("ipfailover") / "systemd" / name).read_text(encoding="utf-8")


def render_unit(text: str, bin_dir: Path) -> str:
    """``text`` with each Exec line's ipfailover program moved from /usr/local/bin to ``bin_dir``.

    Only the programs heartbeatd, failoverd and ipfailover are rewritten; /bin/kill and
    /usr/bin/install stay as they are.
    """
    if not bin_dir.is_absolute() or _UNSAFE_PATH.search(str(bin_dir)):
        raise InstallError(
            f"{bin_dir}: the program directory must be an absolute path without whitespace, "
            "quotes, '%', '$', ';' or '\\' (systemd would expand or split it)"
        )
    return _EXEC_PROGRAM.sub(lambda m: f"{m[1]}{bin_dir}/{m[2]}", text)


def default_bin_dir() -> Path:
    """Where this installation's console scripts are: next to the running interpreter.

    Not resolved: a venv's ``bin/python`` is a symlink to the system interpreter, and the
    console scripts are in the venv.
    """
    return Path(sys.executable).parent


def install_units(
    bin_dir: Path, dest: Path = DEFAULT_DEST, *, dry_run: bool = False
) -> list[Written]:
    """Write both units to ``dest``, their programs in ``bin_dir``; return what was written.

    Each file is replaced atomically (mode 0644). With ``dry_run`` nothing is written, and the
    result says which files would change. Raises InstallError if a program is missing from
    ``bin_dir`` or ``dest`` is not a directory.
    """
    missing = [p for p in PROGRAMS if not os.access(bin_dir / p, os.X_OK)]
    if missing:
        raise InstallError(
            f"{bin_dir}: no executable {', '.join(missing)}; pass the bin directory of the "
            "installation (e.g. --bin-dir /opt/ipfailover/bin)"
        )
    if not dest.is_dir():
        raise InstallError(f"{dest}: not a directory")
    out = []
    for name in UNIT_NAMES:
        text = render_unit(shipped_unit(name), bin_dir)
        path = dest / name
        changed = not path.is_file() or path.read_text(encoding="utf-8") != text
        if changed and not dry_run:
            _write_atomically(path, text)
        out.append(Written(path, text, changed))
    return out


def _write_atomically(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            os.fchmod(f.fileno(), 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def protected_home(bin_dir: Path) -> bool:
    """Whether ``bin_dir`` is under /home, /root or /run/user, which ProtectHome=yes hides."""
    return any(bin_dir.is_relative_to(top) for top in ("/home", "/root", "/run/user"))


def configure_install_parser(p: argparse.ArgumentParser) -> None:
    """Add the ``ipfailover install-units`` options to a (sub)parser."""
    p.description = (
        "Write heartbeatd.service and failoverd.service, with their programs pointing at this "
        "installation's console scripts. The units start each daemon only if its FAILOVER_* "
        "variables are set, as Apple's StartupItem did. Then run: systemctl daemon-reload; "
        "systemctl enable --now heartbeatd failoverd."
    )
    p.add_argument(
        "--dest",
        type=Path,
        default=DEFAULT_DEST,
        metavar="DIR",
        help="where to write the unit files (default: %(default)s)",
    )
    p.add_argument(
        "--bin-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="the directory holding heartbeatd, failoverd and ipfailover "
        "(default: the directory of the running Python, e.g. /opt/ipfailover/bin)",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="print the units that would change; write nothing"
    )


def run_install(args: argparse.Namespace) -> int:
    """``ipfailover install-units``: 0 on success, 2 with one line on a problem."""
    bin_dir: Path = args.bin_dir or default_bin_dir()
    try:
        written = install_units(bin_dir, args.dest, dry_run=args.dry_run)
    except (InstallError, OSError) as e:
        print(f"ipfailover install-units: {e}", file=sys.stderr)
        return 2
    if protected_home(bin_dir):
        print(
            f"warning: {bin_dir} is hidden from the units by ProtectHome=yes; install into "
            "/opt/ipfailover instead",
            file=sys.stderr,
        )
    for w in written:
        if not w.changed:
            print(f"unchanged {w.path}")
        elif args.dry_run:
            print(f"would write {w.path}:\n{w.text}")
        else:
            print(f"wrote {w.path}")
    if not args.dry_run and any(w.changed for w in written):
        print("next: systemctl daemon-reload, then systemctl enable --now heartbeatd failoverd")
    return 0
