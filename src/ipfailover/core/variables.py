"""The one table of ``FAILOVER_*`` variables: :class:`Config`'s fields.

Each variable is one field, declared once with :func:`variable`: its name in the file, the
validator that turns the text into the field's type (mypy checks that they agree), the
default, whether a reload (SIGHUP) applies it, and a one-line help. The parser, the list of
known names, the defaults and the "did you mean" hints all come from here
(:data:`TABLE`, :data:`VARIABLES`); ``tests/unit/test_config.py`` holds every variable to an
example and ``docs/configuration.md`` to a section.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ipfailover.core import validators as v
from ipfailover.core.errors import ConfigError
from ipfailover.core.validators import IPAddress, PeerPair

T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class Variable:
    """One row of the table; ``field`` is the :class:`Config` attribute that holds it."""

    name: str
    parse: Callable[[str], Any]  # the validator: the unquoted, non-empty text -> the value
    default: Any
    reload: bool  # a SIGHUP applies it (docs/operations.md, "Reloading"); else a restart
    help: str
    field: str = ""


_ROW = "ipfailover.variable"


def variable(name: str, parse: Callable[[str], T], default: T, *, reload: bool, help: str) -> T:
    """A :class:`Config` field for the variable ``name``: unset, empty or invalid gives
    ``default``; otherwise ``parse(text)``."""
    row = Variable(name=name, parse=parse, default=default, reload=reload, help=help)
    return field(default=default, metadata={_ROW: row})


@dataclass(frozen=True, kw_only=True)
class Config:
    """The validated configuration.  Build it with :func:`ipfailover.core.config.parse_config`,
    not by hand.

    ``lines`` maps each ``FAILOVER_*`` variable assigned in the file (even to an
    empty value) to the line of its last assignment; it is left out of equality
    so that moving a line does not make two configurations differ.
    """

    path: str
    # fmt: off
    # Apple's four first.
    bcast_ips: tuple[IPAddress, ...] = variable(
        "FAILOVER_BCAST_IPS", v.targets, (), reload=True,
        help="heartbeatd's targets: addresses (broadcast or unicast) to send heartbeats to")
    peer_ip: IPAddress | None = variable(
        "FAILOVER_PEER_IP", v.peer_ip, None, reload=False,
        help="the primary's address, to listen for its heartbeats on")
    peer_ip_pairs: tuple[PeerPair, ...] = variable(
        "FAILOVER_PEER_IP_PAIRS", v.peer_pairs, (), reload=True,
        help="interface:address[/mask] pairs failoverd takes over")
    email_recipients: tuple[str, ...] = variable(
        "FAILOVER_EMAIL_RECIPIENT", v.recipients, ("root@localhost",), reload=False,
        help="who is mailed about takeovers and releases")
    # ipfailover's own.
    port: int = variable(
        "FAILOVER_PORT", v.PORT.parse, 1694, reload=True,
        help="UDP port of the heartbeats")
    interval: float = variable(
        "FAILOVER_INTERVAL", v.INTERVAL.parse, 1.0, reload=True,
        help="seconds between heartbeats")
    deadtime: float | None = variable(
        "FAILOVER_DEADTIME", v.DEADTIME.parse, None, reload=True,
        help="seconds of silence after which the primary is dead; unset: 3 intervals")
    failback_delay: float = variable(
        "FAILOVER_FAILBACK_DELAY", v.FAILBACK.parse, 3.0, reload=True,
        help="seconds the primary must be heard steadily before the addresses go back")
    take_answering: bool = variable(
        "FAILOVER_TAKE_ANSWERING", v.boolean, True, reload=True,
        help="take over an address that still answers ARP/ND from another machine")
    key_file: str = variable(
        "FAILOVER_KEY_FILE", v.absolute_path, "/etc/ipfailover/key", reload=True,
        help="the shared heartbeat key")
    script_dir: str = variable(
        "FAILOVER_SCRIPT_DIR", v.absolute_path, "/Library/IPFailover", reload=True,
        help="where the transition scripts' folder is")
    garp_count: int = variable(
        "FAILOVER_GARP_COUNT", v.GARP_COUNT.parse, 5, reload=True,
        help="gratuitous ARPs / unsolicited NAs sent per address taken")
    garp_interval: float = variable(
        "FAILOVER_GARP_INTERVAL", v.GARP_INTERVAL.parse, 0.2, reload=True,
        help="seconds between them")
    node_name: str | None = variable(
        "FAILOVER_NODE_NAME", v.node_name, None, reload=False,
        help="our name in heartbeats; unset: the host name")
    peer_name: str | None = variable(
        "FAILOVER_PEER_NAME", v.node_name, None, reload=True,
        help="the primary's name; unset: learned from FAILOVER_PEER_IP")
    networks: tuple[str, ...] = variable(
        "FAILOVER_NETWORKS", v.interfaces, (), reload=True,
        help="interfaces failoverd listens on; unset: derived from the pairs and FAILOVER_PEER_IP")
    script_timeout: float = variable(
        "FAILOVER_SCRIPT_TIMEOUT", v.SCRIPT_TIMEOUT.parse, 30.0, reload=True,
        help="seconds a transition script may run before it is killed")
    script_strict: bool = variable(
        "FAILOVER_SCRIPT_STRICT", v.boolean, True, reload=True,
        help="refuse scripts and folders others could change")
    smtp_server: str = variable(
        "FAILOVER_SMTP_SERVER", v.smtp_server, "localhost:25", reload=False,
        help="host[:port] the mail goes to (normalised to host:port)")
    smtp_starttls: bool = variable(
        "FAILOVER_SMTP_STARTTLS", v.boolean, False, reload=False,
        help="require STARTTLS")
    smtp_credentials_file: str | None = variable(
        "FAILOVER_SMTP_CREDENTIALS_FILE", v.absolute_path, None, reload=False,
        help="file with the SMTP user name and password")
    notify_program: str | None = variable(
        "FAILOVER_NOTIFY_PROGRAM", v.absolute_path, None, reload=False,
        help="program run for each notice instead of the built-in mailer")
    spool_dir: str = variable(
        "FAILOVER_SPOOL_DIR", v.absolute_path, "/var/spool/ipfailover", reload=False,
        help="the notifier's spool")
    run_dir: str = variable(
        "FAILOVER_RUN_DIR", v.absolute_path, "/run/ipfailover", reload=False,
        help="control sockets, boot ids and failoverd's lock")
    metrics: str | None = variable(
        "FAILOVER_METRICS", v.metrics, None, reload=False,
        help="host:port where failoverd serves Prometheus metrics; unset: none")
    heartbeat_metrics: str | None = variable(
        "FAILOVER_HEARTBEAT_METRICS", v.metrics, None, reload=False,
        help="host:port where heartbeatd serves Prometheus metrics; unset: none")
    # fmt: on
    lines: Mapping[str, int] = field(default_factory=dict, compare=False)
    #: Lines that are probably mistakes but change nothing (a lower-case ``failover_`` name,
    #: a variable assigned twice): the daemons log them and ``ipfailover check`` warns.
    warnings: tuple[ConfigError, ...] = field(default=(), compare=False)

    @property
    def effective_deadtime(self) -> float:
        """Seconds without heartbeats after which the peer counts as dead."""
        return self.deadtime if self.deadtime is not None else 3 * self.interval

    def line_of(self, variable: str) -> int | None:
        """Line where ``variable`` was last assigned, or None if the file never sets it."""
        return self.lines.get(variable)

    def where(self, variable: str) -> str:
        """``path:line: VARIABLE`` to start a message with, or ``path: VARIABLE`` (its default)
        when the file does not set it."""
        line = self.line_of(variable)
        return f"{self.path}:{line}: {variable}" if line else f"{self.path}: {variable}"


#: Every variable, in the order of :class:`Config` (Apple's four first).
TABLE: tuple[Variable, ...] = tuple(
    dataclasses.replace(f.metadata[_ROW], field=f.name)
    for f in dataclasses.fields(Config)
    if _ROW in f.metadata
)
#: Every name the parser knows.  Any other ``FAILOVER_*`` name is an error (with a "did you
#: mean" hint), so a typo never silently yields a default.
VARIABLES: tuple[str, ...] = tuple(row.name for row in TABLE)
BY_NAME: Mapping[str, Variable] = {row.name: row for row in TABLE}
