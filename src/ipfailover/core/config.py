"""Parse ipfailover's configuration: ``FAILOVER_*`` lines in Apple hostconfig syntax.

The file is shell-like (``/etc/hostconfig`` on Mac OS X Server): ``NAME=value``,
``NAME="value"`` or ``NAME='value'``, an optional leading ``export``, ``#`` comments
and blank lines.  It is shared with other software, so only lines that assign a
``FAILOVER_*`` name are looked at; every other line is ignored, however malformed.

:func:`parse_config` turns the text into one frozen, validated :class:`Config` or
raises :class:`ConfigErrors` listing *every* problem as ``path:line: VARIABLE:
message``.  Nothing here touches the network; :func:`load_config` only reads the
file.  Whether a role (heartbeatd, failoverd) has what it needs is a separate
question answered by :func:`role_problems`.

Three modules do the work: :mod:`~ipfailover.core.hostconfig` reads the syntax,
:mod:`~ipfailover.core.variables` is the table of variables (:class:`Config`'s fields) and
:mod:`~ipfailover.core.validators` converts each value; here they are put together, with
the checks that span variables.  The names callers use are all importable from here.
"""

from __future__ import annotations

import argparse
import os
import stat
from collections.abc import Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import Any, Literal, TypeAlias

from ipfailover.core import hostconfig
from ipfailover.core.errors import ConfigError as ConfigError
from ipfailover.core.errors import ConfigErrors as ConfigErrors
from ipfailover.core.validators import IPAddress as IPAddress
from ipfailover.core.validators import PeerPair as PeerPair
from ipfailover.core.validators import node_name_problem as node_name_problem
from ipfailover.core.validators import parse_peer_pair as parse_peer_pair
from ipfailover.core.validators import split_host_port as split_host_port
from ipfailover.core.variables import BY_NAME, Variable
from ipfailover.core.variables import TABLE as TABLE
from ipfailover.core.variables import VARIABLES as VARIABLES
from ipfailover.core.variables import Config as Config

Role: TypeAlias = Literal["heartbeatd", "failoverd"]


def parse_config(text: str, path: str = "<string>") -> Config:
    """Parse configuration text; raise :class:`ConfigErrors` listing every problem found."""
    found = hostconfig.scan(text, path, VARIABLES)
    reader = _Reader(path, found.assignments, found.errors)
    config = _build(reader)
    if reader.errors:
        raise ConfigErrors(sorted(reader.errors, key=lambda error: error.line))
    return replace(config, warnings=tuple(found.warnings))


DEFAULT_PATH = "/etc/hostconfig"  # Apple's


def add_path_argument(
    p: argparse.ArgumentParser,
    help: str = "hostconfig-style file with FAILOVER_* variables (default: %(default)s)",
) -> None:
    """The ``--config PATH`` option every command shares."""
    p.add_argument("--config", default=DEFAULT_PATH, metavar="PATH", help=help)


MAX_SIZE = 1 << 20  # bytes; /etc/hostconfig is a few kB, and /dev/zero would never end


def load_config(path: str) -> Config:
    """Read and parse the file at ``path``; an unreadable file is one ConfigError (line 0).

    Only a regular file of at most :data:`MAX_SIZE` bytes is read: a FIFO would hang and a
    device never end. Bytes that are not UTF-8 are tolerated on lines we ignore (the file is
    shared) and reported on ``FAILOVER_*`` lines.
    """

    def refuse(message: str) -> ConfigErrors:
        return ConfigErrors([ConfigError(path, 0, "", message)])

    try:
        # O_NONBLOCK: opening a FIFO with no writer would block before we could look at it.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        hint = ""
        if isinstance(exc, FileNotFoundError):
            hint = "; give the file with --config PATH" if path == DEFAULT_PATH else ""
        elif isinstance(exc, PermissionError):
            hint = "; run as root, or make it readable"
        raise refuse(f"cannot read: {reason}{hint}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        if stat.S_ISDIR(mode):
            raise refuse("cannot read: Is a directory")
        kind = _KINDS.get(stat.S_IFMT(mode), "not a regular file")
        raise refuse(f"is {kind}, not a regular file; give the configuration file")
    with os.fdopen(fd, "rb") as stream:
        try:
            data = stream.read(MAX_SIZE + 1)
        except OSError as exc:
            raise refuse(f"cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_SIZE:
        raise refuse(f"is larger than {MAX_SIZE // 1024} KiB; is this the right file?")
    return parse_config(data.decode("utf-8", "surrogateescape"), path)


_KINDS = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


_ROLE_NEEDS: dict[Role, tuple[str, ...]] = {
    "heartbeatd": ("FAILOVER_BCAST_IPS",),
    "failoverd": ("FAILOVER_PEER_IP", "FAILOVER_PEER_IP_PAIRS"),
}


def role_problems(cfg: Config, role: Role) -> list[ConfigError]:
    """What ``role`` still lacks, by Apple's StartupItem rules.

    heartbeatd needs FAILOVER_BCAST_IPS; failoverd needs FAILOVER_PEER_IP and
    FAILOVER_PEER_IP_PAIRS.  Each missing variable is one error with line 0.
    """
    return [
        ConfigError(cfg.path, 0, variable, f"{variable} is not set; {role} needs it")
        for variable in _ROLE_NEEDS[role]
        if getattr(cfg, BY_NAME[variable].field) in (None, ())
    ]


# --------------------------------------------------------------------------- building the Config


class _Reader:
    """Hands out converted values, recording a located error for each one that fails."""

    def __init__(
        self,
        path: str,
        assignments: Mapping[str, hostconfig.Assignment],
        errors: list[ConfigError],
    ) -> None:
        self.path = path
        self.assignments = assignments
        self.errors = errors
        self.failed: set[str] = set()

    def get(self, row: Variable) -> Any:
        """The value of the table's ``row`` converted by its validator; its default if unset,
        empty or invalid (then with an error recorded)."""
        found = self.assignments.get(row.name)
        if found is None or found.value == "":
            return row.default
        try:
            return row.parse(found.value)
        except ValueError as exc:
            self.error(row.name, str(exc))
            self.failed.add(row.name)
            return row.default

    def error(self, variable: str, message: str) -> None:
        line = self.assignments[variable].line
        self.errors.append(ConfigError(self.path, line, variable, message))

    def lines(self) -> Mapping[str, int]:
        return MappingProxyType({name: found.line for name, found in self.assignments.items()})


def _build(r: _Reader) -> Config:
    """Convert every variable of the table, then run the checks that span variables."""
    cfg = Config(path=r.path, lines=r.lines(), **{row.field: r.get(row) for row in TABLE})
    _check_spanning(cfg, r)
    return cfg


def _check_spanning(cfg: Config, r: _Reader) -> None:
    """The rules that involve more than one variable; each error goes on the line of the
    variable named first (a variable whose own value failed is its default here)."""
    deadtime, interval = cfg.deadtime, cfg.interval
    if deadtime is not None and "FAILOVER_INTERVAL" not in r.failed and deadtime <= interval:
        r.error("FAILOVER_DEADTIME", f"must be greater than FAILOVER_INTERVAL ({interval:g} s)")
    if cfg.peer_name is not None and cfg.peer_name == cfg.node_name:
        r.error("FAILOVER_PEER_NAME", "must differ from FAILOVER_NODE_NAME (that is us)")
