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
"""

from __future__ import annotations

import argparse
import difflib
import ipaddress
import os
import re
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Literal, TypeAlias, TypeVar

from ipfailover.core import wire
from ipfailover.core.errors import ConfigError as ConfigError
from ipfailover.core.errors import ConfigErrors as ConfigErrors

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
Role: TypeAlias = Literal["heartbeatd", "failoverd"]

T = TypeVar("T")

#: Every variable this parser knows, Apple's four first.  Any other ``FAILOVER_*``
#: name is an error (with a "did you mean" hint), so a typo never silently yields a default.
VARIABLES: tuple[str, ...] = (
    "FAILOVER_BCAST_IPS",
    "FAILOVER_PEER_IP",
    "FAILOVER_PEER_IP_PAIRS",
    "FAILOVER_EMAIL_RECIPIENT",
    "FAILOVER_PORT",
    "FAILOVER_INTERVAL",
    "FAILOVER_DEADTIME",
    "FAILOVER_FAILBACK_DELAY",
    "FAILOVER_TAKE_ANSWERING",
    "FAILOVER_KEY_FILE",
    "FAILOVER_SCRIPT_DIR",
    "FAILOVER_GARP_COUNT",
    "FAILOVER_GARP_INTERVAL",
    "FAILOVER_NODE_NAME",
    "FAILOVER_PEER_NAME",
    "FAILOVER_NETWORKS",
    "FAILOVER_SCRIPT_TIMEOUT",
    "FAILOVER_SCRIPT_STRICT",
    "FAILOVER_SMTP_SERVER",
    "FAILOVER_SMTP_STARTTLS",
    "FAILOVER_SMTP_CREDENTIALS_FILE",
    "FAILOVER_NOTIFY_PROGRAM",
    "FAILOVER_SPOOL_DIR",
    "FAILOVER_RUN_DIR",
    "FAILOVER_METRICS",
    "FAILOVER_HEARTBEAT_METRICS",
)

_IFNAME_MAX_BYTES = 15  # Linux IFNAMSIZ (16) minus the terminating NUL
_NAME_MAX_BYTES = 64


# --------------------------------------------------------------------------- model


@dataclass(frozen=True, kw_only=True)
class PeerPair:
    """One ``interface:address[/mask]`` entry of ``FAILOVER_PEER_IP_PAIRS``.

    The constructor validates, so a PeerPair is always usable: a valid Linux
    interface name, an address that can be assigned to an interface, and a
    prefix length in range (``None`` means "not given"; the consumer infers it
    from the interface's subnet, else uses /32 or /128).
    """

    interface: str
    address: IPAddress
    prefixlen: int | None

    def __post_init__(self) -> None:
        _check_interface(self.interface)
        _check_assignable(self.address)
        if self.prefixlen is not None:
            _check_prefix(self.address, self.prefixlen)

    def __str__(self) -> str:
        host = f"[{self.address}]" if self.address.version == 6 else str(self.address)
        mask = "" if self.prefixlen is None else f"/{self.prefixlen}"
        return f"{self.interface}:{host}{mask}"


@dataclass(frozen=True, kw_only=True)
class Config:
    """The validated configuration.  Build it with :func:`parse_config`, not by hand.

    ``lines`` maps each ``FAILOVER_*`` variable assigned in the file (even to an
    empty value) to the line of its last assignment; it is left out of equality
    so that moving a line does not make two configurations differ.
    """

    path: str
    bcast_ips: tuple[IPAddress, ...] = ()  # FAILOVER_BCAST_IPS: heartbeat targets (Apple)
    peer_ip: IPAddress | None = None  # FAILOVER_PEER_IP: the primary's address (Apple)
    peer_ip_pairs: tuple[PeerPair, ...] = ()  # FAILOVER_PEER_IP_PAIRS: addresses to take over
    email_recipients: tuple[str, ...] = ("root@localhost",)  # FAILOVER_EMAIL_RECIPIENT (Apple)
    port: int = 1694  # FAILOVER_PORT: UDP port of the heartbeats
    interval: float = 1.0  # FAILOVER_INTERVAL: seconds between heartbeats
    deadtime: float | None = None  # FAILOVER_DEADTIME: silence = dead; None = 3 * interval
    failback_delay: float = 3.0  # FAILOVER_FAILBACK_DELAY: hold-down before handing back
    take_answering: bool = True  # FAILOVER_TAKE_ANSWERING: take an address that still answers
    key_file: str = "/etc/ipfailover/key"  # FAILOVER_KEY_FILE: shared heartbeat key
    script_dir: str = "/Library/IPFailover"  # FAILOVER_SCRIPT_DIR: transition scripts' base
    garp_count: int = 5  # FAILOVER_GARP_COUNT: gratuitous ARP / unsolicited NA per address
    garp_interval: float = 0.2  # FAILOVER_GARP_INTERVAL: seconds between them
    node_name: str | None = None  # FAILOVER_NODE_NAME: our heartbeat identity; None = hostname
    peer_name: str | None = None  # FAILOVER_PEER_NAME: the primary's identity; None = learned
    networks: tuple[str, ...] = ()  # FAILOVER_NETWORKS: interfaces failoverd watches; () = derived
    script_timeout: float = 30.0  # FAILOVER_SCRIPT_TIMEOUT: seconds per transition script
    script_strict: bool = True  # FAILOVER_SCRIPT_STRICT: refuse scripts others could change
    smtp_server: str = "localhost:25"  # FAILOVER_SMTP_SERVER: normalised to host:port
    smtp_starttls: bool = False  # FAILOVER_SMTP_STARTTLS
    smtp_credentials_file: str | None = None  # FAILOVER_SMTP_CREDENTIALS_FILE
    notify_program: str | None = None  # FAILOVER_NOTIFY_PROGRAM: replaces the built-in mailer
    spool_dir: str = "/var/spool/ipfailover"  # FAILOVER_SPOOL_DIR: the notifier's spool
    run_dir: str = "/run/ipfailover"  # FAILOVER_RUN_DIR: control sockets
    metrics: str | None = None  # FAILOVER_METRICS: failoverd's metrics host:port; None = off
    heartbeat_metrics: str | None = None  # FAILOVER_HEARTBEAT_METRICS: heartbeatd's; None = off
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


_DEFAULTS = Config(path="")


# --------------------------------------------------------------------------- public helpers


def parse_config(text: str, path: str = "<string>") -> Config:
    """Parse configuration text; raise :class:`ConfigErrors` listing every problem found."""
    text = text.removeprefix("\ufeff")  # a UTF-8 byte order mark (Windows editors) is no text
    warnings: list[ConfigError] = []
    assignments, errors = _scan(text, path, warnings)
    reader = _Reader(path, assignments, errors)
    config = _build(reader)
    if reader.errors:
        raise ConfigErrors(sorted(reader.errors, key=lambda error: error.line))
    return replace(config, warnings=tuple(warnings))


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
    present = {
        "FAILOVER_BCAST_IPS": bool(cfg.bcast_ips),
        "FAILOVER_PEER_IP": cfg.peer_ip is not None,
        "FAILOVER_PEER_IP_PAIRS": bool(cfg.peer_ip_pairs),
    }
    needed = _ROLE_NEEDS[role]
    return [
        ConfigError(cfg.path, 0, variable, f"{variable} is not set; {role} needs it")
        for variable in needed
        if not present[variable]
    ]


def parse_peer_pair(text: str) -> PeerPair:
    """Parse ``interface:address[/mask]`` (IPv6 bare or in brackets); ValueError if invalid.

    The first colon ends the interface name, so ``eth0:2001:db8::10/64`` works.
    The mask is a prefix length or, for IPv4, a contiguous dotted netmask.
    """
    interface, colon, rest = text.partition(":")
    if not colon:
        raise ValueError("expected interface:address[/mask]")
    if rest.startswith("["):
        host, bracket, after = rest[1:].partition("]")
        if not bracket or after[:1] not in ("", "/"):
            raise ValueError("expected interface:[IPv6 address][/prefix]")
        address: IPAddress = _ipv6_literal(host)
        slash, mask = after[:1], after[1:]
    else:
        host, slash, mask = rest.partition("/")
        address = _ip_literal(host)
    prefixlen = _mask_to_prefix(address, mask) if slash else None
    return PeerPair(interface=interface, address=address, prefixlen=prefixlen)


def split_host_port(text: str, default_port: int | None) -> tuple[str, int]:
    """Split ``host[:port]`` / ``[v6][:port]`` into (host, port); ValueError if invalid.

    The host comes back without brackets, ready for a socket call.  A port is
    required when ``default_port`` is None.  Unbracketed IPv6 is refused because
    its last group would be indistinguishable from a port.
    """
    if text.startswith("["):
        host, bracket, after = text[1:].partition("]")
        if not bracket or after[:1] not in ("", ":"):
            raise ValueError("expected [IPv6 address]:port")
        return str(_ipv6_literal(host)), _port_part(after[1:] if after else None, default_port)
    if text.count(":") > 1:
        raise ValueError("put an IPv6 address in brackets: [2001:db8::1]:port")
    host, colon, port = text.partition(":")
    _check_host_name(host)
    return host, _port_part(port if colon else None, default_port)


# --------------------------------------------------------------------------- scanning lines


@dataclass(frozen=True)
class _Assignment:
    line: int
    value: str


_EXPORT = re.compile(r"export[ \t]+")
_ASSIGNMENT = re.compile(r"(FAILOVER_[A-Za-z0-9_]*)=(.*)", re.DOTALL)
_EXPORT_ONLY = re.compile(r"(FAILOVER_[A-Za-z0-9_]*)[ \t\r]*(?:#.*)?", re.DOTALL)
_NOT_NAME_CHAR = re.compile(r"[^A-Za-z0-9_]")
_OTHER_CASE = re.compile(r"(?i)failover_[A-Za-z0-9_]*=")  # failover_bcast_ips=...
_SHLEX_SPACE = " \t\r\n"


def _scan(
    text: str, path: str, warnings: list[ConfigError]
) -> tuple[dict[str, _Assignment], list[ConfigError]]:
    """Collect the last assignment of each known FAILOVER_* name, and line-level errors;
    append to ``warnings`` the lines that are probably mistakes but change nothing."""
    assignments: dict[str, _Assignment] = {}
    errors: list[ConfigError] = []
    for number, line in enumerate(text.split("\n"), start=1):
        body = line.lstrip(" \t")
        export = _EXPORT.match(body)
        if export:
            body = body[export.end() :]
        if not body.startswith("FAILOVER_"):
            if _OTHER_CASE.match(body):
                name = _NOT_NAME_CHAR.split(body, maxsplit=1)[0]
                upper = name.upper()
                hint = f"write {upper}" if upper in VARIABLES else "names are upper case"
                message = (
                    f"ignored: shell names are case-sensitive and only FAILOVER_* is read; {hint}"
                )
                warnings.append(ConfigError(path, number, name, message))
            continue  # not ours: a shared file, ignore whatever it is
        try:
            name, value = _parse_line(body, exported=export is not None)
        except _LineError as exc:
            errors.append(ConfigError(path, number, exc.variable, exc.message))
            continue
        if name not in VARIABLES:
            errors.append(ConfigError(path, number, name, _unknown_message(name)))
        elif value is not None:
            if name in assignments:
                earlier = assignments[name].line
                message = f"assigned again; this value replaces the one on line {earlier}"
                warnings.append(ConfigError(path, number, name, message))
            assignments[name] = _Assignment(number, value)
    return assignments, errors


class _LineError(Exception):
    def __init__(self, variable: str, message: str) -> None:
        super().__init__(variable, message)
        self.variable = variable
        self.message = message


def _parse_line(body: str, *, exported: bool) -> tuple[str, str | None]:
    """Split one FAILOVER_ line into (name, value); value None for a bare ``export NAME``."""
    name = _NOT_NAME_CHAR.split(body, maxsplit=1)[0]
    try:
        body.encode("utf-8")
    except UnicodeEncodeError:
        raise _LineError(name, "line is not valid UTF-8") from None
    assignment = _ASSIGNMENT.fullmatch(body)
    if assignment:
        try:
            return name, _shell_word(assignment.group(2))
        except ValueError as exc:
            raise _LineError(name, str(exc)) from None
    if exported and _EXPORT_ONLY.fullmatch(body):
        return name, None  # `export NAME` changes no value
    raise _LineError(name, f"expected {name}=value, with no spaces around '='")


def _shell_word(raw: str) -> str:
    """The value of the text after '=' as the shell would assign it, or ValueError."""
    if _hash_glued_to_word(raw):
        raise ValueError(
            "'#' inside an unquoted value; the shell keeps it but this parser would start a "
            "comment there, so quote the value"
        )
    operator = _unquoted_operator(raw)
    if operator in ("$", "`"):
        raise ValueError(_EXPANSION)
    if operator:
        raise ValueError(
            f"unquoted {operator!r}: the shell ends the assignment there; write one assignment "
            "per line, with no commands after it (quote a value that contains it)"
        )
    try:
        words = _split_words(raw)
    except ValueError:
        raise ValueError(
            "unterminated quote or trailing backslash; the value must be on one line"
        ) from None
    if not words:
        return ""
    if any("$" in word or "`" in word for word in words):
        raise ValueError(_EXPANSION)
    if raw[:1] in (" ", "\t"):
        raise ValueError("space after '='; write NAME=value or NAME=\"value\"")
    if len(words) > 1:
        raise ValueError('unquoted space in the value; quote the whole value: NAME="a b"')
    return words[0]


def _split_words(raw: str) -> list[str]:
    """``shlex.split(raw, comments=True)`` in linear time (shlex builds each token by string
    concatenation, which took minutes on a 600 kB value): words split on unquoted whitespace,
    '...' literal, "..." with backslash escaping only '"' and '\\', an unquoted backslash
    escaping the next character, and an unquoted '#' starting a comment. ValueError on an
    unterminated quote or a trailing backslash."""
    words: list[str] = []
    word: list[str] = []
    in_word = False  # a word has started (perhaps an empty quoted one)
    i, n = 0, len(raw)
    while i < n:
        char = raw[i]
        if char in _SHLEX_SPACE:
            if in_word:
                words.append("".join(word))
                word, in_word = [], False
            i += 1
        elif char == "#":
            break
        elif char == "'":
            end = raw.find("'", i + 1)
            if end < 0:
                raise ValueError("no closing quotation")
            word.append(raw[i + 1 : end])
            in_word, i = True, end + 1
        elif char == '"':
            i += 1
            while True:
                if i >= n:
                    raise ValueError("no closing quotation")
                char = raw[i]
                if char == '"':
                    break
                if char == "\\" and i + 1 < n and raw[i + 1] in '"\\':
                    word.append(raw[i + 1])
                    i += 2
                else:
                    word.append(char)
                    i += 1
            in_word, i = True, i + 1
        elif char == "\\":
            if i + 1 >= n:
                raise ValueError("no escaped character")
            word.append(raw[i + 1])
            in_word, i = True, i + 2
        else:
            word.append(char)
            in_word, i = True, i + 1
    if in_word:
        words.append("".join(word))
    return words


_EXPANSION = (
    "'$' and '`' are not allowed: the shell would expand them and we do not; "
    "write the value itself, not a variable or a command"
)


def _unquoted_operator(raw: str) -> str | None:
    """The first shell operator character (``;``, ``&``, ``|``, ``<``, ``>``, ``(``, ``)``)
    outside quotes, or expansion character (``$``, backtick) outside single quotes, before any
    comment; or None."""
    quote = ""
    previous = " "
    chars = iter(raw)
    for char in chars:
        if quote:
            if char == quote:
                quote = ""
            elif char == "\\" and quote == '"':
                next(chars, "")
            elif char in "$`" and quote == '"':
                return char
        elif char in "\"'":
            quote = char
        elif char == "\\":
            next(chars, "")
        elif char == "#" and previous in _SHLEX_SPACE:
            return None
        elif char in ";&|<>()$`":
            return char
        previous = char
    return None


def _hash_glued_to_word(raw: str) -> bool:
    """Whether the first unquoted '#' directly follows an unquoted word character (``a#b``).

    There the shell keeps the '#' in the value while shlex starts a comment; we
    refuse rather than silently disagree.  After whitespace or a closing quote a
    '#' starts a comment for both.
    """
    quote = ""
    after_word = False
    chars = iter(raw)
    for char in chars:
        if quote:
            if char == quote:
                quote = ""
            elif char == "\\" and quote == '"':
                next(chars, "")
            after_word = False
        elif char in "\"'":
            quote = char
        elif char == "#":
            return after_word
        elif char == "\\":
            next(chars, "")
            after_word = True
        else:
            after_word = char not in _SHLEX_SPACE
    return False


def _unknown_message(name: str) -> str:
    close = difflib.get_close_matches(name.upper(), VARIABLES, n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    return f"unknown variable{hint}"


# --------------------------------------------------------------------------- building the Config


class _Reader:
    """Hands out converted values, recording a located error for each one that fails."""

    def __init__(
        self, path: str, assignments: dict[str, _Assignment], errors: list[ConfigError]
    ) -> None:
        self.path = path
        self.assignments = assignments
        self.errors = errors
        self.failed: set[str] = set()

    def get(self, variable: str, convert: Callable[[str], T], default: T) -> T:
        """The converted value of ``variable``; ``default`` if unset, empty or invalid."""
        found = self.assignments.get(variable)
        if found is None or found.value == "":
            return default
        try:
            return convert(found.value)
        except ValueError as exc:
            self.error(variable, str(exc))
            self.failed.add(variable)
            return default

    def error(self, variable: str, message: str) -> None:
        line = self.assignments[variable].line
        self.errors.append(ConfigError(self.path, line, variable, message))

    def lines(self) -> Mapping[str, int]:
        return MappingProxyType({name: found.line for name, found in self.assignments.items()})


def _build(r: _Reader) -> Config:
    """Convert every known variable, then run the checks that span variables."""
    d = _DEFAULTS
    interval = r.get("FAILOVER_INTERVAL", _INTERVAL.parse, d.interval)
    deadtime = r.get("FAILOVER_DEADTIME", _DEADTIME.parse, d.deadtime)
    if deadtime is not None and "FAILOVER_INTERVAL" not in r.failed and deadtime <= interval:
        r.error("FAILOVER_DEADTIME", f"must be greater than FAILOVER_INTERVAL ({interval:g} s)")
    node_name = r.get("FAILOVER_NODE_NAME", _node_name, d.node_name)
    peer_name = r.get("FAILOVER_PEER_NAME", _node_name, d.peer_name)
    if peer_name is not None and peer_name == node_name:
        r.error("FAILOVER_PEER_NAME", "must differ from FAILOVER_NODE_NAME (that is us)")
    return Config(
        path=r.path,
        bcast_ips=r.get("FAILOVER_BCAST_IPS", _targets, d.bcast_ips),
        peer_ip=r.get("FAILOVER_PEER_IP", _peer_ip, d.peer_ip),
        peer_ip_pairs=r.get("FAILOVER_PEER_IP_PAIRS", _peer_pairs, d.peer_ip_pairs),
        email_recipients=r.get("FAILOVER_EMAIL_RECIPIENT", _recipients, d.email_recipients),
        port=r.get("FAILOVER_PORT", _PORT.parse, d.port),
        interval=interval,
        deadtime=deadtime,
        failback_delay=r.get("FAILOVER_FAILBACK_DELAY", _FAILBACK.parse, d.failback_delay),
        take_answering=r.get("FAILOVER_TAKE_ANSWERING", _boolean, d.take_answering),
        key_file=r.get("FAILOVER_KEY_FILE", _absolute_path, d.key_file),
        script_dir=r.get("FAILOVER_SCRIPT_DIR", _absolute_path, d.script_dir),
        garp_count=r.get("FAILOVER_GARP_COUNT", _GARP_COUNT.parse, d.garp_count),
        garp_interval=r.get("FAILOVER_GARP_INTERVAL", _GARP_INTERVAL.parse, d.garp_interval),
        node_name=node_name,
        peer_name=peer_name,
        networks=r.get("FAILOVER_NETWORKS", _interfaces, d.networks),
        script_timeout=r.get("FAILOVER_SCRIPT_TIMEOUT", _SCRIPT_TIMEOUT.parse, d.script_timeout),
        script_strict=r.get("FAILOVER_SCRIPT_STRICT", _boolean, d.script_strict),
        smtp_server=r.get("FAILOVER_SMTP_SERVER", _smtp_server, d.smtp_server),
        smtp_starttls=r.get("FAILOVER_SMTP_STARTTLS", _boolean, d.smtp_starttls),
        smtp_credentials_file=r.get(
            "FAILOVER_SMTP_CREDENTIALS_FILE", _absolute_path, d.smtp_credentials_file
        ),
        notify_program=r.get("FAILOVER_NOTIFY_PROGRAM", _absolute_path, d.notify_program),
        spool_dir=r.get("FAILOVER_SPOOL_DIR", _absolute_path, d.spool_dir),
        run_dir=r.get("FAILOVER_RUN_DIR", _absolute_path, d.run_dir),
        metrics=r.get("FAILOVER_METRICS", _metrics, d.metrics),
        heartbeat_metrics=r.get("FAILOVER_HEARTBEAT_METRICS", _metrics, d.heartbeat_metrics),
        lines=r.lines(),
    )


# --------------------------------------------------------------------------- value converters
# Each takes the unquoted, non-empty value and returns the typed value or raises
# ValueError with a message that says what is wrong and what is allowed.

_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")
_INTEGER = re.compile(r"[+-]?[0-9]+")


@dataclass(frozen=True)
class _Range:
    """A numeric range with its unit, which every error message spells out."""

    low: float
    high: float
    unit: str
    integer: bool = False
    low_open: bool = False  # True: the value must be strictly greater than low

    def describe(self) -> str:
        if self.low_open:
            return f"{self.unit} greater than {self.low:g} and at most {self.high:g}"
        return f"{self.unit} from {self.low:g} to {self.high:g}"

    def parse(self, text: str) -> float:
        pattern, kind = (_INTEGER, "a whole number") if self.integer else (_DECIMAL, "a number")
        if not pattern.fullmatch(text):
            raise ValueError(f"{text!r} is not {kind}; expected {self.describe()}")
        try:
            value: float = int(text) if self.integer else float(text)
        except ValueError:  # more digits than int() accepts
            value = float("inf")
        below = value <= self.low if self.low_open else value < self.low
        if below or value > self.high:
            raise ValueError(f"{text} is out of range; expected {self.describe()}")
        return value


@dataclass(frozen=True)
class _IntRange:
    """An integer-valued :class:`_Range` (kept separate so mypy sees ``int``)."""

    range: _Range

    def parse(self, text: str) -> int:
        return int(self.range.parse(text))


_PORT = _IntRange(_Range(1, 65535, "a port number", integer=True))
_GARP_COUNT = _IntRange(_Range(1, 100, "a count", integer=True))
_INTERVAL = _Range(0.01, 60, "seconds")
_DEADTIME = _Range(0.01, 3600, "seconds")
_FAILBACK = _Range(0, 3600, "seconds")
_GARP_INTERVAL = _Range(0.001, 10, "seconds")
_SCRIPT_TIMEOUT = _Range(0, 3600, "seconds", low_open=True)

_TRUE = frozenset({"yes", "true", "1"})
_FALSE = frozenset({"no", "false", "0"})


def _boolean(text: str) -> bool:
    word = text.lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError(f"{text!r} is not a yes/no value; expected yes/no, true/false or 1/0")


def _absolute_path(text: str) -> str:
    if not text.startswith("/"):
        raise ValueError(f"{text!r} is not an absolute path; it must start with '/'")
    if not text.isprintable():
        raise ValueError(f"{text!r} contains control characters")
    return text


def _node_name(text: str) -> str:
    # The name goes on the wire and from there into scripts' environments and mail subjects.
    if len(text) > _NAME_MAX_BYTES:
        raise ValueError(f"is longer than {_NAME_MAX_BYTES} characters")
    if not wire.NAME.fullmatch(text):
        raise ValueError(f"{text!r} has characters other than {wire.NAME_CHARS}")
    return text


def node_name_problem(name: str) -> str | None:
    """Why ``name`` (e.g. the host name, FAILOVER_NODE_NAME's default) cannot be a node name."""
    try:
        _node_name(name)
    except ValueError as e:
        return str(e)
    return None


def _split_list(text: str, what: str, parse: Callable[[str], T]) -> tuple[T, ...]:
    """Parse each whitespace-separated token; report every bad token and every repeat."""
    items: list[T] = []
    seen: set[T] = set()  # a set: 40k targets took two minutes with ``item in items``
    problems: list[str] = []
    for token in text.split():
        try:
            item = parse(token)
        except ValueError as exc:
            problems.append(str(exc))
            continue
        if item in seen:
            problems.append(f"{token!r} is listed twice")
        seen.add(item)
        items.append(item)
    if problems:
        raise ValueError("; ".join(problems))
    if not items:
        raise ValueError(f"no {what} given")
    return tuple(items)


def _targets(text: str) -> tuple[IPAddress, ...]:
    return _split_list(text, "address", _target)


def _target(token: str) -> IPAddress:
    hint = " (separate addresses with spaces)" if "," in token else ""
    address = _ip_literal(token, hint)
    if address.is_unspecified:
        raise ValueError(f"{token!r} is the unspecified address")
    return address


def _peer_ip(text: str) -> IPAddress:
    if len(text.split()) != 1:
        raise ValueError(f"{text!r}: expected exactly one address")
    address = _ip_literal(text.strip())
    if address.is_unspecified or address.is_multicast:
        raise ValueError(f"{text!r} cannot be a peer's address")
    return address


def _peer_pairs(text: str) -> tuple[PeerPair, ...]:
    pairs: list[PeerPair] = []
    problems: list[str] = []
    for token in text.split():
        try:
            pairs.append(parse_peer_pair(token))
        except ValueError as exc:
            problems.append(f"{token}: {exc}")
    seen: set[IPAddress] = set()
    for pair in pairs:
        if pair.address in seen:
            problems.append(f"{pair.address} appears in more than one pair")
        seen.add(pair.address)
    if problems:
        raise ValueError("; ".join(problems))
    if not pairs:
        raise ValueError("no interface:address pair given")
    return tuple(pairs)


def _interfaces(text: str) -> tuple[str, ...]:
    def check(token: str) -> str:
        _check_interface(token)
        return token

    return _split_list(text, "interface", check)


_EMAIL = re.compile(r"[^@\s,]+@[^@\s,]+")


def _recipients(text: str) -> tuple[str, ...]:
    items = [item for item in re.split(r"[\s,]+", text) if item]
    bad = [item for item in items if not _EMAIL.fullmatch(item) or not item.isprintable()]
    if bad:
        listed = ", ".join(repr(item) for item in bad)
        raise ValueError(f"{listed}: expected user@domain, separated by spaces or commas")
    if not items:
        raise ValueError("no address given")
    return tuple(items)


def _smtp_server(text: str) -> str:
    return _join_host_port(*split_host_port(text, 25))


def _metrics(text: str) -> str:
    if text.isdigit():
        raise ValueError(
            f"{text!r} is a port alone; expected host:port, e.g. 127.0.0.1:{text} or [::1]:{text}"
        )
    return _join_host_port(*split_host_port(text, None))


def _join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _port_part(text: str | None, default: int | None) -> int:
    if text is None:
        if default is None:
            raise ValueError("a port is required: host:port or [IPv6]:port")
        return default
    return _PORT.parse(text)


_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


def _check_host_name(host: str) -> None:
    """Accept an IPv4 literal or a DNS name (labels of letters, digits, '-' and '_')."""
    if re.fullmatch(r"[0-9.]+", host):
        _ip_literal(host)  # all digits and dots: must be a valid IPv4 address
        return
    labels = host[:-1].split(".") if host.endswith(".") else host.split(".")
    if len(host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"{host!r} is not a host name or IP address")


# --------------------------------------------------------------------------- addresses


def _ip_literal(text: str, hint: str = "") -> IPAddress:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address{hint}") from None


def _ipv6_literal(text: str) -> ipaddress.IPv6Address:
    try:
        return ipaddress.IPv6Address(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an IPv6 address (brackets are for IPv6)") from None


def _mask_to_prefix(address: IPAddress, mask: str) -> int:
    """A prefix length from ``24``/``64`` or, for IPv4, a dotted netmask like ``255.255.255.0``."""
    if re.fullmatch(r"[0-9]{1,3}", mask):
        return int(mask)
    if address.version == 4 and "." in mask:
        try:
            bits = int(ipaddress.IPv4Address(mask))
        except ValueError:
            raise ValueError(f"mask {mask!r} is not a dotted netmask") from None
        host_bits = bits ^ 0xFFFFFFFF
        if host_bits & (host_bits + 1):
            raise ValueError(f"netmask {mask} is not contiguous")
        return 32 - host_bits.bit_length()
    expected = "a prefix length or dotted netmask" if address.version == 4 else "a prefix length"
    raise ValueError(f"mask {mask!r} is not {expected}")


def _check_prefix(address: IPAddress, prefixlen: int) -> None:
    """Prefix in 1..max, and for IPv4 subnets of 4+ addresses not the network/broadcast one."""
    top = address.max_prefixlen
    if not 1 <= prefixlen <= top:
        raise ValueError(f"prefix length /{prefixlen} is out of range; expected /1 to /{top}")
    if address.version == 4 and prefixlen <= 30:
        network = ipaddress.ip_network(f"{address}/{prefixlen}", strict=False)
        if address in (network.network_address, network.broadcast_address):
            kind = "network" if address == network.network_address else "broadcast"
            raise ValueError(f"{address} is the {kind} address of {network}")


def _check_assignable(address: IPAddress) -> None:
    """Refuse addresses that make no sense to move between hosts."""
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        raise ValueError(f"{address}: no %zone here; the interface comes before the colon")
    kinds = (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("multicast", address.is_multicast),
        ("link-local", address.is_link_local),
        ("reserved", address.is_reserved),
    )
    for kind, applies in kinds:
        if applies:
            raise ValueError(f"{address} is a {kind} address and cannot be taken over")


def _check_interface(name: str) -> None:
    """Linux's rules for interface names: 1..15 bytes, no '/', ':' or whitespace."""
    size = len(name.encode("utf-8", "surrogatepass"))
    if not 1 <= size <= _IFNAME_MAX_BYTES:
        raise ValueError(f"interface name {name!r} must be 1 to {_IFNAME_MAX_BYTES} bytes")
    if name in (".", ".."):
        raise ValueError(f"interface name {name!r} is not allowed")
    if any(char in "/:" or char.isspace() or not char.isprintable() for char in name):
        raise ValueError(
            f"interface name {name!r} contains '/', ':', whitespace or a control character"
        )
